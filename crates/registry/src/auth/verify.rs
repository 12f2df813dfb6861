//! bcrypt off the async runtime: password checks run on tokio's blocking threads, at most
//! `threads` at once (the rest wait their turn), so a flood of logins costs other clients
//! at most those cores and never an async worker thread.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Runs bcrypt verifications on a bounded number of blocking threads.
#[derive(Debug)]
pub(crate) struct Verifier {
    slots: Arc<Semaphore>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Verifications run.
    pub(crate) runs: AtomicU64,
    /// Verifications running now.
    pub(crate) running: AtomicUsize,
    /// The most that ever ran at once.
    pub(crate) peak: AtomicUsize,
}

impl Verifier {
    /// At most `threads` verifications at once.
    pub(crate) fn new(threads: usize) -> Verifier {
        Verifier {
            slots: Arc::new(Semaphore::new(threads.max(1))),
            counts: Arc::default(),
        }
    }

    /// Half the cores (at least one): the other half keeps serving during a flood.
    pub(crate) fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    }

    pub(crate) fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Whether `password` matches the bcrypt `hash` (a malformed hash never matches).
    pub(crate) async fn verify(&self, password: String, hash: String) -> bool {
        let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
            return false;
        };
        let counts = Arc::clone(&self.counts);
        let check = tokio::task::spawn_blocking(move || {
            let running = counts.running.fetch_add(1, Ordering::SeqCst) + 1;
            counts.peak.fetch_max(running, Ordering::SeqCst);
            counts.runs.fetch_add(1, Ordering::SeqCst);
            let matches = bcrypt::verify(password, &hash).unwrap_or(false);
            counts.running.fetch_sub(1, Ordering::SeqCst);
            drop(slot);
            matches
        });
        check.await.unwrap_or(false)
    }
}
