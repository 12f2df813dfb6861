//! Consul compatibility with a real consumer: python-consul (Debian's `python3-consul`)
//! discovers a service through berth's Consul-compatible catalog as Prometheus' consul SD
//! does (tests/python_consul/discover.py), and follows the catalog through blocking queries
//! while instances come and go.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use berth_discovery::{Catalog, Change};
use serde_json::{json, Value};
use support::{config, endpoint, ConsulServer};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Debian's interpreter, which sees Debian's python3-consul (a `python3` earlier on PATH, such
/// as a pyenv one, would not).
const PYTHON: &str = "/usr/bin/python3";

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python_consul/discover.py"
);

/// The script's process (killed when dropped, also when the test fails) and its output lines.
struct Consumer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: tempfile::NamedTempFile,
}

impl Consumer {
    async fn start(port: u16, service: &str, changes: u32) -> Consumer {
        let usable = std::process::Command::new(PYTHON)
            .args(["-c", "import consul"])
            .output()
            .map(|output| output.status.success())
            .unwrap_or(false);
        assert!(
            usable,
            "{PYTHON} cannot import consul: install Debian's python3-consul with scripts/install-deps.sh"
        );
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(PYTHON)
            .arg(SCRIPT)
            .arg(port.to_string())
            .arg(service)
            .arg(changes.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Consumer {
            child,
            lines,
            stderr,
        }
    }

    /// The next line, which must be of `kind`; fails with the script's errors otherwise.
    async fn next(&mut self, kind: &str) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line()).await;
        let errors = || std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
        let line = match line {
            Ok(Ok(Some(line))) => line,
            other => panic!(
                "no {kind:?} line from the script ({other:?}); its errors:\n{}",
                errors()
            ),
        };
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["kind"], kind, "{line}\n{}", errors());
        value
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn target(id: &str, port: u16, tags: &[&str]) -> Value {
    json!({
        "address": format!("127.0.0.1:{port}"),
        "id": id,
        "service": "web.shop",
        "node": "node1",
        "tags": tags,
        "health": "passing",
        "meta": {
            "team": "blue",
            "berth_app": "shop",
            "berth_service": "web",
            "berth_release": "7",
            "berth_port_http": port.to_string(),
        },
    })
}

#[tokio::test]
async fn python_consul_discovers_and_follows_the_catalog() {
    let catalog = Catalog::new();
    catalog.register(endpoint("web-a", "web", "127.0.0.1", 18081, &["v1"]));
    catalog.register(endpoint(
        "web-b",
        "web",
        "127.0.0.1",
        18082,
        &["v1", "canary"],
    ));
    catalog.register(endpoint("db-1", "db", "127.0.0.1", 15432, &[]));
    let server = ConsulServer::start(catalog.clone(), config()).await;
    let mut consumer = Consumer::start(server.port, "web.shop", 2).await;

    let line = consumer.next("self").await;
    assert_eq!(line["datacenter"], "dc-test");
    assert_eq!(line["node"], "agent-node");

    let line = consumer.next("services").await;
    assert_eq!(line["index"], catalog.snapshot().index.to_string());
    assert_eq!(
        line["services"],
        json!({"db.shop": [], "web.shop": ["v1", "canary"]})
    );

    let line = consumer.next("catalog").await;
    assert_eq!(line["ids"], json!(["web-a", "web-b"]));
    let line = consumer.next("agent").await;
    assert_eq!(line["ids"], json!(["db-1", "web-a", "web-b"]));

    let line = consumer.next("health").await;
    let first_index = line["index"].clone();
    assert_eq!(
        first_index,
        catalog.snapshot().modified("web.shop").unwrap().to_string()
    );
    assert_eq!(
        line["targets"],
        json!([
            target("web-a", 18081, &["v1"]),
            target("web-b", 18082, &["v1", "canary"])
        ])
    );

    // Another service changes while the consumer's short query waits: not its business.
    catalog.register(endpoint("db-2", "db", "127.0.0.1", 15433, &[]));
    let line = consumer.next("timeout").await;
    assert_eq!(line["index"], first_index);
    assert_eq!(line["targets"].as_array().unwrap().len(), 2);

    // A rolling step: one instance leaves and another arrives, in one change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let index = catalog.apply([
        Change::Deregister("web-a".to_owned()),
        Change::Register(endpoint("web-c", "web", "127.0.0.1", 18083, &["v2"])),
    ]);
    let line = consumer.next("change").await;
    assert_eq!(line["index"], index.to_string());
    assert_eq!(
        line["targets"],
        json!([
            target("web-b", 18082, &["v1", "canary"]),
            target("web-c", 18083, &["v2"])
        ])
    );

    // The last instance leaves: the service empties.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let index = catalog.apply([
        Change::Deregister("web-b".to_owned()),
        Change::Deregister("web-c".to_owned()),
    ]);
    let line = consumer.next("change").await;
    assert_eq!(line["index"], index.to_string());
    assert_eq!(line["targets"], json!([]));

    let line = consumer.next("bad").await;
    let error = line["error"].as_str().unwrap();
    assert!(error.starts_with("400 invalid wait time"), "{error}");

    let status = tokio::time::timeout(Duration::from_secs(10), consumer.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
