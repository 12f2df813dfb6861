//! `berth server` under test: its own root, bridge and /24, serving the registry that holds
//! the test images too (`--registry-listen`), driven through the real `berth` CLI. Like the
//! rest of this crate's helpers, it panics with the story when something fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::berth_binary;
use crate::busybox::{busybox_layer, push_image, raw_layer};

/// A running `berth server`; SIGKILLed and its containers and bridge removed on drop.
pub struct BerthServer {
    dir: tempfile::TempDir,
    binary: PathBuf,
    log_filter: String,
    bridge: String,
    port: u16,
    registry_port: u16,
    dns_port: u16,
    catalog_port: u16,
    proxy_port: u16,
    /// More arguments for `berth server`.
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl BerthServer {
    /// Starts the `berth` binary of the target directory (or `$BERTH_BIN`).
    pub fn start() -> BerthServer {
        BerthServer::start_with(&berth_binary())
    }

    /// Starts `binary` as the server.
    pub fn start_with(binary: &Path) -> BerthServer {
        BerthServer::start_logging(binary, "info,berth_server=debug")
    }

    /// Starts `binary` as the server, logging with `filter` (`BERTH_LOG`) into its log.
    pub fn start_logging(binary: &Path, filter: &str) -> BerthServer {
        BerthServer::start_configured(binary, filter, "")
    }

    /// Starts `binary` as the server, logging with `filter`, with `extra` appended to its
    /// node config file (e.g. a `[registry]` table).
    pub fn start_configured(binary: &Path, filter: &str, extra: &str) -> BerthServer {
        BerthServer::start_full(binary, filter, extra, &[])
    }

    /// Starts `binary` as the server with `args` added to `berth server`'s own.
    pub fn start_args(binary: &Path, filter: &str, args: &[&str]) -> BerthServer {
        BerthServer::start_full(binary, filter, "", args)
    }

    fn start_full(binary: &Path, filter: &str, extra: &str, args: &[&str]) -> BerthServer {
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
        ) + extra;
        fs::write(dir.path().join("node.toml"), config).unwrap();
        let mut server = BerthServer {
            dir,
            binary: binary.to_owned(),
            log_filter: filter.to_owned(),
            bridge,
            port: free_port(),
            registry_port: free_port(),
            dns_port: free_port(),
            catalog_port: free_port(),
            proxy_port: free_port(),
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    /// The server's temp dir (specs can be written here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The node root (`--root`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The API's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT` of the built-in registry.
    pub fn registry(&self) -> String {
        format!("127.0.0.1:{}", self.registry_port)
    }

    /// The environment a client outside berth (push.sh, podman, skopeo) needs to push to the
    /// built-in registry: its credential file, when the server made one.
    pub fn registry_env(&self) -> Vec<(String, PathBuf)> {
        vec![(
            "REGISTRY_AUTH_FILE".to_owned(),
            self.root().join("registry-auth.json"),
        )]
    }

    /// The admin credential the server made for its registry, from the auth file it keeps
    /// in its root: (user, password); `None` without that file (a berth older than the
    /// credential, as a benchmark may run).
    pub fn registry_admin(&self) -> Option<(String, String)> {
        use base64::Engine as _;
        let path = self.root().join("registry-auth.json");
        let text = fs::read(&path).ok()?;
        let file: Value = serde_json::from_slice(&text).unwrap();
        let auth = file["auths"][self.registry()]["auth"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "no entry for {} in {}: {file}",
                    self.registry(),
                    path.display()
                )
            });
        let pair = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(auth)
                .unwrap(),
        )
        .unwrap();
        let (user, password) = pair.split_once(':').unwrap();
        Some((user.to_owned(), password.to_owned()))
    }

    /// The built-in registry's base URL with the admin credential in it
    /// (`http://admin:PASSWORD@127.0.0.1:PORT`), for [`crate::api::Client`] and the push
    /// helpers.
    pub fn registry_url(&self) -> String {
        match self.registry_admin() {
            Some((user, password)) => format!("http://{user}:{password}@{}", self.registry()),
            None => format!("http://{}", self.registry()),
        }
    }

    /// Where its DNS server answers (UDP and TCP).
    pub fn dns_addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.dns_port).into()
    }

    /// The base URL of its Consul-compatible catalog.
    pub fn catalog_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.catalog_port)
    }

    /// The base URL of its proxy (HTTP).
    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    /// What the server logged so far (all its runs).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Starts the server process (again) and waits until it listens.
    pub fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let stdout = self.dir.path().join("stdout.log");
        let mut cmd = self.berth();
        cmd.args(["server", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--registry-listen", &self.registry()])
            .args(["--dns-listen", &self.dns_addr().to_string()])
            .args([
                "--catalog-listen",
                &format!("127.0.0.1:{}", self.catalog_port),
            ])
            .args(["--proxy-listen", &format!("127.0.0.1:{}", self.proxy_port)])
            .arg("--container-dns")
            .args(&self.extra_args)
            .env("BERTH_LOG", &self.log_filter)
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

    /// SIGKILLs the server (its containers keep running).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A `berth` command for this server and node.
    pub fn berth(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(self.root())
            .arg("--config")
            .arg(self.dir.path().join("node.toml"))
            .env("BERTH_LOG", "warn")
            .env("BERTH_SERVER", self.url());
        cmd
    }

    /// Runs `berth ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.berth().args(args).output().unwrap()
    }

    /// Runs `berth ARGS`, which must succeed; its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
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

    /// Writes `spec` as `<name>.toml` in the server's dir and runs `berth deploy -f` on it.
    pub fn deploy_text(&self, name: &str, spec: &str, wait: bool) -> Output {
        let path = self.dir.path().join(format!("{name}.toml"));
        fs::write(&path, spec).unwrap();
        let mut args = vec!["deploy", "-f", path.to_str().unwrap()];
        if !wait {
            args.push("--no-wait");
        }
        let out = self.run(&args);
        eprintln!("$ berth deploy ({name}): {}\n{}", out.status, text(&out));
        out
    }

    /// `berth secret set APP NAME` with `value` on stdin; its output.
    #[track_caller]
    pub fn set_secret(&self, app: &str, name: &str, value: &str) -> String {
        let mut child = self
            .berth()
            .args(["secret", "set", app, name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(value.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "secret set: {}", text(&out));
        text(&out)
    }

    /// `berth status APP --json`.
    pub fn status(&self, app: &str) -> Value {
        serde_json::from_str(&self.ok(&["status", app, "--json"])).unwrap()
    }

    /// The names of `app`'s containers on the node.
    pub fn containers(&self, app: &str) -> BTreeSet<String> {
        let all: Value = serde_json::from_str(&self.ok(&["ps", "-a", "--json"])).unwrap();
        let prefix = format!("{app}.");
        all.as_array()
            .unwrap()
            .iter()
            .map(|c| c["record"]["name"].as_str().unwrap().to_owned())
            .filter(|name| name.starts_with(&prefix))
            .collect()
    }

    /// Polls `done` every 200 ms; panics with `app`'s status and the log after `timeout`.
    #[track_caller]
    pub fn wait_for(
        &self,
        app: &str,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut() -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status:\n{}\nserver log:\n{}",
                self.ok(&["status", app]),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for BerthServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- berth server log ---\n{}", self.log());
        }
        self.kill9();
        crate::process::remove_node(|| self.berth(), &self.bridge);
    }
}

/// The instances of a `berth status --json` view, of every service.
pub fn instances_in(view: &Value) -> Vec<Value> {
    view["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The running, healthy instances of a view: (container, release, address).
pub fn healthy_in(view: &Value) -> Vec<(String, u64, String)> {
    instances_in(view)
        .into_iter()
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

/// `GET url` with curl (5 s at most): the body, or curl's complaint.
pub fn http_get(url: &str) -> Result<String, String> {
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

/// A command's stdout and stderr, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `berth.toml` of app `app`: one service `web` running `{registry}/{app}/web:{tag}`
/// (an image from [`push_web`] on port 8080) with `replicas` instances, an HTTP health check
/// every `interval` (like `"300ms"`), a 1 s stop grace, and `deploy` as the body of its
/// `[services.web.deploy]` table.
pub fn web_spec(
    server: &BerthServer,
    app: &str,
    tag: &str,
    replicas: usize,
    interval: &str,
    deploy: &str,
) -> String {
    format!(
        r#"app = "{app}"

[services.web]
image = "{registry}/{app}/web:{tag}"
replicas = {replicas}
ports = {{ http = 8080 }}
stop_grace = "1s"

[services.web.health]
http = {{ port = "http", path = "/index.html" }}
interval = "{interval}"
timeout = "1s"

[services.web.deploy]
{deploy}
"#,
        registry = server.registry()
    )
}

/// Pushes `repo:tag`, busybox httpd serving `content` at /index.html on `port`; its digest.
/// `registry` is a base URL (`http://127.0.0.1:PORT`).
pub fn push_web(registry: &str, repo: &str, tag: &str, content: &str, port: u16) -> String {
    let port = port.to_string();
    push_image(
        registry,
        repo,
        tag,
        &[
            busybox_layer(),
            raw_layer("www/index.html", format!("{content}\n").as_bytes()),
        ],
        &["httpd", "-f", "-p", &port, "-h", "/www"],
    )
    .digest
}
