//! `berth-bench proxy`: berth's reverse proxy vs Debian's nginx (nginx-light) in front of the
//! same upstream, under the same `wrk` load, in one run. Rounds alternate between the two
//! and the medians are printed with the ratios berth/nginx.
//!
//! Fairness: nginx runs with `worker_processes` workers (default 1) and berth's proxy with
//! as many workers (`ProxyConfig::workers`: each a thread with a single-threaded runtime,
//! its own `SO_REUSEPORT` socket and upstream pool, like an nginx worker process); the upstream (a small hyper server) has its
//! own single-threaded runtime; wrk gets its own threads. Neither proxy writes an access
//! log; both keep idle keep-alive connections to the upstream.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use berth_proxy::{Balance, Group, Proxy, ProxyConfig, Route};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

/// What to run.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// wrk's duration per round, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// wrk's open connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// wrk's threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// nginx's worker processes and berth's proxy worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Rounds per proxy (alternating); the medians are printed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// One wrk run's figures.
#[derive(Clone, Copy, Debug)]
struct Figures {
    requests_per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs the benchmark.
pub async fn run(options: Options) -> anyhow::Result<()> {
    crate::at_least_one(&[
        (
            "--duration",
            usize::try_from(options.duration).unwrap_or(usize::MAX),
        ),
        ("--connections", options.connections),
        ("--threads", options.threads),
        ("--workers", options.workers),
        ("--rounds", options.rounds),
    ])?;
    let report = tokio::task::spawn_blocking(move || measure(&options)).await??;
    println!("{report}");
    Ok(())
}

fn measure(o: &Options) -> anyhow::Result<String> {
    for tool in ["wrk", "nginx"] {
        let found = Command::new(tool)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        ensure!(
            found.is_ok(),
            "{tool} is missing: run scripts/install-deps.sh"
        );
    }
    let upstream = Upstream::start()?;
    let berth = BerthProxy::start(upstream.addr, o.workers)?;
    let work = tempfile::Builder::new()
        .prefix("berth-bench-proxy-")
        .tempdir()?;
    let nginx = Nginx::start(work.path(), upstream.addr, o.workers)?;
    eprintln!(
        "upstream {}, berth {}, nginx {} ({} worker(s) each)",
        upstream.addr, berth.addr, nginx.addr, o.workers
    );

    let mut berth_runs = Vec::new();
    let mut nginx_runs = Vec::new();
    // A short warm-up each: connection pools filled, caches warm.
    wrk(o, berth.addr, 2)?;
    wrk(o, nginx.addr, 2)?;
    for round in 1..=o.rounds {
        let b = wrk(o, berth.addr, o.duration)?;
        let n = wrk(o, nginx.addr, o.duration)?;
        eprintln!(
            "round {round}: berth {:.0} req/s p50 {} p99 {}, nginx {:.0} req/s p50 {} p99 {}",
            b.requests_per_second,
            ms(b.p50),
            ms(b.p99),
            n.requests_per_second,
            ms(n.p50),
            ms(n.p99)
        );
        berth_runs.push(b);
        nginx_runs.push(n);
    }
    let b = median(&berth_runs);
    let n = median(&nginx_runs);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "proxy: wrk -t{} -c{} -d{}s --latency, {} worker(s) per proxy, median of {} rounds",
        o.threads, o.connections, o.duration, o.workers, o.rounds
    );
    let _ = writeln!(out, "{:<14}{:>12}{:>12}{:>12}", "", "req/s", "p50", "p99");
    for (name, f) in [("berth", b), ("nginx 1.22", n)] {
        let _ = writeln!(
            out,
            "{name:<14}{:>12.0}{:>12}{:>12}",
            f.requests_per_second,
            ms(f.p50),
            ms(f.p99)
        );
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    let _ = writeln!(
        out,
        "{:<14}{:>11.2}x{:>11.2}x{:>11.2}x",
        "berth/nginx",
        b.requests_per_second / n.requests_per_second.max(1e-9),
        ratio(b.p50, n.p50),
        ratio(b.p99, n.p99)
    );
    // Each round runs berth and nginx back to back, so the ratio within a round is less
    // exposed to other load on the machine than the ratio of medians.
    let paired = |f: fn(&Figures) -> f64| {
        let mut ratios: Vec<f64> = berth_runs
            .iter()
            .zip(&nginx_runs)
            .map(|(b, n)| f(b) / f(n).max(1e-9))
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios[ratios.len() / 2]
    };
    let _ = writeln!(
        out,
        "{:<14}{:>11.2}x{:>11.2}x{:>11.2}x",
        "  per round",
        paired(|f| f.requests_per_second),
        paired(|f| f.p50.as_secs_f64()),
        paired(|f| f.p99.as_secs_f64())
    );
    let _ = write!(
        out,
        "(req/s: higher is better; p50/p99 ratios: lower is better; \"per round\" is the \
         median of the rounds' own ratios)"
    );
    Ok(out)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Median of each figure on its own.
fn median(runs: &[Figures]) -> Figures {
    let pick = |f: fn(&Figures) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    Figures {
        requests_per_second: pick(|f| f.requests_per_second),
        p50: Duration::from_secs_f64(pick(|f| f.p50.as_secs_f64())),
        p99: Duration::from_secs_f64(pick(|f| f.p99.as_secs_f64())),
    }
}

/// Runs wrk against `addr` for `seconds` and reads its report.
fn wrk(o: &Options, addr: SocketAddr, seconds: u64) -> anyhow::Result<Figures> {
    let output = Command::new("wrk")
        .arg(format!("-t{}", o.threads))
        .arg(format!("-c{}", o.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_wrk(&text)
}

/// Reads requests/s and the 50th and 99th percentile latencies from wrk's report, and
/// refuses a run with socket errors or non-2xx responses.
fn parse_wrk(text: &str) -> anyhow::Result<Figures> {
    let value = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| rest.trim().to_owned())
    };
    if let Some(errors) = value("Socket errors:") {
        bail!("wrk saw socket errors: {errors}\n{text}");
    }
    if let Some(bad) = value("Non-2xx or 3xx responses:") {
        bail!("wrk saw {bad} non-2xx responses\n{text}");
    }
    let requests_per_second: f64 = value("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no Requests/sec in wrk's report:\n{text}"))?;
    let latency = |label: &str| {
        value(label)
            .and_then(|v| parse_duration(&v))
            .ok_or_else(|| anyhow!("no {label} latency in wrk's report:\n{text}"))
    };
    Ok(Figures {
        requests_per_second,
        p50: latency("50%")?,
        p99: latency("99%")?,
    })
}

/// wrk's `812.00us`, `1.23ms`, `1.02s`, `2.00m`.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// A port on 127.0.0.1 that nothing listens on now.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        ensure!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A runtime on its own threads, stopped when dropped.
struct Background {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The upstream: a hyper HTTP/1.1 server answering a small body, on one thread.
struct Upstream {
    addr: SocketAddr,
    _runtime: Background,
}

impl Upstream {
    fn start() -> anyhow::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let accept = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(|_request| async {
                                Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                    Bytes::from_static(b"hello from the upstream\n"),
                                )))
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        Ok(Upstream {
            addr,
            _runtime: Background {
                stop: Some(stop),
                thread: Some(thread),
            },
        })
    }
}

/// berth's proxy with `workers` worker threads (`ProxyConfig::workers`).
struct BerthProxy {
    addr: SocketAddr,
    _runtime: Background,
}

impl BerthProxy {
    fn start(upstream: SocketAddr, workers: usize) -> anyhow::Result<BerthProxy> {
        // The proxy's own worker threads do the work; this runtime only waits for the stop.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let proxy = runtime.block_on(Proxy::bind(ProxyConfig {
            http: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            workers,
            ..ProxyConfig::default()
        }))?;
        proxy.set_routes(vec![Route {
            name: "bench".into(),
            host: "*".into(),
            path_prefix: "/".into(),
            balance: Balance::RoundRobin,
            groups: vec![Group {
                label: "r1".into(),
                weight: 1,
                upstreams: vec![upstream],
            }],
        }])?;
        let addr = *proxy
            .http_addrs()
            .first()
            .ok_or_else(|| anyhow!("the proxy bound no address"))?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let served = runtime.block_on(proxy.serve(async {
                let _ = stop_rx.await;
            }));
            if let Err(error) = served {
                eprintln!("berth's proxy stopped: {error}");
            }
        });
        Ok(BerthProxy {
            addr,
            _runtime: Background {
                stop: Some(stop),
                thread: Some(thread),
            },
        })
    }
}

/// nginx with its own prefix in a temp dir, killed when dropped.
struct Nginx {
    addr: SocketAddr,
    child: Child,
}

impl Nginx {
    fn start(dir: &Path, upstream: SocketAddr, workers: usize) -> anyhow::Result<Nginx> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let prefix = dir.display();
        let config = format!(
            "worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream backend {{
        server {upstream};
        keepalive 32;
    }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let nginx = Nginx { addr, child };
        wait_listening(addr, "nginx")
            .with_context(|| std::fs::read_to_string(dir.join("error.log")).unwrap_or_default())?;
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown; the master then stops its workers.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const REPORT: &str = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.12ms  400.00us  12.00ms   90.00%
    Req/Sec    22.00k     1.00k   25.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    1.80ms
     99%    3.02ms
  440000 requests in 10.00s, 60.00MB read
Requests/sec:  43999.50
Transfer/sec:      6.00MB
";

    #[test]
    fn reads_wrk_figures() {
        let f = parse_wrk(REPORT).unwrap();
        assert_eq!(f.requests_per_second, 43999.5);
        assert_eq!(f.p50, Duration::from_micros(812));
        assert_eq!(f.p99, Duration::from_micros(3020));
    }

    #[test]
    fn refuses_runs_with_errors() {
        let bad = REPORT.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 12\nRequests/sec",
        );
        assert!(parse_wrk(&bad).is_err());
        let bad = REPORT.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse_wrk(&bad).is_err());
    }

    #[test]
    fn reads_wrk_durations() {
        assert_eq!(parse_duration("1.02s"), Some(Duration::from_millis(1020)));
        assert_eq!(parse_duration("2.00m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("fast"), None);
    }
}
