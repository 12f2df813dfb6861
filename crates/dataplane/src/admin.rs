//! The admin socket: HTTP/1.1 over a Unix socket in the data plane's directory, mode 0600
//! (root, who runs the server, is the only client). `GET /health`, `PUT /state` (a
//! [`PushedState`]), `POST /drain` (a [`DrainRequest`]), `GET /metrics.json` (the proxy's
//! counters), `GET /metrics` (Prometheus text), `POST /stop`.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::engine::Engine;
use crate::state::{DrainAnswer, DrainRequest, Health, PushedState};

/// The largest request body taken (a push of every route and endpoint).
pub const MAX_BODY: usize = 64 << 20;

/// How long a client may take with one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The socket's file name in the data plane's directory.
pub const SOCKET: &str = "admin.sock";

/// What the admin socket answers with besides the engine.
pub struct Admin {
    /// The engine.
    pub engine: Arc<Engine>,
    /// What `GET /health` says of the binary and listeners (the pid and version are live).
    pub binary: String,
    /// The listeners, as given on the command line.
    pub listeners: String,
    /// Fired by `POST /stop`.
    pub stop: StopSignal,
}

/// Binds the admin socket at `path` (a stale one is replaced), readable by root only.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the admin socket until `admin.stop` fires.
pub async fn serve(listener: UnixListener, admin: Arc<Admin>) {
    let stop = admin.stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.wait() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let admin = admin.clone();
                async move {
                    let response = match tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        handle(&admin, request),
                    )
                    .await
                    {
                        Ok(response) => response,
                        Err(_) => text(StatusCode::REQUEST_TIMEOUT, "the request took too long"),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(admin: &Admin, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("reading the body: {e}"),
            )
        }
    };
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/health") => json(&Health {
            pid: std::process::id(),
            version: admin.engine.version(),
            binary: admin.binary.clone(),
            listeners: admin.listeners.clone(),
        }),
        (&Method::PUT, "/state") => match serde_json::from_slice::<PushedState>(&body) {
            Ok(pushed) => {
                let version = pushed.version;
                match admin.engine.apply(pushed) {
                    Ok(()) => {
                        tracing::debug!(version, "state applied");
                        text(StatusCode::NO_CONTENT, "")
                    }
                    Err(e) => {
                        tracing::warn!(version, error = %e, "a push was not applied");
                        text(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string())
                    }
                }
            }
            Err(e) => text(StatusCode::BAD_REQUEST, &format!("not a state: {e}")),
        },
        (&Method::POST, "/drain") => match serde_json::from_slice::<DrainRequest>(&body) {
            Ok(request) => json(&DrainAnswer {
                left: admin.engine.drain(&request).await,
            }),
            Err(e) => text(
                StatusCode::BAD_REQUEST,
                &format!("not a drain request: {e}"),
            ),
        },
        (&Method::GET, "/metrics.json") => json(&admin.engine.metrics()),
        (&Method::GET, "/metrics") => text(StatusCode::OK, &admin.engine.prometheus()),
        (&Method::POST, "/stop") => {
            admin.stop.fire();
            text(StatusCode::ACCEPTED, "stopping")
        }
        _ => text(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(message.to_owned())))
        .unwrap_or_default()
}

/// The path of the admin socket in the data plane's directory.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// A one-shot stop signal shared by the admin socket and the process.
#[derive(Clone)]
pub struct StopSignal(Arc<watch::Sender<bool>>);

impl Default for StopSignal {
    fn default() -> Self {
        StopSignal(Arc::new(watch::Sender::new(false)))
    }
}

impl StopSignal {
    /// Fires it.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    /// Waits until it fires.
    pub async fn wait(&self) {
        let mut fired = self.0.subscribe();
        let _ = fired.wait_for(|fired| *fired).await;
    }
}
