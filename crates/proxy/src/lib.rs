//! berth's L7 reverse proxy.
//!
//! A [`Proxy`] listens on HTTP and HTTPS addresses and sends each request to an upstream
//! chosen from a route table that the controller replaces at run time
//! ([`Proxy::set_routes`]): by Host and longest path prefix to a route, by weight to a group
//! (one release), by the route's balance to an upstream. Upstreams that leave the table are
//! drained ([`Proxy::drain`]); per-route and per-group counters ([`Proxy::metrics`],
//! [`Proxy::window`]) let the controller compare a new release against the old one.
//! See `docs/proxy.md`.

mod body;
mod forward;
mod metrics;
mod route;
mod tls;
mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_listen::http::{Connection, HttpServer};
use berth_listen::{Limiter, Limits};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

pub use body::ProxyBody;
pub use metrics::{
    MetricsSnapshot, PrometheusCollector, StatsSnapshot, WindowStats, BUCKETS as LATENCY_BUCKETS,
};
pub use route::{Balance, Group, Route, RouteError};
pub use tls::{CertSpec, TlsError};
pub use upstream::DrainResult;

use forward::{Shared, UpstreamClient};
use metrics::MetricsRegistry;
use route::{LiveGroup, LiveRoute, Table};
use upstream::Registry;

/// How the proxy listens and talks to upstreams.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Plain HTTP listeners (port 0 picks a free port; see [`Proxy::http_addrs`]).
    pub http: Vec<SocketAddr>,
    /// HTTPS listeners; they need at least one certificate in `certs`.
    pub https: Vec<SocketAddr>,
    /// Certificates chosen by SNI; the first is the default.
    pub certs: Vec<CertSpec>,
    /// How long a connection to an upstream may take before it counts as failed.
    pub connect_timeout: Duration,
    /// How many other upstreams a safe request tries after a connect failure.
    pub retries: usize,
    /// How long an upstream that refused a connection is avoided.
    pub fail_for: Duration,
    /// How long an idle pooled connection to an upstream is kept.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per upstream.
    pub pool_max_idle_per_upstream: usize,
    /// After shutdown is asked, how long open client connections get to finish.
    pub shutdown_timeout: Duration,
    /// 0: serve on the tokio runtime that calls [`Proxy::serve`]. N: serve on N threads of
    /// its own, each a single-threaded runtime with its own listening sockets
    /// (`SO_REUSEPORT`, the kernel spreads connections) and its own upstream connection
    /// pool, as nginx's worker processes do; this scales with cores without handing
    /// requests between threads.
    pub workers: usize,
    /// Client connections: the caps (shared by every listener and worker), the time a new
    /// connection has for its TLS handshake and first request head, and how long a
    /// connection with no request in flight stays open (see `berth_listen`).
    pub limits: Limits,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            http: Vec::new(),
            https: Vec::new(),
            certs: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            retries: 2,
            fail_for: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_upstream: 256,
            shutdown_timeout: Duration::from_secs(30),
            workers: 0,
            limits: Limits::PROXY,
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration has no listener.
    #[error("the proxy has no listener: give at least one http or https address")]
    NoListener,
    /// The TLS configuration is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A worker thread or its runtime could not be started.
    #[error("cannot start a proxy worker: {0}")]
    Runtime(std::io::Error),
    /// `serve` was called a second time.
    #[error("the proxy is already serving")]
    AlreadyServing,
    /// The connection limits are unusable.
    #[error("proxy connection limits: {0}")]
    Limits(#[from] berth_listen::LimitsError),
}

/// A bound listening socket, handed to the runtime that serves it.
struct Listener {
    socket: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// What one worker serves requests with.
struct Worker {
    shared: Arc<Shared>,
    client: UpstreamClient,
}

/// Settings of the pooled client to upstreams; each worker makes its own client.
#[derive(Clone, Copy, Debug)]
struct ClientSettings {
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    pool_max_idle_per_upstream: usize,
}

impl ClientSettings {
    fn client(self) -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.enforce_http(true);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_upstream)
            .pool_timer(TokioTimer::new())
            .build(connector)
    }
}

/// Binds `copies` listening sockets on `addr` (one per worker, sharing the port with
/// `SO_REUSEPORT` when more than one; port 0 is resolved by the first).
fn listen(addr: SocketAddr, copies: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut bound = addr;
    let mut sockets = Vec::with_capacity(copies);
    for _ in 0..copies {
        let socket = if bound.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if copies > 1 {
            socket.set_reuseport(true)?;
        }
        socket.bind(bound)?;
        let listener = socket.listen(1024)?;
        bound = listener.local_addr()?;
        sockets.push(listener.into_std()?);
    }
    Ok(sockets)
}

/// The proxy: cheap to clone; every clone drives the same listeners and table.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    http_addrs: Arc<[SocketAddr]>,
    https_addrs: Arc<[SocketAddr]>,
    /// The listening sockets of each worker, until `serve` takes them.
    listeners: Arc<Mutex<Option<Vec<Vec<Listener>>>>>,
    client: ClientSettings,
    workers: usize,
    /// Serializes table changes, so that which upstreams count as removed matches the
    /// table that is live.
    updating: Arc<Mutex<()>>,
    shutdown_timeout: Duration,
    limiter: Limiter,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("http", &self.http_addrs)
            .field("https", &self.https_addrs)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Binds every listener (so that [`Proxy::http_addrs`] knows the ports) with an empty
    /// route table; [`Proxy::serve`] then accepts connections.
    pub async fn bind(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        if config.http.is_empty() && config.https.is_empty() {
            return Err(ProxyError::NoListener);
        }
        config.limits.validate()?;
        let acceptor = if config.https.is_empty() {
            None
        } else {
            Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                &config.certs,
            )?))
        };
        let copies = config.workers.max(1);
        let mut listeners: Vec<Vec<Listener>> = (0..copies).map(|_| Vec::new()).collect();
        let mut http_addrs = Vec::new();
        let mut https_addrs = Vec::new();
        let plain = config.http.iter().map(|a| (*a, None));
        let secure = config.https.iter().map(|a| (*a, acceptor.clone()));
        for (addr, tls) in plain.chain(secure) {
            let sockets =
                listen(addr, copies).map_err(|source| ProxyError::Bind { addr, source })?;
            let bound = sockets
                .first()
                .map(std::net::TcpListener::local_addr)
                .transpose()
                .map_err(|source| ProxyError::Bind { addr, source })?
                .unwrap_or(addr);
            if tls.is_some() {
                https_addrs.push(bound);
            } else {
                http_addrs.push(bound);
            }
            for (worker, socket) in listeners.iter_mut().zip(sockets) {
                worker.push(Listener {
                    socket,
                    tls: tls.clone(),
                });
            }
        }
        let shared = Shared {
            routes: arc_swap::ArcSwap::from_pointee(Table::default()),
            upstreams: Registry::new(config.fail_for),
            metrics: Arc::new(MetricsRegistry::default()),
            retries: config.retries,
        };
        Ok(Proxy {
            shared: Arc::new(shared),
            http_addrs: http_addrs.into(),
            https_addrs: https_addrs.into(),
            listeners: Arc::new(Mutex::new(Some(listeners))),
            client: ClientSettings {
                connect_timeout: config.connect_timeout,
                pool_idle_timeout: config.pool_idle_timeout,
                pool_max_idle_per_upstream: config.pool_max_idle_per_upstream,
            },
            workers: config.workers,
            updating: Arc::new(Mutex::new(())),
            shutdown_timeout: config.shutdown_timeout,
            limiter: Limiter::new("proxy", config.limits),
        })
    }

    /// The limiter of client connections (caps, timeouts and counters).
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The bound plain HTTP addresses, in configuration order.
    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http_addrs
    }

    /// The bound HTTPS addresses, in configuration order.
    pub fn https_addrs(&self) -> &[SocketAddr] {
        &self.https_addrs
    }

    /// Replaces the route table at once: requests that started keep their upstream,
    /// new ones use the new table. Counters are kept by route name and group label for the
    /// routes and groups of this table and the previous one. Upstreams the new table no longer names get no new
    /// requests; wait for their last ones with [`Proxy::drain`]. A bad table is refused
    /// whole and the old one stays.
    pub fn set_routes(&self, routes: Vec<Route>) -> Result<(), RouteError> {
        let routes = route::validate(routes)?;
        let _updating = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let addrs: Vec<SocketAddr> = routes
            .iter()
            .flat_map(|r| r.groups.iter().flat_map(|g| g.upstreams.iter().copied()))
            .collect();
        let resolved = self
            .shared
            .upstreams
            .resolve(&addrs)
            .map_err(|error| RouteError::BadUpstream(error.to_string()))?;
        let metrics = &self.shared.metrics;
        let table = Table::new(
            routes.clone(),
            routes
                .into_iter()
                .map(|r| {
                    let groups = r
                        .groups
                        .iter()
                        .map(|g| {
                            let upstreams = g
                                .upstreams
                                .iter()
                                .filter_map(|a| resolved.live.get(a).cloned())
                                .collect();
                            let stats = metrics.group(&r.name, &g.label);
                            LiveGroup::new(&g.label, g.weight, upstreams, stats)
                        })
                        .collect();
                    let live_route = LiveRoute::new(
                        &r.name,
                        r.path_prefix,
                        r.balance,
                        groups,
                        metrics.route(&r.name),
                    );
                    (r.host, live_route)
                })
                .collect(),
        );
        // Counters of the previous table and of this one stay (a promoted release's old
        // group can still be compared once); anything older is forgotten.
        let mut keep: std::collections::HashSet<_> = table.metric_keys().collect();
        let previous = self.shared.routes.swap(Arc::new(table));
        resolved.mark();
        keep.extend(previous.metric_keys());
        metrics.retain(&keep);
        Ok(())
    }

    /// The live route table, as given to [`Proxy::set_routes`] with hosts lower-cased and
    /// trailing slashes of prefixes removed.
    pub fn routes(&self) -> Vec<Route> {
        self.shared.routes.load().routes.clone()
    }

    /// Waits until no request is in flight to `addr` (resolves at once when none is), or
    /// until `timeout` passes, saying how many were left. Call it after a
    /// [`Proxy::set_routes`] that removed `addr`; while the table still names it, new
    /// requests keep arriving.
    pub fn drain(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> impl Future<Output = DrainResult> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        async move { shared.upstreams.drain(addr, timeout).await }
    }

    /// Requests in flight to `addr` now (responses still streaming and upgraded
    /// connections included).
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        self.shared.upstreams.in_flight(addr)
    }

    /// Every route's and group's counters now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// What group `group` of route `route` did since `baseline` (an earlier
    /// [`Proxy::metrics`]): requests, 5xx responses and p99 latency. None when the group
    /// has never been in a table.
    pub fn window(
        &self,
        route: &str,
        group: &str,
        baseline: &MetricsSnapshot,
    ) -> Option<WindowStats> {
        let now = self.metrics();
        let current = now.group(route, group)?;
        let empty = StatsSnapshot::default();
        let earlier = baseline.group(route, group).unwrap_or(&empty);
        Some(current.since(earlier))
    }

    /// A collector to register in a `prometheus_client` registry: `berth_proxy_*`
    /// counters and latency histograms per route and group.
    pub fn prometheus_collector(&self) -> PrometheusCollector {
        PrometheusCollector(Arc::clone(&self.shared.metrics))
    }

    /// Accepts connections on every listener until `shutdown` completes, then stops
    /// accepting and gives open connections `shutdown_timeout` to finish their requests.
    /// With `workers` above 0 the work happens on the proxy's own threads and this future
    /// only waits.
    pub async fn serve(&self, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
        let workers = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or(ProxyError::AlreadyServing)?;
        let stop = CancellationToken::new();
        let grace = self.shutdown_timeout;
        if self.workers == 0 {
            let worker = Arc::new(Worker {
                shared: Arc::clone(&self.shared),
                client: self.client.client(),
            });
            let listeners = workers.into_iter().flatten().collect();
            let run = run_worker(listeners, worker, self.limiter.clone(), stop.clone(), grace);
            let stopper = async {
                shutdown.await;
                stop.cancel();
            };
            tokio::join!(run, stopper);
            return Ok(());
        }
        let mut done = Vec::new();
        for (index, listeners) in workers.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ProxyError::Runtime)?;
            let shared = Arc::clone(&self.shared);
            let settings = self.client;
            let limiter = self.limiter.clone();
            let stop = stop.clone();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("berth-proxy-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let worker = Arc::new(Worker {
                            shared,
                            client: settings.client(),
                        });
                        run_worker(listeners, worker, limiter, stop, grace).await;
                    });
                    let _ = done_tx.send(());
                })
                .map_err(ProxyError::Runtime)?;
            done.push(done_rx);
        }
        shutdown.await;
        stop.cancel();
        for worker in done {
            let _ = worker.await;
        }
        Ok(())
    }
}

/// Serves `listeners` until `stop`, then waits up to `grace` for open connections.
async fn run_worker(
    listeners: Vec<Listener>,
    worker: Arc<Worker>,
    limiter: Limiter,
    stop: CancellationToken,
    grace: Duration,
) {
    let server = HttpServer::new(limiter);
    let mut serving = Vec::new();
    for listener in listeners {
        let socket = match TcpListener::from_std(listener.socket) {
            Ok(socket) => socket,
            Err(error) => {
                tracing::error!(%error, "cannot serve a listening socket");
                continue;
            }
        };
        let server = server.clone();
        let worker = Arc::clone(&worker);
        let stop = stop.clone();
        serving.push(tokio::spawn(async move {
            server
                .serve(
                    socket,
                    listener.tls,
                    move |connection: Connection| {
                        let worker = Arc::clone(&worker);
                        hyper::service::service_fn(move |request| {
                            let worker = Arc::clone(&worker);
                            async move {
                                let response = worker
                                    .shared
                                    .handle(
                                        &worker.client,
                                        request,
                                        connection.peer,
                                        connection.tls,
                                    )
                                    .await;
                                Ok::<_, Infallible>(response)
                            }
                        })
                    },
                    stop,
                    grace,
                )
                .await;
        }));
    }
    for task in serving {
        let _ = task.await;
    }
}
