//! The semantics of every write, written once over [`Tables`] (the state inside one write
//! transaction), so that every local backend behaves the same. Each function checks
//! everything that can be refused before it changes anything: a refused write leaves the
//! tables untouched even where the backend cannot roll back.

use std::collections::BTreeSet;

use crate::{Entry, EventKind, Expect, LeaseId, Op, Result, StoreError, TxnOutcome, WatchEvent};

/// Counters kept beside the data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// The revision of the last change.
    pub revision: u64,
    /// Changes up to and including this revision are no longer in the change log.
    pub compacted: u64,
    /// The id the next granted lease gets.
    pub next_lease: u64,
}

/// A lease as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaseRecord {
    /// Its time to live, in milliseconds.
    pub ttl_millis: u64,
    /// When it expires, in unix milliseconds.
    pub expires_at: u64,
}

/// The state one write transaction sees and changes.
pub(crate) trait Tables {
    fn entry(&self, key: &str) -> Result<Option<Entry>>;
    /// Entries starting with `prefix`, sorted by key.
    fn entries(&self, prefix: &str) -> Result<Vec<Entry>>;
    fn put_entry(&mut self, entry: &Entry) -> Result<()>;
    fn remove_entry(&mut self, key: &str) -> Result<()>;
    fn meta(&self) -> Result<Meta>;
    fn set_meta(&mut self, meta: &Meta) -> Result<()>;
    fn lease(&self, id: LeaseId) -> Result<Option<LeaseRecord>>;
    fn put_lease(&mut self, id: LeaseId, lease: &LeaseRecord) -> Result<()>;
    fn remove_lease(&mut self, id: LeaseId) -> Result<()>;
    /// The keys attached to a lease, sorted.
    fn lease_keys(&self, id: LeaseId) -> Result<Vec<String>>;
    fn attach(&mut self, id: LeaseId, key: &str) -> Result<()>;
    fn detach(&mut self, id: LeaseId, key: &str) -> Result<()>;
    /// Leases whose deadline is at or before `now` (unix milliseconds).
    fn expired_leases(&self, now: u64) -> Result<Vec<LeaseId>>;
    fn append_changes(&mut self, revision: u64, events: &[WatchEvent]) -> Result<()>;
    fn remove_changes(&mut self, revision: u64) -> Result<()>;
}

/// Writes the state must refuse: an empty key, or one key written twice.
fn check_ops(ops: &[Op]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for op in ops {
        if op.key().is_empty() {
            return Err(StoreError::EmptyKey);
        }
        if !seen.insert(op.key()) {
            return Err(StoreError::DuplicateKey(op.key().to_owned()));
        }
    }
    Ok(())
}

fn live_lease(tables: &dyn Tables, id: LeaseId, now: u64) -> Result<LeaseRecord> {
    match tables.lease(id)? {
        Some(lease) if lease.expires_at > now => Ok(lease),
        _ => Err(StoreError::LeaseNotFound(id)),
    }
}

/// Applies `ops` if every compare holds; `now` is unix milliseconds. Returns the outcome and
/// how many keys changed.
pub(crate) fn txn(
    tables: &mut dyn Tables,
    now: u64,
    compares: &[(String, Expect)],
    ops: Vec<Op>,
    history: u64,
) -> Result<(TxnOutcome, u64)> {
    check_ops(&ops)?;
    let mut current = Vec::with_capacity(compares.len());
    let mut holds = true;
    for (key, expected) in compares {
        let entry = tables.entry(key)?;
        holds &= expected.holds(entry.as_ref());
        current.push(entry);
    }
    if !holds {
        return Ok((TxnOutcome::Conflict { current }, 0));
    }
    for op in &ops {
        if let Op::Put {
            lease: Some(id), ..
        } = op
        {
            live_lease(tables, *id, now)?;
        }
    }
    let mut meta = tables.meta()?;
    let revision = meta.revision + 1;
    let mut events = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, value, lease } => {
                let old = tables.entry(&key)?;
                let entry = Entry {
                    create_revision: old.as_ref().map_or(revision, |old| old.create_revision),
                    key,
                    value,
                    mod_revision: revision,
                    lease,
                };
                let old_lease = old.and_then(|old| old.lease);
                if old_lease != lease {
                    if let Some(id) = old_lease {
                        tables.detach(id, &entry.key)?;
                    }
                    if let Some(id) = lease {
                        tables.attach(id, &entry.key)?;
                    }
                }
                tables.put_entry(&entry)?;
                events.push(WatchEvent {
                    kind: EventKind::Put,
                    entry,
                    revision,
                });
            }
            Op::Delete { key } => {
                if let Some(old) = tables.entry(&key)? {
                    remove(tables, &old)?;
                    events.push(WatchEvent {
                        kind: EventKind::Delete,
                        entry: old,
                        revision,
                    });
                }
            }
        }
    }
    let changed = events.len() as u64;
    if changed > 0 {
        record(tables, &mut meta, &events, history)?;
    }
    Ok((
        TxnOutcome::Applied {
            revision: meta.revision,
        },
        changed,
    ))
}

fn remove(tables: &mut dyn Tables, entry: &Entry) -> Result<()> {
    if let Some(id) = entry.lease {
        tables.detach(id, &entry.key)?;
    }
    tables.remove_entry(&entry.key)
}

/// Makes `events` the next revision: bumps the counter and logs them, dropping the oldest
/// logged revision beyond `history`.
fn record(
    tables: &mut dyn Tables,
    meta: &mut Meta,
    events: &[WatchEvent],
    history: u64,
) -> Result<()> {
    meta.revision += 1;
    tables.append_changes(meta.revision, events)?;
    if meta.revision > history {
        let dropped = meta.revision - history;
        if dropped > meta.compacted {
            for revision in meta.compacted + 1..=dropped {
                tables.remove_changes(revision)?;
            }
            meta.compacted = dropped;
        }
    }
    tables.set_meta(meta)
}

/// Deletes every key under `prefix` at one revision; how many.
pub(crate) fn delete_prefix(tables: &mut dyn Tables, prefix: &str, history: u64) -> Result<u64> {
    let ops = tables
        .entries(prefix)?
        .into_iter()
        .map(|entry| Op::Delete { key: entry.key })
        .collect();
    Ok(txn(tables, 0, &[], ops, history)?.1)
}

/// Drops the change log up to and including `revision` (clamped to the current one).
pub(crate) fn compact(tables: &mut dyn Tables, revision: u64) -> Result<()> {
    let mut meta = tables.meta()?;
    let through = revision.min(meta.revision);
    if through > meta.compacted {
        for dropped in meta.compacted + 1..=through {
            tables.remove_changes(dropped)?;
        }
        meta.compacted = through;
        tables.set_meta(&meta)?;
    }
    Ok(())
}

/// A new lease of `ttl_millis` from `now`.
pub(crate) fn grant(tables: &mut dyn Tables, now: u64, ttl_millis: u64) -> Result<LeaseId> {
    let mut meta = tables.meta()?;
    let id = LeaseId(meta.next_lease.max(1));
    meta.next_lease = id.0 + 1;
    tables.put_lease(
        id,
        &LeaseRecord {
            ttl_millis,
            expires_at: now.saturating_add(ttl_millis),
        },
    )?;
    tables.set_meta(&meta)?;
    Ok(id)
}

/// Restarts a live lease's ttl from `now`; returns the ttl in milliseconds.
pub(crate) fn keep_alive(tables: &mut dyn Tables, now: u64, id: LeaseId) -> Result<u64> {
    let mut lease = live_lease(tables, id, now)?;
    lease.expires_at = now.saturating_add(lease.ttl_millis);
    tables.put_lease(id, &lease)?;
    Ok(lease.ttl_millis)
}

/// Ends a lease and deletes its keys at one revision. Errs if there is no such lease.
pub(crate) fn revoke(tables: &mut dyn Tables, id: LeaseId, history: u64) -> Result<()> {
    if tables.lease(id)?.is_none() {
        return Err(StoreError::LeaseNotFound(id));
    }
    let mut events = Vec::new();
    let mut meta = tables.meta()?;
    for key in tables.lease_keys(id)? {
        if let Some(entry) = tables.entry(&key)? {
            remove(tables, &entry)?;
            events.push(WatchEvent {
                kind: EventKind::Delete,
                entry,
                revision: meta.revision + 1,
            });
        }
    }
    tables.remove_lease(id)?;
    if !events.is_empty() {
        record(tables, &mut meta, &events, history)?;
    }
    Ok(())
}

/// Revokes every lease expired at `now`, each at its own revision; how many.
pub(crate) fn expire(tables: &mut dyn Tables, now: u64, history: u64) -> Result<usize> {
    let expired = tables.expired_leases(now)?;
    for id in &expired {
        revoke(tables, *id, history)?;
    }
    Ok(expired.len())
}
