//! Debian's `docker-registry` (CNCF distribution 2.8): the peer berth is compared with.

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use crate::{process, wait_until_ready, Registry};

/// A running `docker-registry serve CONFIG` on a free loopback port, storing into a temporary
/// directory, with deletes enabled and no auth. Killed and waited for on drop.
pub struct DockerRegistry {
    dir: TempDir,
    child: Child,
    url: String,
}

/// How many ports to try when another process grabs the free port first.
const PORT_ATTEMPTS: u32 = 5;

impl DockerRegistry {
    /// Starts the registry and waits until `GET /v2/` answers 200.
    pub fn start() -> DockerRegistry {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-distribution.")
            .tempdir()
            .expect("a temporary directory");
        let mut last_problem = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let config = dir.path().join("config.yml");
            fs::write(&config, config_yaml(&dir.path().join("data"), port))
                .expect("writing config.yml");
            let log = File::create(dir.path().join("registry.log")).expect("creating the log");
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve").arg(&config);
            // distribution reads REGISTRY_<SECTION>_<KEY> variables as config overrides; an
            // inherited REGISTRY_AUTH_FILE (meant for podman) breaks its config parsing.
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(name);
                }
            }
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().expect("duplicating the log file"))
                .stderr(log);
            let mut child = cmd.spawn().unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; scripts/install-deps.sh installs docker-registry",
                    process::describe(&cmd)
                )
            });
            let url = format!("http://127.0.0.1:{port}");
            match wait_until_ready(&url, &mut || matches!(child.try_wait(), Ok(None))) {
                Ok(()) => return DockerRegistry { dir, child, url },
                Err(problem) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_problem = problem;
                }
            }
        }
        panic!(
            "docker-registry did not start: {last_problem}\nlog:\n{}",
            fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// The storage root (`storage.filesystem.rootdirectory`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The config file, e.g. for `docker-registry garbage-collect`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }
}

fn config_yaml(data: &std::path::Path, port: u16) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n",
        data.display()
    )
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding a free loopback port")
        .port()
}

impl Registry for DockerRegistry {
    fn url(&self) -> &str {
        &self.url
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- log of the registry at {} ---\n{}",
                self.url,
                self.log()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
