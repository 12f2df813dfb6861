//! Per-route and per-group request counts, 5xx counts and latency histograms; snapshots for
//! the controller's watch windows and the Prometheus text exposition.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

/// Upper bounds of the latency buckets, in seconds (the last bucket is everything above).
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Live counters of one route or group.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    errors_5xx: AtomicU64,
    latency_micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len() + 1],
}

impl Stats {
    /// Counts one response with its status and time to response headers.
    pub fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors_5xx.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_micros.fetch_add(micros, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors_5xx: self.errors_5xx.load(Ordering::Relaxed),
            latency_sum: Duration::from_micros(self.latency_micros.load(Ordering::Relaxed)),
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// The counters of one route or group at one moment (they only grow).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    /// Responses sent (including the proxy's own 502/503).
    pub requests: u64,
    /// Responses with a 5xx status.
    pub errors_5xx: u64,
    /// Sum of the times to response headers.
    pub latency_sum: Duration,
    /// Responses per latency bucket (`BUCKETS`, then one for everything above), not
    /// cumulative.
    pub buckets: Vec<u64>,
}

impl StatsSnapshot {
    /// What happened between `earlier` (a snapshot of the same counters) and this one.
    pub fn since(&self, earlier: &StatsSnapshot) -> WindowStats {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        WindowStats {
            requests: self.requests.saturating_sub(earlier.requests),
            errors_5xx: self.errors_5xx.saturating_sub(earlier.errors_5xx),
            p99: quantile(&buckets, 0.99),
        }
    }

    /// The same as `since` an empty snapshot: everything so far.
    pub fn total(&self) -> WindowStats {
        self.since(&StatsSnapshot::default())
    }
}

/// Requests, errors and tail latency of a route or group over a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowStats {
    /// Responses in the window.
    pub requests: u64,
    /// 5xx responses in the window.
    pub errors_5xx: u64,
    /// The upper bound of the latency bucket holding the 99th percentile (None without
    /// requests; `Duration::MAX` when it lies above the last bucket).
    pub p99: Option<Duration>,
}

impl WindowStats {
    /// 5xx responses per response, 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors_5xx as f64 / self.requests as f64
        }
    }
}

/// The upper bound of the bucket holding quantile `q` of the counts in `buckets`.
fn quantile(buckets: &[u64], q: f64) -> Option<Duration> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(
                BUCKETS
                    .get(i)
                    .map_or(Duration::MAX, |s| Duration::from_secs_f64(*s)),
            );
        }
    }
    Some(Duration::MAX)
}

/// Every route's and group's counters, kept across route table changes by name and label.
#[derive(Debug, Default)]
pub struct MetricsRegistry {
    routes: Mutex<HashMap<String, Arc<Stats>>>,
    groups: Mutex<HashMap<(String, String), Arc<Stats>>>,
    /// Requests that matched no route.
    pub unrouted: AtomicU64,
}

impl MetricsRegistry {
    /// The counters of route `name`.
    pub fn route(&self, name: &str) -> Arc<Stats> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(routes.entry(name.to_owned()).or_default())
    }

    /// The counters of group `label` of route `name`.
    pub fn group(&self, name: &str, label: &str) -> Arc<Stats> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            groups
                .entry((name.to_owned(), label.to_owned()))
                .or_default(),
        )
    }

    /// Forgets the counters of routes and groups that `keep` does not name (by route name,
    /// and by route name and group label), so that releases long gone do not pile up.
    pub fn retain(&self, keep: &HashSet<(String, Option<String>)>) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.retain(|name, _| keep.contains(&(name.clone(), None)));
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.retain(|(name, label), _| keep.contains(&(name.clone(), Some(label.clone()))));
    }

    /// Every counter now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        MetricsSnapshot {
            routes: routes
                .iter()
                .map(|(name, stats)| (name.clone(), stats.snapshot()))
                .collect(),
            groups: groups
                .iter()
                .map(|(key, stats)| (key.clone(), stats.snapshot()))
                .collect(),
            unrouted: self.unrouted.load(Ordering::Relaxed),
        }
    }
}

/// A map with tuple keys as a JSON list of `[key, value]` pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// Every route's and group's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetricsSnapshot {
    /// Counters by route name.
    pub routes: BTreeMap<String, StatsSnapshot>,
    /// Counters by (route name, group label); as a list of pairs in JSON.
    #[serde(with = "pairs")]
    pub groups: BTreeMap<(String, String), StatsSnapshot>,
    /// Requests that matched no route (answered 404).
    pub unrouted: u64,
}

impl MetricsSnapshot {
    /// The counters of route `name`, if it has served or been configured.
    pub fn route(&self, name: &str) -> Option<&StatsSnapshot> {
        self.routes.get(name)
    }

    /// The counters of group `label` of route `name`.
    pub fn group(&self, route: &str, label: &str) -> Option<&StatsSnapshot> {
        self.groups.get(&(route.to_owned(), label.to_owned()))
    }
}

/// Exposes the counters as `berth_proxy_*` metrics when registered in a
/// `prometheus_client::registry::Registry`.
#[derive(Debug)]
pub struct PrometheusCollector(pub(crate) Arc<MetricsRegistry>);

impl Collector for PrometheusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.snapshot();
        let groups: Vec<([(&str, &str); 2], &StatsSnapshot)> = snapshot
            .groups
            .iter()
            .map(|((route, group), s)| ([("route", route.as_str()), ("group", group.as_str())], s))
            .collect();
        let routes: Vec<([(&str, &str); 1], &StatsSnapshot)> = snapshot
            .routes
            .iter()
            .map(|(route, s)| ([("route", route.as_str())], s))
            .collect();

        let mut family = encoder.encode_descriptor(
            "berth_proxy_route_requests",
            "Responses sent per route",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in &routes {
            ConstCounter::new(s.requests).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "berth_proxy_route_errors_5xx",
            "5xx responses per route",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in &routes {
            ConstCounter::new(s.errors_5xx).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "berth_proxy_route_latency_seconds",
            "Time to response headers per route",
            None,
            MetricType::Histogram,
        )?;
        for (labels, s) in &routes {
            encode_histogram(s, family.encode_family(labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "berth_proxy_group_requests",
            "Responses sent per route and group (release)",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in &groups {
            ConstCounter::new(s.requests).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "berth_proxy_group_errors_5xx",
            "5xx responses per route and group (release)",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in &groups {
            ConstCounter::new(s.errors_5xx).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "berth_proxy_group_latency_seconds",
            "Time to response headers per route and group (release)",
            None,
            MetricType::Histogram,
        )?;
        for (labels, s) in &groups {
            encode_histogram(s, family.encode_family(labels)?)?;
        }

        let family = encoder.encode_descriptor(
            "berth_proxy_unrouted_requests",
            "Requests that matched no route",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(snapshot.unrouted).encode(family)?;
        Ok(())
    }
}

fn encode_histogram(
    s: &StatsSnapshot,
    mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = BUCKETS
        .iter()
        .copied()
        .chain(std::iter::once(f64::INFINITY))
        .zip(s.buckets.iter().copied())
        .collect();
    encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        s.latency_sum.as_secs_f64(),
        s.requests,
        &buckets,
        None,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn window_counts_only_what_happened_since_the_baseline() {
        let stats = Stats::default();
        for _ in 0..50 {
            stats.record(200, Duration::from_millis(3));
        }
        let baseline = stats.snapshot();
        for _ in 0..98 {
            stats.record(200, Duration::from_micros(700));
        }
        stats.record(503, Duration::from_millis(40));
        stats.record(500, Duration::from_millis(40));
        let window = stats.snapshot().since(&baseline);
        assert_eq!(window.requests, 100);
        assert_eq!(window.errors_5xx, 2);
        assert!((window.error_rate() - 0.02).abs() < 1e-9);
        // 98 of 100 took under 1 ms, the 99th took 40 ms: bucket bound 50 ms.
        assert_eq!(window.p99, Some(Duration::from_millis(50)));
        assert_eq!(stats.snapshot().total().requests, 150);
    }

    #[test]
    fn empty_window_has_no_p99_and_no_error_rate() {
        let stats = Stats::default();
        let s = stats.snapshot();
        let window = s.since(&s);
        assert_eq!(window.requests, 0);
        assert_eq!(window.p99, None);
        assert_eq!(window.error_rate(), 0.0);
    }

    #[test]
    fn slow_requests_land_in_the_overflow_bucket() {
        let stats = Stats::default();
        stats.record(200, Duration::from_secs(30));
        assert_eq!(stats.snapshot().total().p99, Some(Duration::MAX));
    }
}
