//! bcrypt off the async runtime: password checks run on tokio's blocking threads, at most
//! `threads` at once, so a flood of logins costs other clients at most those cores and never
//! an async worker thread. At most [`WAITING_PER_THREAD`] checks per thread wait their turn;
//! beyond, a check is refused at once (the client is told to retry) rather than queued for
//! longer than a few seconds behind a crowd of guesses.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Checks that may wait for a thread, per thread (at bcrypt's default cost, about 4 s of
/// work).
pub(crate) const WAITING_PER_THREAD: usize = 16;

/// Too many checks are waiting already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Busy;

/// Runs bcrypt verifications on a bounded number of blocking threads.
#[derive(Debug)]
pub(crate) struct Verifier {
    slots: Arc<Semaphore>,
    max_waiting: usize,
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
    /// Verifications waiting for a thread now.
    pub(crate) waiting: AtomicUsize,
}

impl Verifier {
    /// At most `threads` verifications at once, and `threads * WAITING_PER_THREAD` waiting.
    pub(crate) fn new(threads: usize) -> Verifier {
        Verifier::with_queue(threads, threads.max(1) * WAITING_PER_THREAD)
    }

    /// At most `threads` verifications at once, and `max_waiting` waiting.
    pub(crate) fn with_queue(threads: usize, max_waiting: usize) -> Verifier {
        Verifier {
            slots: Arc::new(Semaphore::new(threads.max(1))),
            max_waiting,
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

    /// Whether `password` matches the bcrypt `hash` (a malformed hash never matches), or
    /// [`Busy`] when too many checks wait already.
    pub(crate) async fn verify(&self, password: String, hash: String) -> Result<bool, Busy> {
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let waiting = self.counts.waiting.fetch_add(1, Ordering::SeqCst);
                let _leave = Leave(&self.counts.waiting);
                if waiting >= self.max_waiting {
                    return Err(Busy);
                }
                match Arc::clone(&self.slots).acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => return Ok(false),
                }
            }
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
        Ok(check.await.unwrap_or(false))
    }
}

/// Decrements a counter when dropped (also when the waiting request is cancelled).
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// With one thread busy and its queue full, the next check is refused at once instead
    /// of waiting; when the queue drains, checks are taken again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_checks_instead_of_growing() {
        let hash = bcrypt::hash("pw", 8).unwrap();
        let verifier = Arc::new(Verifier::with_queue(1, 2));
        let spawn = |password: &str| {
            let (verifier, password, hash) =
                (Arc::clone(&verifier), password.to_owned(), hash.clone());
            tokio::spawn(async move { verifier.verify(password, hash).await })
        };
        let until = |what: fn(&Counts) -> bool| {
            let verifier = Arc::clone(&verifier);
            async move {
                while !what(verifier.counts()) {
                    tokio::task::yield_now().await;
                }
            }
        };
        let running = spawn("pw");
        until(|c| c.runs.load(Ordering::SeqCst) == 1).await;
        let queued = [spawn("pw"), spawn("nope")];
        until(|c| c.waiting.load(Ordering::SeqCst) == 2).await;
        assert_eq!(verifier.verify("pw".into(), hash.clone()).await, Err(Busy));
        assert_eq!(running.await.unwrap(), Ok(true));
        let [a, b] = queued;
        assert_eq!(a.await.unwrap(), Ok(true));
        assert_eq!(b.await.unwrap(), Ok(false));
        assert_eq!(verifier.counts().waiting.load(Ordering::SeqCst), 0);
        assert_eq!(verifier.verify("pw".into(), hash).await, Ok(true));
    }
}
