//! Binding, TLS and graceful shutdown around the API router.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use berth_listen::http::{tower_per_connection, HttpServer};
use berth_listen::tls::{TlsAcceptor, TlsFilesError};
use berth_listen::Limiter;
use tokio_util::sync::CancellationToken;

use crate::api::{dispatch, Policy, Registry, Uploads};
use crate::auth::{Authorizer, UsersFileError};
use crate::config::Settings;
use crate::metadata::{Metadata, MetadataError};
use crate::metrics::Metrics;
use crate::storage::{FsBlobStore, StorageError};

/// Why the registry cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The storage directory cannot be used.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The metadata database cannot be opened.
    #[error("{0}")]
    Metadata(#[from] MetadataError),
    /// The users file is unusable.
    #[error("{0}")]
    Users(#[from] UsersFileError),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS files are unusable.
    #[error("TLS certificate/key: {0}")]
    Tls(#[from] TlsFilesError),
    /// Serving failed.
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// Opens the registry's storage and policy.
pub fn open_registry(settings: &Settings) -> Result<Arc<Registry>, ServeError> {
    let store = FsBlobStore::open(&settings.data_dir)?;
    let meta = Metadata::open(&settings.data_dir.join("metadata.redb"))?;
    let auth = match &settings.users {
        Some(path) => Authorizer::from_file(path, settings.anonymous_pull)?,
        None => Authorizer::open(),
    }
    .with_login_limits(settings.login_limits);
    Ok(Arc::new(Registry {
        store: Arc::new(store),
        meta,
        auth: Arc::new(auth),
        uploads: Uploads::default(),
        metrics: Metrics::default(),
        limits: settings.limits,
        policy: Policy {
            gc: settings.gc,
            retention: settings.retention.clone(),
            quotas: settings.quotas.clone(),
        },
        blob_locks: crate::locks::BlobLocks::default(),
        gc_running: tokio::sync::Mutex::new(()),
        pulls: std::sync::Mutex::default(),
    }))
}

/// The HTTP application: the distribution API plus `/metrics` and `/healthz`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .merge(crate::admin::routes())
        .fallback(dispatch)
        .with_state(registry)
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    match crate::admin::repository_usage(&registry).await {
        Ok(repositories) => {
            let usage: Vec<_> = repositories
                .into_iter()
                .map(|e| (e.usage.repository, e.usage.bytes, e.quota))
                .collect();
            registry.metrics.set_usage(&usage);
        }
        Err(e) => tracing::warn!(error = e.message, "usage metrics unavailable"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        registry.metrics.render(registry.uploads.len()),
    )
}

/// A registry bound to its address, ready to serve.
pub struct Server {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    registry: Arc<Registry>,
    tls: Option<TlsAcceptor>,
    limiter: Limiter,
}

impl Server {
    /// Opens storage and binds the listen address.
    pub async fn bind(settings: &Settings) -> Result<Server, ServeError> {
        let registry = open_registry(settings)?;
        let tls = match &settings.tls {
            Some(files) => Some(berth_listen::tls::acceptor(&files.cert, &files.key)?),
            None => None,
        };
        let bind_err = |source| ServeError::Bind {
            addr: settings.listen,
            source,
        };
        let listener = std::net::TcpListener::bind(settings.listen).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        Ok(Server {
            listener,
            addr,
            registry,
            tls,
            limiter: Limiter::new("registry", settings.connection_limits),
        })
    }

    /// Its connection limiter (caps, timeouts and counters).
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registry's state, for a process that serves it and also uses it directly (`berth
    /// server` pins the images of its releases through it).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The base URL clients use.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish (up to 10 s).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        if let Some(interval) = self.registry.policy.gc.interval {
            tokio::spawn(crate::gc::schedule(self.registry.clone(), interval));
        }
        let app = router(self.registry);
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopper.cancel();
        });
        let listener =
            tokio::net::TcpListener::from_std(self.listener).map_err(ServeError::Serve)?;
        HttpServer::new(self.limiter)
            .serve(
                listener,
                self.tls,
                tower_per_connection(app),
                stop,
                Duration::from_secs(10),
            )
            .await;
        Ok(())
    }
}
