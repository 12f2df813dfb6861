//! The server's side of the admin socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::state::{DrainAnswer, DrainRequest, Health, PushedState};
use berth_proxy::MetricsSnapshot;

/// Why a call to the data plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the socket (the data plane is not running).
    #[error("no data plane answers at {path}: {source}")]
    Unreachable {
        /// The socket.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The call failed on the way.
    #[error("talking to the data plane: {0}")]
    Transport(String),
    /// The data plane answered with an error.
    #[error("the data plane answered {status}: {message}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// Its message.
        message: String,
    },
}

/// A client of one data plane's admin socket.
#[derive(Clone, Debug)]
pub struct AdminClient {
    socket: PathBuf,
    timeout: Duration,
}

impl AdminClient {
    /// A client of the socket at `socket`; each call takes at most `timeout` (a drain its
    /// own timeout more).
    pub fn new(socket: &Path, timeout: Duration) -> AdminClient {
        AdminClient {
            socket: socket.to_owned(),
            timeout,
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(Method::GET, "/health", None, self.timeout).await
    }

    /// `PUT /state`.
    pub async fn push(&self, state: &PushedState) -> Result<(), ClientError> {
        let body = serde_json::to_vec(state).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.call(Method::PUT, "/state", Some(body), self.timeout)
            .await
            .map(|_| ())
    }

    /// `POST /drain`.
    pub async fn drain(&self, request: &DrainRequest) -> Result<usize, ClientError> {
        let body =
            serde_json::to_vec(request).map_err(|e| ClientError::Transport(e.to_string()))?;
        let timeout = self.timeout + Duration::from_millis(request.timeout_ms);
        let answer: DrainAnswer = self
            .json(Method::POST, "/drain", Some(body), timeout)
            .await?;
        Ok(answer.left)
    }

    /// `GET /metrics.json`.
    pub async fn metrics(&self) -> Result<MetricsSnapshot, ClientError> {
        self.json(Method::GET, "/metrics.json", None, self.timeout)
            .await
    }

    /// `GET /metrics`.
    pub async fn prometheus(&self) -> Result<String, ClientError> {
        let body = self
            .call(Method::GET, "/metrics", None, self.timeout)
            .await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `POST /stop`.
    pub async fn stop(&self) -> Result<(), ClientError> {
        self.call(Method::POST, "/stop", None, self.timeout)
            .await
            .map(|_| ())
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let bytes = self.call(method, path, body, timeout).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Transport(e.to_string()))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        tokio::time::timeout(timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| {
                ClientError::Transport(format!("no answer to {path} within {timeout:?}"))
            })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Unreachable {
                    path: self.socket.display().to_string(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "berth-dataplane")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(ClientError::Refused {
                status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            })
        }
    }
}
