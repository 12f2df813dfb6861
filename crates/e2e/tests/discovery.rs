//! Discovery and routing end to end, on real containers behind `berth server`: DNS answers
//! (through the real `dig`) and the Consul-compatible catalog follow instances through a
//! scale and a deploy; a container resolves its app's services through berth's DNS; `wrk`
//! through berth's proxy sees no failed request and no non-2xx response during a rolling
//! deploy, a blue/green switch, a canary promotion and a rollback; and a release that answers
//! 5xx is rolled back by itself within its watch window.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_e2e::busybox::{busybox_layer, push_image, raw_layer_mode};
use berth_e2e::server::{healthy_in, push_web, text, BerthServer};
use serde_json::Value;

const HOST: &str = "web.test";

/// A spec with one routed web service of `replicas` instances.
fn spec(server: &BerthServer, app: &str, tag: &str, replicas: usize, deploy: &str) -> String {
    let base = berth_e2e::server::web_spec(server, app, tag, replicas, "300ms", deploy);
    base.replace(
        "stop_grace = \"1s\"",
        &format!("stop_grace = \"1s\"\nroute = {{ host = \"{HOST}\", port = \"http\" }}\ntags = [\"e2e\"]"),
    )
}

fn push(server: &BerthServer, app: &str, tags: &[&str]) {
    let registry = server.registry_url();
    for tag in tags {
        push_web(&registry, &format!("{app}/web"), tag, tag, 8080);
    }
}

#[track_caller]
fn deploy_ok(server: &BerthServer, name: &str, spec: &str) {
    let out = server.deploy_text(name, spec, true);
    assert!(out.status.success(), "{}\n{}", text(&out), server.log());
}

/// `dig @dns QNAME TYPE +short`, sorted.
fn dig(server: &BerthServer, name: &str, kind: &str) -> BTreeSet<String> {
    let dns = server.dns_addr();
    let out = Command::new("dig")
        .args([
            &format!("@{}", dns.ip()),
            "-p",
            &dns.port().to_string(),
            name,
            kind,
            "+short",
            "+time=2",
            "+tries=1",
        ])
        .output()
        .expect("running dig (scripts/install-deps.sh installs bind9-dnsutils)");
    assert!(out.status.success(), "dig: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

fn healthy_addresses(server: &BerthServer, app: &str, release: Option<u64>) -> BTreeSet<String> {
    healthy_in(&server.status(app))
        .into_iter()
        .filter(|(_, r, _)| release.is_none_or(|release| *r == release))
        .map(|(_, _, address)| address)
        .collect()
}

fn consul_addresses(server: &BerthServer, service: &str) -> BTreeSet<String> {
    let url = format!(
        "{}/v1/health/service/{service}?passing",
        server.catalog_url()
    );
    let body: Value = reqwest::blocking::get(&url).unwrap().json().unwrap();
    body.as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["Service"]["Address"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn dns_and_the_catalog_follow_instances_through_a_scale_and_a_deploy() {
    let server = BerthServer::start();
    let app = "disco";
    push(&server, app, &["v1", "v2"]);
    let rolling = "strategy = \"rolling\"\nmax_surge = 1\nmin_healthy_time = \"0s\"";
    deploy_ok(&server, "v1", &spec(&server, app, "v1", 2, rolling));
    let name = format!("web.{app}.berth");

    let wait_until_listed = |what: &str, release: u64, count: usize| {
        server.wait_for(app, what, Duration::from_secs(30), || {
            let healthy = healthy_addresses(&server, app, Some(release));
            healthy.len() == count
                && healthy_addresses(&server, app, None) == healthy
                && dig(&server, &name, "A") == healthy
                && consul_addresses(&server, &format!("web.{app}")) == healthy
        });
    };
    wait_until_listed("2 instances in DNS and the catalog", 1, 2);
    let srv = dig(&server, &name, "SRV");
    assert_eq!(srv.len(), 2, "{srv:?}");
    assert!(srv.iter().all(|r| r.contains(" 8080 ")), "{srv:?}");
    let named = dig(&server, &format!("_http._tcp.{name}"), "SRV");
    assert_eq!(named.len(), 2, "{named:?}");
    assert!(dig(&server, &format!("nothing.{app}.berth"), "A").is_empty());

    server.ok(&["scale", app, "web", "3"]);
    wait_until_listed("3 instances after the scale", 1, 3);

    deploy_ok(&server, "v2", &spec(&server, app, "v2", 3, rolling));
    wait_until_listed("the 3 instances of release 2", 2, 3);

    server.ok(&["scale", app, "web", "1"]);
    wait_until_listed("1 instance after scaling down", 2, 1);

    // Inside a container, resolv.conf points at berth's DNS.
    let container = healthy_in(&server.status(app))[0].0.clone();
    let out = server.run(&["exec", &container, "busybox", "nslookup", &name]);
    let answer = text(&out);
    let address = healthy_addresses(&server, app, None)
        .into_iter()
        .next()
        .unwrap();
    assert!(
        out.status.success() && answer.contains(&address),
        "nslookup {name} in {container} did not answer {address}:\n{answer}"
    );
}

/// `wrk` through the proxy, in the background.
struct Load {
    thread: JoinHandle<String>,
}

impl Load {
    fn start(server: &BerthServer, seconds: u64) -> Load {
        let url = format!("{}/index.html", server.proxy_url());
        let thread = std::thread::spawn(move || {
            let out = Command::new("wrk")
                .args([
                    "-t2",
                    "-c8",
                    &format!("-d{seconds}s"),
                    "-H",
                    &format!("Host: {HOST}"),
                    &url,
                ])
                .output()
                .expect("running wrk (scripts/install-deps.sh installs it)");
            text(&out)
        });
        Load { thread }
    }

    /// wrk's report, asserted free of errors and non-2xx responses; returns the requests.
    fn finish(self, phase: &str) -> u64 {
        let report = self.thread.join().unwrap();
        eprintln!("--- wrk during {phase} ---\n{report}");
        assert!(
            !report.contains("Socket errors") && !report.contains("Non-2xx"),
            "failed requests during {phase}:\n{report}"
        );
        let requests = report
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"));
        assert!(requests > 0, "{report}");
        requests
    }
}

/// Runs wrk while `change` runs and until `done` holds, then checks it saw no failure.
fn under_load(
    server: &BerthServer,
    app: &str,
    phase: &str,
    change: impl FnOnce(),
    done: impl Fn() -> bool,
) {
    let load = Load::start(server, 8);
    std::thread::sleep(Duration::from_secs(1));
    let began = Instant::now();
    change();
    server.wait_for(app, phase, Duration::from_secs(60), &done);
    eprintln!("{phase}: done after {:.1}s", began.elapsed().as_secs_f64());
    let requests = load.finish(phase);
    eprintln!("{phase}: {requests} requests, 0 failed, 0 non-2xx");
}

fn served(server: &BerthServer) -> String {
    let out = Command::new("curl")
        .args(["-sf", "-H", &format!("Host: {HOST}")])
        .arg(format!("{}/index.html", server.proxy_url()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn only_release(server: &BerthServer, app: &str, release: u64, replicas: usize) -> bool {
    let healthy = healthy_in(&server.status(app));
    healthy.len() == replicas && healthy.iter().all(|(_, r, _)| *r == release)
}

#[test]
fn the_proxy_loses_no_request_through_rolling_blue_green_canary_and_rollback() {
    let server = BerthServer::start();
    let app = "zero";
    push(&server, app, &["v1", "v2", "v3", "v4"]);
    let rolling = "strategy = \"rolling\"\nmax_surge = 1\nmin_healthy_time = \"1s\"";
    deploy_ok(&server, "v1", &spec(&server, app, "v1", 2, rolling));
    server.wait_for(app, "v1 through the proxy", Duration::from_secs(20), || {
        served(&server) == "v1"
    });

    let v2 = spec(&server, app, "v2", 2, rolling);
    under_load(
        &server,
        app,
        "a rolling deploy",
        || deploy_ok(&server, "v2", &v2),
        || only_release(&server, app, 2, 2) && served(&server) == "v2",
    );

    let blue_green = "strategy = \"blue_green\"\nkeep_old = \"3s\"";
    let v3 = spec(&server, app, "v3", 2, blue_green);
    under_load(
        &server,
        app,
        "a blue/green switch",
        || deploy_ok(&server, "v3", &v3),
        || served(&server) == "v3",
    );

    let canary = "strategy = \"canary\"\nsteps = [1, \"100%\"]\npause = \"manual\"\nmin_healthy_time = \"1s\"";
    let v4 = spec(&server, app, "v4", 2, canary);
    let out = server.deploy_text("v4", &v4, false);
    assert!(out.status.success(), "{}", text(&out));
    server.wait_for(app, "the canary step", Duration::from_secs(30), || {
        healthy_in(&server.status(app))
            .iter()
            .filter(|(_, r, _)| *r == 4)
            .count()
            == 1
    });
    // Both releases answer while the canary waits.
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        seen.insert(served(&server));
    }
    assert_eq!(
        seen,
        BTreeSet::from(["v3".to_owned(), "v4".to_owned()]),
        "weighted routing"
    );
    under_load(
        &server,
        app,
        "a canary promotion",
        || {
            server.ok(&["promote", app]);
        },
        || only_release(&server, app, 4, 2) && served(&server) == "v4",
    );

    under_load(
        &server,
        app,
        "a rollback",
        || {
            let out = server.run(&["rollback", app]);
            assert!(out.status.success(), "{}", text(&out));
        },
        || served(&server) == "v3" && only_release(&server, app, 3, 2),
    );
}

/// How an image's /cgi-bin/app answers.
#[derive(Clone, Copy)]
enum Cgi {
    /// 200 with the tag.
    Ok,
    /// 500 to every other request.
    HalfBroken,
    /// 200 for this many seconds after its first request, then 500 to every other one.
    BreaksAfter(u32),
}

/// Pushes `{app}/web:{tag}`: busybox httpd whose /cgi-bin/app answers as `cgi` says.
fn push_cgi(server: &BerthServer, app: &str, tag: &str, cgi: Cgi) {
    let fail = format!(
        "if [ $((RANDOM % 2)) -eq 0 ]; then printf 'HTTP/1.1 500 Broken\\r\\nContent-Type: text/plain\\r\\n\\r\\n{tag} broken\\n'; exit 0; fi\n"
    );
    let broken = match cgi {
        Cgi::Ok => String::new(),
        Cgi::HalfBroken => fail,
        Cgi::BreaksAfter(seconds) => format!(
            "now=$(/bin/busybox date +%s)\n[ -f /tmp/first ] || echo $now > /tmp/first\nif [ $((now - $(cat /tmp/first))) -ge {seconds} ]; then\n{fail}fi\n"
        ),
    };
    let script =
        format!("#!/bin/sh\n{broken}printf 'Content-Type: text/plain\\r\\n\\r\\n{tag}\\n'\n");
    push_image(
        &server.registry_url(),
        &format!("{app}/web"),
        tag,
        &[
            busybox_layer(),
            raw_layer_mode("www/index.html", format!("{tag}\n").as_bytes(), 0o644),
            raw_layer_mode("www/cgi-bin/app", script.as_bytes(), 0o755),
        ],
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
    );
}

/// Steady traffic to the CGI through the proxy (a request every 20 ms), counting answers.
struct CgiTraffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: JoinHandle<(u32, u32)>,
}

impl CgiTraffic {
    fn start(server: &BerthServer) -> CgiTraffic {
        let url = format!("{}/cgi-bin/app", server.proxy_url());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let (mut ok, mut errors) = (0u32, 0u32);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match client.get(&url).header("Host", HOST).send() {
                        Ok(response) if response.status().is_success() => ok += 1,
                        _ => errors += 1,
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                (ok, errors)
            })
        };
        CgiTraffic { stop, thread }
    }

    /// Stops; `(2xx answers, others)`.
    fn stop(self) -> (u32, u32) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// The bodies of `n` requests to the CGI through the proxy, `ERROR <status>` for non-2xx.
fn cgi_answers(server: &BerthServer, n: usize) -> Vec<String> {
    let client = reqwest::blocking::Client::new();
    (0..n)
        .map(|_| {
            let response = client
                .get(format!("{}/cgi-bin/app", server.proxy_url()))
                .header("Host", HOST)
                .send()
                .unwrap();
            if response.status().is_success() {
                response.text().unwrap().trim().to_owned()
            } else {
                format!("ERROR {}", response.status())
            }
        })
        .collect()
}

#[test]
fn a_release_answering_5xx_is_rolled_back_within_its_watch_window() {
    let server = BerthServer::start();
    let app = "watch";
    push_cgi(&server, app, "v1", Cgi::Ok);
    push_cgi(&server, app, "v2", Cgi::HalfBroken);
    let deploy = "strategy = \"rolling\"\nmax_surge = 2\nmin_healthy_time = \"0s\"\nauto_rollback = { error_rate = 0.1, watch = \"40s\" }";
    deploy_ok(&server, "v1", &spec(&server, app, "v1", 2, deploy));

    let traffic = CgiTraffic::start(&server);
    let began = Instant::now();
    let out = server.deploy_text("v2", &spec(&server, app, "v2", 2, deploy), false);
    assert!(out.status.success(), "{}", text(&out));
    server.wait_for(
        app,
        "the automatic rollback",
        Duration::from_secs(40),
        || server.status(app)["desired_release"] == 1,
    );
    let rolled_back_after = began.elapsed();
    server.wait_for(
        app,
        "release 1 serving again",
        Duration::from_secs(30),
        || only_release(&server, app, 1, 2),
    );
    let (ok, errors) = traffic.stop();
    eprintln!(
        "auto-rollback {:.1}s after the deploy began; {ok} requests answered 2xx, {errors} not",
        rolled_back_after.as_secs_f64()
    );
    assert!(errors > 0, "the broken release got traffic");
    let events = server.ok(&["events", app]);
    assert!(
        events.contains("auto_rolled_back") && events.contains("5xx rate"),
        "no auto_rolled_back event with its reason:\n{events}"
    );
    let releases = server.ok(&["releases", app]);
    assert!(releases.contains("5xx rate"), "{releases}");
    // The proxy's figures per release, as `berth routes` shows them.
    let routes: Value = serde_json::from_str(&server.ok(&["routes", "--json"])).unwrap();
    let route = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == format!("web.{app}"))
        .unwrap_or_else(|| panic!("no route web.{app}: {routes:#}"));
    assert_eq!(route["host"], HOST);
    let table = server.ok(&["routes"]);
    assert!(table.contains(&format!("web.{app}")), "{table}");
    let metrics = server.ok(&["routes", "--json"]);
    assert!(metrics.contains("errors_5xx"), "{metrics}");
    // After the rollback every request succeeds again.
    assert!(cgi_answers(&server, 20).iter().all(|a| a == "v1"));
}

#[test]
fn a_failed_canary_leaves_traffic_at_once_and_stops() {
    let server = BerthServer::start();
    let app = "canary";
    push_cgi(&server, app, "v1", Cgi::Ok);
    push_cgi(&server, app, "v2", Cgi::HalfBroken);
    // One canary instance of three, held at its step for a minute.
    let deploy = "strategy = \"canary\"\nsteps = [\"1\", \"100%\"]\npause = \"60s\"\nmin_healthy_time = \"0s\"\nauto_rollback = { error_rate = 0.1, watch = \"60s\", window = \"10s\" }";
    deploy_ok(&server, "v1", &spec(&server, app, "v1", 3, deploy));
    let traffic = CgiTraffic::start(&server);
    let out = server.deploy_text("v2", &spec(&server, app, "v2", 3, deploy), false);
    assert!(out.status.success(), "{}", text(&out));
    server.wait_for(
        app,
        "the canary's rollback",
        Duration::from_secs(60),
        || server.status(app)["desired_release"] == 1,
    );
    let rolled_back = Instant::now();
    // Within one health interval (300 ms) every request is on the stable release.
    std::thread::sleep(Duration::from_millis(300));
    let answers = cgi_answers(&server, 50);
    let stable = answers.iter().filter(|a| *a == "v1").count();
    eprintln!(
        "{stable} of 50 requests sent {:.2}s after the rollback were answered by release 1",
        rolled_back.elapsed().as_secs_f64()
    );
    assert_eq!(stable, 50, "the failed canary still serves: {answers:?}");
    // Its instance stops, and status and events say why.
    server.wait_for(
        app,
        "the canary instance gone",
        Duration::from_secs(30),
        || {
            berth_e2e::server::instances_in(&server.status(app))
                .iter()
                .all(|i| i["release"] != 2)
        },
    );
    let (_, errors) = traffic.stop();
    assert!(errors > 0, "the canary got traffic before it failed");
    let status = server.ok(&["status", app]);
    assert!(
        status.contains("rolled back from release #2: 5xx rate"),
        "{status}"
    );
    let events = server.ok(&["events", app]);
    assert!(events.contains("auto_rolled_back"), "{events}");
    assert!(
        events.contains("failed: canary.web-2-") || events.contains("stops at once"),
        "{events}"
    );
}

#[test]
fn a_release_that_breaks_late_is_rolled_back_by_its_window() {
    let server = BerthServer::start();
    let app = "late";
    push_cgi(&server, app, "v1", Cgi::Ok);
    // Serves well for 20 s, then answers 500 to half of the requests. Judged over its whole
    // life, its 5xx rate would stay under 20% for another 13 s: past the end of its watch.
    push_cgi(&server, app, "v2", Cgi::BreaksAfter(20));
    let deploy = "strategy = \"rolling\"\nmax_surge = 2\nmin_healthy_time = \"0s\"\nauto_rollback = { error_rate = 0.2, watch = \"25s\", window = \"5s\", min_requests = 10 }";
    deploy_ok(&server, "v1", &spec(&server, app, "v1", 2, deploy));
    let traffic = CgiTraffic::start(&server);
    deploy_ok(&server, "v2", &spec(&server, app, "v2", 2, deploy));
    let live = Instant::now();
    server.wait_for(
        app,
        "the rollback of the late breakage",
        Duration::from_secs(45),
        || server.status(app)["desired_release"] == 1,
    );
    eprintln!(
        "release 2 rolled back {:.1}s after it went live (it breaks 20 s after its first request)",
        live.elapsed().as_secs_f64()
    );
    let (ok, errors) = traffic.stop();
    eprintln!("{ok} requests answered 2xx, {errors} not");
    let releases = server.ok(&["releases", app]);
    assert!(releases.contains("of the last"), "{releases}");
}
