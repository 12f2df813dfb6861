//! `berth server` end to end: real containers on runc, the real CNI bridge, busybox httpd
//! images pushed to berth's registry, and the real `berth deploy`/`status`/`rollback`
//! clients. One app goes through a first deploy, a rolling update, a broken release that
//! rolls back by itself, a manual rollback, a killed instance and a SIGKILLed server.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::fs;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_e2e::server::{healthy_in, http_get, text, BerthServer};
use serde_json::Value;

const REPLICAS: usize = 3;
const MAX_UNAVAILABLE: usize = 1;

/// `berth server` with the shop app's helpers.
struct Server(BerthServer);

impl std::ops::Deref for Server {
    type Target = BerthServer;
    fn deref(&self) -> &BerthServer {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut BerthServer {
        &mut self.0
    }
}

impl Server {
    fn start() -> Server {
        Server(BerthServer::start())
    }

    fn spec(&self, tag: &str) -> String {
        format!(
            r#"app = "shop"

[services.web]
image = "{}/shop/web:{tag}"
replicas = {REPLICAS}
ports = {{ http = 8080 }}
stop_grace = "1s"

[services.web.health]
http = {{ port = "http", path = "/index.html" }}
interval = "300ms"
timeout = "1s"
healthy_after = 1
unhealthy_after = 2

[services.web.deploy]
strategy = "rolling"
max_surge = 1
max_unavailable = {MAX_UNAVAILABLE}
min_healthy_time = "1s"
healthy_deadline = "6s"
# This test counts the node's containers: replaced instances stop rather than stay warm
# (warm rollbacks are server_deploys.rs' own test).
keep_warm = "0s"
"#,
            self.registry()
        )
    }

    fn deploy(&self, tag: &str) -> Output {
        self.deploy_text(&format!("berth-{tag}"), &self.spec(tag), true)
    }

    fn status(&self) -> Value {
        self.0.status("shop")
    }

    /// The running, healthy instances: (container, release, address).
    fn healthy(&self) -> Vec<(String, u64, String)> {
        healthy_in(&self.status())
    }

    fn containers(&self) -> BTreeSet<String> {
        self.0.containers("shop")
    }

    #[track_caller]
    fn wait_for(&self, what: &str, timeout: Duration, done: impl FnMut() -> bool) {
        self.0.wait_for("shop", what, timeout, done);
    }

    /// Every healthy instance answers with `content`, and there are `REPLICAS` of them, all
    /// of `release`.
    #[track_caller]
    fn assert_serving(&self, release: u64, content: &str) {
        let healthy = self.healthy();
        assert_eq!(healthy.len(), REPLICAS, "healthy instances: {healthy:?}");
        for (container, of, address) in healthy {
            assert_eq!(of, release, "{container} runs release {of}");
            let body = http_get(&format!("http://{address}:8080/index.html"))
                .unwrap_or_else(|e| panic!("{container} at {address}: {e}"));
            assert_eq!(body.trim(), content, "{container} at {address}");
        }
    }
}

/// Pushes `shop/web:{tag}` serving `content` at /index.html on `port`.
fn push_web(registry: &str, tag: &str, content: &str, port: u16) -> String {
    berth_e2e::server::push_web(registry, "shop/web", tag, content, port)
}

#[test]
fn deploys_roll_back_heal_and_survive_a_server_restart() {
    let mut server = Server::start();
    let registry = server.registry_url();
    let v1 = push_web(&registry, "v1", "v1", 8080);
    let v2 = push_web(&registry, "v2", "v2", 8080);
    // Listens on the wrong port: its health check never passes.
    let v3 = push_web(&registry, "v3", "v3", 8081);

    // A spec mistake is reported with its place, and nothing is deployed.
    let bad = server.dir().join("bad.toml");
    fs::write(
        &bad,
        "app = \"shop\"\n[services.web]\nimage = \"x:1\"\nreplicas = -1\n",
    )
    .unwrap();
    let out = server.run(&["deploy", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("bad.toml:4:"), "{}", text(&out));

    // 1. A first deploy: three healthy instances, reachable by address.
    let out = server.deploy("v1");
    assert!(
        out.status.success(),
        "deploy v1:\n{}\n{}",
        text(&out),
        server.log()
    );
    assert!(text(&out).contains("release shop#1"), "{}", text(&out));
    assert!(text(&out).contains("live"), "{}", text(&out));
    server.assert_serving(1, "v1");

    // 2. A rolling update, sampled all along: never fewer than R - U healthy instances.
    let sampling = Arc::new(AtomicBool::new(true));
    let lowest = Arc::new(Mutex::new((usize::MAX, String::new())));
    let sampler = {
        let (sampling, lowest) = (sampling.clone(), lowest.clone());
        let status = server.berth();
        let program = status.get_program().to_owned();
        let args: Vec<_> = status.get_args().map(ToOwned::to_owned).collect();
        let url = server.url();
        std::thread::spawn(move || {
            while sampling.load(Ordering::SeqCst) {
                let out = Command::new(&program)
                    .args(&args)
                    .args(["status", "shop", "--json"])
                    .env("BERTH_SERVER", &url)
                    .env("BERTH_LOG", "warn")
                    .output()
                    .unwrap();
                if let Ok(view) = serde_json::from_slice::<Value>(&out.stdout) {
                    let healthy = healthy_in(&view).len();
                    let mut lowest = lowest.lock().unwrap();
                    if healthy < lowest.0 {
                        *lowest = (healthy, view.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let out = server.deploy("v2");
    sampling.store(false, Ordering::SeqCst);
    sampler.join().unwrap();
    assert!(
        out.status.success(),
        "deploy v2:\n{}\n{}",
        text(&out),
        server.log()
    );
    let (lowest, view) = lowest.lock().unwrap().clone();
    assert!(
        lowest >= REPLICAS - MAX_UNAVAILABLE && lowest != usize::MAX,
        "{lowest} healthy instances during the rolling deploy:\n{view}"
    );
    server.assert_serving(2, "v2");

    // 3. A broken release: the deadline passes, it is rolled back, the CLI says so.
    let out = server.deploy("v3");
    assert!(
        !out.status.success(),
        "deploy v3 succeeded:\n{}",
        text(&out)
    );
    assert!(text(&out).contains("failed"), "{}", text(&out));
    server.wait_for(
        "release 2 to be live again",
        Duration::from_secs(30),
        || server.status()["desired_status"] == "live",
    );
    server.wait_for(
        "the instances of release 3 to go",
        Duration::from_secs(30),
        || {
            !server
                .containers()
                .iter()
                .any(|c| c.starts_with("shop.web-3-"))
        },
    );
    assert_eq!(server.status()["desired_release"], 2);
    server.assert_serving(2, "v2");
    let releases = server.ok(&["releases", "shop"]);
    assert!(releases.contains("failed"), "{releases}");
    // Who deployed each release, and what it changed.
    assert!(
        releases.contains("BY") && releases.contains('@'),
        "{releases}"
    );
    assert!(releases.contains("first release"), "{releases}");
    assert!(releases.contains("web: image "), "{releases}");

    // 4. A manual rollback skips the failed release and goes to release 1.
    let out = server.run(&["rollback", "shop"]);
    assert!(
        out.status.success(),
        "rollback:\n{}\n{}",
        text(&out),
        server.log()
    );
    assert!(text(&out).contains("shop#2 -> shop#1"), "{}", text(&out));
    server.assert_serving(1, "v1");
    // Release 1 runs, release 2 is where `rollback` came from: both stay on the node.
    server.wait_for(
        "the images of releases 1 and 2 to be pinned, 3 not",
        Duration::from_secs(10),
        || {
            let images: Value = serde_json::from_str(&server.ok(&["images", "--json"])).unwrap();
            let pinned = |digest: &str| {
                images
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i["id"] == digest && i["pinned"] == true)
            };
            pinned(&v1) && pinned(&v2) && !pinned(&v3)
        },
    );

    // 5. A killed instance is replaced.
    let victim = server.healthy()[0].0.clone();
    server.ok(&["kill", &victim]);
    server.wait_for(
        "the killed instance to be replaced",
        Duration::from_secs(30),
        || {
            let healthy = server.healthy();
            // ...and the killed one removed (that happens in the background).
            healthy.len() == REPLICAS
                && healthy.iter().all(|(c, _, _)| *c != victim)
                && server.containers().len() == REPLICAS
        },
    );
    server.assert_serving(1, "v1");

    // 6. A SIGKILLed server finds its instances again and starts no duplicates.
    let before = server.containers();
    assert_eq!(before.len(), REPLICAS, "{before:?}");
    server.kill9();
    server.spawn();
    server.wait_for(
        "the restarted server to see its instances healthy",
        Duration::from_secs(30),
        || server.healthy().len() == REPLICAS,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(server.containers(), before, "containers after the restart");
    server.assert_serving(1, "v1");
}
