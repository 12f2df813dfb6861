//! `berth-bench flood`: a normal client's latency on each listener of `berth server`, idle
//! and under attack, in one run. The attacks: thousands of slow clients against each
//! listener (half-sent request heads, half-sent TLS ClientHellos, half-sent DNS questions)
//! from eight loopback source addresses, held open while more keep coming; and, against the
//! registry, clients on many addresses guessing passwords as fast as they are answered.
//! The normal client opens a new connection for every request (so that it goes through
//! the accept path the flood fills) from an address of its own, and gives up after 5 s.
//!
//! The peer is the same client on the same listener with no attack; `--compare` measures
//! another build of `berth` the same way (e.g. one from before the listeners had limits),
//! and `--server-nofile` runs the servers with fewer file descriptors, as on a smaller host.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// How long the normal client waits for an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// After this many failed requests in a row a measurement stops; the rest count as failed.
const GIVE_UP_AFTER: usize = 10;

/// A measurement stops after this long (a server answering every request in seconds would
/// take a quarter of an hour for 200); the requests not sent are left out.
const MEASURE_BUDGET: Duration = Duration::from_secs(60);

/// The normal client's address; the slow clients use 127.0.0.2-127.0.0.9, the password
/// guessers 127.0.1.x, the login-timing probes 127.0.2.x.
const NORMAL_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 20);

/// What to run.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// berth binary to measure.
    #[arg(long, default_value = "target/release/berth")]
    berth_bin: PathBuf,
    /// Another berth binary to measure the same way after it (e.g. an older build).
    #[arg(long, value_name = "BIN")]
    compare: Option<PathBuf>,
    /// Slow connections opened against each listener (more keep coming while the normal
    /// client is measured).
    #[arg(long, default_value_t = 10_000)]
    slow: usize,
    /// Addresses guessing passwords at the registry at once (at most 250).
    #[arg(long, default_value_t = 64)]
    guessers: usize,
    /// Normal requests per measurement.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Run the servers with this open-files limit (soft and hard).
    #[arg(long, value_name = "N")]
    server_nofile: Option<u64>,
    /// A small run, for checking the benchmark itself.
    #[arg(long)]
    quick: bool,
}

/// Runs the benchmark.
pub async fn run(mut options: Options) -> anyhow::Result<()> {
    if options.quick {
        options.slow = options.slow.min(500);
        options.guessers = options.guessers.min(8);
        options.requests = options.requests.min(20);
    }
    crate::at_least_one(&[
        ("--slow", options.slow),
        ("--guessers", options.guessers),
        ("--requests", options.requests),
    ])?;
    ensure!(options.guessers <= 250, "--guessers must be at most 250");
    if !crate::runtime::is_root() {
        bail!("berth-bench flood starts berth server (a node runtime): run it as root");
    }
    for tool in ["openssl", "prlimit"] {
        ensure!(
            Command::new("which")
                .arg(tool)
                .stdout(Stdio::null())
                .status()?
                .success(),
            "{tool} is missing: run scripts/install-deps.sh"
        );
    }
    // The slow clients are file descriptors of this process too.
    let open_files = berth_listen::raise_open_files_limit()?;
    ensure!(
        u64::try_from(options.slow * 3 / 2 + 1024).unwrap_or(u64::MAX) <= open_files,
        "--slow {} needs about {} open files and this process may have {open_files}",
        options.slow,
        options.slow * 3 / 2 + 1024
    );
    let mut binaries = vec![options.berth_bin.clone()];
    binaries.extend(options.compare.clone());
    let mut out = String::new();
    for binary in &binaries {
        ensure!(
            binary.is_file(),
            "{} is missing: cargo build --release -p berth",
            binary.display()
        );
        let table = measure(binary, &options).await?;
        out.push_str(&table);
        out.push('\n');
    }
    println!("{out}");
    Ok(())
}

/// What a listener speaks, and what a normal request to it is.
#[derive(Clone, Debug)]
struct Listener {
    name: &'static str,
    addr: SocketAddr,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    /// GET `path` must answer `status`.
    Http {
        tls: bool,
        path: &'static str,
        status: u16,
        token: Option<String>,
        basic: Option<(String, String)>,
    },
    /// `nothing.berth A` over TCP must be answered.
    Dns,
}

impl Listener {
    fn slow_bytes(&self) -> &'static [u8] {
        match &self.kind {
            Kind::Http { tls: false, .. } => {
                b"GET / HTTP/1.1\r\nHost: berth.test\r\nUser-Agent: slo"
            }
            Kind::Http { tls: true, .. } => &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
            Kind::Dns => &[0x00],
        }
    }
}

/// A normal client of one listener.
struct Client {
    listener: Listener,
    http: reqwest::Client,
}

impl Client {
    fn new(listener: &Listener, ca: &[u8]) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .local_address(std::net::IpAddr::V4(NORMAL_CLIENT))
            .pool_max_idle_per_host(0)
            .timeout(REQUEST_TIMEOUT)
            .add_root_certificate(reqwest::Certificate::from_pem(ca)?)
            .build()?;
        Ok(Client {
            listener: listener.clone(),
            http,
        })
    }

    /// One request on a new connection; its latency, or what went wrong.
    async fn request(&self) -> Result<Duration, String> {
        let started = Instant::now();
        match &self.listener.kind {
            Kind::Http {
                tls,
                path,
                status,
                token,
                basic,
            } => {
                let scheme = if *tls { "https" } else { "http" };
                let url = format!("{scheme}://localhost:{}{path}", self.listener.addr.port());
                let mut request = self.http.get(url);
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                if let Some((user, password)) = basic {
                    request = request.basic_auth(user, Some(password));
                }
                let response = request.send().await.map_err(|e| e.to_string())?;
                let got = response.status().as_u16();
                response.bytes().await.map_err(|e| e.to_string())?;
                if got != *status {
                    return Err(format!("status {got}"));
                }
            }
            Kind::Dns => {
                tokio::time::timeout(REQUEST_TIMEOUT, dns_question(self.listener.addr))
                    .await
                    .map_err(|_| "timed out".to_owned())??;
            }
        }
        Ok(started.elapsed())
    }

    /// `count` requests one after the other (fewer after [`MEASURE_BUDGET`]).
    async fn measure(&self, count: usize) -> Samples {
        let started = Instant::now();
        let mut samples = Samples::default();
        let mut failing = 0;
        for _ in 0..count {
            if started.elapsed() > MEASURE_BUDGET {
                samples.cut_short = true;
                break;
            }
            if failing >= GIVE_UP_AFTER {
                samples.failed += 1;
                continue;
            }
            match self.request().await {
                Ok(took) => {
                    failing = 0;
                    samples.times.push(took);
                }
                Err(error) => {
                    failing += 1;
                    samples.failed += 1;
                    samples.last_error = Some(error);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples
    }
}

async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

/// `nothing.berth A` over TCP on a new connection; NXDOMAIN expected.
async fn dns_question(addr: SocketAddr) -> Result<(), String> {
    let mut stream = connect_from(NORMAL_CLIENT, addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut message = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(b"\x07nothing\x05berth\x00\x00\x01\x00\x01");
    let mut framed = u16::try_from(message.len())
        .map_err(|e| e.to_string())?
        .to_be_bytes()
        .to_vec();
    framed.extend_from_slice(&message);
    stream.write_all(&framed).await.map_err(|e| e.to_string())?;
    let mut length = [0u8; 2];
    stream
        .read_exact(&mut length)
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream
        .read_exact(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    if answer.len() < 4 || answer[..2] != [0x42, 0x42] || answer[3] & 0x0f != 3 {
        return Err("not the NXDOMAIN answer".to_owned());
    }
    Ok(())
}

/// Latencies of one measurement.
#[derive(Default)]
struct Samples {
    times: Vec<Duration>,
    failed: usize,
    last_error: Option<String>,
    /// Stopped by [`MEASURE_BUDGET`].
    cut_short: bool,
}

impl Samples {
    /// The `p`-th percentile, failures counted as the timeout.
    fn percentile(&self, p: f64) -> Duration {
        let mut all: Vec<Duration> = self.times.clone();
        all.extend(std::iter::repeat_n(REQUEST_TIMEOUT, self.failed));
        all.sort();
        if all.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (all.len() - 1) as f64).round() as usize;
        all[rank.min(all.len() - 1)]
    }

    fn show(&self, p: f64) -> String {
        let value = self.percentile(p);
        if value >= REQUEST_TIMEOUT {
            "timeout".to_owned()
        } else {
            format!("{:.2} ms", value.as_secs_f64() * 1000.0)
        }
    }
}

/// Slow clients: `count` opened (64 at a time; fewer when a whole batch fails to connect:
/// the server accepts no more) and held, then one more every 2 ms until stopped.
struct Flood {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<(usize, usize)>,
}

impl Flood {
    async fn start(listener: &Listener, count: usize) -> Flood {
        let (stop, stopped) = watch::channel(false);
        let (filled_tx, filled_rx) = tokio::sync::oneshot::channel();
        let listener = listener.clone();
        let task = tokio::spawn(async move {
            let opened = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let mut held = Vec::with_capacity(count * 3 / 2);
            let open = |n: usize| {
                let listener = listener.clone();
                async move {
                    let source = Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(n % 8).unwrap_or(0));
                    let mut stream = connect_from(source, listener.addr).await?;
                    stream.write_all(listener.slow_bytes()).await?;
                    Ok::<_, std::io::Error>(stream)
                }
            };
            let mut n = 0;
            while n < count {
                let batch: Vec<_> = (n..(n + 64).min(count)).map(open).collect();
                let batch_len = batch.len();
                let mut batch_failed = 0;
                n += batch_len;
                for result in futures::future::join_all(batch).await {
                    match result {
                        Ok(stream) => {
                            opened.fetch_add(1, Ordering::Relaxed);
                            held.push(stream);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            batch_failed += 1;
                        }
                    }
                }
                // A whole batch refused or timed out: the server accepts no more.
                if batch_failed == batch_len {
                    break;
                }
            }
            let _ = filled_tx.send(());
            let mut stopped = stopped;
            while !*stopped.borrow() && held.len() < count * 3 / 2 {
                tokio::select! {
                    _ = stopped.changed() => break,
                    result = open(n) => {
                        n += 1;
                        match result {
                            Ok(stream) => {
                                opened.fetch_add(1, Ordering::Relaxed);
                                held.push(stream);
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let _ = stopped.wait_for(|stop| *stop).await;
            drop(held);
            let count = |c: &AtomicU64| usize::try_from(c.load(Ordering::Relaxed)).unwrap_or(0);
            (count(&opened), count(&failed))
        });
        let _ = filled_rx.await;
        Flood { stop, task }
    }

    /// Stops it: (connections opened, connects that failed).
    async fn stop(self) -> (usize, usize) {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or((0, 0))
    }
}

/// Clients on `count` addresses sending GET /v2/ with a wrong password to the registry as
/// fast as they are answered (keep-alive), until stopped.
struct Guessers {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<[u64; 3]>>,
}

impl Guessers {
    fn start(registry: SocketAddr, count: usize) -> anyhow::Result<Guessers> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for i in 0..count {
            let source = Ipv4Addr::new(127, 0, 1, u8::try_from(i + 1)?);
            let client = reqwest::Client::builder()
                .local_address(std::net::IpAddr::V4(source))
                .timeout(Duration::from_secs(30))
                .build()?;
            let stopped = stopped.clone();
            let url = format!("http://{registry}/v2/");
            tasks.push(tokio::spawn(async move {
                // 401s, 429s, others.
                let mut counts = [0u64; 3];
                let mut guess = 0u64;
                while !*stopped.borrow() {
                    guess += 1;
                    let user = if guess.is_multiple_of(2) {
                        "alice"
                    } else {
                        "mallory"
                    };
                    let sent = client
                        .get(&url)
                        .basic_auth(user, Some(format!("guess-{guess}")))
                        .send()
                        .await;
                    match sent.map(|r| r.status().as_u16()) {
                        Ok(401) => counts[0] += 1,
                        Ok(429) => counts[1] += 1,
                        _ => {
                            counts[2] += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                counts
            }));
        }
        Ok(Guessers { stop, tasks })
    }

    async fn stop(self) -> [u64; 3] {
        let _ = self.stop.send(true);
        let mut total = [0u64; 3];
        for task in self.tasks {
            if let Ok(counts) = task.await {
                for (t, c) in total.iter_mut().zip(counts) {
                    *t += c;
                }
            }
        }
        total
    }
}

/// `berth server` with every listener, a users file for its registry, and the TLS files.
struct Server {
    child: Child,
    listeners: Vec<Listener>,
    ca: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(status.success(), "openssl {args:?} failed");
    Ok(())
}

/// The password of the registry's user `alice`.
const PASSWORD: &str = "correct horse battery staple";

impl Server {
    fn start(binary: &Path, nofile: Option<u64>) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("berth-bench-flood-")
            .tempdir()?;
        let d = dir.path();
        openssl(
            d,
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
                "/CN=bench ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        )?;
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )?;
        openssl(
            d,
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
        )?;
        openssl(
            d,
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
        )?;
        // bcrypt's default cost, as `berth registry hash-password` makes it.
        let mut hasher = Command::new(binary)
            .args(["registry", "hash-password"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        hasher
            .stdin
            .take()
            .context("piped stdin")?
            .write_all(format!("{PASSWORD}\n").as_bytes())?;
        let hash = String::from_utf8(hasher.wait_with_output()?.stdout)?;
        std::fs::write(
            d.join("users.toml"),
            format!(
                "[[users]]\nname = \"alice\"\npassword = \"{}\"\npull = [\"*\"]\n",
                hash.trim()
            ),
        )?;
        std::fs::write(
            d.join("node.toml"),
            format!(
                "[node]\nruntime = \"runc\"\n[registry]\nusers = \"{}\"\n",
                d.join("users.toml").display()
            ),
        )?;
        let mut command = match nofile {
            Some(limit) => {
                let mut prlimit = Command::new("prlimit");
                prlimit.arg(format!("--nofile={limit}:{limit}")).arg(binary);
                prlimit
            }
            None => Command::new(binary),
        };
        let cert = format!(
            "localhost={}:{}",
            d.join("leaf.pem").display(),
            d.join("leaf.key").display()
        );
        let mut child = command
            .arg("--root")
            .arg(d.join("root"))
            .arg("--config")
            .arg(d.join("node.toml"))
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--registry-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--catalog-listen",
                "127.0.0.1:0",
                "--dns-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--proxy-listen",
                "127.0.0.1:0",
                "--proxy-tls-listen",
                "127.0.0.1:0",
            ])
            .args(["--proxy-cert", &cert])
            .env("BERTH_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            let done = line.contains("berth server listening on");
            lines.push(line);
            if done {
                break;
            }
        }
        let find = |prefix: &str| -> anyhow::Result<SocketAddr> {
            let line = lines
                .iter()
                .find(|l| l.contains(prefix))
                .with_context(|| format!("berth server did not print {prefix:?}: {lines:?}"))?;
            let rest = &line[line.find(prefix).unwrap_or(0) + prefix.len()..];
            let rest = rest
                .trim_start_matches("http://")
                .trim_start_matches("https://");
            Ok(rest.split_whitespace().next().unwrap_or_default().parse()?)
        };
        let token = std::fs::read_to_string(d.join("root/server.token"))?
            .trim()
            .to_owned();
        let http = |tls, path, status| Kind::Http {
            tls,
            path,
            status,
            token: None,
            basic: None,
        };
        let listeners = vec![
            Listener {
                name: "registry",
                addr: find("berth registry listening on ")?,
                kind: Kind::Http {
                    tls: false,
                    path: "/v2/",
                    status: 200,
                    token: None,
                    basic: Some(("alice".to_owned(), PASSWORD.to_owned())),
                },
            },
            Listener {
                name: "/v1 API",
                addr: find("berth server listening on ")?,
                kind: Kind::Http {
                    tls: false,
                    path: "/v1/apps",
                    status: 200,
                    token: Some(token),
                    basic: None,
                },
            },
            Listener {
                name: "catalog",
                addr: find("berth catalog (Consul-compatible) listening on ")?,
                kind: http(false, "/v1/catalog/services", 200),
            },
            Listener {
                name: "proxy (HTTP)",
                addr: find("berth proxy listening on http://")?,
                kind: http(false, "/", 404),
            },
            Listener {
                name: "proxy (HTTPS)",
                addr: find("berth proxy listening on https://")?,
                kind: http(true, "/", 404),
            },
            Listener {
                name: "DNS over TCP",
                addr: find("berth dns listening on ")?,
                kind: Kind::Dns,
            },
        ];
        Ok(Server {
            child,
            listeners,
            ca: std::fs::read(d.join("ca.pem"))?,
            _dir: dir,
        })
    }
}

/// One row of the table.
struct Row {
    listener: &'static str,
    attack: String,
    idle: Samples,
    attacked: Samples,
    note: String,
}

async fn measure(binary: &Path, o: &Options) -> anyhow::Result<String> {
    let server = Server::start(binary, o.server_nofile)?;
    let mut rows = Vec::new();
    for listener in &server.listeners {
        let client = Client::new(listener, &server.ca)?;
        // Warm-up: the registry's credentials verified once and remembered.
        let _ = client.request().await;
        let idle = client.measure(o.requests).await;
        let flood = Flood::start(listener, o.slow).await;
        let attacked = client.measure(o.requests).await;
        let (opened, failed) = flood.stop().await;
        eprintln!(
            "{}: {} idle p99 {}, under {opened} slow clients p99 {} ({} failed{})",
            binary.display(),
            listener.name,
            idle.show(99.0),
            attacked.show(99.0),
            attacked.failed,
            attacked
                .last_error
                .as_ref()
                .map_or(String::new(), |e| format!(": {e}"))
        );
        rows.push(Row {
            listener: listener.name,
            attack: format!("{opened} slow clients"),
            idle,
            attacked,
            note: if failed > 0 {
                format!("{failed} of their connects failed")
            } else {
                String::new()
            },
        });
        // Let the server close what the flood left before the next listener.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let registry = &server.listeners[0];
    let client = Client::new(registry, &server.ca)?;
    let idle = client.measure(o.requests).await;
    let guessers = Guessers::start(registry.addr, o.guessers)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attacked = client.measure(o.requests).await;
    let [unauthorized, throttled, other] = guessers.stop().await;
    rows.push(Row {
        listener: "registry",
        attack: format!("{} addresses guessing passwords", o.guessers),
        idle,
        attacked,
        note: format!("guesses answered: {unauthorized} 401, {throttled} 429, {other} other"),
    });
    let logins = login_timing(registry.addr, if o.quick { 3 } else { 20 }).await?;
    drop(server);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: normal client (a new connection per request, from its own address), {} requests \
         per measurement{}",
        binary.display(),
        o.requests,
        o.server_nofile.map_or(String::new(), |n| format!(
            ", server limited to {n} open files"
        ))
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| listener | attack | idle p50 | idle p99 | attacked p50 | attacked p99 | p99 attacked/idle | failed | |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let ratio = row.attacked.percentile(99.0).as_secs_f64()
            / row.idle.percentile(99.0).as_secs_f64().max(1e-9);
        let mut note = row.note.clone();
        if row.attacked.cut_short {
            let sent = row.attacked.times.len() + row.attacked.failed;
            note = format!("{note} only {sent} sent in {}s", MEASURE_BUDGET.as_secs())
                .trim()
                .to_owned();
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {ratio:.2}x | {} | {note} |",
            row.listener,
            row.attack,
            row.idle.show(50.0),
            row.idle.show(99.0),
            row.attacked.show(50.0),
            row.attacked.show(99.0),
            row.attacked.failed,
        );
    }
    let _ = writeln!(out);
    out.push_str(&logins);
    Ok(out)
}

/// How long a wrong login takes for an unknown user and for a known one (each attempt from
/// a new address, so that no rate limit is involved): equal when unknown users cost a
/// bcrypt check too.
async fn login_timing(registry: SocketAddr, count: u8) -> anyhow::Result<String> {
    let mut unknown = Samples::default();
    let mut known = Samples::default();
    for i in 0..count.min(100) {
        for (user, samples) in [("mallory", &mut unknown), ("alice", &mut known)] {
            let source = Ipv4Addr::new(127, 0, 2, 1 + i * 2 + u8::from(user == "alice"));
            let client = reqwest::Client::builder()
                .local_address(std::net::IpAddr::V4(source))
                .timeout(Duration::from_secs(30))
                .build()?;
            let started = Instant::now();
            let status = client
                .get(format!("http://{registry}/v2/"))
                .basic_auth(user, Some("wrong"))
                .send()
                .await?
                .status();
            ensure!(status == 401, "a wrong login got {status}");
            samples.times.push(started.elapsed());
        }
    }
    let (u, k) = (unknown.percentile(50.0), known.percentile(50.0));
    Ok(format!(
        "| wrong login ({count} each, idle) | p50 | p99 |\n|---|---|---|\n\
         | unknown user | {} | {} |\n| known user, wrong password | {} | {} |\n\
         | unknown/known (p50) | {:.3}x | |\n",
        unknown.show(50.0),
        unknown.show(99.0),
        known.show(50.0),
        known.show(99.0),
        u.as_secs_f64() / k.as_secs_f64().max(1e-9)
    ))
}
