//! The listeners `berth server` runs over its controller's catalog: the DNS server (on the
//! host and, for containers, on the node bridge), the Consul-compatible HTTP catalog and the
//! proxy. Each is optional; each prints where it listens.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_discovery::dns::{DnsConfig, DnsServer};
use berth_listen::http::{tower_per_connection, HttpServer};
use berth_listen::Limiter;
use berth_server::Controller;
use tokio_util::sync::CancellationToken;

/// Where each listener goes; `None` (or empty) leaves it off.
pub struct Listeners {
    /// DNS on the host.
    pub dns: Option<SocketAddr>,
    /// DNS on port 53 of this bridge address, for the containers.
    pub container_dns: Option<Ipv4Addr>,
    /// The Consul-compatible catalog.
    pub catalog: Option<SocketAddr>,
    /// The proxy, over HTTP.
    pub proxy: Vec<SocketAddr>,
    /// The proxy, over HTTPS.
    pub proxy_tls: Vec<SocketAddr>,
    /// The proxy's certificates.
    pub certs: Vec<berth_proxy::CertSpec>,
    /// DNS over TCP's connection limits (each DNS listener).
    pub dns_limits: berth_listen::Limits,
    /// The catalog's connection limits.
    pub catalog_limits: berth_listen::Limits,
    /// The proxy's connection limits.
    pub proxy_limits: berth_listen::Limits,
}

/// Binds the listeners and runs them in the background. A listener that cannot bind is an
/// error, except the containers' DNS: the bridge exists only once the first container runs,
/// so that one is retried until it binds.
pub async fn start(controller: &Arc<Controller>, listeners: Listeners) -> anyhow::Result<()> {
    let catalog = controller.catalog().clone();
    if let Some(listen) = listeners.dns {
        let config = DnsConfig {
            tcp_limits: listeners.dns_limits,
            ..DnsConfig::with_host_upstreams(listen).context("configuring DNS")?
        };
        let server = DnsServer::bind(config, catalog.clone())
            .await
            .with_context(|| format!("binding DNS on {listen}"))?;
        announce(&format!(
            "berth dns listening on {} (udp and tcp)",
            server.local_addr()
        ))?;
        tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "DNS server stopped");
            }
        });
        if let Some(gateway) = listeners.container_dns {
            let config = DnsConfig {
                tcp_limits: listeners.dns_limits,
                ..DnsConfig::with_host_upstreams((gateway, 53).into()).context("configuring DNS")?
            };
            let catalog = catalog.clone();
            tokio::spawn(async move {
                loop {
                    match DnsServer::bind(config.clone(), catalog.clone()).await {
                        Ok(server) => {
                            tracing::info!(address = %server.local_addr(), "containers' DNS listening");
                            if let Err(e) = server.run().await {
                                tracing::error!(error = %e, "containers' DNS stopped");
                            }
                            return;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "containers' DNS not bound yet (no bridge?)");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            });
        }
    }
    if let Some(listen) = listeners.catalog {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the catalog on {listen}"))?;
        announce(&format!(
            "berth catalog (Consul-compatible) listening on http://{}",
            listener.local_addr()?
        ))?;
        let router = berth_discovery::consul::router(catalog.clone(), Default::default());
        let server = HttpServer::new(Limiter::new("catalog", listeners.catalog_limits));
        tokio::spawn(async move {
            server
                .serve(
                    listener,
                    None,
                    tower_per_connection(router),
                    CancellationToken::new(),
                    Duration::ZERO,
                )
                .await;
        });
    }
    if !listeners.proxy.is_empty() || !listeners.proxy_tls.is_empty() {
        let proxy = berth_server::traffic::ProxyTraffic::with_config(berth_proxy::ProxyConfig {
            http: listeners.proxy.clone(),
            https: listeners.proxy_tls.clone(),
            certs: listeners.certs.clone(),
            // One event loop per core, each with its own socket and upstream pool, like
            // nginx's workers (see docs/proxy.md and bench/proxy).
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            limits: listeners.proxy_limits,
            ..Default::default()
        })
        .await
        .context("starting the proxy")?;
        for addr in proxy.http_addrs() {
            announce(&format!("berth proxy listening on http://{addr}"))?;
        }
        for addr in proxy.proxy().https_addrs() {
            announce(&format!("berth proxy listening on https://{addr}"))?;
        }
        let proxy = Arc::new(proxy);
        controller.set_traffic(proxy.clone());
        tokio::spawn(async move {
            if let Err(e) = proxy.serve().await {
                tracing::error!(error = %e, "proxy stopped");
            }
        });
    }
    Ok(())
}

fn announce(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
