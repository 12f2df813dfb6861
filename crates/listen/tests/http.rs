//! The HTTP accept loop over real TCP on loopback, attacked as a flood of clients would:
//! slow request heads and TLS handshakes from many source addresses, idle keep-alive
//! connections, one client opening too many connections; and what must keep working through
//! it: normal requests, slow streaming responses, upgrades, a graceful shutdown.
#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::future::Future as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use berth_listen::http::{ClientAddr, Connection, HttpServer};
use berth_listen::{Limiter, Limits};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// Half of a request head: what a slow client sends before it stops.
const HALF_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: berth.test\r\nUser-Agent: slow";

fn limits(max: usize, per_client: usize, header: u64, idle: u64) -> Limits {
    Limits {
        max_connections: max,
        max_connections_per_client: per_client,
        header_timeout: Duration::from_millis(header),
        idle_timeout: Duration::from_millis(idle),
    }
}

/// A response body that sends `chunks` chunks, one every `every`.
struct Trickle {
    chunks: usize,
    every: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.chunks == 0 {
            return Poll::Ready(None);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.chunks -= 1;
                let next = tokio::time::Instant::now() + self.every;
                self.sleep.as_mut().reset(next);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"tick\n")))))
            }
        }
    }
}

type TestBody = http_body_util::Either<Full<Bytes>, Trickle>;

async fn app(mut request: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let text = |status: StatusCode, text: String| {
        Response::builder()
            .status(status)
            .body(http_body_util::Either::Left(Full::new(Bytes::from(text))))
            .unwrap()
    };
    Ok(match request.uri().path() {
        "/stream" => Response::new(http_body_util::Either::Right(Trickle {
            chunks: 8,
            every: Duration::from_millis(250),
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        })),
        "/upload" => {
            let body = request.body_mut().collect().await.unwrap().to_bytes();
            text(StatusCode::OK, format!("got {} bytes", body.len()))
        }
        "/client" => {
            let ClientAddr(addr) = *request.extensions().get::<ClientAddr>().unwrap();
            text(StatusCode::OK, addr.ip().to_string())
        }
        "/echo" => {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let upgraded = upgrade.await.unwrap();
                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(http_body_util::Either::Left(Full::new(Bytes::new())))
                .unwrap()
        }
        _ => text(StatusCode::OK, "ok".to_owned()),
    })
}

/// A test server on a free loopback port; stopped on drop.
struct Server {
    addr: SocketAddr,
    limiter: Limiter,
    shutdown: CancellationToken,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    async fn start(limits: Limits, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limiter = Limiter::new("test", limits);
        let server = HttpServer::new(limiter.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let done = tokio::spawn(async move {
            server
                .serve(
                    listener,
                    tls,
                    |connection: Connection| berth_listen::http::tower(tower_fn(), connection),
                    stop,
                    Duration::from_secs(5),
                )
                .await;
        });
        Server {
            addr,
            limiter,
            shutdown,
            done: Some(done),
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        self.done.take().unwrap().await.unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The test app as a tower service (as an axum `Router` is).
fn tower_fn() -> TowerApp {
    TowerApp
}

#[derive(Clone)]
struct TowerApp;

impl tower_service::Service<Request<Incoming>> for TowerApp {
    type Response = Response<TestBody>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        Box::pin(app(request))
    }
}

async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Opens `count` connections from 127.0.0.2..=127.0.0.9 that send half a request head and
/// stop.
async fn slow_clients(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8);
        if let Ok(mut stream) = connect_from(source, addr).await {
            let _ = stream.write_all(HALF_HEAD).await;
            held.push(stream);
        }
    }
    held
}

/// `GET path` on a new connection from `source`, with `Connection: close`: the status and
/// the body.
async fn get_from(source: Ipv4Addr, addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = connect_from(source, addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: berth.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    read_response(&mut stream).await
}

async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (u16, String) {
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut text))
        .await
        .expect("a response in time")
        .unwrap();
    parse_response(&text)
}

fn parse_response(text: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Waits (up to `limit`) for the server to close `stream`; whether it did.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn thousands_of_slow_clients_from_many_addresses_do_not_lock_out_a_normal_one() {
    let server = Server::start(limits(256, 64, 10_000, 60_000), None).await;
    let mut flood = slow_clients(server.addr, 3000).await;
    let started = Instant::now();
    let (status, body) = get_from(Ipv4Addr::new(127, 0, 0, 20), server.addr, "/").await;
    eprintln!(
        "normal request during a flood of {} slow clients: {status} in {:?}",
        flood.len(),
        started.elapsed()
    );
    assert_eq!((status, body.as_str()), (200, "ok"));
    let stats = server.limiter.stats();
    assert!(stats.open <= 256, "{stats:?}");
    assert!(
        stats.evicted >= 3000 - 256,
        "the oldest slow clients made room: {stats:?}"
    );
    // The slow clients still open are the newest ones; the oldest were closed.
    assert!(closed_by_server(&mut flood[0], Duration::from_secs(5)).await);
    server.stop().await;
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_closed_after_the_header_timeout() {
    let server = Server::start(limits(64, 64, 300, 60_000), None).await;
    let mut slow = slow_clients(server.addr, 1).await.pop().unwrap();
    let mut silent = connect_from(Ipv4Addr::LOCALHOST, server.addr)
        .await
        .unwrap();
    assert!(closed_by_server(&mut slow, Duration::from_secs(10)).await);
    assert!(closed_by_server(&mut silent, Duration::from_secs(10)).await);
    // Bytes trickling in do not extend it: the whole head must arrive in time.
    let mut trickle = connect_from(Ipv4Addr::LOCALHOST, server.addr)
        .await
        .unwrap();
    let mut closed = false;
    for byte in HALF_HEAD.iter().cycle().take(100) {
        if trickle.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed || closed_by_server(&mut trickle, Duration::from_secs(1)).await);
    assert!(server.limiter.stats().header_timeouts >= 3);
    let (status, _) = get_from(Ipv4Addr::LOCALHOST, server.addr, "/").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_a_slow_response_is_not_idle() {
    let server = Server::start(limits(64, 64, 5_000, 400), None).await;
    // The response trickles for 2 s, five times the idle timeout: it is in flight, not idle.
    let mut stream = connect_from(Ipv4Addr::LOCALHOST, server.addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: berth.test\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&received).ends_with("0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed while the response was streaming");
        received.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        String::from_utf8_lossy(&received).matches("tick").count(),
        8
    );
    // A slow upload is in flight too once its head is complete.
    let mut upload = connect_from(Ipv4Addr::LOCALHOST, server.addr)
        .await
        .unwrap();
    upload
        .write_all(b"PUT /upload HTTP/1.1\r\nHost: berth.test\r\nContent-Length: 8\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        upload.write_all(b"x").await.unwrap();
    }
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), upload.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).ends_with("got 8 bytes"));
    // Now both are idle keep-alive connections.
    assert!(closed_by_server(&mut stream, Duration::from_secs(10)).await);
    assert!(closed_by_server(&mut upload, Duration::from_secs(10)).await);
    assert!(server.limiter.stats().idle_timeouts >= 2);
}

#[tokio::test]
async fn a_client_over_its_cap_loses_its_own_slow_connections_not_the_others() {
    let server = Server::start(limits(64, 4, 10_000, 60_000), None).await;
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 3), server.addr)
        .await
        .unwrap();
    other.write_all(HALF_HEAD).await.unwrap();
    let source = Ipv4Addr::new(127, 0, 0, 2);
    let mut mine = Vec::new();
    for _ in 0..6 {
        let mut stream = connect_from(source, server.addr).await.unwrap();
        stream.write_all(HALF_HEAD).await.unwrap();
        mine.push(stream);
    }
    // The two oldest of its six made room for the two newest.
    assert!(closed_by_server(&mut mine[0], Duration::from_secs(5)).await);
    assert!(closed_by_server(&mut mine[1], Duration::from_secs(5)).await);
    for stream in &mut mine[2..] {
        assert!(!closed_by_server(stream, Duration::from_millis(200)).await);
    }
    assert!(!closed_by_server(&mut other, Duration::from_millis(200)).await);
    // When all four are busy (an upload each), a fifth is refused.
    for stream in &mut mine[2..] {
        stream
            .write_all(b"\r\n\r\nPUT /upload HTTP/1.1\r\nHost: b\r\nContent-Length: 100\r\n\r\n")
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fifth = connect_from(source, server.addr).await.unwrap();
    let _ = fifth.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n").await;
    assert!(closed_by_server(&mut fifth, Duration::from_secs(5)).await);
    assert!(server.limiter.stats().refused >= 1);
    // Another address is served.
    let (status, body) = get_from(Ipv4Addr::new(127, 0, 0, 4), server.addr, "/client").await;
    assert_eq!((status, body.as_str()), (200, "127.0.0.4"));
}

#[tokio::test]
async fn an_upgraded_connection_keeps_its_place_and_is_never_idle() {
    let server = Server::start(limits(2, 2, 5_000, 300), None).await;
    let mut upgraded = connect_from(Ipv4Addr::LOCALHOST, server.addr)
        .await
        .unwrap();
    upgraded
        .write_all(b"GET /echo HTTP/1.1\r\nHost: b\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 512];
    let n = upgraded.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"));
    // Several idle timeouts later, the tunnel still echoes and still counts.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    upgraded.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), upgraded.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping");
    assert_eq!(server.limiter.stats().open, 1);
    // With the listener full (the tunnel and a streaming response), a newcomer is refused:
    // the tunnel, silent for a second, is not taken for an idle keep-alive connection.
    let mut streaming = connect_from(Ipv4Addr::LOCALHOST, server.addr)
        .await
        .unwrap();
    streaming
        .write_all(b"GET /stream HTTP/1.1\r\nHost: b\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 16];
    let _ = streaming.read(&mut first).await.unwrap();
    let mut newcomer = connect_from(Ipv4Addr::LOCALHOST, server.addr)
        .await
        .unwrap();
    assert!(closed_by_server(&mut newcomer, Duration::from_secs(5)).await);
    assert_eq!(server.limiter.stats().refused, 1);
    upgraded.write_all(b"pong").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), upgraded.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"pong");
    drop(streaming);
    drop(upgraded);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.limiter.stats().open, 0);
}

#[tokio::test]
async fn http2_requests_are_tracked_like_http1() {
    let server = Server::start(limits(64, 64, 5_000, 400), None).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!("http://{}/stream", server.addr);
    let body = client.get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!(
        body.matches("tick").count(),
        8,
        "streamed past the idle timeout"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(server.limiter.stats().idle_timeouts >= 1);
    assert_eq!(server.limiter.stats().open, 0);
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_and_stops_accepting() {
    let server = Server::start(limits(64, 64, 5_000, 60_000), None).await;
    let addr = server.addr;
    let streaming =
        tokio::spawn(async move { get_from(Ipv4Addr::LOCALHOST, addr, "/stream").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop().await;
    let (status, body) = streaming.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.matches("tick").count(), 8);
    assert!(connect_from(Ipv4Addr::LOCALHOST, addr).await.is_err());
}

fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed by scripts/install-deps.sh");
    assert!(status.success());
    (dir.join("cert.pem"), dir.join("key.pem"))
}

#[tokio::test]
async fn tls_handshakes_count_as_header_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let config = berth_listen::tls::server_config(&cert, &key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let server = Server::start(limits(128, 128, 400, 60_000), Some(acceptor)).await;
    // Clients that connect and never say hello, or stop in the middle of it.
    let mut silent = connect_from(Ipv4Addr::LOCALHOST, server.addr)
        .await
        .unwrap();
    let mut half_hello = connect_from(Ipv4Addr::LOCALHOST, server.addr)
        .await
        .unwrap();
    half_hello
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    assert!(closed_by_server(&mut silent, Duration::from_secs(10)).await);
    assert!(closed_by_server(&mut half_hello, Duration::from_secs(10)).await);
    // A flood of silent TLS clients larger than the cap, then a real client gets through.
    let mut flood = Vec::new();
    for i in 0..1000 {
        if let Ok(stream) =
            connect_from(Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8), server.addr).await
        {
            flood.push(stream);
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(&cert).unwrap())
        .unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let started = Instant::now();
    let tcp = connect_from(Ipv4Addr::new(127, 0, 0, 30), server.addr)
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client_config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = read_response(&mut tls).await;
    eprintln!(
        "TLS request during a flood of {} silent clients: {status} in {:?}",
        flood.len(),
        started.elapsed()
    );
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(server.limiter.stats().open <= 128);
}
