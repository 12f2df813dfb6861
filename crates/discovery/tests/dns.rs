//! berth's DNS server through a real resolver client: each test starts the server on a free
//! loopback port, fills its catalog, and asks `dig` (bind9-dnsutils), over UDP and over TCP.
//! Forwarding is checked against a real upstream, dnsmasq.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use berth_discovery::{Catalog, Change, DnsConfig, DnsServer, DnsShutdown, Endpoint};
use tokio::task::JoinHandle;

/// A running server; stopped (and its task awaited) by [`Berth::stop`], or aborted on drop.
struct Berth {
    address: SocketAddr,
    shutdown: DnsShutdown,
    task: Option<JoinHandle<Result<(), berth_discovery::DnsError>>>,
}

impl Berth {
    async fn start(catalog: &Catalog, configure: impl FnOnce(&mut DnsConfig)) -> Berth {
        let mut config = DnsConfig::new("127.0.0.1:0".parse().unwrap());
        configure(&mut config);
        let server = DnsServer::bind(config, catalog.clone()).await.unwrap();
        let address = server.local_addr();
        assert_ne!(address.port(), 0);
        let shutdown = server.shutdown_handle();
        Berth {
            address,
            shutdown,
            task: Some(tokio::spawn(server.run())),
        }
    }

    /// Asks `dig` about `name` (extra dig flags in `args`, e.g. `+tcp`).
    async fn dig(&self, name: &str, kind: &str, args: &[&str]) -> Reply {
        dig(self.address, name, kind, args).await
    }

    /// The sorted addresses of the A records that `name` answers.
    async fn addresses(&self, name: &str) -> Vec<String> {
        let reply = self.dig(name, "A", &[]).await;
        assert_eq!(reply.status, "NOERROR", "{name}: {}", reply.text);
        reply.data("A")
    }

    async fn stop(mut self) {
        self.shutdown.shutdown();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the server stops when asked")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One resource record of dig's output.
#[derive(Clone, Debug)]
struct Rr {
    name: String,
    ttl: u32,
    kind: String,
    data: String,
}

/// dig's reply, parsed.
#[derive(Debug)]
struct Reply {
    status: String,
    flags: Vec<String>,
    answer: Vec<Rr>,
    authority: Vec<Rr>,
    additional: Vec<Rr>,
    text: String,
}

impl Reply {
    /// The sorted data of the answer's records of type `kind`.
    fn data(&self, kind: &str) -> Vec<String> {
        let mut data: Vec<String> = self
            .answer
            .iter()
            .filter(|rr| rr.kind == kind)
            .map(|rr| rr.data.clone())
            .collect();
        data.sort();
        data
    }

    fn authoritative(&self) -> bool {
        self.flags.iter().any(|flag| flag == "aa")
    }

    /// The SOA in the authority section, which a negative answer must carry.
    fn soa(&self) -> &Rr {
        let soas: Vec<&Rr> = self
            .authority
            .iter()
            .filter(|rr| rr.kind == "SOA")
            .collect();
        assert_eq!(
            soas.len(),
            1,
            "one SOA in the authority section: {}",
            self.text
        );
        soas[0]
    }
}

async fn dig(server: SocketAddr, name: &str, kind: &str, args: &[&str]) -> Reply {
    try_dig(server, name, kind, args)
        .await
        .unwrap_or_else(|error| panic!("{error:#}"))
}

async fn try_dig(
    server: SocketAddr,
    name: &str,
    kind: &str,
    args: &[&str],
) -> anyhow::Result<Reply> {
    let output = tokio::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(["+time=5", "+tries=1"])
        .args(args)
        .args([name, kind])
        .output()
        .await
        .expect("dig runs (apt-get install bind9-dnsutils; scripts/install-deps.sh)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    parse_dig(&text).with_context(|| format!("dig printed:\n{text}"))
}

fn parse_dig(text: &str) -> anyhow::Result<Reply> {
    let mut status = None;
    let mut flags = Vec::new();
    let mut sections: BTreeMap<&str, Vec<Rr>> = BTreeMap::new();
    let mut section = None;
    for line in text.lines() {
        if let Some((_, rest)) = line.split_once("status: ") {
            status = rest.split(',').next().map(str::to_owned);
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            let list = rest.split(';').next().unwrap_or_default();
            flags = list.split_whitespace().map(str::to_owned).collect();
        } else if let Some(rest) = line.strip_prefix(";; ") {
            section = rest.strip_suffix(" SECTION:").and_then(|name| match name {
                "ANSWER" => Some("answer"),
                "AUTHORITY" => Some("authority"),
                "ADDITIONAL" => Some("additional"),
                _ => None,
            });
        } else if line.trim().is_empty() {
            section = None;
        } else if let (Some(name), false) = (section, line.starts_with(';')) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [owner, ttl, _class, kind, data @ ..] = fields.as_slice() else {
                bail!("not a record: {line}");
            };
            sections.entry(name).or_default().push(Rr {
                name: (*owner).to_owned(),
                ttl: ttl.parse().context("a TTL")?,
                kind: (*kind).to_owned(),
                data: data.join(" "),
            });
        }
    }
    let mut take = |name| sections.remove(name).unwrap_or_default();
    Ok(Reply {
        status: status.context("no status: dig got no answer")?,
        flags,
        answer: take("answer"),
        authority: take("authority"),
        additional: take("additional"),
        text: text.to_owned(),
    })
}

fn endpoint(id: &str, app: &str, service: &str, address: &str) -> Endpoint {
    Endpoint {
        id: id.to_owned(),
        app: app.to_owned(),
        service: service.to_owned(),
        release: 1,
        address: address.parse().unwrap(),
        ports: BTreeMap::from([("http".to_owned(), 8080), ("admin".to_owned(), 9090)]),
        tags: Vec::new(),
        meta: BTreeMap::new(),
        node: "node1".to_owned(),
    }
}

/// A free loopback UDP port (free when this returns; the caller binds it right away).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// dnsmasq answering `*.example.test` with 192.0.2.7, killed on drop.
struct Dnsmasq {
    address: SocketAddr,
    child: Child,
}

impl Dnsmasq {
    async fn start() -> Dnsmasq {
        let port = free_udp_port();
        let child = Command::new("dnsmasq")
            .args(["--no-daemon", "--conf-file=/dev/null", "--pid-file"])
            .arg(format!("--port={port}"))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--address=/example.test/192.0.2.7",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq runs (apt-get install dnsmasq; scripts/install-deps.sh)");
        let dnsmasq = Dnsmasq {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        };
        for _ in 0..100 {
            let reply = try_dig(dnsmasq.address, "ready.example.test", "A", &["+time=1"]).await;
            if reply.is_ok_and(|reply| reply.status == "NOERROR" && !reply.answer.is_empty()) {
                return dnsmasq;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("dnsmasq did not answer on {}", dnsmasq.address);
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_follow_scale_up_scale_down_and_a_deploy() {
    let catalog = Catalog::new();
    catalog.register(endpoint("web-1-aaaaaaaaaaaa", "shop", "web", "10.88.0.2"));
    let berth = Berth::start(&catalog, |config| config.ttl = 3).await;

    let reply = berth.dig("web.shop.berth", "A", &[]).await;
    assert_eq!(reply.status, "NOERROR");
    assert!(reply.authoritative(), "{}", reply.text);
    assert_eq!(reply.data("A"), vec!["10.88.0.2"]);
    assert_eq!(reply.answer[0].ttl, 3, "the configured TTL");
    assert!(
        reply.authority.is_empty(),
        "no SOA with data: {}",
        reply.text
    );

    // Scale up 1 -> 3.
    catalog.register(endpoint("web-1-bbbbbbbbbbbb", "shop", "web", "10.88.0.3"));
    catalog.register(endpoint("web-1-cccccccccccc", "shop", "web", "10.88.0.4"));
    assert_eq!(
        berth.addresses("web.shop.berth").await,
        vec!["10.88.0.2", "10.88.0.3", "10.88.0.4"]
    );

    // Scale down 3 -> 1.
    catalog.deregister("web-1-aaaaaaaaaaaa");
    catalog.deregister("web-1-cccccccccccc");
    assert_eq!(berth.addresses("web.shop.berth").await, vec!["10.88.0.3"]);

    // A deploy: the new release's instances in, the old one out, in one step.
    let mut v2a = endpoint("web-2-dddddddddddd", "shop", "web", "10.88.0.5");
    let mut v2b = endpoint("web-2-eeeeeeeeeeee", "shop", "web", "10.88.0.6");
    v2a.release = 2;
    v2b.release = 2;
    catalog.apply([
        Change::Register(v2a),
        Change::Register(v2b),
        Change::Deregister("web-1-bbbbbbbbbbbb".to_owned()),
    ]);
    assert_eq!(
        berth.addresses("web.shop.berth").await,
        vec!["10.88.0.5", "10.88.0.6"]
    );
    // The same over TCP.
    let reply = berth.dig("web.shop.berth", "A", &["+tcp"]).await;
    assert_eq!(reply.data("A"), vec!["10.88.0.5", "10.88.0.6"]);

    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_carry_ports_and_their_targets_resolve() {
    let catalog = Catalog::new();
    catalog.register(endpoint("0123456789abcdef", "shop", "web", "10.88.0.2"));
    catalog.register(endpoint("fedcba9876543210", "shop", "web", "10.88.0.3"));
    let berth = Berth::start(&catalog, |_| {}).await;

    // RFC 2782 names give the named port.
    let reply = berth
        .dig("_admin._tcp.web.shop.berth", "SRV", &["+tcp"])
        .await;
    assert_eq!(reply.status, "NOERROR");
    assert!(reply.authoritative());
    assert_eq!(
        reply.data("SRV"),
        vec![
            "1 1 9090 0123456789ab.web.shop.berth.",
            "1 1 9090 fedcba987654.web.shop.berth.",
        ]
    );
    let mut additional: Vec<(String, String)> = reply
        .additional
        .iter()
        .filter(|rr| rr.kind == "A")
        .map(|rr| (rr.name.clone(), rr.data.clone()))
        .collect();
    additional.sort();
    assert_eq!(
        additional,
        vec![
            (
                "0123456789ab.web.shop.berth.".to_owned(),
                "10.88.0.2".to_owned()
            ),
            (
                "fedcba987654.web.shop.berth.".to_owned(),
                "10.88.0.3".to_owned()
            ),
        ]
    );

    // SRV on the service name gives the main port (`http`).
    let reply = berth.dig("web.shop.berth", "SRV", &[]).await;
    assert_eq!(
        reply.data("SRV"),
        vec![
            "1 1 8080 0123456789ab.web.shop.berth.",
            "1 1 8080 fedcba987654.web.shop.berth.",
        ]
    );
    assert_eq!(
        reply.additional.iter().filter(|rr| rr.kind == "A").count(),
        2
    );

    // The targets resolve on their own.
    assert_eq!(
        berth.addresses("fedcba987654.web.shop.berth").await,
        vec!["10.88.0.3"]
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_for_unknown_names_and_nodata_for_known_ones() {
    let catalog = Catalog::new();
    catalog.register(endpoint("web-1", "shop", "web", "10.88.0.2"));
    catalog.register(endpoint("db-1", "shop", "db", "10.88.0.3"));
    catalog.deregister("db-1");
    let berth = Berth::start(&catalog, |config| config.ttl = 9).await;

    for (name, kind) in [
        ("nope.shop.berth", "A"),
        ("web.nope.berth", "A"),
        ("nope.service.berth", "SRV"),
        ("_http._tcp.nope.shop.berth", "SRV"),
        ("x.y.z.w.berth", "A"),
    ] {
        let reply = berth.dig(name, kind, &[]).await;
        assert_eq!(reply.status, "NXDOMAIN", "{name}: {}", reply.text);
        assert!(reply.authoritative(), "{name}");
        assert!(reply.answer.is_empty(), "{name}");
        let soa = reply.soa();
        assert_eq!(soa.name, "berth.");
        assert_eq!(soa.ttl, 9);
        // mname rname serial refresh retry expire minimum: the minimum is the TTL.
        assert!(
            soa.data.starts_with("ns.berth. hostmaster.berth. "),
            "{}",
            soa.data
        );
        assert_eq!(soa.data.rsplit(' ').next(), Some("9"));
    }

    for (name, kind, args) in [
        // A service the catalog knows, with no instance now.
        ("db.shop.berth", "A", &[][..]),
        ("db.shop.berth", "SRV", &["+tcp"][..]),
        // A known service, a type it has no data of.
        ("web.shop.berth", "AAAA", &[][..]),
        ("web.shop.berth", "TXT", &[][..]),
        // A name above a service.
        ("shop.berth", "A", &[][..]),
    ] {
        let reply = berth.dig(name, kind, args).await;
        assert_eq!(reply.status, "NOERROR", "{name} {kind}: {}", reply.text);
        assert!(reply.authoritative(), "{name} {kind}");
        assert!(reply.answer.is_empty(), "{name} {kind}: {}", reply.text);
        assert_eq!(reply.soa().ttl, 9);
    }

    let reply = berth.dig("berth", "SOA", &[]).await;
    assert_eq!(reply.status, "NOERROR");
    assert_eq!(reply.answer.len(), 1, "{}", reply.text);
    assert_eq!(reply.answer[0].kind, "SOA");
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_style_names_and_the_union_across_apps() {
    let catalog = Catalog::new();
    catalog.register(endpoint("shop-web-1", "shop", "web", "10.88.0.2"));
    catalog.register(endpoint("shop-web-2", "shop", "web", "10.88.0.3"));
    catalog.register(endpoint("blog-web-1", "blog", "web", "10.88.1.2"));
    catalog.register(endpoint("blog-db-1", "blog", "db", "10.88.1.3"));
    let berth = Berth::start(&catalog, |_| {}).await;

    assert_eq!(
        berth.addresses("web.shop.service.berth").await,
        vec!["10.88.0.2", "10.88.0.3"]
    );
    assert_eq!(
        berth.addresses("web.service.berth").await,
        vec!["10.88.0.2", "10.88.0.3", "10.88.1.2"]
    );
    assert_eq!(berth.addresses("db.service.berth").await, vec!["10.88.1.3"]);
    let reply = berth.dig("web.service.berth", "SRV", &["+tcp"]).await;
    assert_eq!(reply.data("SRV").len(), 3, "{}", reply.text);

    // The union follows the catalog too.
    catalog.deregister("blog-web-1");
    assert_eq!(
        berth.addresses("web.service.berth").await,
        vec!["10.88.0.2", "10.88.0.3"]
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_names_are_forwarded_to_the_upstream() {
    let upstream = Dnsmasq::start().await;
    let catalog = Catalog::new();
    catalog.register(endpoint("web-1", "shop", "web", "10.88.0.2"));
    let berth = Berth::start(&catalog, |config| {
        config.upstreams = vec![upstream.address];
    })
    .await;

    for args in [&[][..], &["+tcp"][..]] {
        let reply = berth.dig("foo.example.test", "A", args).await;
        assert_eq!(reply.status, "NOERROR", "{args:?}: {}", reply.text);
        assert_eq!(reply.data("A"), vec!["192.0.2.7"], "{args:?}");
        assert!(!reply.authoritative(), "berth is not the authority for it");
    }
    // The zone is still answered by berth itself.
    assert_eq!(berth.addresses("web.shop.berth").await, vec!["10.88.0.2"]);
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_servfail_not_a_hang() {
    // A closed port (the kernel answers "port unreachable") and a socket that never answers
    // (only the timeout ends the wait), before and after a working upstream.
    let closed = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_address = silent.local_addr().unwrap();
    let catalog = Catalog::new();
    let berth = Berth::start(&catalog, |config| {
        config.upstreams = vec![closed, silent_address];
        config.upstream_timeout = Duration::from_millis(300);
    })
    .await;
    // dig waits 5 s: an answer in time is SERVFAIL, a hang would be no answer at all.
    for args in [&[][..], &["+tcp"][..]] {
        let reply = berth.dig("foo.example.test", "A", args).await;
        assert_eq!(reply.status, "SERVFAIL", "{args:?}: {}", reply.text);
    }

    // The next upstream is asked when one fails.
    let upstream = Dnsmasq::start().await;
    let berth2 = Berth::start(&catalog, |config| {
        config.upstreams = vec![closed, silent_address, upstream.address];
        config.upstream_timeout = Duration::from_millis(300);
    })
    .await;
    let reply = berth2.dig("foo.example.test", "A", &[]).await;
    assert_eq!(reply.data("A"), vec!["192.0.2.7"], "{}", reply.text);
    berth.stop().await;
    berth2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_upstreams_other_names_are_refused() {
    let berth = Berth::start(&Catalog::new(), |_| {}).await;
    let reply = berth.dig("foo.example.test", "A", &[]).await;
    assert_eq!(reply.status, "REFUSED", "{}", reply.text);
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_a_taken_port_says_which() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let error = DnsServer::bind(DnsConfig::new(address), Catalog::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!("cannot listen for DNS on udp {address}")),
        "{error}"
    );
}

#[test]
fn dig_output_parses() -> anyhow::Result<()> {
    let text = "\n; <<>> DiG 9.18 <<>> @127.0.0.1 nope.berth A\n;; global options: +cmd\n\
        ;; Got answer:\n;; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 1\n\
        ;; flags: qr aa; QUERY: 1, ANSWER: 0, AUTHORITY: 1, ADDITIONAL: 1\n\n\
        ;; QUESTION SECTION:\n;nope.berth.\t\t\tIN\tA\n\n;; AUTHORITY SECTION:\n\
        berth.\t\t\t5\tIN\tSOA\tns.berth. hostmaster.berth. 1 3600 600 86400 5\n\n\
        ;; Query time: 0 msec\n";
    let reply = parse_dig(text)?;
    assert_eq!(reply.status, "NXDOMAIN");
    assert_eq!(reply.flags, vec!["qr", "aa"]);
    assert!(reply.answer.is_empty());
    assert_eq!(
        reply.soa().data,
        "ns.berth. hostmaster.berth. 1 3600 600 86400 5"
    );
    assert!(parse_dig(";; connection timed out; no servers could be reached\n").is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_too_long_for_udp_is_truncated_and_complete_over_tcp() {
    let catalog = Catalog::new();
    catalog.apply((0..60).map(|i| {
        Change::Register(endpoint(
            &format!("web-{i:02}-0123456789"),
            "shop",
            "web",
            &format!("10.88.0.{}", i + 2),
        ))
    }));
    let berth = Berth::start(&catalog, |_| {}).await;
    // Without EDNS a UDP answer holds 512 bytes: dig sees the TC flag.
    let reply = berth
        .dig("web.shop.berth", "SRV", &["+noedns", "+ignore"])
        .await;
    assert!(
        reply.flags.iter().any(|flag| flag == "tc"),
        "{}",
        reply.text
    );
    assert!(reply.answer.len() < 60);
    // dig then asks again over TCP, which holds it all.
    let reply = berth.dig("web.shop.berth", "SRV", &["+noedns"]).await;
    assert_eq!(reply.data("SRV").len(), 60, "{}", reply.text);
    assert_eq!(reply.additional.len(), 60);
    berth.stop().await;
}

/// A question for `name` (type A, class IN) with `id`, as DNS over TCP frames it.
fn framed_question(id: u16, name: &str) -> Vec<u8> {
    let mut message = Vec::new();
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        message.push(u8::try_from(label.len()).unwrap());
        message.extend_from_slice(label.as_bytes());
    }
    message.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut framed = u16::try_from(message.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(&message);
    framed
}

/// Reads one framed answer: its id, response code and number of answers.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> (u16, u8, u16) {
    use tokio::io::AsyncReadExt;
    let mut length = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut length))
        .await
        .expect("an answer in time")
        .unwrap();
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut message).await.unwrap();
    (
        u16::from_be_bytes([message[0], message[1]]),
        message[3] & 0x0f,
        u16::from_be_bytes([message[6], message[7]]),
    )
}

/// Whether the server closes `stream` within `limit`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn tcp_from(source: [u8; 4], address: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    socket.connect(address).await.unwrap()
}

/// DNS over TCP on berth's own connection loop: pipelined questions are answered in order,
/// a malformed one gets FORMERR, a half-sent question is closed after the header timeout
/// and a silent connection after the idle timeout, and a flood of half-sent questions from
/// many addresses does not keep `dig +tcp` out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_answers_in_order_and_bounds_slow_and_idle_clients() {
    use tokio::io::AsyncWriteExt;
    let catalog = Catalog::new();
    catalog.register(endpoint("0123456789abcdef", "shop", "web", "10.88.0.2"));
    let berth = Berth::start(&catalog, |config| {
        config.tcp_limits = berth_listen::Limits {
            max_connections: 16,
            max_connections_per_client: 8,
            header_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(800),
        };
    })
    .await;

    let mut client = tcp_from([127, 0, 0, 1], berth.address).await;
    let mut both = framed_question(7, "web.shop.berth");
    both.extend(framed_question(8, "nope.shop.berth"));
    client.write_all(&both).await.unwrap();
    assert_eq!(read_answer(&mut client).await, (7, 0, 1));
    assert_eq!(read_answer(&mut client).await, (8, 3, 0), "NXDOMAIN");
    // A header asking one question, then a name label too long to exist.
    let garbage = [
        0, 14, 0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
    ];
    client.write_all(&garbage).await.unwrap();
    assert_eq!(read_answer(&mut client).await, (0x1234, 1, 0), "FORMERR");
    // Now silent: closed after the idle timeout.
    assert!(closed_by_server(&mut client, Duration::from_secs(5)).await);

    let mut half = tcp_from([127, 0, 0, 1], berth.address).await;
    half.write_all(&framed_question(9, "web.shop.berth")[..5])
        .await
        .unwrap();
    assert!(closed_by_server(&mut half, Duration::from_secs(5)).await);

    let mut flood = Vec::new();
    for i in 0..400u16 {
        let mut slow = tcp_from([127, 0, 0, 2 + (i % 8) as u8], berth.address).await;
        let _ = slow.write_all(&[0]).await;
        flood.push(slow);
    }
    let reply = berth.dig("web.shop.berth", "A", &["+tcp"]).await;
    assert_eq!(reply.status, "NOERROR", "{}", reply.text);
    assert_eq!(reply.data("A"), vec!["10.88.0.2"]);
    assert!(closed_by_server(&mut flood[0], Duration::from_secs(5)).await);
    berth.stop().await;
}
