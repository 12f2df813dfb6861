//! Applies the pushed state to the proxy and the catalog, keeps it on disk, and drains.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_discovery::{Catalog, Change};
use berth_proxy::{DrainResult, MetricsSnapshot, Proxy};
use tokio::sync::watch;

use crate::state::{self, DrainRequest, PushedState};

/// Why a push was not applied.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The proxy refused the routes (it keeps the previous ones).
    #[error("the proxy refused the routes: {0}")]
    Routes(#[from] berth_proxy::RouteError),
    /// The state could not be written to disk (it is applied, not kept).
    #[error("keeping the state in {path}: {source}")]
    Save {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The data plane's state and the servers it feeds.
pub struct Engine {
    proxy: Option<Arc<Proxy>>,
    catalog: Catalog,
    file: PathBuf,
    /// Every upstream a table named since the start, so that a drain by address finds its
    /// ports (the table no longer names them by then).
    upstreams: Mutex<BTreeSet<SocketAddr>>,
    applied: watch::Sender<u64>,
}

impl Engine {
    /// An engine over `proxy` (if this data plane proxies) and `catalog`, keeping its state
    /// in `file`. The state last kept there is applied at once: a restarted data plane
    /// serves its last-known routes before any server reaches it.
    pub fn new(
        proxy: Option<Arc<Proxy>>,
        catalog: Catalog,
        file: PathBuf,
    ) -> Result<Engine, EngineError> {
        let engine = Engine {
            proxy,
            catalog,
            file,
            upstreams: Mutex::new(BTreeSet::new()),
            applied: watch::Sender::new(0),
        };
        match state::load(&engine.file) {
            Ok(Some(kept)) => {
                tracing::info!(
                    routes = kept.routes.len(),
                    endpoints = kept.endpoints.len(),
                    "serving the last-known state"
                );
                engine.install(&kept)?;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(file = %engine.file.display(), error = %e, "the last-known state cannot be read: starting empty");
            }
        }
        Ok(engine)
    }

    /// The catalog it feeds.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The version of the last push applied since the start (0: none yet).
    pub fn version(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Applies a push and keeps it on disk.
    pub fn apply(&self, pushed: PushedState) -> Result<(), EngineError> {
        self.install(&pushed)?;
        let saved = state::save(&self.file, &pushed);
        self.applied.send_replace(pushed.version);
        saved.map_err(|source| EngineError::Save {
            path: self.file.display().to_string(),
            source,
        })
    }

    fn install(&self, pushed: &PushedState) -> Result<(), EngineError> {
        if let Some(proxy) = &self.proxy {
            let named: Vec<SocketAddr> = pushed
                .routes
                .iter()
                .flat_map(|route| route.groups.iter().flat_map(|g| g.upstreams.clone()))
                .collect();
            proxy.set_routes(pushed.routes.clone())?;
            self.upstreams
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(named);
        }
        let wanted: BTreeMap<&str, &berth_discovery::Endpoint> = pushed
            .endpoints
            .iter()
            .map(|e| (e.id.as_str(), e))
            .collect();
        let snapshot = self.catalog.snapshot();
        let mut changes: Vec<Change> = snapshot
            .endpoints()
            .filter(|e| !wanted.contains_key(e.id.as_str()))
            .map(|e| Change::Deregister(e.id.clone()))
            .collect();
        changes.extend(
            wanted
                .values()
                .filter(|e| snapshot.endpoint(&e.id) != Some(**e))
                .map(|e| Change::Register((*e).clone())),
        );
        if !changes.is_empty() {
            self.catalog.apply(changes);
        }
        Ok(())
    }

    /// Waits until the push `request.after_version` is applied (or the timeout passes), then
    /// until no request is in flight to `request.address`; returns how many still were when
    /// it gave up.
    pub async fn drain(&self, request: &DrainRequest) -> usize {
        let timeout = Duration::from_millis(request.timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut applied = self.applied.subscribe();
        let _ = tokio::time::timeout_at(
            deadline,
            applied.wait_for(|version| *version >= request.after_version),
        )
        .await;
        let Some(proxy) = &self.proxy else {
            return 0;
        };
        let ports: Vec<SocketAddr> = {
            let mut upstreams = self
                .upstreams
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let named: Vec<SocketAddr> = upstreams
                .iter()
                .filter(|u| u.ip() == request.address)
                .copied()
                .collect();
            for upstream in &named {
                upstreams.remove(upstream);
            }
            named
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let drains = ports
            .into_iter()
            .map(|upstream| proxy.drain(upstream, left));
        futures::future::join_all(drains)
            .await
            .into_iter()
            .map(|result| match result {
                DrainResult::Drained => 0,
                DrainResult::TimedOut { in_flight } => in_flight,
            })
            .sum()
    }

    /// The proxy's counters now (empty without a proxy).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.proxy
            .as_ref()
            .map(|proxy| proxy.metrics())
            .unwrap_or_default()
    }

    /// The proxy's metrics in Prometheus' text format (empty without a proxy).
    pub fn prometheus(&self) -> String {
        let Some(proxy) = &self.proxy else {
            return String::new();
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(proxy.prometheus_collector()));
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

#[cfg(test)]
mod tests;
