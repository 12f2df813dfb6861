//! A store that lives in memory only: the same semantics as [`crate::RedbStore`] without a
//! disk, for fast tests of the code above the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::task::AbortHandle;

use crate::engine::{LeaseRecord, Meta, Tables};
use crate::local::{forward_store, Backend, Local, Options};
use crate::{Entry, LeaseId, Listing, Result, StoreError, WatchEvent};

#[derive(Default)]
struct MemoryTables {
    entries: BTreeMap<String, Entry>,
    leases: BTreeMap<LeaseId, LeaseRecord>,
    lease_keys: BTreeSet<(LeaseId, String)>,
    changes: BTreeMap<u64, Vec<WatchEvent>>,
    meta: Meta,
}

fn under<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    map.range(prefix.to_owned()..)
        .take_while(move |(key, _)| key.starts_with(prefix))
}

impl Tables for MemoryTables {
    fn entry(&self, key: &str) -> Result<Option<Entry>> {
        Ok(self.entries.get(key).cloned())
    }

    fn entries(&self, prefix: &str) -> Result<Vec<Entry>> {
        Ok(under(&self.entries, prefix)
            .map(|(_, e)| e.clone())
            .collect())
    }

    fn put_entry(&mut self, entry: &Entry) -> Result<()> {
        self.entries.insert(entry.key.clone(), entry.clone());
        Ok(())
    }

    fn remove_entry(&mut self, key: &str) -> Result<()> {
        self.entries.remove(key);
        Ok(())
    }

    fn meta(&self) -> Result<Meta> {
        Ok(self.meta)
    }

    fn set_meta(&mut self, meta: &Meta) -> Result<()> {
        self.meta = *meta;
        Ok(())
    }

    fn lease(&self, id: LeaseId) -> Result<Option<LeaseRecord>> {
        Ok(self.leases.get(&id).copied())
    }

    fn put_lease(&mut self, id: LeaseId, lease: &LeaseRecord) -> Result<()> {
        self.leases.insert(id, *lease);
        Ok(())
    }

    fn remove_lease(&mut self, id: LeaseId) -> Result<()> {
        self.leases.remove(&id);
        Ok(())
    }

    fn lease_keys(&self, id: LeaseId) -> Result<Vec<String>> {
        Ok(self
            .lease_keys
            .range((id, String::new())..)
            .take_while(|(lease, _)| *lease == id)
            .map(|(_, key)| key.clone())
            .collect())
    }

    fn attach(&mut self, id: LeaseId, key: &str) -> Result<()> {
        self.lease_keys.insert((id, key.to_owned()));
        Ok(())
    }

    fn detach(&mut self, id: LeaseId, key: &str) -> Result<()> {
        self.lease_keys.remove(&(id, key.to_owned()));
        Ok(())
    }

    fn expired_leases(&self, now: u64) -> Result<Vec<LeaseId>> {
        Ok(self
            .leases
            .iter()
            .filter(|(_, lease)| lease.expires_at <= now)
            .map(|(id, _)| *id)
            .collect())
    }

    fn append_changes(&mut self, revision: u64, events: &[WatchEvent]) -> Result<()> {
        self.changes.insert(revision, events.to_vec());
        Ok(())
    }

    fn remove_changes(&mut self, revision: u64) -> Result<()> {
        self.changes.remove(&revision);
        Ok(())
    }
}

pub(crate) struct MemoryBackend {
    tables: Mutex<MemoryTables>,
}

impl MemoryBackend {
    fn tables(&self) -> std::sync::MutexGuard<'_, MemoryTables> {
        // A panic mid-write cannot leave a half-applied write: the engine changes nothing
        // until every check has passed, and the changes themselves cannot fail.
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Backend for MemoryBackend {
    const BLOCKING: bool = false;

    fn write<T>(&self, f: impl FnOnce(&mut dyn Tables) -> Result<T>) -> Result<T> {
        f(&mut *self.tables())
    }

    fn get(&self, key: &str) -> Result<Option<Entry>> {
        Ok(self.tables().entries.get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<Listing> {
        let tables = self.tables();
        Ok(Listing {
            entries: under(&tables.entries, prefix)
                .map(|(_, e)| e.clone())
                .collect(),
            revision: tables.meta.revision,
        })
    }

    fn revision(&self) -> Result<u64> {
        Ok(self.tables().meta.revision)
    }

    fn changes_after(&self, after: u64, limit: usize) -> Result<(Vec<WatchEvent>, u64)> {
        let tables = self.tables();
        if after < tables.meta.compacted {
            return Err(StoreError::Compacted {
                oldest: tables.meta.compacted,
            });
        }
        let mut through = tables.meta.revision;
        let mut last = after;
        let mut events = Vec::new();
        for (index, (revision, changes)) in tables.changes.range(after + 1..).enumerate() {
            if index == limit {
                through = last;
                break;
            }
            events.extend(changes.iter().cloned());
            last = *revision;
        }
        Ok((events, through))
    }
}

/// An in-memory [`crate::Store`]: nothing survives the process.
pub struct MemoryStore {
    local: Arc<Local<MemoryBackend>>,
    reaper: AbortHandle,
}

impl MemoryStore {
    /// An empty store with default options. Must be called within a tokio runtime (leases
    /// are expired by a background task).
    pub fn new() -> MemoryStore {
        MemoryStore::with_options(Options::default())
    }

    /// An empty store. Must be called within a tokio runtime.
    pub fn with_options(options: Options) -> MemoryStore {
        let backend = MemoryBackend {
            tables: Mutex::new(MemoryTables::default()),
        };
        let local = Local::new(backend, options, 0);
        let reaper = local.spawn_reaper();
        MemoryStore { local, reaper }
    }

    /// Expires leases whose time is up now, without waiting for the background task; how
    /// many. Tests with a [`crate::ManualClock`] call this after moving it.
    pub async fn expire_leases(&self) -> Result<usize> {
        self.local.expire_leases().await
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

forward_store!(MemoryStore);
