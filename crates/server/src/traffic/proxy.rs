//! [`Traffic`] over berth's own proxy ([`berth_proxy::Proxy`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use berth_core::plan::ReleaseId;
use berth_proxy::{
    Balance, DrainResult, Group, Proxy, ProxyConfig, ProxyError, Route, StatsSnapshot,
};

use super::{GroupReport, RouteIntent, RouteReport, Traffic};

/// The proxy, driven by the controller: every app's routes make one table.
pub struct ProxyTraffic {
    proxy: Proxy,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each app's routes.
    routes: BTreeMap<String, Vec<RouteIntent>>,
    /// Every upstream a table named, so that draining an address finds its ports.
    upstreams: BTreeSet<SocketAddr>,
}

impl ProxyTraffic {
    /// Binds the proxy as `config` says.
    pub async fn with_config(config: ProxyConfig) -> Result<ProxyTraffic, ProxyError> {
        Ok(ProxyTraffic {
            proxy: Proxy::bind(config).await?,
            state: Mutex::new(State::default()),
        })
    }

    /// The bound HTTP addresses.
    pub fn http_addrs(&self) -> &[SocketAddr] {
        self.proxy.http_addrs()
    }

    /// The proxy itself (metrics, addresses).
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Serves until the process ends.
    pub async fn serve(&self) -> Result<(), ProxyError> {
        self.proxy.serve(std::future::pending()).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The proxy's name of the route of `service` of `app` (the catalog name).
pub fn route_name(app: &str, service: &str) -> String {
    berth_discovery::catalog::service_name(app, service)
}

/// The proxy's label of a release's group.
pub fn group_label(release: ReleaseId) -> String {
    format!("r{release}")
}

/// Every route of `routes` with its upstreams and what each release served, from `metrics`.
pub(super) fn report(
    routes: &BTreeMap<String, Vec<RouteIntent>>,
    metrics: &berth_proxy::MetricsSnapshot,
) -> Vec<RouteReport> {
    routes
        .values()
        .flatten()
        .map(|intent| {
            let name = route_name(&intent.app, &intent.service);
            let groups = intent
                .groups
                .iter()
                .map(|group| {
                    let stats = metrics
                        .group(&name, &group_label(group.release))
                        .map(|s| s.total());
                    GroupReport {
                        release: group.release,
                        weight: group.weight,
                        upstreams: group.upstreams.clone(),
                        requests: stats.map_or(0, |s| s.requests),
                        errors_5xx: stats.map_or(0, |s| s.errors_5xx),
                        p99_ms: stats
                            .and_then(|s| s.p99)
                            .map(|p| u64::try_from(p.as_millis()).unwrap_or(u64::MAX)),
                    }
                })
                .collect();
            RouteReport {
                name,
                host: intent.host.clone(),
                path: intent.path.clone(),
                groups,
            }
        })
        .collect()
}

/// The proxy's routes for every app's intents.
pub fn proxy_routes(apps: &BTreeMap<String, Vec<RouteIntent>>) -> Vec<Route> {
    apps.values()
        .flatten()
        .map(|intent| Route {
            name: route_name(&intent.app, &intent.service),
            host: intent.host.clone(),
            path_prefix: intent.path.clone(),
            balance: match intent.balance {
                berth_core::spec::Balance::LeastOutstanding => Balance::LeastOutstanding,
                berth_core::spec::Balance::RoundRobin => Balance::RoundRobin,
            },
            groups: intent
                .groups
                .iter()
                .map(|group| Group {
                    label: group_label(group.release),
                    weight: group.weight,
                    upstreams: group.upstreams.clone(),
                })
                .collect(),
        })
        .collect()
}

#[async_trait]
impl Traffic for ProxyTraffic {
    fn set_routes(&self, app: &str, routes: Vec<RouteIntent>) {
        let mut state = self.lock();
        if routes.is_empty() {
            state.routes.remove(app);
        } else {
            state.routes.insert(app.to_owned(), routes);
        }
        let table = proxy_routes(&state.routes);
        let upstreams: Vec<SocketAddr> = table
            .iter()
            .flat_map(|route| route.groups.iter().flat_map(|g| g.upstreams.clone()))
            .collect();
        state.upstreams.extend(upstreams);
        if let Err(e) = self.proxy.set_routes(table) {
            tracing::warn!(app, error = %e, "the proxy refused the new routes; it keeps the old ones");
        }
    }

    async fn drain(&self, address: IpAddr, timeout: Duration) -> usize {
        let upstreams: Vec<SocketAddr> = {
            let mut state = self.lock();
            let named: Vec<SocketAddr> = state
                .upstreams
                .iter()
                .filter(|upstream| upstream.ip() == address)
                .copied()
                .collect();
            for upstream in &named {
                state.upstreams.remove(upstream);
            }
            named
        };
        let drains = upstreams
            .into_iter()
            .map(|upstream| self.proxy.drain(upstream, timeout));
        futures::future::join_all(drains)
            .await
            .into_iter()
            .map(|result| match result {
                DrainResult::Drained => 0,
                DrainResult::TimedOut { in_flight } => in_flight,
            })
            .sum()
    }

    fn report(&self) -> Vec<RouteReport> {
        report(&self.lock().routes, &self.proxy.metrics())
    }

    async fn prometheus(&self) -> Option<String> {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.proxy.prometheus_collector()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).ok()?;
        Some(text)
    }

    fn counters(&self, app: &str, service: &str, release: ReleaseId) -> Option<StatsSnapshot> {
        self.proxy
            .metrics()
            .group(&route_name(app, service), &group_label(release))
            .cloned()
    }
}
