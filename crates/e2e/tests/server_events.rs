//! `berth server`'s app commands end to end on real runc containers: `berth ps APP`,
//! `logs APP[/SERVICE]`, `events [-f]`, `scale` and `promote`, against a busybox app whose
//! instances print a line every 200 ms.
#![allow(clippy::unwrap_used, missing_docs)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_e2e::busybox::push_busybox_image;
use berth_e2e::server::BerthServer;
use serde_json::Value;

/// A berth server (`berth_e2e::server::BerthServer`: its own root, bridge and /24, with the
/// registry) and this test's views of the app.
struct Server(BerthServer);

impl std::ops::Deref for Server {
    type Target = BerthServer;

    fn deref(&self) -> &BerthServer {
        &self.0
    }
}

impl Server {
    fn start() -> Server {
        Server(BerthServer::start())
    }

    #[track_caller]
    fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut(&Server) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; server log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The app's running instances, from `berth ps shop --json`.
    fn running(&self) -> Vec<Value> {
        let all: Value = serde_json::from_str(&self.ok(&["ps", "shop", "--json"])).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .filter(|i| i["state"] == "running" && i["health"] == "healthy")
            .cloned()
            .collect()
    }

    fn event_kinds(&self) -> Vec<String> {
        self.ok(&["events", "shop", "--json"])
            .lines()
            .map(|line| {
                let event: Value = serde_json::from_str(line).unwrap();
                event["kind"].as_str().unwrap().to_owned()
            })
            .collect()
    }
}

fn spec(server: &Server) -> PathBuf {
    let path = server.dir().join("berth.toml");
    let text = format!(
        "app = \"shop\"\n\n[services.web]\nimage = \"{}/shop/ticker:v1\"\nreplicas = 1\nstop_grace = \"1s\"\n",
        server.registry()
    );
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn events_ps_logs_scale_and_promote() {
    let server = Server::start();
    push_busybox_image(
        &server.registry_url(),
        "shop/ticker",
        "v1",
        &[
            "sh",
            "-c",
            "while true; do echo tick $BERTH_INSTANCE; sleep 0.2; done",
        ],
    );
    let spec = spec(&server);
    server.ok(&["deploy", "-f", spec.to_str().unwrap()]);

    // ps APP: the instance as the server sees it; ps alone is still the node's list.
    server.wait_for("one running instance", Duration::from_secs(30), |s| {
        s.running().len() == 1
    });
    let table = server.ok(&["ps", "shop"]);
    assert!(table.starts_with("SERVICE"), "{table}");
    assert!(table.contains("UPTIME"), "{table}");
    assert!(table.contains("web-1-a"), "{table}");
    assert!(server.ok(&["ps"]).contains("shop.web-1-a"));

    // events: the release, its deploy and the instance, in order.
    server.wait_for("the deploy to finish", Duration::from_secs(30), |s| {
        s.event_kinds().contains(&"deploy_finished".to_owned())
    });
    let kinds = server.event_kinds();
    assert_eq!(kinds[0], "release_created", "{kinds:?}");
    for kind in ["instance_starting", "instance_started"] {
        assert!(kinds.contains(&kind.to_owned()), "{kind} in {kinds:?}");
    }
    let lines = server.ok(&["events", "shop"]);
    assert!(lines.contains("shop#1 web-1-a instance_started"), "{lines}");

    // events -f: what is stored, then new events as they happen.
    let mut follower = server
        .berth()
        .args(["events", "shop", "-f", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (sender, received) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let event: Value = serde_json::from_str(&line).unwrap();
            if sender.send(event).is_err() {
                return;
            }
        }
    });
    let first = received.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first["seq"], 1);

    // scale: a second instance, without a new release.
    let out = server.ok(&["scale", "shop", "web", "2"]);
    assert!(out.contains("1 -> 2 replicas"), "{out}");
    server.wait_for("two running instances", Duration::from_secs(30), |s| {
        s.running().len() == 2
    });
    let releases: Vec<String> = server
        .ok(&["releases", "shop"])
        .lines()
        .filter(|line| line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert_eq!(releases.len(), 1, "still one release: {releases:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut streamed = Vec::new();
    // The backlog first, then the scale and the new instance starting.
    while !streamed.ends_with(&["instance_started".to_owned()])
        || !streamed.contains(&"scaled".to_owned())
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = received
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("streamed only {streamed:?}"));
        streamed.push(event["kind"].as_str().unwrap().to_owned());
    }
    let scaled = streamed.iter().position(|k| k == "scaled").unwrap();
    assert!(
        streamed[scaled..].contains(&"instance_starting".to_owned()),
        "{streamed:?}"
    );
    let _ = follower.kill();
    let _ = follower.wait();

    // logs: both instances' lines, merged, each after its instance.
    server.wait_for("both instances to print", Duration::from_secs(10), |s| {
        let logs = s.ok(&["logs", "shop/web", "--tail", "40"]);
        logs.contains("web-1-a | tick web-1-a") && logs.contains("web-1-b | tick web-1-b")
    });
    let logs = server.ok(&["logs", "shop", "--tail", "3"]);
    assert_eq!(logs.lines().count(), 3, "{logs}");
    assert!(logs.lines().all(|l| l.starts_with("web-1-")), "{logs}");
    let container = server.ok(&["logs", "--tail", "1", "shop.web-1-a"]);
    assert_eq!(container.trim(), "tick web-1-a");
    let mut follower = server
        .berth()
        .args(["logs", "shop/web", "-f", "--tail", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (sender, received) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let mut instances = std::collections::BTreeSet::new();
    while instances.len() < 2 {
        let line = received
            .recv_timeout(Duration::from_secs(10))
            .expect("followed lines of both instances");
        let (instance, text) = line.split_once(" | ").unwrap();
        assert_eq!(text, format!("tick {instance}"));
        instances.insert(instance.to_owned());
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let out = server.run(&["logs", "nosuch"]);
    assert!(!out.status.success());

    // promote: nothing waits for it here.
    let out = server.run(&["promote", "shop"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("waits to be promoted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // scale down: the surplus instance stops.
    server.ok(&["scale", "shop", "web", "1"]);
    server.wait_for("one instance again", Duration::from_secs(30), |s| {
        s.running().len() == 1 && s.event_kinds().contains(&"instance_stopped".to_owned())
    });
}
