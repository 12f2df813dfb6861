//! Consul compatibility with a real scraper: Debian's VictoriaMetrics (`victoria-metrics`,
//! whose scraper reads Prometheus' `scrape_configs` and implements `consul_sd_configs` with
//! its own Consul client) discovers targets through berth's Consul-compatible catalog,
//! scrapes them, and follows the catalog when instances come and go. (Debian's `prometheus`
//! is built without consul SD; see docs/discovery.md.)
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_discovery::{Catalog, Change};
use serde_json::Value;
use support::{config, endpoint, ConsulServer};

/// How long the scraper may take to catch up with the catalog (bounded polling).
const CATCH_UP: Duration = Duration::from_secs(60);

/// A VictoriaMetrics process, killed and reaped when dropped (also when the test fails).
struct ScraperGuard {
    child: Child,
    url: String,
}

impl Drop for ScraperGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (the scraper binds it itself a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts VictoriaMetrics scraping what `consul_sd_configs` finds for `web.shop` in the
/// catalog on `consul_port`, every second; its log goes to `dir/scraper.log`.
fn start_scraper(dir: &Path, consul_port: u16) -> ScraperGuard {
    let config = format!(
        "global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: berth
    consul_sd_configs:
      - server: 127.0.0.1:{consul_port}
        services: [web.shop]
"
    );
    let config_path = dir.join("scrape.yml");
    std::fs::write(&config_path, config).unwrap();
    let port = free_port();
    let log = File::create(dir.join("scraper.log")).unwrap();
    let spawned = Command::new("victoria-metrics")
        .arg(format!("-promscrape.config={}", config_path.display()))
        .arg("-promscrape.consulSDCheckInterval=1s")
        .arg(format!("-storageDataPath={}", dir.join("data").display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(error) if error.kind() == ErrorKind::NotFound => panic!(
            "victoria-metrics is not installed (Debian package `victoria-metrics`): run scripts/install-deps.sh"
        ),
        Err(error) => panic!("starting victoria-metrics failed: {error}"),
    };
    ScraperGuard {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// A server answering `GET /metrics` with `up_test 1`, on a free loopback port.
async fn metrics_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { "# TYPE up_test gauge\nup_test 1\n" }),
    );
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (port, task)
}

/// The scraper's active targets, or `None` while it is not answering yet.
async fn active_targets(scraper: &ScraperGuard) -> Option<Vec<Value>> {
    let response = reqwest::get(format!("{}/api/v1/targets", scraper.url))
        .await
        .ok()?;
    let body: Value = response.json().await.ok()?;
    body["data"]["activeTargets"].as_array().cloned()
}

/// Polls until the targets discovered for `web.shop` are exactly `expected` (addresses) and
/// all of them were scraped successfully; returns them. Fails after [`CATCH_UP`] with what
/// the scraper showed last and the end of its log.
async fn wait_for_targets(
    scraper: &mut ScraperGuard,
    dir: &Path,
    expected: &BTreeSet<String>,
) -> Vec<Value> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < CATCH_UP {
        if let Some(status) = scraper.child.try_wait().unwrap() {
            last = Some(Value::String(format!("victoria-metrics exited: {status}")));
            break;
        }
        if let Some(targets) = active_targets(scraper).await {
            let web: Vec<Value> = targets
                .iter()
                .filter(|t| t["discoveredLabels"]["__meta_consul_service"] == "web.shop")
                .cloned()
                .collect();
            let addresses: BTreeSet<String> = web
                .iter()
                .filter_map(|t| t["discoveredLabels"]["__address__"].as_str())
                .map(str::to_owned)
                .collect();
            if &addresses == expected && web.iter().all(|t| t["health"] == "up") {
                return web;
            }
            last = Some(Value::Array(targets));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = std::fs::read_to_string(dir.join("scraper.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    panic!(
        "victoria-metrics did not show targets {expected:?} as up within {CATCH_UP:?}\nlast: {last:#?}\nlog (newest first):\n{}",
        tail.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_scraper_discovers_and_follows_the_catalog_through_consul_sd() {
    let catalog = Catalog::new();
    let (port_a, _a) = metrics_server().await;
    let (port_b, _b) = metrics_server().await;
    let (port_c, _c) = metrics_server().await;
    catalog.register(endpoint("web-a", "web", "127.0.0.1", port_a, &["v1"]));
    catalog.register(endpoint("web-b", "web", "127.0.0.1", port_b, &["v1"]));
    // Another service, not in the scraper's `services`: never a target.
    catalog.register(endpoint("db-1", "db", "127.0.0.1", port_c, &[]));

    let consul = ConsulServer::start(catalog.clone(), config()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut scraper = start_scraper(dir.path(), consul.port);

    let address = |port: u16| format!("127.0.0.1:{port}");
    let targets = wait_for_targets(
        &mut scraper,
        dir.path(),
        &BTreeSet::from([address(port_a), address(port_b)]),
    )
    .await;
    let a = targets
        .iter()
        .find(|t| t["discoveredLabels"]["__meta_consul_service_id"] == "web-a")
        .unwrap();
    let labels = &a["discoveredLabels"];
    // The datacenter came from /v1/agent/self, since the configuration names none.
    assert_eq!(labels["__meta_consul_dc"], "dc-test");
    assert_eq!(labels["__meta_consul_health"], "passing");
    assert_eq!(labels["__meta_consul_node"], "node1");
    assert_eq!(labels["__meta_consul_tags"], ",v1,");
    assert_eq!(labels["__meta_consul_service_address"], "127.0.0.1");
    assert_eq!(labels["__meta_consul_service_port"], port_a.to_string());
    assert_eq!(labels["__meta_consul_service_metadata_team"], "blue");
    assert_eq!(labels["__meta_consul_service_metadata_berth_release"], "7");
    assert_eq!(labels["__meta_consul_metadata_rack"], "r1");
    assert_eq!(a["scrapeUrl"], format!("http://127.0.0.1:{port_a}/metrics"));

    // One instance leaves and another arrives, in one step as a rolling deploy does.
    catalog.apply([
        Change::Deregister("web-a".to_owned()),
        Change::Register(endpoint("web-c", "web", "127.0.0.1", port_c, &["v2"])),
    ]);
    let targets = wait_for_targets(
        &mut scraper,
        dir.path(),
        &BTreeSet::from([address(port_b), address(port_c)]),
    )
    .await;
    let c = targets
        .iter()
        .find(|t| t["discoveredLabels"]["__meta_consul_service_id"] == "web-c")
        .unwrap();
    assert_eq!(c["discoveredLabels"]["__meta_consul_tags"], ",v2,");
}
