//! `berth server` with secrets and volumes, end to end: a secret set with `berth secret set`
//! reaches the instance's environment and a read-only file in it (the instance serves both
//! back over HTTP) and nothing else — not `inspect`, `status`, any API answer, the server's
//! log, the state store, the container's files (but the owner-only bundle `config.json` and
//! the container's secrets tmpfs) or the registry; a named volume keeps its data across a
//! deploy and a rollback.
#![allow(clippy::unwrap_used, missing_docs)]

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use berth_e2e::berth_binary;
use berth_e2e::busybox::{busybox_layer, push_image, raw_layer};
use berth_e2e::server::BerthServer;
use serde_json::Value;

/// A berth server (`berth_e2e::server::BerthServer`: its own root, bridge and /24, serving
/// the registry too) that logs at debug level everywhere, so that the log check below sees
/// everything the server could write.
struct Server(BerthServer);

impl std::ops::Deref for Server {
    type Target = BerthServer;

    fn deref(&self) -> &BerthServer {
        &self.0
    }
}

impl Server {
    fn start() -> Server {
        Server(BerthServer::start_logging(&berth_binary(), "debug"))
    }

    /// `berth secret set shop NAME` with `value` on stdin.
    fn set_secret(&self, name: &str, value: &str) -> String {
        self.0.set_secret("shop", name, value)
    }

    fn spec(&self, tag: &str) -> PathBuf {
        let path = self.dir().join(format!("berth-{tag}.toml"));
        // The instance counts its starts in the named volume and serves the count and its
        // secret (from its environment and from its file) from a tmpfs, so none lands in the
        // container's root filesystem.
        let text = format!(
            r#"app = "shop"

[services.web]
image = "{}/shop/web:{tag}"
command = ["sh", "-c", "n=$(cat /data/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/count; echo $n > /scratch/count; echo \"$TOKEN\" > /scratch/token; cat /run/secrets/token > /scratch/token-file; cat /www/index.html > /scratch/index.html; exec httpd -f -p 8080 -h /scratch"]
secrets = ["TOKEN"]
ports = {{ http = 8080 }}
stop_grace = "1s"
health = {{ http = {{ port = "http", path = "/index.html" }}, interval = "300ms", timeout = "1s" }}
deploy = {{ healthy_deadline = "20s" }}

[services.web.volumes]
data = "/data"
scratch = {{ tmpfs = "/scratch", size = "1Mi" }}

[services.web.secret_files]
TOKEN = "/run/secrets/token"
"#,
            self.registry()
        );
        fs::write(&path, text).unwrap();
        path
    }

    fn deploy(&self, tag: &str) -> Output {
        let spec = self.spec(tag);
        self.run(&["deploy", "-f", spec.to_str().unwrap()])
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "shop", "--json"])).unwrap()
    }

    /// The address of the one healthy instance of `release`, once there is exactly one.
    #[track_caller]
    fn serving(&self, release: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status();
            let healthy: Vec<&Value> = status["services"][0]["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["state"] == "running" && i["health"] == "healthy")
                .collect();
            if let [one] = healthy.as_slice() {
                if one["release"] == release {
                    return one["address"].as_str().unwrap().to_owned();
                }
            }
            assert!(
                Instant::now() < deadline,
                "release {release} not serving alone:\n{status}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn api_get(&self, path: &str) -> String {
        let token = fs::read_to_string(self.root().join("server.token")).unwrap();
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-H"])
            .arg(format!("Authorization: Bearer {}", token.trim()))
            .arg(format!("{}{path}", self.url()))
            .output()
            .unwrap();
        assert!(out.status.success(), "GET {path}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes
}

fn http_get(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {url}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn push_web(registry: &str, tag: &str) -> String {
    push_image(
        registry,
        "shop/web",
        tag,
        &[
            busybox_layer(),
            raw_layer("www/index.html", format!("{tag}\n").as_bytes()),
        ],
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
    )
    .digest
}

/// Every regular file under `dir` (symlinks not followed) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if meta.is_file() {
            let bytes = fs::read(&path).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn secrets_reach_the_instance_only_and_volumes_outlive_deploys() {
    let server = Server::start();
    let registry = server.registry_url();
    push_web(&registry, "v1");
    push_web(&registry, "v2");
    let marker = format!("marker-{}", hex::encode(rand_bytes::<12>()));

    // A release cannot be made without its secret; the error says how to set it.
    let out = server.deploy("v1");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("berth secret set shop TOKEN"),
        "{}",
        text(&out)
    );

    let said = server.set_secret("TOKEN", &format!("{marker}\n"));
    assert!(said.contains("version 1"), "{said}");

    // 1. Deploy: the instance has the secret and counts its first start in the volume.
    let out = server.deploy("v1");
    assert!(
        out.status.success(),
        "deploy v1: {}\n{}",
        text(&out),
        server.log()
    );
    let address = server.serving(1);
    assert_eq!(http_get(&format!("http://{address}:8080/token")), marker);
    assert_eq!(
        http_get(&format!("http://{address}:8080/token-file")),
        marker
    );
    assert_eq!(http_get(&format!("http://{address}:8080/count")), "1");
    // The file is the container user's, read-only, and cannot be changed.
    let container = server.status()["services"][0]["instances"][0]["container"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        server
            .ok(&[
                "exec",
                &container,
                "busybox",
                "stat",
                "-c",
                "%a %u",
                "/run/secrets/token"
            ])
            .trim(),
        "400 0"
    );
    let write = server.run(&[
        "exec",
        &container,
        "sh",
        "-c",
        "echo x > /run/secrets/token",
    ]);
    assert!(!write.status.success(), "{}", text(&write));

    // 2. A new release: the volume's data is still there.
    let out = server.deploy("v2");
    assert!(
        out.status.success(),
        "deploy v2: {}\n{}",
        text(&out),
        server.log()
    );
    let address = server.serving(2);
    assert_eq!(http_get(&format!("http://{address}:8080/index.html")), "v2");
    assert_eq!(http_get(&format!("http://{address}:8080/count")), "2");
    assert_eq!(http_get(&format!("http://{address}:8080/token")), marker);

    // 3. A rollback: still there, and the secret too.
    let out = server.run(&["rollback", "shop"]);
    assert!(
        out.status.success(),
        "rollback: {}\n{}",
        text(&out),
        server.log()
    );
    let address = server.serving(1);
    assert_eq!(http_get(&format!("http://{address}:8080/index.html")), "v1");
    assert_eq!(http_get(&format!("http://{address}:8080/count")), "3");
    assert_eq!(http_get(&format!("http://{address}:8080/token")), marker);

    // 4. A new value is a new version: the next release uses it, a rollback to release 2
    //    the version that release was made with.
    let rotated = format!("rotated-{}", hex::encode(rand_bytes::<12>()));
    let said = server.set_secret("TOKEN", &rotated);
    assert!(said.contains("version 2"), "{said}");
    let out = server.deploy("v2");
    assert!(
        out.status.success(),
        "deploy v2 again: {}\n{}",
        text(&out),
        server.log()
    );
    let address = server.serving(3);
    assert_eq!(http_get(&format!("http://{address}:8080/token")), rotated);
    assert_eq!(
        http_get(&format!("http://{address}:8080/token-file")),
        rotated
    );
    assert_eq!(http_get(&format!("http://{address}:8080/count")), "4");
    let out = server.run(&["rollback", "shop"]);
    assert!(
        out.status.success(),
        "rollback: {}\n{}",
        text(&out),
        server.log()
    );
    let address = server.serving(2);
    assert_eq!(http_get(&format!("http://{address}:8080/token")), marker);
    assert_eq!(
        http_get(&format!("http://{address}:8080/token-file")),
        marker
    );
    assert_eq!(http_get(&format!("http://{address}:8080/count")), "5");

    // The CLI lists names and versions only; a secret the desired release uses stays.
    let listed = server.ok(&["secret", "list", "shop"]);
    assert!(
        listed.contains("TOKEN") && listed.contains("1,2"),
        "{listed}"
    );
    let out = server.run(&["secret", "rm", "shop", "TOKEN"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("uses secret TOKEN"), "{}", text(&out));
    let volumes = server.ok(&["volume", "ls", "shop"]);
    assert!(volumes.contains("data"), "{volumes}");
    // A mounted volume is not removed.
    let out = server.run(&["volume", "rm", "shop", "data"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("mounted by"), "{}", text(&out));

    assert_eq!(
        assert_not_leaked(&server, &marker),
        (1, 1),
        "the running instance's bundle and secrets tmpfs"
    );
    assert_eq!(
        assert_not_leaked(&server, &rotated),
        (0, 0),
        "a removed instance's bundle and secrets tmpfs"
    );
    assert!(server.root().join("registry").is_dir());
    assert!(server.root().join("server.redb").is_file());
}

/// Looks for `marker` everywhere berth writes or answers. It may only be in two places, both
/// the running container's and gone with it:
/// - bundle `config.json` files (the secret environment, for runc), which must be owner-only;
/// - secret files `containers/<id>/secrets/<NAME>`, which must be mode 0400 on a tmpfs mounted
///   at `containers/<id>/secrets`: in memory, not on the disk under the root (the walk below
///   reads them through the mount, which is why they show up at all).
///
/// Returns how many of each there are.
fn assert_not_leaked(server: &Server, marker: &str) -> (usize, usize) {
    let mut leaks = Vec::new();
    let ps: Value = serde_json::from_str(&server.ok(&["ps", "-a", "--json"])).unwrap();
    let containers: Vec<String> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["record"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!containers.is_empty());
    for id in &containers {
        if server.ok(&["inspect", id]).contains(marker) {
            leaks.push(format!("berth inspect {id}"));
        }
    }
    if server.ok(&["ps", "-a", "--json"]).contains(marker) {
        leaks.push("berth ps --json".into());
    }
    for args in [
        &["status", "--json"][..],
        &["status", "shop", "--json"],
        &["status", "shop"],
        &["releases", "shop"],
    ] {
        if server.ok(args).contains(marker) {
            leaks.push(format!("berth {args:?}"));
        }
    }
    for path in [
        "/v1/apps",
        "/v1/apps/shop",
        "/v1/apps/shop/releases",
        "/v1/apps/shop/secrets",
        "/v1/apps/shop/volumes",
    ] {
        if server.api_get(path).contains(marker) {
            leaks.push(format!("GET {path}"));
        }
    }
    if server.log().contains(marker) {
        leaks.push("the server's log".into());
    }
    // Every file under the root: the state store, the registry's blobs, the images, the
    // containers' records, state, logs and root filesystems, the runtime's state.
    let mut config_files = Vec::new();
    let mut secret_files = Vec::new();
    let containers_dir = server.root().join("containers");
    for path in files_containing(&server.root(), marker.as_bytes()) {
        let secrets_dir = path.parent().filter(|dir| dir.ends_with("secrets"));
        if path.ends_with("bundle/config.json") {
            config_files.push(path);
        } else if secrets_dir.and_then(|dir| dir.parent()?.parent()) == Some(&containers_dir) {
            secret_files.push(path);
        } else {
            leaks.push(path.display().to_string());
        }
    }
    assert!(leaks.is_empty(), "the secret leaked into: {leaks:#?}");
    for path in &config_files {
        let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    for path in &secret_files {
        let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400, "{}", path.display());
        let dir = path.parent().unwrap();
        assert_eq!(
            filesystem_at(dir).as_deref(),
            Some("tmpfs"),
            "{} must be a tmpfs mount",
            dir.display()
        );
    }
    (config_files.len(), secret_files.len())
}

/// The type of the filesystem mounted exactly at `dir`, if one is.
fn filesystem_at(dir: &Path) -> Option<String> {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        (fields[4] == dir).then(|| fields[separator + 1].to_owned())
    })
}
