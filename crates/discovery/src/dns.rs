//! berth's DNS server: answers for the zone `berth.` from the live [`Catalog`], and forwards
//! every other name to the host's resolvers.
//!
//! Names (see `docs/discovery.md`): `SERVICE.APP.berth` and `SERVICE.APP.service.berth`
//! answer the A (or AAAA) records of the service's instances, `SERVICE.service.berth` those
//! of every app's service `SERVICE`; an SRV question on these names answers each instance's
//! main port ([`Endpoint::main_port`](crate::Endpoint::main_port)), and
//! `_PORT._tcp.SERVICE.APP.berth` the port named `PORT` (RFC 2782). SRV targets are
//! instance names, `LABEL.SERVICE.APP.berth` (the first 12 characters of the instance id),
//! whose addresses come in the additional section. A name that does not exist is NXDOMAIN;
//! a name that exists without records of the asked type (a known service with no instance
//! now, AAAA of IPv4 instances) is NOERROR with no answer; both carry the zone's SOA, whose
//! minimum is the TTL (RFC 2308).
//!
//! Each question reads [`Catalog::snapshot`], so answers follow the catalog as it changes.

mod answer;
mod forward;
mod name;
mod tcp;

use std::iter;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_listen::{Acceptor, Limiter, Limits};

use hickory_proto::op::{
    Edns, Header, HeaderCounts, LowerQuery, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::{DNSClass, Name, Record};
use hickory_server::net::runtime::Time;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::answer::Zone;
use self::forward::Forwarder;
use crate::catalog::Catalog;

/// Where the host lists its resolvers.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// How many times [`DnsServer::bind`] looks for a port free for both UDP and TCP when asked
/// for port 0.
const PORT_ATTEMPTS: usize = 16;

/// The DNS server's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Where to listen, on UDP and TCP. Port 0 picks a free port (the same for both).
    pub listen: SocketAddr,
    /// The zone berth answers for, without the trailing dot (default `berth`).
    pub zone: String,
    /// The TTL of every answer in the zone, in seconds, and the SOA minimum, which is the
    /// TTL of negative answers (default 5: instances come and go, caches must follow).
    pub ttl: u32,
    /// The resolvers that answer every name outside the zone, tried in order. None: such
    /// names are REFUSED. An upstream that is this server itself is left out.
    pub upstreams: Vec<SocketAddr>,
    /// How long each upstream gets to answer before the next is tried; when none answered,
    /// the client gets SERVFAIL.
    pub upstream_timeout: Duration,
    /// DNS over TCP's connections: caps, the time a client has to send its first whole
    /// question, and how long a connection with no question in flight stays open.
    pub tcp_limits: Limits,
}

impl DnsConfig {
    /// The default port: Consul's DNS port, so that clients configured for Consul work.
    pub const DEFAULT_PORT: u16 = 8600;

    /// A configuration listening on `listen`, with the default zone, TTL and timeout, and
    /// no upstreams.
    pub fn new(listen: SocketAddr) -> DnsConfig {
        DnsConfig {
            listen,
            zone: "berth".to_owned(),
            ttl: 5,
            upstreams: Vec::new(),
            upstream_timeout: Duration::from_secs(2),
            tcp_limits: Limits::DNS,
        }
    }

    /// [`DnsConfig::new`] with the host's resolvers from [`RESOLV_CONF`] as upstreams (none
    /// when the file does not exist).
    pub fn with_host_upstreams(listen: SocketAddr) -> Result<DnsConfig, DnsError> {
        DnsConfig::with_upstreams_from(listen, Path::new(RESOLV_CONF))
    }

    /// [`DnsConfig::new`] with the resolvers of the resolv.conf file at `path` as upstreams
    /// (none when the file does not exist).
    pub fn with_upstreams_from(listen: SocketAddr, path: &Path) -> Result<DnsConfig, DnsError> {
        let upstreams = match std::fs::read_to_string(path) {
            Ok(text) => host_upstreams(&text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(DnsError::ResolvConf {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Ok(DnsConfig {
            upstreams,
            ..DnsConfig::new(listen)
        })
    }
}

impl Default for DnsConfig {
    /// Listens on 127.0.0.1:8600.
    fn default() -> DnsConfig {
        DnsConfig::new((Ipv4Addr::LOCALHOST, DnsConfig::DEFAULT_PORT).into())
    }
}

/// The resolvers named by `nameserver` lines of a resolv.conf text, on port 53, in order.
/// Comments and other lines are skipped, and so are addresses that do not parse (such as
/// link-local IPv6 addresses with a `%interface` suffix).
pub fn host_upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(address)) => address.parse::<IpAddr>().ok(),
                _ => None,
            }
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Whether an upstream at `upstream` would be this server listening on `local`: forwarding
/// to it would loop.
fn is_self(upstream: SocketAddr, local: SocketAddr) -> bool {
    upstream.port() == local.port()
        && (upstream.ip() == local.ip()
            || (local.ip().is_unspecified()
                && (upstream.ip().is_loopback() || upstream.ip().is_unspecified())))
}

/// Why the DNS server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The zone is not a domain name.
    #[error("the DNS zone `{zone}` is not a valid domain name: {reason}")]
    Zone {
        /// The zone as configured.
        zone: String,
        /// Why it is not valid.
        reason: String,
    },
    /// A socket could not be bound.
    #[error(
        "cannot listen for DNS on {protocol} {address}: {source}{}",
        bind_hint(source)
    )]
    Bind {
        /// `udp` or `tcp`.
        protocol: &'static str,
        /// The address.
        address: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The host's resolver configuration could not be read.
    #[error("cannot read the host's resolvers from {}: {source}", path.display())]
    ResolvConf {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A listener failed while serving.
    #[error("the DNS server failed: {0}")]
    Serve(String),
}

/// What to do about a bind error.
fn bind_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process listens there: stop it, or pick another address or port)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE: pick a port above 1023)"
        }
        _ => "",
    }
}

/// A bound DNS server, ready to [`run`](DnsServer::run).
pub struct DnsServer {
    server: Server<SharedHandler>,
    tcp: tokio::task::JoinHandle<()>,
    tcp_limiter: Limiter,
    local_addr: SocketAddr,
}

/// Stops a [`DnsServer`]: its [`run`](DnsServer::run) returns once the listeners have
/// stopped.
#[derive(Clone, Debug)]
pub struct DnsShutdown(CancellationToken);

impl DnsShutdown {
    /// Asks the server to stop.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Binds UDP and TCP on `config.listen` and starts answering from `catalog` (the
    /// listeners run on the current tokio runtime from now on; [`DnsServer::run`] waits for
    /// them).
    pub async fn bind(config: DnsConfig, catalog: Catalog) -> Result<DnsServer, DnsError> {
        let origin = zone_origin(&config.zone)?;
        let (udp, tcp) = bind_sockets(config.listen).await?;
        let local_addr = udp.local_addr().map_err(|source| DnsError::Bind {
            protocol: "udp",
            address: config.listen,
            source,
        })?;
        let mut upstreams = config.upstreams;
        upstreams.retain(|upstream| {
            let own = is_self(*upstream, local_addr);
            if own {
                warn!(%upstream, "leaving out an upstream resolver that is this DNS server");
            }
            !own
        });
        let handler = Handler {
            catalog,
            zone: Zone {
                origin,
                ttl: config.ttl,
            },
            forwarder: Forwarder::new(upstreams, config.upstream_timeout),
        };
        let handler = Arc::new(handler);
        let mut server = Server::new(SharedHandler(Arc::clone(&handler)));
        server.register_socket(udp);
        let tcp_limiter = Limiter::new("dns", config.tcp_limits);
        let tcp = tokio::spawn(tcp::serve(
            Acceptor::new(tcp, tcp_limiter.clone()),
            handler,
            server.shutdown_token().clone(),
        ));
        info!(address = %local_addr, zone = %config.zone, "DNS server listening on udp and tcp");
        Ok(DnsServer {
            server,
            tcp,
            tcp_limiter,
            local_addr,
        })
    }

    /// The limiter of TCP connections (caps, timeouts and counters).
    pub fn tcp_limiter(&self) -> &Limiter {
        &self.tcp_limiter
    }

    /// The address it listens on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> DnsShutdown {
        DnsShutdown(self.server.shutdown_token().clone())
    }

    /// Serves until stopped through a [`DnsShutdown`], or until a listener fails.
    pub async fn run(mut self) -> Result<(), DnsError> {
        let udp = self.server.block_until_done().await;
        // The UDP listener ended: stopped, or failed. Either way TCP stops with it.
        self.server.shutdown_token().cancel();
        let _ = self.tcp.await;
        udp.map_err(|error| DnsError::Serve(error.to_string()))
    }
}

/// The zone's origin as a fully qualified, lowercase name.
fn zone_origin(zone: &str) -> Result<Name, DnsError> {
    let invalid = |reason: String| DnsError::Zone {
        zone: zone.to_owned(),
        reason,
    };
    let trimmed = zone.trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(invalid(
            "it is empty; berth needs a zone of its own, like `berth`".to_owned(),
        ));
    }
    let mut origin = Name::from_ascii(trimmed).map_err(|error| invalid(error.to_string()))?;
    origin.set_fqdn(true);
    Ok(origin.to_lowercase())
}

/// A UDP socket and a TCP listener on the same address; for port 0, on the same free port.
async fn bind_sockets(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let bind_error = |protocol, address| {
        move |source| DnsError::Bind {
            protocol,
            address,
            source,
        }
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(bind_error("udp", listen))?;
        let address = udp.local_addr().map_err(bind_error("udp", listen))?;
        match TcpListener::bind(address).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // The port UDP got is taken for TCP: try another.
            Err(error)
                if listen.port() == 0
                    && error.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < PORT_ATTEMPTS =>
            {
                continue
            }
            Err(source) => return Err(bind_error("tcp", address)(source)),
        }
    }
}

/// The handler, shared by hickory's UDP listener and berth's TCP loop.
struct SharedHandler(Arc<Handler>);

#[async_trait::async_trait]
impl RequestHandler for SharedHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        self.0.handle_request::<R, T>(request, response).await
    }
}

/// Answers one request: from the zone, or through the upstreams.
struct Handler {
    catalog: Catalog,
    zone: Zone,
    forwarder: Forwarder,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        match self.respond(request, response).await {
            Ok(info) => info,
            Err(error) => {
                warn!(%error, src = %request.src(), "cannot send a DNS answer");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

impl Handler {
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> Result<ResponseInfo, NetError> {
        let edns = request.edns.as_ref().map(|edns| {
            let mut reply = Edns::new();
            reply.set_max_payload(edns.max_payload().max(512));
            reply
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = self.forwarder.is_enabled();
        let error = |code| {
            MessageResponseBuilder::new(&request.queries, edns.as_ref())
                .error_msg(&request.metadata, code)
        };

        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            return response.send_response(error(ResponseCode::NotImp)).await;
        }
        let Ok(info) = request.request_info() else {
            return response.send_response(error(ResponseCode::FormErr)).await;
        };
        let query = info.query;
        if self.zone.contains(query.name()) {
            self.answer_from_zone(request, query, metadata, builder, response)
                .await
        } else if self.forwarder.is_enabled() {
            self.answer_forwarded(request, query, metadata, builder, response)
                .await
        } else {
            response.send_response(error(ResponseCode::Refused)).await
        }
    }

    /// Answers a question about a name in the zone from the catalog as it is now.
    async fn answer_from_zone<R: ResponseHandler>(
        &self,
        request: &Request,
        query: &LowerQuery,
        mut metadata: Metadata,
        builder: MessageResponseBuilder<'_>,
        mut response: R,
    ) -> Result<ResponseInfo, NetError> {
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
            let reply = builder.error_msg(&request.metadata, ResponseCode::Refused);
            return response.send_response(reply).await;
        }
        let snapshot = self.catalog.snapshot();
        let answer = self
            .zone
            .answer(&snapshot, query.name(), query.query_type());
        metadata.authoritative = true;
        metadata.response_code = if answer.exists {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        };
        // RFC 2308: a negative answer (NXDOMAIN or no data) carries the SOA, whose minimum
        // tells caches how long to keep it.
        let soa: Vec<Record> = if answer.answers.is_empty() {
            vec![self.zone.soa(&snapshot)]
        } else {
            Vec::new()
        };
        let reply = builder.build(
            metadata,
            answer.answers.iter(),
            iter::empty(),
            soa.iter(),
            answer.additionals.iter(),
        );
        response.send_response(reply).await
    }

    /// Answers a question about a name outside the zone with the upstreams' answer, or
    /// SERVFAIL when none answered.
    async fn answer_forwarded<R: ResponseHandler>(
        &self,
        request: &Request,
        query: &LowerQuery,
        mut metadata: Metadata,
        builder: MessageResponseBuilder<'_>,
        mut response: R,
    ) -> Result<ResponseInfo, NetError> {
        let name = query.name();
        let dnssec_ok = request
            .edns
            .as_ref()
            .is_some_and(|edns| edns.flags().dnssec_ok);
        let forwarded = self
            .forwarder
            .forward(
                query.original(),
                request.metadata.recursion_desired,
                dnssec_ok,
            )
            .await;
        match forwarded {
            Ok(upstream) => {
                debug!(%name, code = %upstream.metadata.response_code, "forwarded");
                // berth is not the authority of forwarded names, whatever the upstream is:
                // `authoritative` stays false.
                metadata.response_code = upstream.metadata.response_code;
                metadata.authentic_data = upstream.metadata.authentic_data;
                let reply = builder.build(
                    metadata,
                    upstream.answers.iter(),
                    upstream.authorities.iter(),
                    iter::empty(),
                    upstream.additionals.iter(),
                );
                response.send_response(reply).await
            }
            Err(error) => {
                warn!(%name, %error, "cannot forward a DNS question, answering SERVFAIL");
                metadata.response_code = ResponseCode::ServFail;
                response
                    .send_response(builder.build_no_records(metadata))
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn host_upstreams_reads_nameserver_lines() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\n\
                    nameserver 2001:db8::53 # v6\n  nameserver\t192.0.2.1  \n\
                    ; nameserver 10.9.9.9\nnameserver fe80::1%eth0\nnameserver bogus\n\
                    options ndots:2\n";
        assert_eq!(
            host_upstreams(text),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "192.0.2.1:53".parse().unwrap(),
            ]
        );
        assert!(host_upstreams("").is_empty());
    }

    #[test]
    fn upstreams_come_from_a_resolv_conf_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        let listen: SocketAddr = "127.0.0.1:8600".parse().unwrap();
        std::fs::write(&path, "nameserver 192.0.2.53\n").unwrap();
        let config = DnsConfig::with_upstreams_from(listen, &path).unwrap();
        assert_eq!(config.upstreams, vec!["192.0.2.53:53".parse().unwrap()]);
        assert_eq!(config.listen, listen);
        assert_eq!(config.ttl, 5);

        let missing = DnsConfig::with_upstreams_from(listen, &dir.path().join("nope")).unwrap();
        assert!(missing.upstreams.is_empty());

        let error = DnsConfig::with_upstreams_from(listen, dir.path()).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "cannot read the host's resolvers from {}: ",
                dir.path().display()
            )),
            "{error}"
        );
    }

    #[test]
    fn an_upstream_that_is_this_server_is_recognised() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(is_self(at("127.0.0.1:53"), at("127.0.0.1:53")));
        assert!(is_self(at("127.0.0.1:53"), at("0.0.0.0:53")));
        assert!(is_self(at("127.0.0.53:53"), at("0.0.0.0:53")));
        assert!(!is_self(at("127.0.0.53:53"), at("127.0.0.1:53")));
        assert!(!is_self(at("127.0.0.1:53"), at("127.0.0.1:8600")));
        assert!(!is_self(at("10.0.0.2:53"), at("0.0.0.0:53")));
    }

    #[test]
    fn zone_origins_are_fully_qualified_and_lowercase() {
        assert_eq!(zone_origin("berth").unwrap().to_ascii(), "berth.");
        assert_eq!(
            zone_origin("Berth.Local.").unwrap().to_ascii(),
            "berth.local."
        );
        assert!(matches!(zone_origin(""), Err(DnsError::Zone { .. })));
        assert!(matches!(zone_origin("a..b"), Err(DnsError::Zone { .. })));
    }
}
