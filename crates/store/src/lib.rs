//! The control plane's state store: a key-value [`Store`] with etcd v3 semantics (revisions,
//! prefix ranges, compare-and-swap, multi-key transactions, watches from a revision, leases)
//! and two backends: [`RedbStore`], one durable redb file for a single machine, and
//! [`MemoryStore`] for fast tests. An etcd backend implements the same trait later; every
//! backend must pass [`compliance`]. `docs/store.md` describes the semantics.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

mod clock;
mod codec;
pub mod compliance;
mod embedded;
mod engine;
mod local;
mod memory;

pub use clock::{Clock, ManualClock, SystemClock};
pub use embedded::RedbStore;
pub use local::Options;
pub use memory::MemoryStore;

/// A lease: keys put with it are deleted when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// One key and its value, with the revisions that last touched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision of the last change to this key.
    pub mod_revision: u64,
    /// The revision that created this key (since it last did not exist).
    pub create_revision: u64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// The entries under a prefix, as of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The entries, sorted by key.
    pub entries: Vec<Entry>,
    /// The store's revision when they were read: watch from here to see every later change.
    pub revision: u64,
}

/// What a compare expects of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key's `mod_revision` is this one (0 means absent, as in etcd).
    ModRevision(u64),
    /// Anything: the compare always holds.
    Any,
}

impl Expect {
    /// Whether `current` satisfies this expectation.
    pub fn holds(self, current: Option<&Entry>) -> bool {
        match self {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::ModRevision(revision) => {
                current.map_or(0, |entry| entry.mod_revision) == revision
            }
        }
    }
}

/// The result of [`Store::cas`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The expectation held and the write was applied.
    Applied {
        /// The store's revision after the write (unchanged if the write changed nothing).
        revision: u64,
    },
    /// The expectation did not hold; nothing was written.
    Conflict {
        /// The key's entry at that moment.
        current: Option<Entry>,
    },
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets a key.
    Put {
        /// The key.
        key: String,
        /// Its new value.
        value: Vec<u8>,
        /// The lease to attach it to.
        lease: Option<LeaseId>,
    },
    /// Deletes a key (nothing if it does not exist).
    Delete {
        /// The key.
        key: String,
    },
}

impl Op {
    /// The key this op writes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// The result of [`Store::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every compare held and every op was applied, at one revision.
    Applied {
        /// The store's revision after the writes (unchanged if they changed nothing).
        revision: u64,
    },
    /// A compare failed; nothing was written.
    Conflict {
        /// The entry of each compared key at that moment, in the order of the compares.
        current: Vec<Option<Entry>>,
    },
}

/// Whether a watched key was set or deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or changed.
    Put,
    /// The key was deleted (explicitly or because its lease ended).
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// For a put, the entry as written; for a delete, the entry as it was just before.
    pub entry: Entry,
    /// The revision of the change (several changes of one transaction share it).
    pub revision: u64,
}

/// A failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage underneath failed.
    #[error("state store backend: {0}")]
    Backend(String),
    /// A stored record does not decode.
    #[error("state store record {what} is unreadable: corrupt file or written by a newer berth")]
    Corrupt {
        /// Which record.
        what: String,
    },
    /// The lease does not exist (never granted, expired or revoked).
    #[error("lease {0} not found: it expired or was revoked; grant a new one")]
    LeaseNotFound(LeaseId),
    /// Keys must not be empty.
    #[error("empty key")]
    EmptyKey,
    /// A transaction writes one key twice.
    #[error("transaction writes key {0:?} more than once")]
    DuplicateKey(String),
    /// The history a watch asked for is gone; list again and watch from the listing.
    #[error("revisions before {oldest} were compacted; list again and watch from the listing's revision")]
    Compacted {
        /// The oldest `from_revision` the store can still serve.
        oldest: u64,
    },
}

/// Store result.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of the changes under a prefix, in revision order. It ends when the store is
/// dropped, or after an error (such as [`StoreError::Compacted`]).
pub struct Watch {
    events: mpsc::Receiver<Result<WatchEvent>>,
}

impl Watch {
    /// A watch fed by `events`, for backends.
    pub fn new(events: mpsc::Receiver<Result<WatchEvent>>) -> Watch {
        Watch { events }
    }

    /// The next change; `None` once the watch has ended.
    pub async fn recv(&mut self) -> Option<Result<WatchEvent>> {
        self.events.recv().await
    }
}

impl futures::Stream for Watch {
    type Item = Result<WatchEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

/// The control plane's key-value state. Every write that changes something gets the next
/// revision; reads, compares and watches are in terms of revisions, as in etcd v3.
#[async_trait]
pub trait Store: Send + Sync {
    /// The entry of `key`.
    async fn get(&self, key: &str) -> Result<Option<Entry>>;

    /// The entries whose key starts with `prefix` (all of them for ""), sorted by key.
    async fn list(&self, prefix: &str) -> Result<Listing>;

    /// The store's current revision.
    async fn revision(&self) -> Result<u64>;

    /// Sets `key` (attached to `lease`, or to none); returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<u64>;

    /// Deletes `key`; whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Deletes every key starting with `prefix`, at one revision; how many there were.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64>;

    /// Writes `value` to `key` (deletes it for `None`) only if `expected` holds.
    async fn cas(
        &self,
        key: &str,
        expected: Expect,
        value: Option<Vec<u8>>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome>;

    /// Applies every op at one revision if every compare holds, nothing otherwise.
    async fn txn(&self, compares: Vec<(String, Expect)>, ops: Vec<Op>) -> Result<TxnOutcome>;

    /// Every change under `prefix` after `from_revision` (after now for `None`), including
    /// changes made after this call, in revision order. If the history since
    /// `from_revision` is gone, the first item is [`StoreError::Compacted`].
    async fn watch(&self, prefix: &str, from_revision: Option<u64>) -> Result<Watch>;

    /// Forgets the changes up to and including `revision` (at most the current one):
    /// watches from before it get [`StoreError::Compacted`]. Local stores also compact on
    /// their own, keeping a bounded number of revisions.
    async fn compact(&self, revision: u64) -> Result<()>;

    /// A new lease that expires `ttl` from now unless kept alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Restarts the lease's ttl from now; returns the ttl.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration>;

    /// Ends the lease now, deleting its keys.
    async fn revoke(&self, lease: LeaseId) -> Result<()>;
}
