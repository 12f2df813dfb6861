//! The single-machine store: one redb file. Every write is one redb transaction committed
//! with immediate durability before the call returns, so an acknowledged write survives a
//! crash or SIGKILL. The revision counter, the change log and leases live in the same file,
//! so revisions keep increasing and watches can resume across restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use tokio::task::AbortHandle;

use crate::clock::unix_millis;
use crate::codec;
use crate::engine::{self, LeaseRecord, Meta, Tables};
use crate::local::{forward_store, Backend, Local, Options};
use crate::{Entry, LeaseId, Listing, Result, StoreError, WatchEvent};

/// key -> entry record (see `codec`).
const ENTRIES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("entries");
/// lease id -> lease record (ttl, wall-clock deadline).
const LEASES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("leases");
/// (lease id, key) -> (): the keys attached to each lease.
const LEASE_KEYS: TableDefinition<'_, (u64, &str), ()> = TableDefinition::new("lease_keys");
/// revision -> the events of that revision: the change log watches read.
const CHANGES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("changes");
/// counter name -> value: "revision", "compacted", "next_lease", "schema".
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The layout this code writes.
const SCHEMA_VERSION: u64 = 1;

/// Maps redb's many error types into [`StoreError::Backend`].
trait OrBackend<T> {
    fn or_backend(self) -> Result<T>;
}

impl<T, E: Into<redb::Error>> OrBackend<T> for std::result::Result<T, E> {
    fn or_backend(self) -> Result<T> {
        self.map_err(|e| StoreError::Backend(e.into().to_string()))
    }
}

fn read_meta(table: &impl ReadableTable<&'static str, u64>) -> Result<Meta> {
    let counter =
        |name: &str| -> Result<u64> { Ok(table.get(name).or_backend()?.map_or(0, |v| v.value())) };
    Ok(Meta {
        revision: counter("revision")?,
        compacted: counter("compacted")?,
        next_lease: counter("next_lease")?,
    })
}

fn read_entry(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Entry>> {
    table
        .get(key)
        .or_backend()?
        .map(|record| codec::decode_entry(key, record.value()))
        .transpose()
}

fn read_entries(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for row in table.range(prefix..).or_backend()? {
        let (key, record) = row.or_backend()?;
        if !key.value().starts_with(prefix) {
            break;
        }
        entries.push(codec::decode_entry(key.value(), record.value())?);
    }
    Ok(entries)
}

/// The tables of one write transaction.
struct WriteTables<'txn> {
    entries: Table<'txn, &'static str, &'static [u8]>,
    leases: Table<'txn, u64, &'static [u8]>,
    lease_keys: Table<'txn, (u64, &'static str), ()>,
    changes: Table<'txn, u64, &'static [u8]>,
    meta: Table<'txn, &'static str, u64>,
    /// Whether anything was written: a write that changed nothing is not committed, which
    /// spares the disk a sync for every failed compare.
    dirty: bool,
}

impl<'txn> WriteTables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self> {
        Ok(WriteTables {
            entries: txn.open_table(ENTRIES).or_backend()?,
            leases: txn.open_table(LEASES).or_backend()?,
            lease_keys: txn.open_table(LEASE_KEYS).or_backend()?,
            changes: txn.open_table(CHANGES).or_backend()?,
            meta: txn.open_table(META).or_backend()?,
            dirty: false,
        })
    }
}

impl Tables for WriteTables<'_> {
    fn entry(&self, key: &str) -> Result<Option<Entry>> {
        read_entry(&self.entries, key)
    }

    fn entries(&self, prefix: &str) -> Result<Vec<Entry>> {
        read_entries(&self.entries, prefix)
    }

    fn put_entry(&mut self, entry: &Entry) -> Result<()> {
        self.dirty = true;
        let record = codec::encode_entry(entry);
        self.entries
            .insert(entry.key.as_str(), record.as_slice())
            .or_backend()?;
        Ok(())
    }

    fn remove_entry(&mut self, key: &str) -> Result<()> {
        self.dirty = true;
        self.entries.remove(key).or_backend()?;
        Ok(())
    }

    fn meta(&self) -> Result<Meta> {
        read_meta(&self.meta)
    }

    fn set_meta(&mut self, meta: &Meta) -> Result<()> {
        self.dirty = true;
        self.meta.insert("revision", meta.revision).or_backend()?;
        self.meta.insert("compacted", meta.compacted).or_backend()?;
        self.meta
            .insert("next_lease", meta.next_lease)
            .or_backend()?;
        Ok(())
    }

    fn lease(&self, id: LeaseId) -> Result<Option<LeaseRecord>> {
        self.leases
            .get(id.0)
            .or_backend()?
            .map(|record| codec::decode_lease(id, record.value()))
            .transpose()
    }

    fn put_lease(&mut self, id: LeaseId, lease: &LeaseRecord) -> Result<()> {
        self.dirty = true;
        let record = codec::encode_lease(lease);
        self.leases.insert(id.0, record.as_slice()).or_backend()?;
        Ok(())
    }

    fn remove_lease(&mut self, id: LeaseId) -> Result<()> {
        self.dirty = true;
        self.leases.remove(id.0).or_backend()?;
        Ok(())
    }

    fn lease_keys(&self, id: LeaseId) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        for row in self.lease_keys.range((id.0, "")..).or_backend()? {
            let (key, ()) = row.or_backend().map(|(k, v)| (k, v.value()))?;
            let (lease, key) = key.value();
            if lease != id.0 {
                break;
            }
            keys.push(key.to_owned());
        }
        Ok(keys)
    }

    fn attach(&mut self, id: LeaseId, key: &str) -> Result<()> {
        self.dirty = true;
        self.lease_keys.insert((id.0, key), ()).or_backend()?;
        Ok(())
    }

    fn detach(&mut self, id: LeaseId, key: &str) -> Result<()> {
        self.dirty = true;
        self.lease_keys.remove((id.0, key)).or_backend()?;
        Ok(())
    }

    fn expired_leases(&self, now: u64) -> Result<Vec<LeaseId>> {
        let mut expired = Vec::new();
        for row in self.leases.iter().or_backend()? {
            let (id, record) = row.or_backend()?;
            let id = LeaseId(id.value());
            if codec::decode_lease(id, record.value())?.expires_at <= now {
                expired.push(id);
            }
        }
        Ok(expired)
    }

    fn append_changes(&mut self, revision: u64, events: &[WatchEvent]) -> Result<()> {
        self.dirty = true;
        let record = codec::encode_events(events);
        self.changes
            .insert(revision, record.as_slice())
            .or_backend()?;
        Ok(())
    }

    fn remove_changes(&mut self, revision: u64) -> Result<()> {
        self.dirty = true;
        self.changes.remove(revision).or_backend()?;
        Ok(())
    }
}

/// Creates `path` empty with mode 0600 if it does not exist (redb initialises an empty file),
/// and takes group and other access away from one that does: the state store holds every
/// app's desired state and sealed secrets, readable by root only.
fn owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

pub(crate) struct RedbBackend {
    db: Database,
}

impl RedbBackend {
    fn open(path: &Path) -> Result<RedbBackend> {
        owner_only(path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        let txn = db.begin_write().or_backend()?;
        {
            let tables = WriteTables::open(&txn)?;
            let mut meta = tables.meta;
            let schema = meta.get("schema").or_backend()?.map(|v| v.value());
            match schema {
                None => {
                    meta.insert("schema", SCHEMA_VERSION).or_backend()?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(other) => {
                    return Err(StoreError::Backend(format!(
                        "{} has state store layout {other}, this berth reads {SCHEMA_VERSION}: upgrade berth",
                        path.display()
                    )))
                }
            }
        }
        txn.commit().or_backend()?;
        Ok(RedbBackend { db })
    }
}

impl Backend for RedbBackend {
    const BLOCKING: bool = true;

    fn write<T>(&self, f: impl FnOnce(&mut dyn Tables) -> Result<T>) -> Result<T> {
        let txn = self.db.begin_write().or_backend()?;
        let (result, dirty) = {
            let mut tables = WriteTables::open(&txn)?;
            let result = f(&mut tables)?;
            (result, tables.dirty)
        };
        if dirty {
            txn.commit().or_backend()?;
        } else {
            txn.abort().or_backend()?;
        }
        Ok(result)
    }

    fn get(&self, key: &str) -> Result<Option<Entry>> {
        let txn = self.db.begin_read().or_backend()?;
        read_entry(&txn.open_table(ENTRIES).or_backend()?, key)
    }

    fn list(&self, prefix: &str) -> Result<Listing> {
        let txn = self.db.begin_read().or_backend()?;
        Ok(Listing {
            entries: read_entries(&txn.open_table(ENTRIES).or_backend()?, prefix)?,
            revision: read_meta(&txn.open_table(META).or_backend()?)?.revision,
        })
    }

    fn revision(&self) -> Result<u64> {
        let txn = self.db.begin_read().or_backend()?;
        Ok(read_meta(&txn.open_table(META).or_backend()?)?.revision)
    }

    fn changes_after(&self, after: u64, limit: usize) -> Result<(Vec<WatchEvent>, u64)> {
        let txn = self.db.begin_read().or_backend()?;
        let meta = read_meta(&txn.open_table(META).or_backend()?)?;
        if after < meta.compacted {
            return Err(StoreError::Compacted {
                oldest: meta.compacted,
            });
        }
        let changes = txn.open_table(CHANGES).or_backend()?;
        let mut through = meta.revision;
        let mut last = after;
        let mut events = Vec::new();
        for (index, row) in changes.range(after + 1..).or_backend()?.enumerate() {
            if index == limit {
                through = last;
                break;
            }
            let (revision, record) = row.or_backend()?;
            events.extend(codec::decode_events(revision.value(), record.value())?);
            last = revision.value();
        }
        Ok((events, through))
    }
}

/// A [`crate::Store`] in one redb file.
pub struct RedbStore {
    local: Arc<Local<RedbBackend>>,
    reaper: AbortHandle,
}

impl RedbStore {
    /// Opens (creating if needed) the store at `path` with default options. Leases that
    /// expired while it was closed are revoked before this returns.
    pub async fn open(path: impl AsRef<Path>) -> Result<RedbStore> {
        RedbStore::open_with(path, Options::default()).await
    }

    /// Opens (creating if needed) the store at `path`.
    pub async fn open_with(path: impl AsRef<Path>, options: Options) -> Result<RedbStore> {
        let path: PathBuf = path.as_ref().to_owned();
        let (backend, revision, options) = tokio::task::spawn_blocking(move || {
            let backend = RedbBackend::open(&path)?;
            let now = unix_millis(options.clock.now());
            backend.write(|tables| engine::expire(tables, now, options.history))?;
            let revision = backend.revision()?;
            Ok::<_, StoreError>((backend, revision, options))
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blocking task failed: {e}")))??;
        let local = Local::new(backend, options, revision);
        let reaper = local.spawn_reaper();
        Ok(RedbStore { local, reaper })
    }

    /// Expires leases whose time is up now, without waiting for the background task; how
    /// many. Tests with a [`crate::ManualClock`] call this after moving it.
    pub async fn expire_leases(&self) -> Result<usize> {
        self.local.expire_leases().await
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

forward_store!(RedbStore);
