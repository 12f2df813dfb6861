//! Per-digest locks between installing content and garbage collection deleting it.
//!
//! A push installs a blob file and then records it; a collection removes records and then
//! deletes files whose record is gone. Each side holds the lock of the digest's stripe
//! across its two steps, so a collection never deletes a file that a push has just
//! recorded, while pushes of other digests go on. Stripes keep the table small; two digests
//! sharing one only wait for each other briefly.

use std::sync::atomic::{AtomicUsize, Ordering};

use berth_oci::Digest;
use tokio::sync::{Mutex, MutexGuard};

const STRIPES: usize = 256;

/// The lock table.
pub struct BlobLocks {
    stripes: Vec<Mutex<()>>,
    /// Pushes holding or waiting for a lock right now.
    installing: AtomicUsize,
}

/// A push's hold on its digest's stripe.
pub struct Installing<'a> {
    _guard: MutexGuard<'a, ()>,
    _counted: Counted<'a>,
}

/// One push counted in `installing`, also while it waits for the lock (and uncounted if
/// the wait is cancelled).
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicUsize) -> Counted<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for BlobLocks {
    fn default() -> BlobLocks {
        BlobLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            installing: AtomicUsize::new(0),
        }
    }
}

/// The stripe a digest belongs to: its first hex byte.
pub fn stripe(digest: &Digest) -> usize {
    usize::from_str_radix(&digest.hex()[..2], 16).unwrap_or(0) % STRIPES
}

impl BlobLocks {
    /// Locks `digest`'s stripe for a push installing and recording content.
    pub async fn lock(&self, digest: &Digest) -> Installing<'_> {
        let counted = Counted::new(&self.installing);
        Installing {
            _guard: self.stripes[stripe(digest)].lock().await,
            _counted: counted,
        }
    }

    /// Whether pushes are installing content right now.
    pub fn pushes_active(&self) -> bool {
        self.installing.load(Ordering::Relaxed) > 0
    }

    /// Locks stripe number `index` (garbage collection).
    pub async fn lock_stripe(&self, index: usize) -> MutexGuard<'_, ()> {
        self.stripes[index % STRIPES].lock().await
    }
}
