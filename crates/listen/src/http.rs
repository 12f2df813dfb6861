//! The HTTP accept loop every berth HTTP listener shares (the registry, the `/v1` API, the
//! Consul-compatible catalog and the proxy): HTTP/1.1 and HTTP/2 (by preface or ALPN), TLS
//! optional, each connection admitted by a [`Limiter`] and closed when its [`Permit`]
//! expires, and a graceful shutdown.
//!
//! A connection's first request head (its TLS handshake included) must arrive within the
//! header timeout; afterwards the connection may stay open with no request in flight for the
//! idle timeout. A request is in flight from its complete head until its response body has
//! been sent, so streaming downloads, long uploads, long-polling and upgraded connections
//! (which keep their permit in their I/O) are never idle.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::accept::Acceptor;
use crate::limiter::{Expiry, InFlight, Limiter, Permit};

/// How long a connection closed for being idle gets to end politely (HTTP/2 GOAWAY).
const IDLE_GOODBYE: Duration = Duration::from_secs(1);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who is on the other end of a connection, for the service that serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether it came over TLS.
    pub tls: bool,
}

/// The client's address, in the extensions of every request served through [`tower`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Serves HTTP on listening sockets within a [`Limiter`]'s limits. Cheap to clone.
#[derive(Clone)]
pub struct HttpServer {
    limiter: Limiter,
    builder: Arc<auto::Builder<TokioExecutor>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// A server admitting connections through `limiter` (shared by every listener it
    /// serves, and with other servers given the same limiter).
    pub fn new(limiter: Limiter) -> HttpServer {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The limiter bounds request heads and idle time. hyper's own header timer would also
        // close keep-alive connections idle for its 30 s, whatever the idle timeout says.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None);
        builder.http2().timer(TokioTimer::new());
        HttpServer {
            limiter,
            builder: Arc::new(builder),
        }
    }

    /// Its limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Accepts connections on `listener` (over TLS with `tls`) and serves each with the
    /// service `make_service` returns for it, until `shutdown` is cancelled. Then it stops
    /// accepting, asks every connection to finish its requests and close, and returns when
    /// they have, or after `grace` (dropping what is left).
    pub async fn serve<M, S, B>(
        &self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        make_service: M,
        shutdown: CancellationToken,
        grace: Duration,
    ) where
        M: Fn(Connection) -> S,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let acceptor = Acceptor::new(listener, self.limiter.clone());
        let mut connections = JoinSet::new();
        loop {
            let (stream, peer, permit) = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = acceptor.accept() => accepted,
            };
            let service = make_service(Connection {
                peer,
                tls: tls.is_some(),
            });
            connections.spawn(connection(
                stream,
                peer,
                permit,
                tls.clone(),
                service,
                Arc::clone(&self.builder),
                shutdown.clone(),
            ));
            while connections.try_join_next().is_some() {}
        }
        drop(acceptor);
        let drained = tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = connections.len(),
                "connections still open after the shutdown grace period: closing them"
            );
            connections.shutdown().await;
        }
    }
}

/// One connection: the TLS handshake (if any) and the HTTP connection, raced against the
/// permit's expiry and the shutdown.
async fn connection<S, B>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    permit: Permit,
    tls: Option<TlsAcceptor>,
    service: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shutdown: CancellationToken,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // Without TCP_NODELAY a response whose head and body go out in two writes waits for the
    // client's delayed ACK (~40 ms) on every keep-alive request.
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = tls else {
        return serve_io(stream, peer, permit, service, &builder, shutdown).await;
    };
    let stream = tokio::select! {
        biased;
        handshake = acceptor.accept(stream) => match handshake {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%peer, %error, "tls handshake failed");
                return;
            }
        },
        expiry = permit.expired() => {
            tracing::debug!(%peer, ?expiry, "closing a connection during its tls handshake");
            return;
        }
        () = shutdown.cancelled() => return,
    };
    serve_io(stream, peer, permit, service, &builder, shutdown).await;
}

async fn serve_io<I, S, B>(
    io: I,
    peer: SocketAddr,
    permit: Permit,
    service: S,
    builder: &auto::Builder<TokioExecutor>,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let io = TokioIo::new(Counted {
        io,
        _permit: permit.clone(),
    });
    let service = Tracked {
        inner: service,
        permit: permit.clone(),
    };
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let goodbye = tokio::select! {
        biased;
        ended = conn.as_mut() => {
            if let Err(error) = ended {
                tracing::debug!(%peer, %error, "client connection ended with an error");
            }
            return;
        }
        expiry = permit.expired() => match expiry {
            Expiry::IdleTimeout => Some(IDLE_GOODBYE),
            Expiry::HeaderTimeout | Expiry::Evicted => {
                tracing::debug!(%peer, ?expiry, "closing a connection that sent no request");
                return;
            }
        },
        // The server bounds the whole shutdown by its grace period.
        () = shutdown.cancelled() => None,
    };
    conn.as_mut().graceful_shutdown();
    let ended = match goodbye {
        Some(limit) => tokio::time::timeout(limit, conn).await.ok(),
        None => Some(conn.await),
    };
    if let Some(Err(error)) = ended {
        tracing::debug!(%peer, %error, "client connection ended with an error");
    }
}

/// A connection's I/O, holding its permit: the connection counts until the socket closes,
/// even when an upgrade has taken it out of the HTTP connection.
struct Counted<I> {
    io: I,
    _permit: Permit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A service whose requests count as in flight from their head until their response body
/// has been sent.
struct Tracked<S> {
    inner: S,
    permit: Permit,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.permit.request();
        TrackedFuture {
            inner: self.inner.call(request),
            in_flight: Some(in_flight),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response on its way; the request stays in flight.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let mut in_flight = this.in_flight.take();
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // The connection becomes the upgrade's: busy until it closes.
            if let Some(in_flight) = in_flight.take() {
                in_flight.hold_until_closed();
            }
        }
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, in_flight })))
    }
}

pin_project_lite::pin_project! {
    /// A response body whose request stays in flight until it has been sent.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.in_flight.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A tower service (an axum `Router`) as the service of one connection: every request gets
/// the client's address as a [`ClientAddr`] extension.
pub fn tower<S>(service: S, connection: Connection) -> TowerService<S> {
    TowerService {
        inner: TowerToHyperService::new(service),
        peer: connection.peer,
    }
}

/// See [`tower`].
#[derive(Clone, Debug)]
pub struct TowerService<S> {
    inner: TowerToHyperService<S>,
    peer: SocketAddr,
}

impl<S> hyper::service::Service<Request<Incoming>> for TowerService<S>
where
    TowerToHyperService<S>: hyper::service::Service<Request<Incoming>>,
{
    type Response =
        <TowerToHyperService<S> as hyper::service::Service<Request<Incoming>>>::Response;
    type Error = <TowerToHyperService<S> as hyper::service::Service<Request<Incoming>>>::Error;
    type Future = <TowerToHyperService<S> as hyper::service::Service<Request<Incoming>>>::Future;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ClientAddr(self.peer));
        self.inner.call(request)
    }
}

/// A `make_service` for [`HttpServer::serve`] that serves `service` (cloned per
/// connection) through [`tower`].
pub fn tower_per_connection<S: Clone>(service: S) -> impl Fn(Connection) -> TowerService<S> {
    move |connection| tower(service.clone(), connection)
}
