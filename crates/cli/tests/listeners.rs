//! Every network listener of the real `berth` binary, attacked with floods of connections:
//! the registry (plain and TLS), the `/v1` API, the Consul-compatible catalog, the proxy
//! (HTTP and HTTPS) and DNS over TCP. Each must bound how long a client takes to send its
//! first request (TLS handshake included), how long an idle connection stays, how many
//! connections one client and all clients hold, and keep answering a normal client while
//! thousands of half-sent requests are held open against it.
//!
//! Normal requests are made with real clients (`curl`, `dig`) from their own loopback
//! address; the slow clients come from 127.0.0.2-127.0.0.9. `BERTH_BIN` runs the tests
//! against another build of `berth` (e.g. an older one, to see them fail).
#![allow(clippy::unwrap_used, missing_docs)]

use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn berth_binary() -> PathBuf {
    std::env::var_os("BERTH_BIN").map_or_else(|| env!("CARGO_BIN_EXE_berth").into(), PathBuf::from)
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http,
    Https,
    Dns,
}

/// One listener under attack.
#[derive(Clone, Debug)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    protocol: Protocol,
    /// The path a normal request asks for, and the status it must get.
    path: &'static str,
    status: u16,
    /// A bearer token the path needs.
    token: Option<String>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

impl Target {
    /// The bytes a slow client sends before it stops: half a request head, half a TLS
    /// ClientHello, one byte of a DNS message's length.
    fn slow_bytes(&self) -> &'static [u8] {
        match self.protocol {
            Protocol::Http => b"GET / HTTP/1.1\r\nHost: berth.test\r\nUser-Agent: slo",
            Protocol::Https => &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
            Protocol::Dns => &[0x00],
        }
    }

    /// A normal client's request from `source` with a real client, which gives up after
    /// 10 s: how long it took to get the expected answer, or what went wrong.
    fn normal_request(&self, source: Ipv4Addr, ca: &Path) -> Result<Duration, String> {
        let started = Instant::now();
        match self.protocol {
            Protocol::Http | Protocol::Https => {
                let scheme = if self.protocol == Protocol::Https {
                    "https"
                } else {
                    "http"
                };
                let url = format!("{scheme}://localhost:{}{}", self.addr.port(), self.path);
                let mut curl = Command::new("curl");
                curl.args([
                    "-sS",
                    "--max-time",
                    "10",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .args(["--interface", &source.to_string()])
                .args([
                    "--resolve",
                    &format!("localhost:{}:{}", self.addr.port(), self.addr.ip()),
                ])
                .arg("--cacert")
                .arg(ca)
                .arg(&url);
                if let Some(token) = &self.token {
                    curl.args(["-H", &format!("Authorization: Bearer {token}")]);
                }
                let out = curl
                    .output()
                    .expect("curl is installed by scripts/install-deps.sh");
                let status = String::from_utf8_lossy(&out.stdout);
                if status != self.status.to_string() {
                    return Err(format!(
                        "{self}: a normal request got {status} instead of {}: {}",
                        self.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
            Protocol::Dns => {
                let out = Command::new("dig")
                    .args(["+tcp", "+tries=1", "+time=10", "-b", &source.to_string()])
                    .args(["-p", &self.addr.port().to_string()])
                    .arg(format!("@{}", self.addr.ip()))
                    .arg("nothing.berth")
                    .output()
                    .expect("dig is installed by scripts/install-deps.sh");
                let text = String::from_utf8_lossy(&out.stdout);
                if !text.contains("status: NXDOMAIN") {
                    return Err(format!(
                        "{self}: a normal question got no answer: {}",
                        text.trim()
                    ));
                }
            }
        }
        Ok(started.elapsed())
    }

    /// [`Target::normal_request`] off the async threads.
    async fn normal_request_from(&self, source: Ipv4Addr, ca: &Path) -> Result<Duration, String> {
        let (target, ca) = (self.clone(), ca.to_owned());
        tokio::task::spawn_blocking(move || target.normal_request(source, &ca))
            .await
            .unwrap()
    }

    /// One complete request on a new connection from `source`, whose answer is read to
    /// its end; the connection is left open for the server to keep or close.
    async fn served_connection(&self, source: Ipv4Addr) -> TcpStream {
        let mut stream = connect_from(source, self.addr).await.unwrap();
        match self.protocol {
            Protocol::Http => {
                let auth = self
                    .token
                    .as_ref()
                    .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
                let head = format!(
                    "GET {} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n",
                    self.path
                );
                stream.write_all(head.as_bytes()).await.unwrap();
                let status = read_http_response(&mut stream).await;
                assert_eq!(status, self.status, "{self}");
            }
            Protocol::Dns => {
                stream.write_all(&dns_question(0x4242)).await.unwrap();
                let mut length = [0u8; 2];
                tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut length))
                    .await
                    .expect("an answer in time")
                    .unwrap();
                let mut answer = vec![0u8; usize::from(u16::from_be_bytes(length))];
                stream.read_exact(&mut answer).await.unwrap();
                assert_eq!(&answer[..2], &[0x42, 0x42], "{self}");
            }
            Protocol::Https => unreachable!("keep-alive over TLS is tested in berth-listen"),
        }
        stream
    }
}

/// `nothing.berth. IN A`, framed for DNS over TCP.
fn dns_question(id: u16) -> Vec<u8> {
    let mut message = id.to_be_bytes().to_vec();
    message.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    message.extend_from_slice(b"\x07nothing\x05berth\x00\x00\x01\x00\x01");
    let mut framed = u16::try_from(message.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(&message);
    framed
}

/// Reads one HTTP/1.1 response (Content-Length or chunked) and returns its status.
async fn read_http_response(stream: &mut TcpStream) -> u16 {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let head = head.to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap());
            let complete = match length {
                Some(length) => body.len() >= length,
                None => body.ends_with("0\r\n\r\n"),
            };
            if complete {
                return head.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed before the response ended: {text:?}");
        received.extend_from_slice(&buf[..n]);
    }
}

async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    tokio::time::timeout(Duration::from_secs(1), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

/// A connection that sent `target`'s slow bytes and stopped.
async fn slow_client(source: Ipv4Addr, target: &Target) -> std::io::Result<TcpStream> {
    let mut stream = connect_from(source, target.addr).await?;
    stream.write_all(target.slow_bytes()).await?;
    Ok(stream)
}

/// The source address of the n-th slow client: 127.0.0.2 to 127.0.0.9 in turn.
fn flood_source(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(n % 8).unwrap())
}

/// Waits (up to `limit`) for the server to close `stream`; whether it did.
async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> bool {
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

/// Which of `streams` the server closed: waits until at least `expect` are (or `limit`
/// passed), then a little longer to see whether more go.
async fn closed_ones(streams: &mut [TcpStream], expect: usize, limit: Duration) -> Vec<bool> {
    let deadline = Instant::now() + limit;
    let mut closed = vec![false; streams.len()];
    loop {
        look_for_closed(streams, &mut closed).await;
        if closed.iter().filter(|c| **c).count() >= expect || Instant::now() > deadline {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    look_for_closed(streams, &mut closed).await;
    closed
}

async fn look_for_closed(streams: &mut [TcpStream], closed: &mut [bool]) {
    for (stream, closed) in streams.iter_mut().zip(closed.iter_mut()) {
        if !*closed {
            *closed = closed_by_server(stream, Duration::from_millis(20)).await;
        }
    }
}

/// A process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `berth server` with every listener, and a standalone TLS registry, on free loopback
/// ports in a temporary root; killed on drop.
struct Listeners {
    targets: Vec<Target>,
    ca: PathBuf,
    _processes: Vec<Process>,
    _dir: tempfile::TempDir,
}

/// How the processes run.
#[derive(Default)]
struct Setup {
    /// Run under this open-files limit (soft and hard), as a smaller host would.
    open_files: Option<u64>,
    /// Environment for both processes (limits).
    env: Vec<(&'static str, String)>,
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed by scripts/install-deps.sh");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA and a certificate for `localhost` and 127.0.0.1 signed by it, in `dir`.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
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
            "/CN=berth test ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ],
    );
}

/// Starts `berth ARGS` (under `setup`) and returns it with the lines it printed up to and
/// including the one containing `ready`.
fn start(args: &[&str], setup: &Setup, ready: &str) -> (Process, Vec<String>) {
    let mut command = match setup.open_files {
        Some(limit) => {
            let mut prlimit = Command::new("prlimit");
            prlimit
                .arg(format!("--nofile={limit}:{limit}"))
                .arg(berth_binary());
            prlimit
        }
        None => Command::new(berth_binary()),
    };
    command
        .args(args)
        .env("BERTH_LOG", "warn")
        .envs(setup.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let process = Process(child);
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.contains(ready);
        lines.push(line);
        if done {
            return (process, lines);
        }
    }
    panic!("berth {args:?} exited before printing {ready:?}: {lines:?}");
}

/// The address after `prefix` in the line that contains it.
fn address_in(lines: &[String], prefix: &str) -> SocketAddr {
    let line = lines
        .iter()
        .find(|l| l.contains(prefix))
        .unwrap_or_else(|| panic!("no line with {prefix:?} in {lines:?}"));
    let rest = &line[line.find(prefix).unwrap() + prefix.len()..];
    let rest = rest
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

impl Listeners {
    fn start(setup: Setup) -> Listeners {
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path());
        let config = dir.path().join("node.toml");
        std::fs::write(&config, "[node]\nruntime = \"runc\"\n").unwrap();
        let root = dir.path().join("root");
        let cert = format!(
            "localhost={}:{}",
            dir.path().join("leaf.pem").display(),
            dir.path().join("leaf.key").display()
        );
        let (server, lines) = start(
            &[
                "--root",
                root.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "server",
                "--listen",
                "127.0.0.1:0",
                "--registry-listen",
                "127.0.0.1:0",
                "--dns-listen",
                "127.0.0.1:0",
                "--catalog-listen",
                "127.0.0.1:0",
                "--proxy-listen",
                "127.0.0.1:0",
                "--proxy-tls-listen",
                "127.0.0.1:0",
                "--proxy-cert",
                &cert,
            ],
            &setup,
            "berth server listening on",
        );
        let token = std::fs::read_to_string(root.join("server.token"))
            .unwrap()
            .trim()
            .to_owned();
        let (registry, registry_lines) = start(
            &[
                "registry",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                dir.path().join("tls-registry").to_str().unwrap(),
                "--tls-cert",
                dir.path().join("leaf.pem").to_str().unwrap(),
                "--tls-key",
                dir.path().join("leaf.key").to_str().unwrap(),
            ],
            &setup,
            "berth registry listening on",
        );
        let target = |name, addr, protocol, path, status, token: Option<&String>| Target {
            name,
            addr,
            protocol,
            path,
            status,
            token: token.cloned(),
        };
        let targets = vec![
            target(
                "registry",
                address_in(&lines, "berth registry listening on "),
                Protocol::Http,
                "/healthz",
                200,
                None,
            ),
            target(
                "registry over TLS",
                address_in(&registry_lines, "berth registry listening on "),
                Protocol::Https,
                "/v2/",
                200,
                None,
            ),
            target(
                "api",
                address_in(&lines, "berth server listening on "),
                Protocol::Http,
                "/v1/apps",
                200,
                Some(&token),
            ),
            target(
                "catalog",
                address_in(&lines, "berth catalog (Consul-compatible) listening on "),
                Protocol::Http,
                "/v1/catalog/services",
                200,
                None,
            ),
            target(
                "proxy",
                address_in(&lines, "berth proxy listening on http://"),
                Protocol::Http,
                "/",
                404,
                None,
            ),
            target(
                "proxy over TLS",
                address_in(&lines, "berth proxy listening on https://"),
                Protocol::Https,
                "/",
                404,
                None,
            ),
            target(
                "dns over tcp",
                address_in(&lines, "berth dns listening on "),
                Protocol::Dns,
                "",
                0,
                None,
            ),
        ];
        Listeners {
            targets,
            ca: dir.path().join("ca.pem"),
            _processes: vec![server, registry],
            _dir: dir,
        }
    }

    /// Every listener with these limits: `berth server`'s through `BERTH_*_LIMITS`, the
    /// registries' through `BERTH_REGISTRY_*` (the built-in registry, which takes its limits
    /// from the config file, is replaced by a standalone one).
    fn with_limits(limits: &str) -> Listeners {
        let mut env = registry_env(limits);
        for name in [
            "BERTH_API_LIMITS",
            "BERTH_CATALOG_LIMITS",
            "BERTH_PROXY_LIMITS",
            "BERTH_DNS_LIMITS",
        ] {
            env.push((name, limits.to_owned()));
        }
        let mut listeners = Listeners::start(Setup {
            open_files: None,
            env,
        });
        let dir = listeners._dir.path().join("plain-registry");
        let (plain, lines) = start(
            &[
                "registry",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                dir.to_str().unwrap(),
            ],
            &Setup {
                open_files: None,
                env: registry_env(limits),
            },
            "berth registry listening on",
        );
        listeners._processes.push(plain);
        let registry = listeners
            .targets
            .iter_mut()
            .find(|t| t.name == "registry")
            .unwrap();
        registry.addr = address_in(&lines, "berth registry listening on ");
        listeners
    }
}

/// The environment that gives a standalone registry `limits`.
fn registry_env(limits: &str) -> Vec<(&'static str, String)> {
    limits
        .split(',')
        .map(|item| {
            let (key, value) = item.split_once('=').unwrap();
            let name = match key {
                "max_connections" => "BERTH_REGISTRY_MAX_CONNECTIONS",
                "max_connections_per_client" => "BERTH_REGISTRY_MAX_CONNECTIONS_PER_CLIENT",
                "header_timeout" => "BERTH_REGISTRY_HEADER_TIMEOUT",
                "idle_timeout" => "BERTH_REGISTRY_IDLE_TIMEOUT",
                _ => panic!("{key}"),
            };
            (name, value.to_owned())
        })
        .collect()
}

/// Opens `count` slow connections to `target`, from 127.0.0.2-127.0.0.9, and holds them;
/// then keeps opening new ones (up to twice as many) until stopped, so that the pressure
/// lasts while a normal client is served.
struct Flood {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(usize, usize)>,
}

impl Flood {
    async fn start(target: &Target, count: usize) -> Flood {
        let target = target.clone();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (filled_tx, filled_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut held = Vec::with_capacity(2 * count);
            let (mut opened, mut failed, mut failing) = (0, 0, 0);
            let mut filled = Some(filled_tx);
            while !*stopped.borrow() && opened + failed < 2 * count {
                match slow_client(flood_source(opened + failed), &target).await {
                    Ok(stream) => {
                        opened += 1;
                        failing = 0;
                        held.push(stream);
                    }
                    Err(_) => {
                        failed += 1;
                        failing += 1;
                    }
                }
                // Full when `count` were tried, or when the server stopped accepting.
                if opened + failed >= count || failing >= 5 {
                    if let Some(filled) = filled.take() {
                        let _ = filled.send(());
                    }
                    // Then a steady trickle of new slow clients.
                    tokio::select! {
                        _ = stopped.changed() => {}
                        () = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                }
            }
            if let Some(filled) = filled.take() {
                let _ = filled.send(());
            }
            let _ = stopped.wait_for(|stop| *stop).await;
            drop(held);
            (opened, failed)
        });
        let _ = filled_rx.await;
        Flood { stop, task }
    }

    /// Stops it: how many connections were opened, and how many attempts failed.
    async fn stop(self) -> (usize, usize) {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// 2,000 half-sent requests (and half-sent TLS handshakes, and half-sent DNS questions)
/// from eight source addresses against each listener of a server that has 1,024 file
/// descriptors, the whole time a normal client asks: every normal request gets its answer.
/// Before berth-listen, the slow clients took every descriptor and the normal client's
/// connection was never accepted.
/// Fails with every listener's failure, so that one run shows them all.
fn assert_all_held(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} listener(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_serves_a_normal_client_through_a_flood_of_slow_ones() {
    let listeners = Listeners::start(Setup {
        open_files: Some(1024),
        env: Vec::new(),
    });
    let mut failures = Vec::new();
    for target in &listeners.targets {
        let idle = target
            .normal_request_from(Ipv4Addr::new(127, 0, 0, 20), &listeners.ca)
            .await
            .unwrap();
        let flood = Flood::start(target, 2000).await;
        let during = target
            .normal_request_from(Ipv4Addr::new(127, 0, 0, 21), &listeners.ca)
            .await;
        let (opened, failed) = flood.stop().await;
        match during {
            Ok(during) => eprintln!(
                "{target}: normal request {idle:.1?} idle, {during:.1?} while {opened} slow \
                 clients connected ({failed} connects failed)"
            ),
            Err(error) => failures.push(format!(
                "{error} (during a flood of {opened} slow clients, {failed} connects failed)"
            )),
        }
    }
    assert_all_held(&failures);
}

/// A client that stops in the middle of its request head (or TLS handshake, or DNS
/// question) is disconnected after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_closes_a_half_sent_request_after_the_header_timeout() {
    let listeners = Listeners::with_limits(
        "max_connections=64,max_connections_per_client=16,header_timeout=1s,idle_timeout=60s",
    );
    let mut slow = Vec::new();
    for target in &listeners.targets {
        slow.push((
            target,
            slow_client(Ipv4Addr::LOCALHOST, target).await.unwrap(),
        ));
    }
    // One deadline for all: 6 s after they all sent their half request.
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut failures = Vec::new();
    for (target, stream) in &mut slow {
        let left = deadline.saturating_duration_since(Instant::now());
        if !closed_by_server(stream, left).await {
            failures.push(format!(
                "{target}: a half-sent request is still open 6 s after a 1 s header timeout"
            ));
        }
    }
    assert_all_held(&failures);
}

/// A connection that got its answer and then stays silent is disconnected after the idle
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_closes_an_idle_connection_after_the_idle_timeout() {
    let listeners = Listeners::with_limits(
        "max_connections=64,max_connections_per_client=16,header_timeout=10s,idle_timeout=2s",
    );
    let mut idle = Vec::new();
    for target in listeners
        .targets
        .iter()
        .filter(|t| t.protocol != Protocol::Https)
    {
        idle.push((target, target.served_connection(Ipv4Addr::LOCALHOST).await));
    }
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut failures = Vec::new();
    for (target, stream) in &mut idle {
        let left = deadline.saturating_duration_since(Instant::now());
        if !closed_by_server(stream, left).await {
            failures.push(format!(
                "{target}: an idle connection is still open 6 s after a 2 s idle timeout"
            ));
        }
    }
    assert_all_held(&failures);
}

/// One client address that opens more connections than its cap loses its oldest slow
/// ones (the proxy's worker threads each accept in their own order, so "oldest" is only
/// checked in berth-listen's tests); the other clients' connections stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_caps_the_connections_of_one_client() {
    let listeners = Listeners::with_limits(
        "max_connections=64,max_connections_per_client=4,header_timeout=60s,idle_timeout=60s",
    );
    let mut failures = Vec::new();
    for target in &listeners.targets {
        let mut streams = vec![slow_client(Ipv4Addr::new(127, 0, 0, 3), target)
            .await
            .unwrap()];
        for _ in 0..6 {
            streams.push(
                slow_client(Ipv4Addr::new(127, 0, 0, 2), target)
                    .await
                    .unwrap(),
            );
        }
        let closed = closed_ones(&mut streams, 2, Duration::from_secs(5)).await;
        let mine = closed[1..].iter().filter(|c| **c).count();
        if mine != 2 || closed[0] {
            failures.push(format!(
                "{target}: of one client's 6 slow connections with a cap of 4, the server \
                 closed {mine} (want 2); another client's connection closed: {}",
                closed[0]
            ));
        }
    }
    assert_all_held(&failures);
}

/// When the listener holds its maximum of connections, all slow, a newcomer gets in and a
/// slow connection makes room; then a normal client is served and one more makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_caps_its_connections_and_evicts_the_oldest_slow_one() {
    let listeners = Listeners::with_limits(
        "max_connections=8,max_connections_per_client=8,header_timeout=60s,idle_timeout=60s",
    );
    let mut failures = Vec::new();
    for target in &listeners.targets {
        let mut held = Vec::new();
        for n in 0..8 {
            held.push(slow_client(flood_source(n), target).await.unwrap());
        }
        // Let every one of them be accepted before the newcomer comes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        held.push(
            slow_client(Ipv4Addr::new(127, 0, 0, 10), target)
                .await
                .unwrap(),
        );
        let closed = closed_ones(&mut held, 1, Duration::from_secs(5)).await;
        if closed.iter().filter(|c| **c).count() != 1 || closed[8] {
            failures.push(format!(
                "{target}: with 8 slow connections and a cap of 8, a 9th closed {closed:?} \
                 (want one of the first 8)"
            ));
            continue;
        }
        match target
            .normal_request_from(Ipv4Addr::new(127, 0, 0, 11), &listeners.ca)
            .await
        {
            Ok(took) => eprintln!("{target}: normal request with the listener full: {took:.1?}"),
            Err(error) => failures.push(error),
        }
        let closed = closed_ones(&mut held, 2, Duration::from_secs(5)).await;
        if closed.iter().filter(|c| **c).count() != 2 {
            failures.push(format!(
                "{target}: the normal client did not take a slow one's place: closed {closed:?}"
            ));
        }
    }
    assert_all_held(&failures);
}
