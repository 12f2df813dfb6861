//! One request through the proxy: route, pick, rewrite headers, send (retrying connect
//! failures of safe requests elsewhere), pass upgrades through, record and log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioIo;

use crate::body::ProxyBody;
use crate::metrics::{MetricsRegistry, Stats};
use crate::route::{normalize_host, Table};
use crate::upstream::{InFlight, Registry};

/// The body sent upstream: the client's, or nothing (for requests that may be retried).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// The HTTP client to upstreams (pooled keep-alive connections).
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// Everything a request needs, shared by every connection.
#[derive(Debug)]
pub struct Shared {
    /// The live route table.
    pub routes: arc_swap::ArcSwap<Table>,
    /// Upstreams' in-flight counts and health.
    pub upstreams: Registry,
    /// Counters.
    pub metrics: Arc<MetricsRegistry>,
    /// Extra attempts after a connect failure.
    pub retries: usize,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that belong to one connection and are never forwarded (RFC 9110 7.6.1).
fn hop_by_hop() -> [&'static HeaderName; 9] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// Removes hop-by-hop headers and those the Connection header names; returns the Upgrade
/// header's value when the message asks for an upgrade.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let mut upgrade = false;
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| {
            let name = name.trim();
            if name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
            HeaderName::from_bytes(name.as_bytes()).ok()
        })
        .collect();
    let upgrade_to = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for name in named {
        headers.remove(name);
    }
    for name in hop_by_hop() {
        headers.remove(name);
    }
    upgrade_to
}

/// Sets X-Forwarded-For (appending the client), -Proto and -Host.
pub fn add_forwarded(headers: &mut HeaderMap, client: SocketAddr, https: bool, host: &str) {
    let ip = client.ip().to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {ip}"),
        _ => ip,
    };
    headers.remove(&X_FORWARDED_FOR);
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    let proto = HeaderValue::from_static(if https { "https" } else { "http" });
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    if let Ok(host) = HeaderValue::from_str(host) {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::text(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// What a pick from the table gave.
struct Picked {
    route: Arc<str>,
    route_stats: Arc<Stats>,
    group: Option<(Arc<str>, Arc<Stats>)>,
    in_flight: Option<InFlight>,
}

/// Why a request got no upstream response.
enum Failure {
    /// The route has no upstream to give (503).
    NoUpstream,
    /// Connecting failed, and no retry was allowed or left (502); the request never left.
    Unreachable(SocketAddr),
    /// The request was sent but no usable response came back (502); never retried.
    Failed(SocketAddr),
}

/// How many times a pick is redone when it lands on an upstream that a newer table removed.
const REPICKS: usize = 8;

impl Shared {
    /// Finds the route, a group by weight and an upstream by balance (not one in `tried`).
    /// None when no route matches; a pick without `in_flight` when the route has no
    /// upstream to give.
    fn pick(&self, host: &str, path: &str, tried: &[SocketAddr]) -> Option<Picked> {
        let mut last = None;
        for _ in 0..REPICKS {
            let table = self.routes.load();
            let route = table.find(host, path)?;
            let mut picked = Picked {
                route: Arc::clone(&route.name),
                route_stats: Arc::clone(&route.stats),
                group: None,
                in_flight: None,
            };
            let now = self.upstreams.now_ms();
            let Some((group, upstream)) = route.pick(tried, now) else {
                // Nothing left to try: the answer counts for the group that would have had it.
                if let Some(g) = route.pick_group() {
                    picked.group = Some((Arc::clone(&g.label), Arc::clone(&g.stats)));
                }
                return Some(picked);
            };
            picked.group = Some((Arc::clone(&group.label), Arc::clone(&group.stats)));
            match upstream.begin() {
                Some(guard) => {
                    picked.in_flight = Some(guard);
                    return Some(picked);
                }
                None => last = Some(picked),
            }
        }
        last
    }

    /// Serves one request from a client at `peer`, sending it upstream with `client`.
    pub async fn handle(
        &self,
        client: &UpstreamClient,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        https: bool,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let raw_host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_owned();
        let host = normalize_host(&raw_host);
        let method = request.method().clone();
        let path_and_query = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let path = path_and_query.path();

        let Some(mut picked) = self.pick(&host, path, &[]) else {
            self.metrics
                .unrouted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            access_log(&method, &host, path, 404, None, start);
            return text(StatusCode::NOT_FOUND, "no route for this host and path\n");
        };

        let client_upgrade = hyper::upgrade::on(&mut request);
        let (mut head, body) = request.into_parts();
        let upgrade_to = strip_hop_by_hop(&mut head.headers);
        if let Some(protocol) = &upgrade_to {
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            head.headers.insert(header::UPGRADE, protocol.clone());
        }
        if !head.headers.contains_key(header::HOST) {
            if let Ok(value) = HeaderValue::from_str(&raw_host) {
                head.headers.insert(header::HOST, value);
            }
        }
        add_forwarded(&mut head.headers, peer, https, &raw_host);
        let retryable = is_idempotent(&head.method) && body.is_end_stream() && upgrade_to.is_none();
        let mut body = Some(body);
        let mut tried: Vec<SocketAddr> = Vec::new();

        let result = loop {
            let Some(in_flight) = picked.in_flight.take() else {
                break Err(match tried.last() {
                    Some(addr) => Failure::Unreachable(*addr),
                    None => Failure::NoUpstream,
                });
            };
            let addr = in_flight.addr();
            let upstream = Arc::clone(in_flight.upstream());
            let uri = {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(Scheme::HTTP);
                parts.authority = Some(upstream.authority.clone());
                parts.path_and_query = Some(path_and_query.clone());
                Uri::from_parts(parts)
            };
            let Ok(uri) = uri else {
                break Err(Failure::Failed(addr));
            };
            let mut outgoing = Request::new(match body.take() {
                Some(b) if !retryable => Either::Left(b),
                _ => Either::Right(Empty::new()),
            });
            *outgoing.method_mut() = head.method.clone();
            *outgoing.uri_mut() = uri;
            *outgoing.version_mut() = Version::HTTP_11;
            *outgoing.headers_mut() = head.headers.clone();

            match client.request(outgoing).await {
                Ok(response) => break Ok((response, in_flight)),
                Err(error) if error.is_connect() => {
                    self.upstreams.mark_failed(&upstream);
                    tracing::warn!(upstream = %addr, route = %picked.route, %error, "upstream refused a connection");
                    tried.push(addr);
                    if !retryable || tried.len() > self.retries {
                        break Err(Failure::Unreachable(addr));
                    }
                    drop(in_flight);
                    // The route may have changed or gone meanwhile: the next pick is from
                    // the live table, and a miss there ends the retries.
                    match self.pick(&host, path, &tried) {
                        Some(next) if next.in_flight.is_some() => picked = next,
                        _ => break Err(Failure::Unreachable(addr)),
                    }
                }
                Err(error) => {
                    tracing::warn!(upstream = %addr, route = %picked.route, %error, "upstream request failed");
                    break Err(Failure::Failed(addr));
                }
            }
        };

        let response = match result {
            Ok((mut response, in_flight)) => {
                let upstream = Some(in_flight.addr());
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let upstream_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(client_upgrade, upstream_upgrade, in_flight));
                    let (parts, _) = response.into_parts();
                    (Response::from_parts(parts, ProxyBody::empty()), upstream)
                } else {
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let body = ProxyBody::upstream(body, Some(in_flight));
                    (Response::from_parts(parts, body), upstream)
                }
            }
            Err(Failure::NoUpstream) => (
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no upstream is available for this route\n",
                ),
                None,
            ),
            Err(Failure::Unreachable(addr)) => (
                text(
                    StatusCode::BAD_GATEWAY,
                    "the upstream could not be reached\n",
                ),
                Some(addr),
            ),
            Err(Failure::Failed(addr)) => (
                text(StatusCode::BAD_GATEWAY, "the upstream failed to answer\n"),
                Some(addr),
            ),
        };
        let (response, upstream) = response;
        let status = response.status().as_u16();
        let elapsed = start.elapsed();
        picked.route_stats.record(status, elapsed);
        if let Some((_, stats)) = &picked.group {
            stats.record(status, elapsed);
        }
        access_log(&method, &host, path, status, upstream, start);
        response
    }
}

fn access_log(
    method: &Method,
    host: &str,
    path: &str,
    status: u16,
    upstream: Option<SocketAddr>,
    start: Instant,
) {
    tracing::info!(
        target: "berth_proxy::access",
        %method,
        host,
        path,
        status,
        upstream = upstream.map(tracing::field::display),
        duration_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
        "request"
    );
}

/// Copies bytes both ways between an upgraded client and upstream connection; the upstream
/// counts as in flight until both sides close.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    in_flight: InFlight,
) {
    let addr = in_flight.addr();
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(upstream = %addr, %error, "upgraded connection ended");
            }
        }
        Err(error) => tracing::warn!(upstream = %addr, %error, "upgrade failed"),
    }
    drop(in_flight);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::HOST, HeaderValue::from_static("shop.example"));
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        assert_eq!(strip_hop_by_hop(&mut headers), None);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn an_upgrade_request_reports_its_protocol() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(
            strip_hop_by_hop(&mut headers),
            Some(HeaderValue::from_static("websocket"))
        );
        assert!(headers.is_empty());
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        let peer: SocketAddr = "127.0.0.7:5000".parse().unwrap();
        add_forwarded(&mut headers, peer, true, "shop.example:8443");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "shop.example:8443");
    }
}
