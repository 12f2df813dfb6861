//! Prometheus metrics, served at `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as PromRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The registry's metrics.
pub struct Metrics {
    registry: PromRegistry,
    /// Per-repository metrics: they name repositories, so only admins see them.
    repositories: PromRegistry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    received: Counter,
    sent: Counter,
    uploads: Gauge,
    gc_runs: Counter,
    gc_freed: Counter,
    gc_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    repo_bytes: Family<RepoLabels, Gauge>,
    repo_quota: Family<RepoLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepoLabels {
    repository: String,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = PromRegistry::with_prefix("berth_registry");
        let mut repositories = PromRegistry::with_prefix("berth_registry");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let received = Counter::default();
        let sent = Counter::default();
        let uploads = Gauge::default();
        let gc_runs = Counter::default();
        let gc_freed = Counter::default();
        let gc_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let repo_bytes = Family::<RepoLabels, Gauge>::default();
        let repo_quota = Family::<RepoLabels, Gauge>::default();
        registry.register(
            "gc_runs",
            "Garbage collections finished (dry runs included)",
            gc_runs.clone(),
        );
        registry.register(
            "gc_freed_bytes",
            "Bytes freed by garbage collection",
            gc_freed.clone(),
        );
        registry.register(
            "gc_last_duration_seconds",
            "Duration of the last garbage collection",
            gc_seconds.clone(),
        );
        repositories.register(
            "repository_bytes",
            "Bytes held per repository (blobs and manifests)",
            repo_bytes.clone(),
        );
        repositories.register(
            "repository_quota_bytes",
            "Quota per repository, where one applies",
            repo_quota.clone(),
        );
        registry.register(
            "requests",
            "API requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "API request latency by route (until the response head is ready)",
            latency.clone(),
        );
        registry.register(
            "received_bytes",
            "Blob bytes received in uploads",
            received.clone(),
        );
        registry.register("sent_bytes", "Blob bytes served", sent.clone());
        registry.register(
            "uploads_in_progress",
            "Upload sessions open in this process",
            uploads.clone(),
        );
        Metrics {
            registry,
            repositories,
            requests,
            latency,
            received,
            sent,
            uploads,
            gc_runs,
            gc_freed,
            gc_seconds,
            repo_bytes,
            repo_quota,
        }
    }
}

impl Metrics {
    /// Records one API request.
    pub fn observe_request(
        &self,
        route: &'static str,
        method: &str,
        status: u16,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method: method.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts uploaded blob bytes.
    pub fn bytes_received(&self, n: u64) {
        self.received.inc_by(n);
    }

    /// Counts served blob bytes.
    pub fn bytes_sent(&self, n: u64) {
        self.sent.inc_by(n);
    }

    /// Records a finished garbage collection.
    pub fn gc_finished(&self, report: &crate::gc::GcReport) {
        self.gc_runs.inc();
        if !report.dry_run {
            self.gc_freed.inc_by(report.bytes());
        }
        self.gc_seconds.set(report.seconds);
    }

    /// Sets per-repository usage and quotas (replacing what was there).
    pub fn set_usage(&self, usage: &[(String, u64, Option<u64>)]) {
        self.repo_bytes.clear();
        self.repo_quota.clear();
        for (repository, bytes, quota) in usage {
            let labels = RepoLabels {
                repository: repository.clone(),
            };
            self.repo_bytes
                .get_or_create(&labels)
                .set(i64::try_from(*bytes).unwrap_or(i64::MAX));
            if let Some(quota) = quota {
                self.repo_quota
                    .get_or_create(&labels)
                    .set(i64::try_from(*quota).unwrap_or(i64::MAX));
            }
        }
    }

    /// The text exposition, with the current number of open uploads; the per-repository
    /// metrics (names and sizes) only `with_repositories`.
    pub fn render(&self, uploads_in_progress: usize, with_repositories: bool) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        self.uploads
            .set(i64::try_from(uploads_in_progress).unwrap_or(i64::MAX));
        let mut out = String::new();
        let encoded = encode_registry(&mut out, &self.registry)
            .and_then(|()| {
                if with_repositories {
                    encode_registry(&mut out, &self.repositories)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| encode_eof(&mut out));
        if encoded.is_err() {
            out.clear();
        }
        out
    }
}
