//! `berth-bench dns`: berth's DNS server against dnsmasq answering the same names, in one
//! run, with the same load generator: closed-loop UDP clients, each with one A question in
//! flight at a time, for a fixed time. berth answers from a catalog of SERVICES x INSTANCES
//! instances; dnsmasq answers the same names with the same addresses from a hosts file,
//! without forwarding (`--local=/berth/`). Rounds alternate which server goes first.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use berth_discovery::{Catalog, Change, DnsConfig, DnsServer, DnsShutdown, Endpoint};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

/// How long a client waits for an answer before it counts the question as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// What to run.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Services in the catalog (and names in dnsmasq's hosts file).
    #[arg(long, default_value_t = 50)]
    services: usize,
    /// Instances of each service (A records per answer), at most 250.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Questions in flight at once (one UDP socket each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured seconds per server and round.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Rounds; each measures both servers, alternating which goes first.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Worker threads of the runtime that berth's DNS server runs on (its own, apart from
    /// the load generator's).
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// A run of seconds, for checking the benchmark itself.
    #[arg(long)]
    quick: bool,
}

/// Runs the benchmark.
pub async fn run(mut options: Options) -> anyhow::Result<()> {
    if options.quick {
        options.seconds = 1;
        options.rounds = 1;
    }
    crate::at_least_one(&[
        ("--services", options.services),
        ("--instances", options.instances),
        ("--concurrency", options.concurrency),
        ("--rounds", options.rounds),
        ("--server-threads", options.server_threads),
    ])?;
    ensure!(options.seconds > 0, "--seconds must be at least 1");
    ensure!(options.instances <= 250, "--instances must be at most 250");
    let o = &options;

    let addresses = |service: usize| {
        (0..o.instances).map(move |instance| {
            Ipv4Addr::new(
                10,
                100 + u8::try_from(service / 256).unwrap_or(u8::MAX),
                u8::try_from(service % 256).unwrap_or(0),
                u8::try_from(instance + 1).unwrap_or(u8::MAX),
            )
        })
    };
    let names: Vec<String> = (0..o.services)
        .map(|service| format!("svc{service}.bench.berth."))
        .collect();

    let catalog = Catalog::new();
    catalog.apply((0..o.services).flat_map(|service| {
        addresses(service)
            .enumerate()
            .map(move |(instance, address)| {
                Change::Register(Endpoint {
                    id: format!("svc{service}-{instance}"),
                    app: "bench".to_owned(),
                    service: format!("svc{service}"),
                    release: 1,
                    address: address.into(),
                    ports: [("http".to_owned(), 8080)].into(),
                    tags: Vec::new(),
                    meta: Default::default(),
                    node: "bench".to_owned(),
                })
            })
    }));
    let berth = BerthDns::start(catalog, o.server_threads)?;

    let work = tempfile::Builder::new().prefix("berth-dns-").tempdir()?;
    // dnsmasq drops to user nobody when started as root, and must still read the file.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))?;
    let hosts = work.path().join("hosts");
    let mut lines = String::new();
    for (service, name) in names.iter().enumerate() {
        for address in addresses(service) {
            let _ = writeln!(lines, "{address} {}", name.trim_end_matches('.'));
        }
    }
    std::fs::write(&hosts, lines)?;
    std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o644))?;
    let dnsmasq = Dnsmasq::start(&hosts).await?;

    let questions = Arc::new(
        names
            .iter()
            .map(|name| question(name))
            .collect::<anyhow::Result<Vec<Vec<u8>>>>()?,
    );
    let expected = u16::try_from(o.instances)?;
    let servers = [("berth", berth.address), ("dnsmasq", dnsmasq.address)];
    for (name, address) in servers {
        let tally = load(address, &questions, expected, 1, Duration::from_millis(300)).await?;
        ensure!(
            tally.answered > 0 && tally.wrong == 0,
            "{name} does not answer {} with {} A records",
            names[0],
            o.instances
        );
    }

    let mut totals = [Tally::default(), Tally::default()];
    for round in 0..o.rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            let (name, address) = servers[index];
            // Warm-up: sockets, caches, the server's tasks.
            load(
                address,
                &questions,
                expected,
                o.concurrency,
                Duration::from_secs(1),
            )
            .await?;
            let tally = load(
                address,
                &questions,
                expected,
                o.concurrency,
                Duration::from_secs(o.seconds),
            )
            .await?;
            eprintln!(
                "round {}: {name}: {:.0} questions/s, p50 {:.3} ms, p99 {:.3} ms, {} lost, {} wrong",
                round + 1,
                tally.per_second(),
                tally.percentile_ms(50.0),
                tally.percentile_ms(99.0),
                tally.lost,
                tally.wrong
            );
            totals[index].merge(tally);
        }
    }
    println!("{}", report(o, &totals));
    berth.stop()?;
    Ok(())
}

fn report(o: &Options, [berth, dnsmasq]: &[Tally; 2]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== DNS: {} names x {} A records, {} questions in flight over UDP, {} round(s) of {} s \
         per server ==",
        o.services, o.instances, o.concurrency, o.rounds, o.seconds
    );
    let _ = writeln!(
        out,
        "{:<28} {:>12} {:>12} {:>14}",
        "metric", "berth", "dnsmasq", "berth/dnsmasq"
    );
    let rows = [
        ("questions/s", berth.per_second(), dnsmasq.per_second()),
        (
            "latency p50 (ms)",
            berth.percentile_ms(50.0),
            dnsmasq.percentile_ms(50.0),
        ),
        (
            "latency p99 (ms)",
            berth.percentile_ms(99.0),
            dnsmasq.percentile_ms(99.0),
        ),
    ];
    for (metric, ours, theirs) in rows {
        let _ = writeln!(
            out,
            "{metric:<28} {ours:>12.3} {theirs:>12.3} {:>13.2}x",
            ours / theirs
        );
    }
    let _ = writeln!(
        out,
        "{:<28} {:>12} {:>12}",
        "lost or wrong answers",
        berth.lost + berth.wrong,
        dnsmasq.lost + dnsmasq.wrong
    );
    let _ = writeln!(
        out,
        "note: questions/s higher is better, latency lower is better; berth runs in this \
         process on its own {}-thread runtime, dnsmasq (single-threaded) as a child process; \
         the load generator shares the same cores",
        o.server_threads
    );
    out
}

/// The wire form of an A question for `name` (its id is set per send).
fn question(name: &str) -> anyhow::Result<Vec<u8>> {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    Ok(message.to_vec()?)
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    /// Answers with the expected number of records.
    answered: u64,
    /// Answers with an error code or another number of records.
    wrong: u64,
    /// Questions without an answer within [`ANSWER_TIMEOUT`].
    lost: u64,
    /// Time from send to answer of each answered question, in microseconds.
    latencies: Vec<u32>,
    /// Measured time, summed over runs.
    elapsed: Duration,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.answered += other.answered;
        self.wrong += other.wrong;
        self.lost += other.lost;
        self.latencies.extend(other.latencies);
        self.elapsed += other.elapsed;
    }

    fn per_second(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, percentile: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let Some(last) = sorted.len().checked_sub(1) else {
            return f64::NAN;
        };
        let index = ((last as f64) * percentile / 100.0).round() as usize;
        f64::from(sorted[index.min(last)]) / 1000.0
    }
}

/// `concurrency` clients asking `server` the questions in turn for `duration`.
async fn load(
    server: SocketAddr,
    questions: &Arc<Vec<Vec<u8>>>,
    expected: u16,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Tally> {
    let started = Instant::now();
    let until = started + duration;
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..concurrency {
        let questions = Arc::clone(questions);
        clients.spawn(ask(server, questions, expected, client, until));
    }
    let mut total = Tally::default();
    while let Some(tally) = clients.join_next().await {
        total.merge(tally??);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// One client: one question in flight at a time until `until`.
async fn ask(
    server: SocketAddr,
    questions: Arc<Vec<Vec<u8>>>,
    expected: u16,
    first: usize,
    until: Instant,
) -> anyhow::Result<Tally> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    socket.connect(server).await?;
    let mut tally = Tally::default();
    let mut buffer = vec![0u8; 4096];
    let mut wire = Vec::with_capacity(512);
    let mut id: u16 = rand::random();
    let mut next = first;
    while Instant::now() < until {
        wire.clear();
        wire.extend_from_slice(&questions[next % questions.len()]);
        next += 1;
        id = id.wrapping_add(1);
        wire[..2].copy_from_slice(&id.to_be_bytes());
        let sent = Instant::now();
        socket.send(&wire).await?;
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
            loop {
                let length = socket.recv(&mut buffer).await?;
                // A late answer to a question already counted as lost is skipped.
                if length >= 12 && buffer[..2] == id.to_be_bytes() {
                    return Ok::<_, std::io::Error>(length);
                }
            }
        })
        .await;
        match answer {
            Ok(answer) => {
                answer?;
                let latency = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                let response_code = buffer[3] & 0x0f;
                let answers = u16::from_be_bytes([buffer[6], buffer[7]]);
                if response_code == 0 && answers == expected {
                    tally.answered += 1;
                    tally.latencies.push(latency);
                } else {
                    tally.wrong += 1;
                }
            }
            Err(_) => tally.lost += 1,
        }
    }
    Ok(tally)
}

/// berth's DNS server on a runtime of its own, in a thread; stopped on drop.
struct BerthDns {
    address: SocketAddr,
    shutdown: DnsShutdown,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl BerthDns {
    fn start(catalog: Catalog, threads: usize) -> anyhow::Result<BerthDns> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("berth-dns")
            .enable_all()
            .build()?;
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let config = DnsConfig::new((Ipv4Addr::LOCALHOST, 0).into());
                let server = match DnsServer::bind(config, catalog).await {
                    Ok(server) => server,
                    Err(error) => {
                        let message = error.to_string();
                        let _ = started_tx.send(Err(error));
                        bail!("{message}");
                    }
                };
                let _ = started_tx.send(Ok((server.local_addr(), server.shutdown_handle())));
                server.run().await?;
                Ok(())
            })
        });
        let (address, shutdown) = started_rx
            .recv()
            .context("berth's DNS thread ended before it started")??;
        Ok(BerthDns {
            address,
            shutdown,
            thread: Some(thread),
        })
    }

    /// Stops the server and reports how it ended.
    fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.shutdown();
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("berth's DNS thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for BerthDns {
    fn drop(&mut self) {
        self.shutdown.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// dnsmasq answering the names of a hosts file and nothing else; killed on drop.
struct Dnsmasq {
    address: SocketAddr,
    child: Child,
}

impl Dnsmasq {
    async fn start(hosts: &Path) -> anyhow::Result<Dnsmasq> {
        let port = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let child = Command::new("dnsmasq")
            .args(["--no-daemon", "--conf-file=/dev/null", "--pid-file"])
            .arg(format!("--port={port}"))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            .args(["--no-resolv", "--no-hosts", "--local=/berth/"])
            .arg(format!("--addn-hosts={}", hosts.display()))
            // berth's TTL, and a cache that holds every name.
            .args(["--local-ttl=5", "--cache-size=10000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (scripts/install-deps.sh installs it)")?;
        let mut dnsmasq = Dnsmasq {
            address: (Ipv4Addr::LOCALHOST, port).into(),
            child,
        };
        let probe = question("svc0.bench.berth.")?;
        for _ in 0..50 {
            if let Some(status) = dnsmasq.child.try_wait()? {
                bail!("dnsmasq exited at start ({status}); run it by hand to see why");
            }
            if answers(dnsmasq.address, &probe).await {
                return Ok(dnsmasq);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("dnsmasq did not answer on {} within 5 s", dnsmasq.address)
    }
}

/// Whether `server` answers `question` within 100 ms (it may not be listening yet).
async fn answers(server: SocketAddr, question: &[u8]) -> bool {
    let exchange = async {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        socket.connect(server).await?;
        socket.send(question).await?;
        let mut buffer = [0u8; 512];
        socket.recv(&mut buffer).await
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(100), exchange).await,
        Ok(Ok(_))
    )
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
