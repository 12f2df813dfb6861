//! What the catalog lists and where the proxy sends requests, derived from the planner's view
//! of an app on every reconcile pass.
//!
//! An instance is listed when its health check passed (or, just after a server restart, while
//! its check has not decided yet: it was serving before) and it is not about to stop. A
//! blue/green deploy lists only the old set until its switch, then only the new set, so the
//! switch is one catalog step. The controller deregisters an instance before stopping it and
//! asks [`Traffic::drain`] to let its in-flight requests finish before SIGTERM.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use berth_core::plan::{DeployState, Instance, InstanceState, ReleaseId};
use berth_core::spec::{AutoRollback, PortRef, RouteSpec};
use berth_core::AppSpec;
use berth_discovery::{Catalog, Change, Endpoint};
use berth_proxy::StatsSnapshot;

use crate::controller::Seen;

/// The proxy, as the controller drives it.
#[async_trait]
pub trait Traffic: Send + Sync {
    /// Replaces the routes of `app` (an empty list removes them).
    fn set_routes(&self, app: &str, routes: Vec<RouteIntent>);

    /// Waits until no request is in flight to any upstream at `address` (it no longer gets
    /// new ones), or until `timeout`; returns how many were still in flight then.
    async fn drain(&self, address: IpAddr, timeout: Duration) -> usize;

    /// The proxy's counters for `release` of `app`'s `service` so far (they only grow;
    /// `None` when the service has no route or the release got no traffic). The controller
    /// judges releases over a sliding window of them ([`window::Windows`]).
    fn counters(&self, app: &str, service: &str, release: ReleaseId) -> Option<StatsSnapshot>;

    /// Every route with its upstreams and what each release served so far.
    fn report(&self) -> Vec<RouteReport> {
        Vec::new()
    }

    /// The proxy's metrics in Prometheus' text format (`None` without a proxy).
    async fn prometheus(&self) -> Option<String> {
        None
    }
}

/// One route as `GET /v1/routes` shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RouteReport {
    /// `SERVICE.APP`.
    pub name: String,
    /// The `Host` it serves.
    pub host: String,
    /// Its path prefix.
    pub path: String,
    /// The releases behind it.
    pub groups: Vec<GroupReport>,
}

/// One release behind a route.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GroupReport {
    /// The release.
    pub release: ReleaseId,
    /// Its share of new requests.
    pub weight: u32,
    /// Where its instances listen.
    pub upstreams: Vec<SocketAddr>,
    /// Responses it sent so far.
    pub requests: u64,
    /// Of which 5xx.
    pub errors_5xx: u64,
    /// The 99th-percentile time to response headers, in milliseconds.
    pub p99_ms: Option<u64>,
}

/// Requests a release served through the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReleaseStats {
    /// Responses.
    pub requests: u64,
    /// Of which 5xx (the proxy's own 502/503/504 included).
    pub errors: u64,
    /// The 99th-percentile latency.
    pub p99: Option<Duration>,
}

impl ReleaseStats {
    /// The fraction of 5xx responses.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// Why the new release must be rolled back, if it must: over the window, it crossed a limit
/// of `limits` and did worse than the release before it (when that one served enough
/// requests in the window to compare). Fewer than `limits.min_requests` requests in the
/// window say nothing.
pub fn traffic_verdict(
    limits: &AutoRollback,
    new: &ReleaseStats,
    old: Option<&ReleaseStats>,
) -> Option<String> {
    if new.requests < limits.min_requests {
        return None;
    }
    let old = old.filter(|old| old.requests >= limits.min_requests);
    if let Some(max) = limits.error_rate {
        let rate = new.error_rate();
        if rate > max && old.is_none_or(|old| rate > old.error_rate()) {
            return Some(format!(
                "5xx rate {:.1}% ({} of the last {} requests, within {}s) is over the limit of {:.1}%{}",
                rate * 100.0,
                new.errors,
                new.requests,
                limits.window.as_secs(),
                max * 100.0,
                old.map_or(String::new(), |old| format!(
                    "; the previous release had {:.1}%",
                    old.error_rate() * 100.0
                ))
            ));
        }
    }
    if let (Some(max), Some(p99)) = (limits.p99, new.p99) {
        if p99 > max
            && old
                .and_then(|old| old.p99)
                .is_none_or(|before| p99 > before)
        {
            return Some(format!(
                "p99 latency {} ms over the last {}s is over the limit of {} ms{}",
                p99.as_millis(),
                limits.window.as_secs(),
                max.as_millis(),
                old.and_then(|old| old.p99)
                    .map_or(String::new(), |before| format!(
                        "; the previous release had {} ms",
                        before.as_millis()
                    ))
            ));
        }
    }
    None
}

/// No proxy: nothing to route or drain.
#[derive(Debug, Default)]
pub struct NoTraffic;

#[async_trait]
impl Traffic for NoTraffic {
    fn set_routes(&self, _app: &str, _routes: Vec<RouteIntent>) {}

    async fn drain(&self, _address: IpAddr, _timeout: Duration) -> usize {
        0
    }

    fn counters(&self, _app: &str, _service: &str, _release: ReleaseId) -> Option<StatsSnapshot> {
        None
    }
}

/// One route of an app's service, with the upstreams of each release it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteIntent {
    /// The app.
    pub app: String,
    /// The service.
    pub service: String,
    /// The `Host` to match.
    pub host: String,
    /// The path prefix to match.
    pub path: String,
    /// How an instance is picked within a release.
    pub balance: berth_core::spec::Balance,
    /// Upstreams by release, each weighted by its number of listed instances (so a canary
    /// step's share of traffic is its share of instances).
    pub groups: Vec<UpstreamGroup>,
}

/// The listed instances of one release behind a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamGroup {
    /// The release.
    pub release: ReleaseId,
    /// Its share of new requests.
    pub weight: u32,
    /// Where its instances listen.
    pub upstreams: Vec<SocketAddr>,
}

/// Which instances of `app` the catalog should list now.
///
/// `specs` are the app's releases (an instance's ports come from its own release, its tags
/// and meta from `current`, the desired release, which may change them without restarting
/// it); `deploys` the services' deploy states; `stopping` the instances this pass is about
/// to stop (they are deregistered first).
#[allow(clippy::too_many_arguments)]
pub fn listed(
    app: &str,
    node: &str,
    current: &AppSpec,
    specs: &BTreeMap<ReleaseId, AppSpec>,
    deploys: &BTreeMap<String, DeployState>,
    instances: &[Instance],
    seen: &[Seen],
    stopping: &BTreeSet<String>,
) -> Vec<Endpoint> {
    let mut endpoints = Vec::new();
    for instance in instances {
        let serving = matches!(
            instance.state,
            InstanceState::Running {
                healthy: Some(true),
                ..
            } | InstanceState::Unknown { .. }
        );
        if !serving || stopping.contains(&instance.id) {
            continue;
        }
        if let Some(deploy) = deploys.get(&instance.service) {
            if !in_rotation(deploy, &instance.service, instance.release, specs) {
                continue;
            }
        }
        let Some(found) = seen
            .iter()
            .find(|s| s.name.app == app && s.name.instance == instance.id)
        else {
            continue;
        };
        let Some(address) = found.address.as_deref().and_then(|a| a.parse().ok()) else {
            continue;
        };
        let Some(service) = specs
            .get(&instance.release)
            .and_then(|spec| spec.services.get(&instance.service))
        else {
            continue;
        };
        let labels = current.services.get(&instance.service).unwrap_or(service);
        endpoints.push(Endpoint {
            id: found.id.clone(),
            app: app.to_owned(),
            service: instance.service.clone(),
            release: instance.release,
            address,
            ports: service.ports.clone(),
            tags: labels.tags.clone(),
            meta: labels.meta.clone(),
            node: node.to_owned(),
        });
    }
    endpoints.sort_by(|a, b| a.id.cmp(&b.id));
    endpoints
}

/// Whether instances of `release` of `service` take traffic during its `deploy`: a
/// blue/green deploy that has not switched yet keeps traffic on the old set, and once switched
/// only on the new one.
fn in_rotation(
    deploy: &DeployState,
    service: &str,
    release: ReleaseId,
    specs: &BTreeMap<ReleaseId, AppSpec>,
) -> bool {
    let blue_green = specs
        .get(&deploy.to_release)
        .and_then(|spec| spec.services.get(service))
        .is_some_and(|spec| {
            matches!(
                spec.deploy.strategy,
                berth_core::spec::Strategy::BlueGreen(_)
            )
        });
    if !blue_green || deploy.finished || deploy.failed || deploy.from_release.is_none() {
        return true;
    }
    if deploy.step == 0 {
        release != deploy.to_release
    } else {
        release == deploy.to_release
    }
}

/// Makes the catalog list exactly `endpoints` for `app`, in one step; returns whether
/// anything changed.
pub fn sync_catalog(catalog: &Catalog, app: &str, endpoints: &[Endpoint]) -> bool {
    let snapshot = catalog.snapshot();
    let wanted: BTreeSet<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
    let mut changes: Vec<Change> = snapshot
        .endpoints()
        .filter(|e| e.app == app && !wanted.contains(e.id.as_str()))
        .map(|e| Change::Deregister(e.id.clone()))
        .collect();
    changes.extend(
        endpoints
            .iter()
            .filter(|e| snapshot.endpoint(&e.id) != Some(*e))
            .cloned()
            .map(Change::Register),
    );
    if changes.is_empty() {
        return false;
    }
    catalog.apply(changes);
    true
}

/// The routes of `app` (from the desired `spec`) over its listed `endpoints`.
pub fn routes(app: &str, spec: &AppSpec, endpoints: &[Endpoint]) -> Vec<RouteIntent> {
    let mut routes = Vec::new();
    for (name, service) in &spec.services {
        let Some(route) = &service.route else {
            continue;
        };
        let mut groups: BTreeMap<ReleaseId, Vec<SocketAddr>> = BTreeMap::new();
        for endpoint in endpoints
            .iter()
            .filter(|e| e.app == app && &e.service == name)
        {
            if let Some(port) = route_port(route, &endpoint.ports) {
                groups
                    .entry(endpoint.release)
                    .or_default()
                    .push(SocketAddr::new(endpoint.address, port));
            }
        }
        routes.push(RouteIntent {
            app: app.to_owned(),
            service: name.clone(),
            host: route.host.clone(),
            path: route.path.clone(),
            balance: route.balance,
            groups: groups
                .into_iter()
                .map(|(release, upstreams)| UpstreamGroup {
                    release,
                    weight: u32::try_from(upstreams.len()).unwrap_or(u32::MAX),
                    upstreams,
                })
                .collect(),
        });
    }
    routes
}

/// The container port a route sends to, given an instance's named ports.
fn route_port(route: &RouteSpec, ports: &BTreeMap<String, u16>) -> Option<u16> {
    match &route.port {
        Some(PortRef::Number(port)) => Some(*port),
        Some(PortRef::Named(name)) => ports.get(name).copied(),
        None if ports.len() == 1 => ports.values().next().copied(),
        None => None,
    }
}

mod proxy;
mod remote;
#[cfg(test)]
mod tests;
pub mod window;

pub use remote::RemoteTraffic;

pub use proxy::{group_label, proxy_routes, route_name, ProxyTraffic};
