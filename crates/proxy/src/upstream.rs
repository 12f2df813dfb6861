//! Upstreams: requests in flight per address, passive health, and draining.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::uri::Authority;
use tokio::sync::Notify;

/// The shared state of one upstream address, whichever routes and tables name it.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `addr` as a URI authority, made once.
    pub authority: Authority,
    in_flight: AtomicUsize,
    /// Set when the current table no longer names it: a request that picked it from an
    /// older table then goes elsewhere.
    removed: AtomicBool,
    /// Until when (ms since the registry's epoch) it counts as failed.
    failed_until: AtomicU64,
    idle: Notify,
}

impl Upstream {
    fn new(addr: SocketAddr) -> Result<Self, http::uri::InvalidUri> {
        Ok(Self {
            addr,
            authority: Authority::try_from(addr.to_string().as_str())?,
            in_flight: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
            failed_until: AtomicU64::new(0),
            idle: Notify::new(),
        })
    }

    /// Requests in flight to it now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Whether it refused a connection recently.
    pub fn is_failed(&self, now_ms: u64) -> bool {
        self.failed_until.load(Ordering::Relaxed) > now_ms
    }

    /// Counts a request to it until the guard is dropped; None when the table no longer
    /// names it (the caller picks again from the current table).
    pub fn begin(self: &Arc<Self>) -> Option<InFlight> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(Arc::clone(self));
        // Checked after the increment: a drain that saw 0 started after the table swap
        // that set `removed`, so this request backs off and the drain's 0 stays true.
        if self.removed.load(Ordering::SeqCst) {
            return None;
        }
        Some(guard)
    }
}

/// One request in flight to an upstream; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<Upstream>);

impl InFlight {
    /// The upstream's address.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// The upstream.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainResult {
    /// No request is in flight to the upstream any more.
    Drained,
    /// The timeout passed with requests still in flight.
    TimedOut {
        /// Requests still in flight when it gave up.
        in_flight: usize,
    },
}

/// The upstreams of a new table, and those it drops.
#[derive(Debug)]
pub struct Resolved {
    /// Every upstream the new table names.
    pub live: HashMap<SocketAddr, Arc<Upstream>>,
    /// Upstreams known before that the new table does not name.
    pub gone: Vec<Arc<Upstream>>,
}

impl Resolved {
    /// Marks which upstreams the table names, once it is live.
    pub fn mark(&self) {
        for upstream in self.live.values() {
            upstream.removed.store(false, Ordering::SeqCst);
        }
        for upstream in &self.gone {
            upstream.removed.store(true, Ordering::SeqCst);
        }
    }
}

/// Every upstream that a table names or that has requests in flight.
#[derive(Debug)]
pub struct Registry {
    epoch: Instant,
    upstreams: Mutex<HashMap<SocketAddr, Weak<Upstream>>>,
    fail_for: Duration,
}

impl Registry {
    /// An empty registry; upstreams that refuse a connection count as failed for `fail_for`.
    pub fn new(fail_for: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            upstreams: Mutex::new(HashMap::new()),
            fail_for,
        }
    }

    /// Milliseconds since the registry was made.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Marks an upstream as failed for a while.
    pub fn mark_failed(&self, upstream: &Upstream) {
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(self.fail_for.as_millis()).unwrap_or(u64::MAX));
        upstream.failed_until.store(until, Ordering::Relaxed);
    }

    /// The shared states of `addrs` for a new table, and the states of upstreams the
    /// previous table named that the new one does not (to mark removed once it is live).
    pub fn resolve(&self, addrs: &[SocketAddr]) -> Result<Resolved, http::uri::InvalidUri> {
        let mut map = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        let mut live = HashMap::new();
        for addr in addrs {
            if live.contains_key(addr) {
                continue;
            }
            let existing = map.get(addr).and_then(Weak::upgrade);
            let upstream = match existing {
                Some(u) => u,
                None => {
                    let u = Arc::new(Upstream::new(*addr)?);
                    map.insert(*addr, Arc::downgrade(&u));
                    u
                }
            };
            live.insert(*addr, upstream);
        }
        let gone = map
            .iter()
            .filter(|(addr, _)| !live.contains_key(addr))
            .filter_map(|(_, weak)| weak.upgrade())
            .collect();
        map.retain(|_, weak| weak.strong_count() > 0);
        Ok(Resolved { live, gone })
    }

    /// The state of `addr`, if any table or request still holds it.
    pub fn get(&self, addr: SocketAddr) -> Option<Arc<Upstream>> {
        let map = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&addr).and_then(Weak::upgrade)
    }

    /// Requests in flight to `addr`.
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        self.get(addr).map_or(0, |u| u.in_flight())
    }

    /// Waits until `addr` has no request in flight, or `timeout` passes.
    pub async fn drain(&self, addr: SocketAddr, timeout: Duration) -> DrainResult {
        let Some(upstream) = self.get(addr) else {
            return DrainResult::Drained;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = upstream.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let in_flight = upstream.in_flight();
            if in_flight == 0 {
                return DrainResult::Drained;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                let in_flight = upstream.in_flight();
                return if in_flight == 0 {
                    DrainResult::Drained
                } else {
                    DrainResult::TimedOut { in_flight }
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn a_removed_upstream_refuses_new_requests_and_drains() {
        let registry = Arc::new(Registry::new(Duration::from_secs(1)));
        let first = registry.resolve(&[addr(1), addr(2)]).unwrap();
        first.mark();
        let old = Arc::clone(&first.live[&addr(1)]);
        let in_flight = old.begin().unwrap();
        assert_eq!(registry.in_flight(addr(1)), 1);

        let second = registry.resolve(&[addr(2)]).unwrap();
        assert_eq!(second.gone.len(), 1);
        second.mark();
        // A request that picked it from the old table backs off.
        assert!(old.begin().is_none());
        assert_eq!(registry.in_flight(addr(1)), 1);

        let drain = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move { registry.drain(addr(1), Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        assert!(!drain.is_finished());
        drop(in_flight);
        assert_eq!(drain.await.unwrap(), DrainResult::Drained);
        assert_eq!(
            registry.drain(addr(9), Duration::from_millis(1)).await,
            DrainResult::Drained
        );
    }

    #[test]
    fn a_failed_mark_expires() {
        let registry = Registry::new(Duration::from_millis(100));
        let resolved = registry.resolve(&[addr(1)]).unwrap();
        let upstream = &resolved.live[&addr(1)];
        let now = registry.now_ms();
        assert!(!upstream.is_failed(now));
        registry.mark_failed(upstream);
        assert!(upstream.is_failed(now));
        assert!(!upstream.is_failed(now + 1000));
    }
}
