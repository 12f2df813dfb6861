//! Admission and eviction: which connections a listener keeps when clients ask for more than
//! its [`Limits`] allow, and when a kept connection has been slow or idle for too long.
//!
//! Every accepted connection gets a [`Permit`] from [`Limiter::admit`] and counts against the
//! global and its client's cap until the last clone of the permit is dropped (the serving
//! task holds one; the connection's I/O holds another, so an upgraded connection keeps
//! counting after its HTTP handling ended). When a cap is full, the newcomer does not simply
//! lose: the oldest connection that has not completed a request head yet (a slow client, a
//! TLS handshake that never ends) is closed to make room, then the keep-alive connection
//! idle the longest; only when every connection is busy is the newcomer refused. A flood of
//! slow clients thus evicts itself, oldest first, and a client that sends its request at
//! once gets through.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::limits::Limits;

/// A keep-alive connection must have been idle this long before it is closed to make room.
const MIN_IDLE_TO_EVICT: Duration = Duration::from_secs(1);

/// At most one warning about a full listener per this interval.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The client a connection counts against: its IPv4 address, or the /64 of its IPv6 address
/// (one host usually holds a whole /64). IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of a client at `ip`.
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let mut segments = v6.segments();
                    segments[4..].fill(0);
                    ClientKey(IpAddr::V6(segments.into()))
                }
            },
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Its client already holds its cap of connections, all of them busy.
    #[error("the client already holds its maximum of connections, all busy")]
    Client,
    /// The listener holds its cap of connections, all of them busy.
    #[error("the listener holds its maximum of connections, all busy")]
    Full,
}

/// Why a connection must be closed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// It did not complete its TLS handshake and first request head in time.
    HeaderTimeout,
    /// It had no request in flight for the idle timeout.
    IdleTimeout,
    /// It was closed to make room for a newcomer.
    Evicted,
}

/// Counters of one limiter since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections open now.
    pub open: usize,
    /// Connections admitted.
    pub accepted: u64,
    /// Connections refused (their client's or the listener's cap full of busy connections).
    pub refused: u64,
    /// Connections closed to make room for newcomers.
    pub evicted: u64,
    /// Connections closed for not completing their handshake and request head in time.
    pub header_timeouts: u64,
    /// Connections closed after the idle timeout.
    pub idle_timeouts: u64,
}

/// Admits connections within [`Limits`]; cheap to clone, every clone shares the same counts
/// (one limiter for all listeners of a component, and all worker threads).
#[derive(Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.shared.name)
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

struct Shared {
    /// The component, for logs.
    name: &'static str,
    limits: Limits,
    epoch: Instant,
    state: Mutex<State>,
    counters: Counters,
    /// When the last warning was logged (ms since `epoch`, plus one; 0: never).
    warned_at: AtomicU64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
    header_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Connections that count (admitted, neither evicted nor closed).
    open: usize,
    next_id: u64,
    clients: HashMap<ClientKey, Client>,
    /// Connections in the order they were admitted, until they complete a request head:
    /// the candidates for eviction, oldest first. Entries that no longer qualify are
    /// skipped when met and swept when they outnumber the open connections.
    fresh: VecDeque<Arc<Conn>>,
    /// Every connection whose permit is alive, for the search of the longest idle one.
    live: HashMap<u64, Arc<Conn>>,
}

#[derive(Default)]
struct Client {
    open: usize,
    /// This client's connections in admission order (as [`State::fresh`]).
    fresh: VecDeque<Arc<Conn>>,
}

/// What the limiter and the connection's tasks share about one connection.
struct Conn {
    id: u64,
    client: ClientKey,
    epoch: Instant,
    /// When it was admitted (ms since `epoch`).
    admitted: u64,
    /// When its last request ended (ms since `epoch`).
    idle_since: AtomicU64,
    in_flight: AtomicUsize,
    /// Whether a complete request head arrived (then it is no longer a slow client).
    head_seen: AtomicBool,
    /// It no longer counts against the caps (evicted or closed). Written under the lock.
    released: AtomicBool,
    /// It was chosen to make room: its task must close it.
    evicted: AtomicBool,
    wake: Notify,
}

impl Conn {
    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// Still a candidate for eviction as a slow client.
    fn is_fresh(&self) -> bool {
        !self.released.load(Ordering::Relaxed) && !self.head_seen.load(Ordering::Relaxed)
    }

    /// `Err` when it must close now; `Ok(wait)` when to look again. Requests start and end
    /// without waking the watcher, so `wait` is never longer than the idle timeout: a
    /// request that ends during the wait makes the connection idle no earlier than one
    /// idle timeout after the wait began, and the next look finds the exact deadline.
    fn verdict(&self, limits: &Limits, now: u64) -> Result<Duration, Expiry> {
        if !self.head_seen.load(Ordering::Acquire) {
            let deadline = self.admitted.saturating_add(millis(limits.header_timeout));
            return match deadline.checked_sub(now) {
                Some(left) if left > 0 => Ok(Duration::from_millis(left).min(limits.idle_timeout)),
                _ => Err(Expiry::HeaderTimeout),
            };
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Ok(limits.idle_timeout);
        }
        let deadline = self
            .idle_since
            .load(Ordering::Relaxed)
            .saturating_add(millis(limits.idle_timeout));
        match deadline.checked_sub(now) {
            Some(left) if left > 0 => Ok(Duration::from_millis(left)),
            _ => Err(Expiry::IdleTimeout),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Limiter {
    /// A limiter for the component `name` (used in logs).
    pub fn new(name: &'static str, limits: Limits) -> Limiter {
        Limiter {
            shared: Arc::new(Shared {
                name,
                limits,
                epoch: Instant::now(),
                state: Mutex::default(),
                counters: Counters::default(),
                warned_at: AtomicU64::new(0),
            }),
        }
    }

    /// Its limits.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Its counters now.
    pub fn stats(&self) -> Stats {
        let counters = &self.shared.counters;
        Stats {
            open: self.shared.lock().open,
            accepted: counters.accepted.load(Ordering::Relaxed),
            refused: counters.refused.load(Ordering::Relaxed),
            evicted: counters.evicted.load(Ordering::Relaxed),
            header_timeouts: counters.header_timeouts.load(Ordering::Relaxed),
            idle_timeouts: counters.idle_timeouts.load(Ordering::Relaxed),
        }
    }

    /// Admits a connection from `peer`, closing an older slow or idle one when a cap is full
    /// (see the module's documentation).
    pub fn admit(&self, peer: SocketAddr) -> Result<Permit, Refused> {
        let shared = &self.shared;
        let limits = shared.limits;
        let client = ClientKey::of(peer.ip());
        let mut state = shared.lock();
        let client_open = state.clients.get(&client).map_or(0, |c| c.open);
        if client_open >= limits.max_connections_per_client {
            let victim = state
                .clients
                .get_mut(&client)
                .and_then(|c| pop_fresh(&mut c.fresh));
            match victim {
                Some(victim) => shared.evict(&mut state, &victim),
                None => {
                    let open = state.open;
                    drop(state);
                    shared.refused(Refused::Client, client, open);
                    return Err(Refused::Client);
                }
            }
        }
        if state.open >= limits.max_connections {
            let victim = pop_fresh(&mut state.fresh)
                .or_else(|| longest_idle(&state, shared.now(), millis(MIN_IDLE_TO_EVICT)));
            match victim {
                Some(victim) => shared.evict(&mut state, &victim),
                None => {
                    let open = state.open;
                    drop(state);
                    shared.refused(Refused::Full, client, open);
                    return Err(Refused::Full);
                }
            }
        }
        let id = state.next_id;
        state.next_id += 1;
        let now = shared.now();
        let conn = Arc::new(Conn {
            id,
            client,
            epoch: shared.epoch,
            admitted: now,
            idle_since: AtomicU64::new(now),
            in_flight: AtomicUsize::new(0),
            head_seen: AtomicBool::new(false),
            released: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        });
        state.open += 1;
        let open = state.open;
        let entry = state.clients.entry(client).or_default();
        entry.open += 1;
        entry.fresh.push_back(Arc::clone(&conn));
        if entry.fresh.len() > 2 * entry.open + 8 {
            entry.fresh.retain(|c| c.is_fresh());
        }
        state.fresh.push_back(Arc::clone(&conn));
        if state.fresh.len() > 2 * open + 64 {
            state.fresh.retain(|c| c.is_fresh());
        }
        state.live.insert(id, Arc::clone(&conn));
        drop(state);
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            inner: Arc::new(PermitInner {
                conn,
                shared: Arc::clone(shared),
            }),
        })
    }

    /// Closes the oldest connection still without a request head (or else the one idle the
    /// longest) although no cap is full: for when the process runs out of file descriptors.
    /// Whether one was found.
    pub fn shed_one(&self) -> bool {
        let shared = &self.shared;
        let mut state = shared.lock();
        let victim = pop_fresh(&mut state.fresh)
            .or_else(|| longest_idle(&state, shared.now(), millis(MIN_IDLE_TO_EVICT)));
        match victim {
            Some(victim) => {
                shared.evict(&mut state, &victim);
                true
            }
            None => false,
        }
    }
}

impl Limiter {
    /// Logs (at most once per [`WARNING_INTERVAL`]) that accepting failed.
    pub(crate) fn warn_accept_error(&self, error: &std::io::Error, shed: bool) {
        let shared = &self.shared;
        let open = shared.lock().open;
        shared.warn(open, |(open, evicted, refused)| {
            tracing::warn!(
                listener = shared.name,
                %error,
                closed_a_slow_connection = shed,
                open,
                evicted,
                refused,
                "cannot accept connections"
            );
        });
    }
}

/// The oldest entry of `queue` that is still a slow client, removed from it.
fn pop_fresh(queue: &mut VecDeque<Arc<Conn>>) -> Option<Arc<Conn>> {
    while let Some(conn) = queue.pop_front() {
        if conn.is_fresh() {
            return Some(conn);
        }
    }
    None
}

/// The keep-alive connection idle the longest, if one has been idle for `at_least` ms.
fn longest_idle(state: &State, now: u64, at_least: u64) -> Option<Arc<Conn>> {
    state
        .live
        .values()
        .filter(|c| {
            !c.released.load(Ordering::Relaxed)
                && c.head_seen.load(Ordering::Relaxed)
                && c.in_flight.load(Ordering::Acquire) == 0
        })
        .map(|c| (now.saturating_sub(c.idle_since.load(Ordering::Relaxed)), c))
        .filter(|(idle, _)| *idle >= at_least)
        .max_by_key(|(idle, c)| (*idle, std::cmp::Reverse(c.id)))
        .map(|(_, c)| Arc::clone(c))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// Stops counting `conn` and tells its task to close it.
    fn evict(&self, state: &mut State, conn: &Arc<Conn>) {
        state.release(conn);
        conn.evicted.store(true, Ordering::Release);
        conn.wake.notify_one();
        self.counters.evicted.fetch_add(1, Ordering::Relaxed);
        self.warn(state.open, |(open, evicted, refused)| {
            tracing::warn!(
                listener = self.name,
                open,
                evicted,
                refused,
                "connection limit reached: closing the oldest connections that have not sent a request"
            );
        });
    }

    fn refused(&self, why: Refused, client: ClientKey, open: usize) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        self.warn(open, |(open, evicted, refused)| {
            tracing::warn!(
                listener = self.name,
                %client,
                reason = %why,
                open,
                evicted,
                refused,
                "connection refused: every connection is busy"
            );
        });
    }

    /// Calls `log` with (`open`, evicted, refused) at most once per [`WARNING_INTERVAL`], so
    /// that a flood does not flood the log too.
    fn warn(&self, open: usize, log: impl FnOnce((usize, u64, u64))) {
        let now = self.now().saturating_add(1);
        let last = self.warned_at.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < millis(WARNING_INTERVAL) {
            return;
        }
        if self
            .warned_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        log((
            open,
            self.counters.evicted.load(Ordering::Relaxed),
            self.counters.refused.load(Ordering::Relaxed),
        ));
    }
}

impl State {
    /// `conn` no longer counts against the caps.
    fn release(&mut self, conn: &Conn) {
        if conn.released.swap(true, Ordering::Relaxed) {
            return;
        }
        self.open = self.open.saturating_sub(1);
        if let Some(client) = self.clients.get_mut(&conn.client) {
            client.open = client.open.saturating_sub(1);
            if client.open == 0 {
                self.clients.remove(&conn.client);
            }
        }
    }
}

/// A connection's place within the limits: it counts until the last clone is dropped.
/// [`Permit::request`] marks requests in flight; [`Permit::expired`] says when the
/// connection must be closed.
#[derive(Clone)]
pub struct Permit {
    inner: Arc<PermitInner>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("client", &self.inner.conn.client)
            .field("id", &self.inner.conn.id)
            .finish_non_exhaustive()
    }
}

struct PermitInner {
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl Drop for PermitInner {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.release(&self.conn);
        state.live.remove(&self.conn.id);
    }
}

impl Permit {
    /// The client this connection counts against.
    pub fn client(&self) -> ClientKey {
        self.inner.conn.client
    }

    /// A request whose head is complete: from now on the connection is no longer a slow
    /// client, and it is not idle until the returned guard (and every other) is dropped.
    /// Hold it until the response has been sent completely.
    pub fn request(&self) -> InFlight {
        let conn = &self.inner.conn;
        if !conn.head_seen.load(Ordering::Relaxed) {
            conn.head_seen.store(true, Ordering::Release);
        }
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            conn: Arc::clone(conn),
            until_closed: false,
        }
    }

    /// Completes when the connection must be closed: its header timeout passed without a
    /// request head, its idle timeout passed with no request in flight, or it was evicted.
    /// Cancel-safe; meant to be raced against serving the connection.
    pub async fn expired(&self) -> Expiry {
        let conn = &self.inner.conn;
        let shared = &self.inner.shared;
        loop {
            if conn.evicted.load(Ordering::Acquire) {
                return Expiry::Evicted;
            }
            let wait = match conn.verdict(&shared.limits, conn.now()) {
                Ok(wait) => wait,
                Err(expiry) => {
                    let counter = match expiry {
                        Expiry::HeaderTimeout => &shared.counters.header_timeouts,
                        Expiry::IdleTimeout => &shared.counters.idle_timeouts,
                        Expiry::Evicted => &shared.counters.evicted,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return expiry;
                }
            };
            tokio::select! {
                () = conn.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// A request in flight on a connection (see [`Permit::request`]).
#[derive(Debug)]
pub struct InFlight {
    conn: Arc<Conn>,
    /// The connection stays busy until it closes (it was upgraded).
    until_closed: bool,
}

impl InFlight {
    /// Keeps the connection busy until it closes, for a request that took the connection
    /// over (an HTTP upgrade: a WebSocket): such a connection is never idle, and never
    /// closed to make room.
    pub fn hold_until_closed(mut self) {
        self.until_closed = true;
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.until_closed {
            return;
        }
        // The idle time is written before the count drops, so that whoever sees no request
        // in flight also sees when the last one ended.
        self.conn
            .idle_since
            .fetch_max(self.conn.now(), Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
