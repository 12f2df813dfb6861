//! Zero downtime under a real load generator: `wrk` drives the proxy while the test rolls
//! the upstreams over again and again (start a new one, add it, remove an old one, drain
//! it, shut it down), and wrk must see no socket error and no non-2xx response.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;

use berth_proxy::ProxyConfig;
use support::{group, route, TestProxy, Upstream};

/// A figure from wrk's report, e.g. `Non-2xx or 3xx responses: 12` -> 12; None when the
/// line is absent (wrk prints error lines only when there were errors).
fn figure(report: &str, label: &str) -> Option<String> {
    report
        .lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .map(|rest| rest.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_under_wrk_loses_nothing() {
    rolling_deploy_under_wrk(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_under_wrk_loses_nothing_with_two_proxy_workers() {
    rolling_deploy_under_wrk(2).await;
}

async fn rolling_deploy_under_wrk(workers: usize) {
    let proxy = TestProxy::start_with(ProxyConfig {
        http: vec!["127.0.0.1:0".parse().unwrap()],
        workers,
        ..ProxyConfig::default()
    })
    .await;
    let mut live: VecDeque<Upstream> = VecDeque::new();
    let mut release = 0;
    for _ in 0..2 {
        release += 1;
        live.push_back(Upstream::start(&format!("r{release}")).await);
    }
    let table = |live: &VecDeque<Upstream>| {
        let upstreams: Vec<&Upstream> = live.iter().collect();
        vec![route("web", "*", "/", vec![group("web", 1, &upstreams)])]
    };
    proxy.proxy.set_routes(table(&live)).unwrap();

    // kill_on_drop: a failing test does not leave wrk behind.
    let wrk = tokio::process::Command::new("wrk")
        .args(["-t2", "-c20", "-d6s", "--timeout", "5s"])
        .arg(proxy.url("/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("wrk is installed by scripts/install-deps.sh");
    let report = tokio::spawn(wrk.wait_with_output());

    let mut rolled = 0;
    let mut drained_with_waiting = 0;
    // Bounded: at most 200 steps, and only while wrk runs.
    while !report.is_finished() && rolled < 200 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        release += 1;
        live.push_back(Upstream::start(&format!("r{release}")).await);
        proxy.proxy.set_routes(table(&live)).unwrap();
        let old = live.pop_front().unwrap();
        proxy.proxy.set_routes(table(&live)).unwrap();
        if proxy.proxy.in_flight(old.addr) > 0 {
            drained_with_waiting += 1;
        }
        let drained = proxy.proxy.drain(old.addr, Duration::from_secs(5)).await;
        assert_eq!(drained, berth_proxy::DrainResult::Drained);
        old.shutdown().await;
        rolled += 1;
    }

    let output = report.await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    println!("{text}");
    println!(
        "rolled {rolled} upstreams ({drained_with_waiting} had requests in flight when removed)"
    );
    assert!(
        output.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("wrk printed no request count");
    println!(
        "requests {requests}, req/s {:?}",
        figure(&text, "Requests/sec:")
    );
    assert!(requests > 0);
    assert!(rolled >= 5, "only {rolled} upstreams rolled during the run");
    assert_eq!(figure(&text, "Socket errors:"), None, "{text}");
    assert_eq!(figure(&text, "Non-2xx or 3xx responses:"), None, "{text}");
    let metrics = proxy.proxy.metrics();
    assert_eq!(metrics.route("web").unwrap().errors_5xx, 0);
}
