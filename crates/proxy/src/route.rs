//! Routes and the pure decisions over them: which route a request's host and path select,
//! which group (release) gets it by weight, and which upstream in the group by balance.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::metrics::Stats;
use crate::upstream::Upstream;

/// How a route spreads requests over the upstreams of one group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each upstream in turn.
    #[default]
    RoundRobin,
    /// The upstream with the fewest requests in flight (ties go round robin).
    LeastOutstanding,
}

/// A set of upstreams that run one release of a service.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Group {
    /// The release these upstreams run, e.g. `r3`; metrics are kept per label.
    pub label: String,
    /// Share of the route's new requests, relative to the other groups' weights; 0 sends
    /// this group none.
    pub weight: u32,
    /// Where the group's instances listen.
    pub upstreams: Vec<SocketAddr>,
}

/// Where requests for one host and path prefix go.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Route {
    /// The route's name in metrics and the access log, e.g. `web.shop`.
    pub name: String,
    /// The host name it serves, matched exactly and case-insensitively against the request's
    /// Host without its port; `*` serves every host that no other route names.
    pub host: String,
    /// The path prefix it serves, matched by whole segments: `/api` serves `/api` and
    /// `/api/x` but not `/apix`; `/` serves every path.
    pub path_prefix: String,
    /// How upstreams within a group are chosen.
    pub balance: Balance,
    /// The releases behind the route and their weights.
    pub groups: Vec<Group>,
}

/// Why a route table was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// A route has no host.
    #[error("route {route:?} has an empty host: give a host name or `*`")]
    EmptyHost {
        /// The route's name.
        route: String,
    },
    /// A route's host is not a plain host name.
    #[error("route {route:?} has host {host:?}: give a host name without scheme, port or path")]
    BadHost {
        /// The route's name.
        route: String,
        /// The host given.
        host: String,
    },
    /// A route's path prefix does not start with `/`.
    #[error("route {route:?} has path prefix {prefix:?}: it must start with `/`")]
    BadPrefix {
        /// The route's name.
        route: String,
        /// The prefix given.
        prefix: String,
    },
    /// Two routes claim the same host and prefix.
    #[error("routes {first:?} and {second:?} both claim host {host:?} and prefix {prefix:?}")]
    Duplicate {
        /// The first route's name.
        first: String,
        /// The second route's name.
        second: String,
        /// The host both claim.
        host: String,
        /// The prefix both claim.
        prefix: String,
    },
    /// An upstream address cannot be used in a URI.
    #[error("upstream address is unusable: {0}")]
    BadUpstream(String),
    /// Two groups of a route have the same label.
    #[error("route {route:?} has two groups labelled {label:?}")]
    DuplicateGroup {
        /// The route's name.
        route: String,
        /// The repeated label.
        label: String,
    },
}

/// Lower-cases `host` and removes a port, keeping IPv6 literals in brackets.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// Removes trailing slashes from a prefix (but keeps `/`).
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Whether `path` lies under `prefix` by whole segments (`prefix` normalized).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Checks a route table and returns it with hosts and prefixes normalized.
pub fn validate(routes: Vec<Route>) -> Result<Vec<Route>, RouteError> {
    let mut seen: HashMap<(String, String), String> = HashMap::new();
    let mut out = Vec::with_capacity(routes.len());
    for mut route in routes {
        if route.host.trim().is_empty() {
            return Err(RouteError::EmptyHost { route: route.name });
        }
        if route.host != "*" {
            let bad = route.host.contains("://")
                || route.host.contains('/')
                || route.host.chars().any(char::is_whitespace);
            if bad {
                return Err(RouteError::BadHost {
                    route: route.name,
                    host: route.host,
                });
            }
            route.host = normalize_host(&route.host);
        }
        if !route.path_prefix.starts_with('/') {
            return Err(RouteError::BadPrefix {
                route: route.name,
                prefix: route.path_prefix,
            });
        }
        route.path_prefix = normalize_prefix(&route.path_prefix);
        let mut labels = std::collections::HashSet::new();
        for group in &route.groups {
            if !labels.insert(group.label.as_str()) {
                return Err(RouteError::DuplicateGroup {
                    route: route.name.clone(),
                    label: group.label.clone(),
                });
            }
        }
        let key = (route.host.clone(), route.path_prefix.clone());
        if let Some(first) = seen.get(&key) {
            return Err(RouteError::Duplicate {
                first: first.clone(),
                second: route.name,
                host: key.0,
                prefix: key.1,
            });
        }
        seen.insert(key, route.name.clone());
        out.push(route);
    }
    Ok(out)
}

/// Smooth weighted round robin (as nginx does it): every pick adds each weight to its
/// group's running score, takes the highest score and subtracts the total from it. Over
/// any `total` picks each group gets exactly its weight, evenly interleaved.
#[derive(Debug)]
pub struct WeightedPicker {
    weights: Vec<i64>,
    total: i64,
    scores: Mutex<Vec<i64>>,
}

impl WeightedPicker {
    /// A picker over these weights.
    pub fn new(weights: &[u32]) -> Self {
        let weights: Vec<i64> = weights.iter().map(|w| i64::from(*w)).collect();
        Self {
            total: weights.iter().sum(),
            scores: Mutex::new(vec![0; weights.len()]),
            weights,
        }
    }

    /// The next index to use, or None when every weight is 0.
    pub fn pick(&self) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let mut scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        let mut best: Option<usize> = None;
        for (i, weight) in self.weights.iter().enumerate() {
            if *weight == 0 {
                continue;
            }
            scores[i] += weight;
            if best.is_none_or(|b| scores[i] > scores[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            scores[b] -= self.total;
        }
        best
    }
}

/// A group ready to serve: its upstreams' shared state and its metrics.
#[derive(Debug)]
pub struct LiveGroup {
    /// The release label.
    pub label: Arc<str>,
    /// Its weight.
    pub weight: u32,
    /// The group's upstreams.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Round-robin position.
    next: AtomicUsize,
    /// The group's metrics (shared with earlier tables that had the same route and label).
    pub stats: Arc<Stats>,
}

impl LiveGroup {
    /// A live group.
    pub fn new(label: &str, weight: u32, upstreams: Vec<Arc<Upstream>>, stats: Arc<Stats>) -> Self {
        Self {
            label: Arc::from(label),
            weight,
            upstreams,
            next: AtomicUsize::new(0),
            stats,
        }
    }

    /// The group's next upstream in turn (round robin), skipping those in `tried` and
    /// preferring ones not marked failed; a failed one when nothing else is left.
    pub fn pick(&self, tried: &[SocketAddr], now_ms: u64) -> Option<&Arc<Upstream>> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = || {
            (0..n)
                .map(move |i| &self.upstreams[(start + i) % n])
                .filter(|u| !tried.contains(&u.addr))
        };
        candidates()
            .find(|u| !u.is_failed(now_ms))
            .or_else(|| candidates().next())
    }
}

/// A route ready to serve.
#[derive(Debug)]
pub struct LiveRoute {
    /// The route's name.
    pub name: Arc<str>,
    /// Its normalized path prefix.
    pub path_prefix: String,
    /// Its balance.
    pub balance: Balance,
    /// Its groups.
    pub groups: Vec<LiveGroup>,
    /// Chooses a group by weight (round robin).
    picker: WeightedPicker,
    /// Where the next least-outstanding scan starts, so that equal loads take turns.
    next: AtomicUsize,
    /// The route's metrics.
    pub stats: Arc<Stats>,
}

impl LiveRoute {
    /// A live route.
    pub fn new(
        name: &str,
        path_prefix: String,
        balance: Balance,
        groups: Vec<LiveGroup>,
        stats: Arc<Stats>,
    ) -> Self {
        let weights: Vec<u32> = groups
            .iter()
            .map(|g| if g.upstreams.is_empty() { 0 } else { g.weight })
            .collect();
        Self {
            name: Arc::from(name),
            path_prefix,
            balance,
            picker: WeightedPicker::new(&weights),
            next: AtomicUsize::new(0),
            groups,
            stats,
        }
    }

    /// The group and upstream the next request goes to, skipping upstreams in `tried` and
    /// preferring ones not marked failed (a failed one only when nothing else is left).
    ///
    /// Least outstanding: every upstream of every group that takes requests competes, and
    /// the one with the least load wins, its load being its requests in flight per share of
    /// the route's weight (its group's weight spread over the group's upstreams). Release
    /// weights hold, while a slow or cold instance, of whatever release, gets fewer requests
    /// instead of its fixed turn. Round robin: the weighted group choice, then the group's
    /// next upstream (another group when all of its were tried).
    pub fn pick(&self, tried: &[SocketAddr], now_ms: u64) -> Option<(&LiveGroup, &Arc<Upstream>)> {
        match self.balance {
            Balance::RoundRobin => self
                .pick_group()
                .into_iter()
                .chain(self.groups.iter().filter(|g| self.takes_requests(g)))
                .find_map(|g| g.pick(tried, now_ms).map(|u| (g, u))),
            Balance::LeastOutstanding => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                self.least_loaded(start, tried, now_ms, true)
                    .or_else(|| self.least_loaded(start, tried, now_ms, false))
            }
        }
    }

    fn least_loaded(
        &self,
        start: usize,
        tried: &[SocketAddr],
        now_ms: u64,
        healthy_only: bool,
    ) -> Option<(&LiveGroup, &Arc<Upstream>)> {
        // (group, upstream, in flight + 1, upstreams in the group, group weight)
        let mut best: Option<(&LiveGroup, &Arc<Upstream>, u128, u128, u128)> = None;
        let groups = self.groups.len();
        for g in 0..groups {
            let group = &self.groups[(start + g) % groups];
            if !self.takes_requests(group) {
                continue;
            }
            let n = group.upstreams.len();
            for u in 0..n {
                let upstream = &group.upstreams[(start + u) % n];
                if tried.contains(&upstream.addr) || (healthy_only && upstream.is_failed(now_ms)) {
                    continue;
                }
                let load = upstream.in_flight() as u128 + 1;
                let (count, weight) = (n as u128, u128::from(group.weight));
                // load / (weight / count) < best_load / (best_weight / best_count)
                let better = best.is_none_or(|(_, _, b_load, b_count, b_weight)| {
                    load * count * b_weight < b_load * b_count * weight
                });
                if better {
                    best = Some((group, upstream, load, count, weight));
                }
            }
        }
        best.map(|(group, upstream, ..)| (group, upstream))
    }

    /// Whether `group` gets new requests at all (weight above 0 and some upstream).
    pub fn takes_requests(&self, group: &LiveGroup) -> bool {
        group.weight > 0 && !group.upstreams.is_empty()
    }

    /// The group the next request goes to, or None when no group with upstreams has weight.
    pub fn pick_group(&self) -> Option<&LiveGroup> {
        if self.groups.len() == 1 {
            let only = &self.groups[0];
            return (self.picker.total > 0).then_some(only);
        }
        self.picker.pick().map(|i| &self.groups[i])
    }
}

/// The route table the proxy serves from: routes by host, longest prefix first.
#[derive(Debug, Default)]
pub struct Table {
    by_host: HashMap<String, Vec<LiveRoute>>,
    any_host: Vec<LiveRoute>,
    /// The routes as given (normalized), for reading the table back.
    pub routes: Vec<Route>,
}

impl Table {
    /// A table of these routes (already validated).
    pub fn new(given: Vec<Route>, routes: Vec<(String, LiveRoute)>) -> Self {
        let mut table = Table {
            routes: given,
            ..Table::default()
        };
        for (host, route) in routes {
            if host == "*" {
                table.any_host.push(route);
            } else {
                table.by_host.entry(host).or_default().push(route);
            }
        }
        let longest_first =
            |a: &LiveRoute, b: &LiveRoute| b.path_prefix.len().cmp(&a.path_prefix.len());
        for list in table.by_host.values_mut() {
            list.sort_by(longest_first);
        }
        table.any_host.sort_by(longest_first);
        table
    }

    /// The route for a normalized host and a path: the longest matching prefix among the
    /// host's routes, else among the `*` routes.
    pub fn find(&self, host: &str, path: &str) -> Option<&LiveRoute> {
        self.by_host
            .get(host)
            .and_then(|list| longest_match(list, path))
            .or_else(|| longest_match(&self.any_host, path))
    }
}

impl Table {
    /// The route names and (route, group label) pairs in the table, as
    /// `MetricsRegistry::retain` takes them.
    pub fn metric_keys(&self) -> impl Iterator<Item = (String, Option<String>)> + '_ {
        let all = self.by_host.values().flatten().chain(self.any_host.iter());
        all.flat_map(|route| {
            let name = route.name.to_string();
            let groups = route
                .groups
                .iter()
                .map(move |g| (route.name.to_string(), Some(g.label.to_string())));
            std::iter::once((name, None)).chain(groups)
        })
    }
}

/// The first route in `list` (sorted longest prefix first) whose prefix matches `path`.
fn longest_match<'a>(list: &'a [LiveRoute], path: &str) -> Option<&'a LiveRoute> {
    list.iter().find(|r| prefix_matches(&r.path_prefix, path))
}

#[cfg(test)]
mod tests;
