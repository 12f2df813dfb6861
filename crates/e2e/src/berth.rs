//! The real `berth registry serve` process.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{process, wait_until_ready, Registry};

/// The `berth` binary: `$BERTH_BIN`, or `berth` in the target directory this test executable
/// was built into (`target/debug/deps/<test>` → `target/debug/berth`).
///
/// Panics when there is none: build it first (`cargo build --workspace`, as `scripts/test.sh`
/// does). This crate depends on nothing from berth but that binary.
pub fn berth_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("BERTH_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "BERTH_BIN={} is not a file", bin.display());
        return bin;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .skip(1)
        .map(|dir| dir.join("berth"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no `berth` binary in the directories above {}: run `cargo build --workspace` \
                 (scripts/test.sh does) or set BERTH_BIN",
                exe.display()
            )
        })
}

/// TLS certificate and key files (PEM) for `--tls-cert` / `--tls-key`.
#[derive(Debug, Clone)]
pub struct Tls {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// How to start berth; the default is an open registry over plain HTTP.
#[derive(Debug, Clone, Default)]
pub struct BerthOptions {
    /// `--users FILE`.
    pub users: Option<PathBuf>,
    /// `--anonymous-pull`.
    pub anonymous_pull: bool,
    /// `--tls-cert` and `--tls-key`.
    pub tls: Option<Tls>,
    /// Any further arguments to `berth registry serve`.
    pub args: Vec<String>,
}

/// A running `berth registry serve --listen 127.0.0.1:0`, with its data in a temporary
/// directory. Killed (SIGKILL) and waited for on drop.
pub struct BerthRegistry {
    options: BerthOptions,
    dir: TempDir,
    child: Option<Child>,
    url: String,
}

/// How many times a restart tries to bind the old port again before giving up.
const REBIND_ATTEMPTS: u32 = 50;

impl BerthRegistry {
    /// Starts berth and waits until `GET /v2/` answers (200 or 401).
    pub fn start(options: BerthOptions) -> BerthRegistry {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-registry.")
            .tempdir()
            .expect("a temporary directory");
        fs::create_dir(dir.path().join("data")).expect("creating the data directory");
        let mut registry = BerthRegistry {
            options,
            dir,
            child: None,
            url: String::new(),
        };
        registry.spawn("127.0.0.1:0", 1);
        registry
    }

    /// The data directory (`--data-dir`), kept across [`restart`](Self::restart).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the process gets no chance to clean up. Waits until it is gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory and port (SIGKILLing it first if
    /// it still runs), and waits until it answers.
    pub fn restart(&mut self) {
        self.kill9();
        let listen = self.host().to_owned();
        self.spawn(&listen, REBIND_ATTEMPTS);
    }

    fn spawn(&mut self, listen: &str, attempts: u32) {
        let stdout_path = self.dir.path().join("stdout.log");
        let stderr_path = self.dir.path().join("stderr.log");
        for attempt in 1..=attempts {
            let mut cmd = Command::new(berth_binary());
            cmd.args(["registry", "serve", "--listen", listen, "--data-dir"])
                .arg(self.data_dir());
            if let Some(users) = &self.options.users {
                cmd.arg("--users").arg(users);
            }
            if self.options.anonymous_pull {
                cmd.arg("--anonymous-pull");
            }
            if let Some(tls) = &self.options.tls {
                cmd.arg("--tls-cert").arg(&tls.cert);
                cmd.arg("--tls-key").arg(&tls.key);
            }
            cmd.args(&self.options.args);
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("BERTH_") {
                    cmd.env_remove(name);
                }
            }
            // E2E_BERTH_LOG=debug logs every request, for chasing a failure.
            let filter = std::env::var("E2E_BERTH_LOG").unwrap_or_else(|_| "info".to_owned());
            cmd.env("BERTH_LOG", filter).env("NO_COLOR", "1");
            let stdout = File::create(&stdout_path).expect("creating stdout.log");
            // stderr accumulates over restarts: a crash test wants the whole story.
            let stderr = File::options()
                .create(true)
                .append(true)
                .open(&stderr_path)
                .expect("opening stderr.log");
            cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", process::describe(&cmd)));
            match listening_url(&mut child, &stdout_path) {
                Ok(url) => {
                    self.url = url;
                    let ready =
                        wait_until_ready(&self.url, &mut || matches!(child.try_wait(), Ok(None)));
                    self.child = Some(child);
                    if let Err(problem) = ready {
                        panic!("berth at {}: {problem}\nlog:\n{}", self.url, self.log());
                    }
                    return;
                }
                Err(problem) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    if attempt == attempts || !self.log().contains("in use") {
                        panic!(
                            "{} did not start: {problem}\nlog:\n{}",
                            process::describe(&cmd),
                            self.log()
                        );
                    }
                    // The old port is still held (a socket lingering after SIGKILL).
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// Waits for the `… listening on URL …` line on the server's stdout.
fn listening_url(child: &mut Child, stdout: &Path) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = fs::read_to_string(stdout).unwrap_or_default();
        // Only whole lines: the server may be half-way through writing one.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        if let Some(line) = complete.lines().find(|line| line.contains("listening on ")) {
            return parse_listening_line(line)
                .ok_or_else(|| format!("no URL in the line {line:?}"));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited with {status} before listening"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no `listening on URL` line within 30 s; stdout: {text:?}"
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The URL in `… listening on http://127.0.0.1:PORT …`.
fn parse_listening_line(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("listening on ")?;
    let url = rest.split_whitespace().next()?;
    (url.starts_with("http://") || url.starts_with("https://"))
        .then(|| url.trim_end_matches('/').to_owned())
}

impl Registry for BerthRegistry {
    fn url(&self) -> &str {
        &self.url
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for BerthRegistry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- log of the registry at {} ---\n{}",
                self.url,
                self.log()
            );
        }
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listening_line;

    #[test]
    fn finds_the_url_in_the_listening_line() {
        assert_eq!(
            parse_listening_line(
                "berth registry listening on http://127.0.0.1:5000 (data in /tmp/x)"
            )
            .as_deref(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(
            parse_listening_line("berth registry listening on https://127.0.0.1:443").as_deref(),
            Some("https://127.0.0.1:443")
        );
        assert_eq!(parse_listening_line("listening on 127.0.0.1:5000"), None);
    }
}
