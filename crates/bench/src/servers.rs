//! The registries under test, as child processes on free loopback ports with their data in
//! temp dirs; both are killed and their data removed on drop.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A registry process.
pub struct Registry {
    /// Name shown in results.
    pub name: &'static str,
    /// Base URL.
    pub url: String,
    child: Child,
    _data: tempfile::TempDir,
}

impl Registry {
    /// `host:port` for image references.
    pub fn host(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Peak resident memory so far, in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024)
    }

    /// berth's registry from `binary`.
    pub fn berth(binary: &Path, work: &Path) -> anyhow::Result<Registry> {
        Registry::berth_with(binary, work, &[])
    }

    /// berth's registry from `binary` with extra `serve` flags.
    pub fn berth_with(binary: &Path, work: &Path, flags: &[&str]) -> anyhow::Result<Registry> {
        let data = tempfile::tempdir_in(work)?;
        let mut child = Command::new(binary)
            .args([
                "registry",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log",
                "warn",
                "--data-dir",
            ])
            .arg(data.path())
            .args(flags)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("no stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .with_context(|| format!("berth printed no URL: {line:?}"))?
            .to_owned();
        Ok(Registry {
            name: "berth",
            url,
            child,
            _data: data,
        })
    }

    /// Debian's docker-registry with its own config (no auth, deletes on, warn logs).
    pub async fn distribution(work: &Path) -> anyhow::Result<Registry> {
        let data = tempfile::tempdir_in(work)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config: PathBuf = data.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}/data\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                data.path().display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry (apt-get install docker-registry)")?;
        let url = format!("http://127.0.0.1:{port}");
        let registry = Registry {
            name: "distribution",
            url,
            child,
            _data: data,
        };
        let started = Instant::now();
        let client = reqwest::Client::new();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(r) = client.get(format!("{}/v2/", registry.url)).send().await {
                if r.status().is_success() {
                    return Ok(registry);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("docker-registry did not come up on {}", registry.url)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
