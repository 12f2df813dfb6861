//! [`Traffic`] over a data plane process (`berth dataplane`): the routes and the catalog's
//! endpoints are pushed to it whole through its admin socket whenever either changes; drains
//! and the proxy's counters go through the same socket. The data plane keeps serving what it
//! was last pushed when this server stops, crashes or is replaced.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use berth_core::plan::ReleaseId;
use berth_dataplane::{AdminClient, DrainRequest, PushedState};
use berth_discovery::Catalog;
use berth_proxy::{MetricsSnapshot, StatsSnapshot};
use tokio::sync::Notify;

use super::proxy::{group_label, proxy_routes, report, route_name};
use super::{RouteIntent, RouteReport, Traffic};

/// How often the proxy's counters are read back (auto-rollback judges them every pass).
const METRICS_EVERY: Duration = Duration::from_millis(250);

/// How long the data plane may be unreachable before the next try.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The data plane, as the controller drives it.
pub struct RemoteTraffic {
    client: AdminClient,
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    routes: BTreeMap<String, Vec<RouteIntent>>,
    /// The version of the routes as they are now. It starts from the clock, so that a new
    /// server process never hands out a version an older one used (a drain waits for its
    /// version to be applied).
    version: u64,
    metrics: MetricsSnapshot,
}

impl RemoteTraffic {
    /// The data plane answering at `client`'s socket.
    pub fn new(client: AdminClient) -> Arc<RemoteTraffic> {
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(1));
        Arc::new(RemoteTraffic {
            client,
            state: Mutex::new(State {
                routes: BTreeMap::new(),
                version: start,
                metrics: MetricsSnapshot::default(),
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pushes the routes and `catalog`'s endpoints to the data plane whenever either changes
    /// (and again whenever the data plane says it has another version: it restarted), and
    /// reads its counters back. Starts once `ready` resolves: the controller's first pass,
    /// before which this server knows no app's routes (a push then would take them away).
    pub async fn sync(
        self: Arc<Self>,
        catalog: Catalog,
        ready: impl std::future::Future<Output = ()>,
    ) {
        ready.await;
        let mut pushed: Option<(u64, u64)> = None;
        let mut metrics_read = tokio::time::Instant::now();
        loop {
            let index = catalog.snapshot().index;
            let version = self.lock().version;
            if pushed != Some((version, index)) {
                let state = {
                    let state = self.lock();
                    PushedState {
                        version: state.version,
                        routes: proxy_routes(&state.routes),
                        endpoints: catalog.snapshot().endpoints().cloned().collect(),
                    }
                };
                match self.client.push(&state).await {
                    Ok(()) => pushed = Some((state.version, index)),
                    Err(e) => {
                        tracing::warn!(error = %e, "pushing to the data plane");
                        tokio::time::sleep(RETRY_AFTER).await;
                        continue;
                    }
                }
            }
            if metrics_read.elapsed() >= METRICS_EVERY {
                metrics_read = tokio::time::Instant::now();
                match self.client.health().await {
                    // A restarted data plane serves its last push from disk; push again
                    // anyway, so that it applies and knows the current version.
                    Ok(health) if Some(health.version) != pushed.map(|(v, _)| v) => {
                        pushed = None;
                        continue;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        pushed = None;
                        tokio::time::sleep(RETRY_AFTER).await;
                        continue;
                    }
                }
                if let Ok(metrics) = self.client.metrics().await {
                    self.lock().metrics = metrics;
                }
            }
            tokio::select! {
                () = self.changed.notified() => {}
                _ = catalog.wait_past(index, METRICS_EVERY) => {}
            }
        }
    }
}

#[async_trait]
impl Traffic for RemoteTraffic {
    fn set_routes(&self, app: &str, routes: Vec<RouteIntent>) {
        let mut state = self.lock();
        if routes.is_empty() {
            state.routes.remove(app);
        } else {
            state.routes.insert(app.to_owned(), routes);
        }
        state.version += 1;
        drop(state);
        self.changed.notify_one();
    }

    async fn drain(&self, address: IpAddr, timeout: Duration) -> usize {
        let after_version = self.lock().version;
        let request = DrainRequest {
            address,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            after_version,
        };
        match self.client.drain(&request).await {
            Ok(left) => left,
            Err(e) => {
                tracing::warn!(%address, error = %e, "draining through the data plane");
                0
            }
        }
    }

    fn counters(&self, app: &str, service: &str, release: ReleaseId) -> Option<StatsSnapshot> {
        self.lock()
            .metrics
            .group(&route_name(app, service), &group_label(release))
            .cloned()
    }

    fn report(&self) -> Vec<RouteReport> {
        let state = self.lock();
        report(&state.routes, &state.metrics)
    }

    async fn prometheus(&self) -> Option<String> {
        self.client.prometheus().await.ok()
    }
}
