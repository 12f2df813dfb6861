//! The registries under test, as child processes on free loopback ports with their data in
//! temp dirs. Each is killed and its data removed when dropped, on error paths too.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use regex::Regex;

/// How long a registry gets to start accepting connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// A registry process.
pub struct Registry {
    /// Name shown in results.
    pub name: &'static str,
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    child: Child,
    // Removed by its own drop, which runs after `Drop for Registry` has killed and reaped
    // the process, so nothing writes into it while it goes.
    _data: tempfile::TempDir,
}

impl Registry {
    /// `host:port` for image references.
    pub fn host(&self) -> &str {
        self.url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
    }

    /// Peak resident memory of the process so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        vm_hwm_kib(&status)
    }

    /// berth's registry from `binary`, data in a new dir under `work`.
    pub fn berth(binary: &Path, work: &Path) -> anyhow::Result<Registry> {
        Registry::berth_with(binary, work, &[])
    }

    /// berth's registry from `binary` with extra `serve` flags.
    pub fn berth_with(binary: &Path, work: &Path, flags: &[&str]) -> anyhow::Result<Registry> {
        let listening = Regex::new(r"listening on (https?://\S+)")?;
        let data = tempfile::Builder::new().prefix("berth-").tempdir_in(work)?;
        let mut child = Command::new(binary)
            .args(["registry", "serve", "--listen", "127.0.0.1:0"])
            .args(["--log", "warn", "--data-dir"])
            .arg(data.path())
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it: cargo build --release -p berth)",
                    binary.display()
                )
            })?;
        let stdout = child
            .stdout
            .take()
            .context("berth's stdout was not piped")?;
        let (url_tx, url_rx) = mpsc::channel();
        // Reads stdout to its end, so that berth never writes into a closed pipe.
        std::thread::spawn(move || {
            let mut url_tx = Some(url_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(caps) = listening.captures(&line) {
                    if let Some(tx) = url_tx.take() {
                        let _ = tx.send(caps[1].to_owned());
                    }
                }
            }
        });
        let mut registry = Registry {
            name: "berth",
            url: String::new(),
            child,
            _data: data,
        };
        registry.url = url_rx.recv_timeout(STARTUP_TIMEOUT).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => {
                anyhow!("berth printed no `listening on URL` line within {STARTUP_TIMEOUT:?}")
            }
            mpsc::RecvTimeoutError::Disconnected => {
                anyhow!("berth exited before listening; its stderr is above")
            }
        })?;
        Ok(registry)
    }

    /// Debian's docker-registry (CNCF distribution 2.8) with a config of its own: filesystem
    /// storage in a new dir under `work`, deletes on, no auth, warn logs to a file there.
    pub async fn distribution(name: &'static str, work: &Path) -> anyhow::Result<Registry> {
        let data = tempfile::Builder::new()
            .prefix("distribution-")
            .tempdir_in(work)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = data.path().join("config.yml");
        std::fs::write(
            &config,
            distribution_config(&data.path().join("storage"), port),
        )?;
        let log_path = data.path().join("registry.log");
        let log = File::create(&log_path)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (scripts/install-deps.sh installs it)")?;
        let mut registry = Registry {
            name,
            url: format!("http://127.0.0.1:{port}"),
            child,
            _data: data,
        };
        let started = Instant::now();
        let client = reqwest::Client::new();
        while started.elapsed() < STARTUP_TIMEOUT {
            if let Some(status) = registry.child.try_wait()? {
                bail!(
                    "docker-registry exited ({status}) before listening:\n{}",
                    log_tail(&log_path)
                );
            }
            let ready = client.get(format!("{}/v2/", registry.url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(registry);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "docker-registry did not answer on {} within {STARTUP_TIMEOUT:?}:\n{}",
            registry.url,
            log_tail(&log_path)
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// distribution's config: everything it needs, nothing from its stock /etc config (which
/// listens on all interfaces and turns on htpasswd auth).
fn distribution_config(storage: &Path, port: u16) -> String {
    format!(
        "\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
",
        storage.display()
    )
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `VmHWM` from the text of `/proc/PID/status`, in KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_peak_rss_from_proc_status() {
        let status = "Name:\tberth\nVmPeak:\t  123456 kB\nVmHWM:\t   33792 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(33792));
        assert_eq!(vm_hwm_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn distribution_listens_on_loopback_only() {
        let config = distribution_config(Path::new("/var/tmp/x/storage"), 5055);
        assert!(config.contains("addr: 127.0.0.1:5055\n"));
        assert!(config.contains("rootdirectory: /var/tmp/x/storage\n"));
        assert!(!config.contains("auth"));
    }
}
