//! The compliance suite against `MemoryStore`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use berth_store::compliance::Fixture;
use berth_store::{ManualClock, MemoryStore, Options, Store};

struct Memory {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
}

fn memory() -> Memory {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let store = MemoryStore::with_options(Options {
        clock: clock.clone(),
        // Only `advance` expires leases, so cases see expiry exactly when they ask for it.
        expiry_interval: Duration::from_secs(3600),
        ..Options::default()
    });
    Memory {
        store: Arc::new(store),
        clock,
    }
}

#[async_trait]
impl Fixture for Memory {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.store.expire_leases().await.expect("expire leases");
    }
}

berth_store::compliance_tests!(memory());
