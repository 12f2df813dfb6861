//! Binding, TLS and graceful shutdown around the API router.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use berth_listen::http::{tower_per_connection, ClientAddr, HttpServer};
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
    /// No users, and an address others can reach.
    #[error("refusing to serve a registry without users on {0}: anyone who can reach it could push and delete. Give a users file (--users FILE; `berth registry hash-password` makes the hashes), listen on a loopback address (--listen 127.0.0.1:5000), or pass --allow-anonymous (allow_anonymous = true in [registry]) to serve it open on purpose")]
    Open(SocketAddr),
    /// `allow_anonymous` with users, where it would do nothing.
    #[error("allow_anonymous opens a registry without users to everyone, but this one has users (a users file, or berth server's own admin): give anonymous clients rights in the users file's [anonymous] table, or set anonymous_pull = true, instead")]
    AnonymousWithUsers,
    /// The built-in admin cannot be added.
    #[error("{0}")]
    Admin(String),
}

/// Opens the registry's storage and policy.
pub fn open_registry(settings: &Settings) -> Result<Arc<Registry>, ServeError> {
    let store = FsBlobStore::open(&settings.data_dir)?;
    let meta = Metadata::open(&settings.data_dir.join("metadata.redb"))?;
    let has_users = settings.users.is_some() || settings.admin.is_some();
    if settings.allow_anonymous && has_users {
        return Err(ServeError::AnonymousWithUsers);
    }
    if !has_users && !settings.allow_anonymous && !settings.listen.ip().is_loopback() {
        return Err(ServeError::Open(settings.listen));
    }
    let mut auth = match &settings.users {
        Some(path) => Authorizer::from_file(path, settings.anonymous_pull)?,
        None if settings.admin.is_some() => Authorizer::closed(settings.anonymous_pull),
        None => Authorizer::open(),
    }
    .with_login_limits(settings.login_limits);
    if let Some(admin) = &settings.admin {
        auth.add_admin(&admin.name, admin.hash.clone())
            .map_err(ServeError::Admin)?;
    }
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

/// `/metrics`: request and GC figures for every caller; repository names and sizes only for
/// admins (and for everyone on a registry without users, whose catalog is open anyway).
async fn metrics(
    State(registry): State<Arc<Registry>>,
    headers: HeaderMap,
    client: Option<axum::Extension<ClientAddr>>,
) -> Response {
    let client = client.map(|axum::Extension(ClientAddr(addr))| addr.ip());
    let with_repositories = match registry.auth.authenticate(&headers, client).await {
        Ok(principal) => registry.auth.require_admin(&principal).is_ok(),
        Err(e) => return e.into_response(),
    };
    if !with_repositories {
        return metrics_response(registry.metrics.render(registry.uploads.len(), false));
    }
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
    metrics_response(registry.metrics.render(registry.uploads.len(), true))
}

fn metrics_response(text: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
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
