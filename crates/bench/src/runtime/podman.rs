//! podman with a private configuration and storage in the benchmark's temp dir.
//!
//! Why each setting (see shared/MACHINE-PROBE.md): root here lacks CAP_SYS_RESOURCE and the
//! hard nofile limit is 20000, so podman's default ulimits make every container fail; crun
//! refuses this host's hybrid cgroups, runc works; there is no systemd. The storage driver is
//! in storage.conf before podman first runs, or conmon's cleanup fails and podman waits 20 s.
//! On drop the containers and images are removed, leftover processes killed by pid and
//! mounts unmounted.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::process;

/// Variables that would point podman at another configuration, service or storage.
const FOREIGN_VARIABLES: &[&str] = &[
    "CONTAINER_HOST",
    "CONTAINER_CONNECTION",
    "CONTAINER_SSHKEY",
    "STORAGE_DRIVER",
    "STORAGE_OPTS",
    "XDG_CONFIG_HOME",
    "DOCKER_CONFIG",
];

/// The private environment.
pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// Writes the configuration into a new dir under `work`.
    pub fn new(work: &Path) -> anyhow::Result<Podman> {
        let dir = work.join("podman");
        berth_e2e::podman::write_config(&dir)?;
        Ok(Podman { dir })
    }

    /// A `podman` command in this environment.
    pub fn command(&self) -> Command {
        let mut command = Command::new("podman");
        for name in FOREIGN_VARIABLES {
            command.env_remove(name);
        }
        command
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.join("registries.conf"),
            )
            .env("REGISTRY_AUTH_FILE", self.dir.join("auth.json"))
            .env("TMPDIR", self.dir.join("tmp"));
        command
    }

    /// Pulls `reference` over plain HTTP.
    pub async fn pull(&self, reference: &str) -> anyhow::Result<()> {
        process::output(
            self.command()
                .args(["pull", "--quiet", "--tls-verify=false", reference]),
            "podman pull",
        )
        .await?;
        Ok(())
    }

    /// Removes a container without waiting for it to stop.
    pub async fn remove(&self, id: &str) -> anyhow::Result<()> {
        process::output(
            self.command().args(["rm", "--force", "--time", "0", id]),
            "podman rm -f",
        )
        .await?;
        Ok(())
    }

    fn cleanup(&self, args: &[&str]) -> std::process::Output {
        let dir = self.dir.display().to_string();
        let env = [
            format!("CONTAINERS_CONF={dir}/containers.conf"),
            format!("CONTAINERS_STORAGE_CONF={dir}/storage.conf"),
            format!("CONTAINERS_REGISTRIES_CONF={dir}/registries.conf"),
            format!("REGISTRY_AUTH_FILE={dir}/auth.json"),
            format!("TMPDIR={dir}/tmp"),
        ];
        let mut all: Vec<&str> = env.iter().map(String::as_str).collect();
        all.push("podman");
        all.extend_from_slice(args);
        process::cleanup("env", &all)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.cleanup(&["rm", "--all", "--force", "--time", "0"]);
        let reset = self.cleanup(&["system", "reset", "--force"]);
        if !reset.status.success() {
            eprintln!(
                "cleanup: podman system reset failed: {}",
                String::from_utf8_lossy(&reset.stderr).trim()
            );
        }
        berth_e2e::process::kill_processes_naming(&self.dir);
        berth_e2e::process::unmount_under(&self.dir);
    }
}
