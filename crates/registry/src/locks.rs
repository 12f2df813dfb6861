//! Per-digest locks between installing content and garbage collection deleting it.
//!
//! A push installs a blob file and then records it; a collection removes records and then
//! deletes files whose record is gone. Each side holds the lock of the digest's stripe
//! across its two steps, so a collection never deletes a file that a push has just
//! recorded, while pushes of other digests go on. Stripes keep the table small; two digests
//! sharing one only wait for each other briefly.

use berth_oci::Digest;
use tokio::sync::{Mutex, MutexGuard};

const STRIPES: usize = 256;

/// The lock table.
pub struct BlobLocks {
    stripes: Vec<Mutex<()>>,
}

impl Default for BlobLocks {
    fn default() -> BlobLocks {
        BlobLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

/// The stripe a digest belongs to: its first hex byte.
pub fn stripe(digest: &Digest) -> usize {
    usize::from_str_radix(&digest.hex()[..2], 16).unwrap_or(0) % STRIPES
}

impl BlobLocks {
    /// Locks `digest`'s stripe.
    pub async fn lock(&self, digest: &Digest) -> MutexGuard<'_, ()> {
        self.stripes[stripe(digest)].lock().await
    }

    /// Locks stripe number `index`.
    pub async fn lock_stripe(&self, index: usize) -> MutexGuard<'_, ()> {
        self.stripes[index % STRIPES].lock().await
    }
}
