//! What the in-process backends share: running writes through [`engine`], telling watches
//! that a revision was committed, feeding each watch from the change log, and expiring
//! leases in the background.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use crate::clock::{unix_millis, Clock, SystemClock};
use crate::engine::{self, Tables};
use crate::{
    CasOutcome, Entry, Expect, LeaseId, Listing, Op, Result, StoreError, TxnOutcome, Watch,
    WatchEvent,
};

/// How many revisions a watch reads from the change log at a time.
const WATCH_BATCH: usize = 256;
/// How many events a watch buffers for a slow reader before it waits for it.
const WATCH_BUFFER: usize = 1024;

/// Settings of a local store.
#[derive(Clone)]
pub struct Options {
    /// How many revisions of changes are kept for watches that start in the past.
    pub history: u64,
    /// How often expired leases are looked for.
    pub expiry_interval: Duration,
    /// The clock leases are measured against.
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history: 10_000,
            expiry_interval: Duration::from_millis(500),
            clock: Arc::new(SystemClock),
        }
    }
}

/// The storage underneath a local store.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Whether calls wait on a disk, and so must run on a blocking thread.
    const BLOCKING: bool;

    /// Runs `f` in one write transaction: all of it is committed if it returns `Ok`,
    /// none of it otherwise.
    fn write<T>(&self, f: impl FnOnce(&mut dyn Tables) -> Result<T>) -> Result<T>;

    fn get(&self, key: &str) -> Result<Option<Entry>>;

    fn list(&self, prefix: &str) -> Result<Listing>;

    fn revision(&self) -> Result<u64>;

    /// The changes after revision `after`, at most `limit` revisions of them, and the
    /// revision up to which they are complete. [`StoreError::Compacted`] if some are gone.
    fn changes_after(&self, after: u64, limit: usize) -> Result<(Vec<WatchEvent>, u64)>;
}

/// A store over a local backend.
pub(crate) struct Local<B> {
    backend: B,
    options: Options,
    /// The last committed revision, for watches waiting on new changes.
    committed: watch::Sender<u64>,
}

impl<B: Backend> Local<B> {
    /// A store over `backend`, whose last committed revision is `revision`.
    pub(crate) fn new(backend: B, options: Options, revision: u64) -> Arc<Self> {
        Arc::new(Local {
            backend,
            options,
            committed: watch::Sender::new(revision),
        })
    }

    /// Runs `f` where backend calls may: on a blocking thread for a disk.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Local<B>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if B::BLOCKING {
            let this = Arc::clone(self);
            tokio::task::spawn_blocking(move || f(&this))
                .await
                .map_err(|e| StoreError::Backend(format!("blocking task failed: {e}")))?
        } else {
            f(self)
        }
    }

    /// Runs `f` in a write transaction with now (unix milliseconds) and the history length,
    /// then tells watches about the revision it committed.
    async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut dyn Tables, u64, u64) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.run(move |local| {
            let now = unix_millis(local.options.clock.now());
            let history = local.options.history;
            let (result, revision) = local.backend.write(|tables| {
                let result = f(tables, now, history)?;
                Ok((result, tables.meta()?.revision))
            })?;
            local.committed.send_if_modified(|committed| {
                let newer = revision > *committed;
                *committed = (*committed).max(revision);
                newer
            });
            Ok(result)
        })
        .await
    }

    pub(crate) async fn get(self: &Arc<Self>, key: &str) -> Result<Option<Entry>> {
        let key = key.to_owned();
        self.run(move |local| local.backend.get(&key)).await
    }

    pub(crate) async fn list(self: &Arc<Self>, prefix: &str) -> Result<Listing> {
        let prefix = prefix.to_owned();
        self.run(move |local| local.backend.list(&prefix)).await
    }

    pub(crate) async fn revision(self: &Arc<Self>) -> Result<u64> {
        self.run(|local| local.backend.revision()).await
    }

    pub(crate) async fn put(
        self: &Arc<Self>,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<u64> {
        let op = Op::Put {
            key: key.to_owned(),
            value,
            lease,
        };
        match self.txn(Vec::new(), vec![op]).await? {
            TxnOutcome::Applied { revision } => Ok(revision),
            TxnOutcome::Conflict { .. } => Err(StoreError::Backend(
                "a put without compares conflicted".to_owned(),
            )),
        }
    }

    pub(crate) async fn delete(self: &Arc<Self>, key: &str) -> Result<bool> {
        let ops = vec![Op::Delete {
            key: key.to_owned(),
        }];
        self.write(move |tables, now, history| {
            Ok(engine::txn(tables, now, &[], ops, history)?.1 > 0)
        })
        .await
    }

    pub(crate) async fn delete_prefix(self: &Arc<Self>, prefix: &str) -> Result<u64> {
        let prefix = prefix.to_owned();
        self.write(move |tables, _, history| engine::delete_prefix(tables, &prefix, history))
            .await
    }

    pub(crate) async fn cas(
        self: &Arc<Self>,
        key: &str,
        expected: Expect,
        value: Option<Vec<u8>>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome> {
        let key = key.to_owned();
        let op = match value {
            Some(value) => Op::Put {
                key: key.clone(),
                value,
                lease,
            },
            None => Op::Delete { key: key.clone() },
        };
        Ok(match self.txn(vec![(key, expected)], vec![op]).await? {
            TxnOutcome::Applied { revision } => CasOutcome::Applied { revision },
            TxnOutcome::Conflict { mut current } => CasOutcome::Conflict {
                current: current.pop().flatten(),
            },
        })
    }

    pub(crate) async fn txn(
        self: &Arc<Self>,
        compares: Vec<(String, Expect)>,
        ops: Vec<Op>,
    ) -> Result<TxnOutcome> {
        if compares.iter().any(|(key, _)| key.is_empty()) {
            return Err(StoreError::EmptyKey);
        }
        self.write(move |tables, now, history| {
            Ok(engine::txn(tables, now, &compares, ops, history)?.0)
        })
        .await
    }

    pub(crate) async fn watch(
        self: &Arc<Self>,
        prefix: &str,
        from_revision: Option<u64>,
    ) -> Result<Watch> {
        let after = match from_revision {
            Some(revision) => revision,
            None => self.revision().await?,
        };
        let (events, receiver) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(follow(
            Arc::downgrade(self),
            prefix.to_owned(),
            after,
            events,
            self.committed.subscribe(),
        ));
        Ok(Watch::new(receiver))
    }

    pub(crate) async fn compact(self: &Arc<Self>, revision: u64) -> Result<()> {
        self.write(move |tables, _, _| engine::compact(tables, revision))
            .await
    }

    pub(crate) async fn grant_lease(self: &Arc<Self>, ttl: Duration) -> Result<LeaseId> {
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.write(move |tables, now, _| engine::grant(tables, now, ttl))
            .await
    }

    pub(crate) async fn keep_alive(self: &Arc<Self>, lease: LeaseId) -> Result<Duration> {
        let ttl = self
            .write(move |tables, now, _| engine::keep_alive(tables, now, lease))
            .await?;
        Ok(Duration::from_millis(ttl))
    }

    pub(crate) async fn revoke(self: &Arc<Self>, lease: LeaseId) -> Result<()> {
        self.write(move |tables, _, history| engine::revoke(tables, lease, history))
            .await
    }

    /// Revokes every expired lease now; how many.
    pub(crate) async fn expire_leases(self: &Arc<Self>) -> Result<usize> {
        self.write(engine::expire).await
    }

    /// Starts expiring leases every `expiry_interval` until the store is dropped.
    pub(crate) fn spawn_reaper(self: &Arc<Self>) -> AbortHandle {
        let local = Arc::downgrade(self);
        // Nothing has expired at open (RedbStore::open just ran a pass): the first pass is due
        // one interval from now, and an immediate one cannot keep a just-dropped file open.
        let interval = self.options.expiry_interval;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::spawn(async move {
            loop {
                ticks.tick().await;
                let Some(local) = local.upgrade() else {
                    return;
                };
                match local.expire_leases().await {
                    Ok(0) => {}
                    Ok(expired) => debug!(expired, "leases expired"),
                    Err(error) => warn!(%error, "expiring leases failed"),
                }
            }
        })
        .abort_handle()
    }
}

/// Feeds a watch: reads the change log after `after`, sends what is under `prefix`, and
/// waits for the next commit; ends when the receiver or the store goes away. Reading the
/// log (rather than having writers push to watchers) means a slow watcher never holds up a
/// write, and one that falls behind the log gets `Compacted` rather than a gap.
async fn follow<B: Backend>(
    local: Weak<Local<B>>,
    prefix: String,
    mut after: u64,
    events: mpsc::Sender<Result<WatchEvent>>,
    mut committed: watch::Receiver<u64>,
) {
    loop {
        let latest = *committed.borrow_and_update();
        if after < latest {
            let Some(store) = local.upgrade() else {
                return;
            };
            let batch = store
                .run(move |local| local.backend.changes_after(after, WATCH_BATCH))
                .await;
            drop(store);
            match batch {
                Err(error) => {
                    let _ = events.send(Err(error)).await;
                    return;
                }
                Ok((changes, through)) => {
                    for change in changes {
                        if change.entry.key.starts_with(&prefix)
                            && events.send(Ok(change)).await.is_err()
                        {
                            return;
                        }
                    }
                    if through > after {
                        after = through;
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            changed = committed.changed() => if changed.is_err() { return },
            () = events.closed() => return,
        }
    }
}

/// Implements [`crate::Store`] for a type with a `local: Arc<Local<_>>` field.
macro_rules! forward_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::Store for $store {
            async fn get(&self, key: &str) -> $crate::Result<Option<$crate::Entry>> {
                self.local.get(key).await
            }
            async fn list(&self, prefix: &str) -> $crate::Result<$crate::Listing> {
                self.local.list(prefix).await
            }
            async fn revision(&self) -> $crate::Result<u64> {
                self.local.revision().await
            }
            async fn put(
                &self,
                key: &str,
                value: Vec<u8>,
                lease: Option<$crate::LeaseId>,
            ) -> $crate::Result<u64> {
                self.local.put(key, value, lease).await
            }
            async fn delete(&self, key: &str) -> $crate::Result<bool> {
                self.local.delete(key).await
            }
            async fn delete_prefix(&self, prefix: &str) -> $crate::Result<u64> {
                self.local.delete_prefix(prefix).await
            }
            async fn cas(
                &self,
                key: &str,
                expected: $crate::Expect,
                value: Option<Vec<u8>>,
                lease: Option<$crate::LeaseId>,
            ) -> $crate::Result<$crate::CasOutcome> {
                self.local.cas(key, expected, value, lease).await
            }
            async fn txn(
                &self,
                compares: Vec<(String, $crate::Expect)>,
                ops: Vec<$crate::Op>,
            ) -> $crate::Result<$crate::TxnOutcome> {
                self.local.txn(compares, ops).await
            }
            async fn watch(
                &self,
                prefix: &str,
                from_revision: Option<u64>,
            ) -> $crate::Result<$crate::Watch> {
                self.local.watch(prefix, from_revision).await
            }
            async fn compact(&self, revision: u64) -> $crate::Result<()> {
                self.local.compact(revision).await
            }
            async fn grant_lease(
                &self,
                ttl: std::time::Duration,
            ) -> $crate::Result<$crate::LeaseId> {
                self.local.grant_lease(ttl).await
            }
            async fn keep_alive(
                &self,
                lease: $crate::LeaseId,
            ) -> $crate::Result<std::time::Duration> {
                self.local.keep_alive(lease).await
            }
            async fn revoke(&self, lease: $crate::LeaseId) -> $crate::Result<()> {
                self.local.revoke(lease).await
            }
        }
    };
}
pub(crate) use forward_store;
