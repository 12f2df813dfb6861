//! `berth server` end to end: real containers on runc, the real CNI bridge, busybox httpd
//! images pushed to berth's registry, and the real `berth deploy`/`status`/`rollback`
//! clients. One app goes through a first deploy, a rolling update, a broken release that
//! rolls back by itself, a manual rollback, a killed instance and a SIGKILLed server.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_e2e::berth_binary;
use berth_e2e::busybox::{busybox_layer, push_image, raw_layer};
use serde_json::Value;

const REPLICAS: usize = 3;
const MAX_UNAVAILABLE: usize = 1;

/// A berth server with its own root, bridge and /24, serving the registry that holds the
/// test images too (`--registry-listen`).
struct Server {
    dir: tempfile::TempDir,
    bridge: String,
    port: u16,
    registry_port: u16,
    child: Option<Child>,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("berth-server.")
            .tempdir()
            .unwrap();
        let tag: [u8; 3] = rand_bytes();
        let bridge = format!("bs{}", hex::encode(tag));
        let config = format!(
            "[node]\nruntime = \"runc\"\n[node.network]\nbridge = \"{bridge}\"\nsubnet = \"10.{}.{}.0/24\"\nmasquerade = false\n",
            203 + tag[1] % 40,
            10 + tag[0] % 200
        );
        fs::write(dir.path().join("node.toml"), config).unwrap();
        let mut server = Server {
            dir,
            bridge,
            port: free_port(),
            registry_port: free_port(),
            child: None,
        };
        server.spawn();
        server
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn registry(&self) -> String {
        format!("127.0.0.1:{}", self.registry_port)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let stdout = self.dir.path().join("stdout.log");
        let mut cmd = self.berth();
        cmd.args(["server", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--registry-listen", &self.registry()])
            .env("BERTH_LOG", "info,berth_server=debug")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(log);
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::read_to_string(&stdout)
            .unwrap_or_default()
            .contains("berth server listening on")
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("berth server exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "berth server did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn berth(&self) -> Command {
        let mut cmd = Command::new(berth_binary());
        cmd.arg("--root")
            .arg(self.root())
            .arg("--config")
            .arg(self.dir.path().join("node.toml"))
            .env("BERTH_LOG", "warn")
            .env("BERTH_SERVER", self.url());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.berth().args(args).output().unwrap()
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed ({}):\n{}{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn spec(&self, tag: &str) -> PathBuf {
        let path = self.dir.path().join(format!("berth-{tag}.toml"));
        let text = format!(
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
"#,
            self.registry()
        );
        fs::write(&path, text).unwrap();
        path
    }

    fn deploy(&self, tag: &str) -> Output {
        let spec = self.spec(tag);
        let out = self.run(&["deploy", "-f", spec.to_str().unwrap()]);
        eprintln!("$ berth deploy ({tag}): {}\n{}", out.status, text(&out));
        out
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "shop", "--json"])).unwrap()
    }

    /// The running, healthy instances: (container, release, address).
    fn healthy(&self) -> Vec<(String, u64, String)> {
        healthy_in(&self.status())
    }

    /// The names of the app's containers on the node.
    fn containers(&self) -> BTreeSet<String> {
        let all: Value = serde_json::from_str(&self.ok(&["ps", "-a", "--json"])).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .map(|c| c["record"]["name"].as_str().unwrap().to_owned())
            .filter(|name| name.starts_with("shop."))
            .collect()
    }

    #[track_caller]
    fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status:\n{}\nserver log:\n{}",
                self.ok(&["status", "shop"]),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
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

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- berth server log ---\n{}", self.log());
        }
        self.kill9();
        if let Ok(out) = self.berth().args(["ps", "-aq"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.berth().args(["rm", "-f", id]).output();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

fn healthy_in(view: &Value) -> Vec<(String, u64, String)> {
    view["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
        .filter(|i| i["state"] == "running" && i["health"] == "healthy")
        .map(|i| {
            (
                i["container"].as_str().unwrap().to_owned(),
                i["release"].as_u64().unwrap(),
                i["address"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(url: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Pushes `shop/web:{tag}` serving `content` at /index.html on `port`.
fn push_web(registry: &str, tag: &str, content: &str, port: u16) -> String {
    let port = port.to_string();
    push_image(
        registry,
        "shop/web",
        tag,
        &[
            busybox_layer(),
            raw_layer("www/index.html", format!("{content}\n").as_bytes()),
        ],
        &["httpd", "-f", "-p", &port, "-h", "/www"],
    )
    .digest
}

#[test]
fn deploys_roll_back_heal_and_survive_a_server_restart() {
    let mut server = Server::start();
    let registry = format!("http://{}", server.registry());
    let v1 = push_web(&registry, "v1", "v1", 8080);
    let v2 = push_web(&registry, "v2", "v2", 8080);
    // Listens on the wrong port: its health check never passes.
    let v3 = push_web(&registry, "v3", "v3", 8081);

    // A spec mistake is reported with its place, and nothing is deployed.
    let bad = server.dir.path().join("bad.toml");
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
            healthy.len() == REPLICAS && healthy.iter().all(|(c, _, _)| *c != victim)
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
