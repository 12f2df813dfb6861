//! Bare runc on a bundle equivalent to one berth generated: berth's own `config.json`, with
//! the root filesystem copied to a plain directory (no overlay mount to make) and the files
//! berth binds in (`/etc/hosts`, ...) copied next to it. Each run gets its own container id
//! and cgroup. On drop every container is deleted and the cgroups removed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::Value;
use tokio::process::Command;

use super::process;

/// The prepared bundle and runc's private state.
pub struct RuncBundle {
    binary: PathBuf,
    dir: PathBuf,
    state: PathBuf,
    config: Value,
    /// Parent of every run's cgroup, under each controller's hierarchy.
    cgroup_parent: String,
    runs: usize,
}

impl RuncBundle {
    /// Builds the bundle in `dir` from the berth container in `container_dir`, which must be
    /// running (its root filesystem is mounted while it does).
    pub async fn prepare(container_dir: &Path, dir: PathBuf) -> anyhow::Result<RuncBundle> {
        let binary = ["/usr/sbin/runc", "/usr/bin/runc"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("runc is not installed (scripts/install-deps.sh installs it)")?;
        let rootfs = dir.join("rootfs");
        let files = dir.join("files");
        let state = dir.join("state");
        for d in [&rootfs, &files, &state] {
            std::fs::create_dir_all(d)?;
        }
        let berth_bundle = container_dir.join("bundle");
        let source = berth_bundle.join("rootfs");
        process::output(
            Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", source.display()))
                .arg(&rootfs),
            "copying berth's root filesystem",
        )
        .await?;
        let config = std::fs::read(berth_bundle.join("config.json"))
            .context("reading the config.json berth generated")?;
        let mut config: Value = serde_json::from_slice(&config)?;
        config["root"] = serde_json::json!({"path": rootfs, "readonly": false});
        let Some(mounts) = config["mounts"].as_array_mut() else {
            bail!("berth's config.json has no mounts");
        };
        for (i, mount) in mounts.iter_mut().enumerate() {
            let Some(source) = mount["source"].as_str().map(PathBuf::from) else {
                continue;
            };
            if source.starts_with(container_dir) {
                let copy = files.join(format!(
                    "{i}-{}",
                    source.file_name().unwrap_or_default().to_string_lossy()
                ));
                std::fs::copy(&source, &copy)
                    .with_context(|| format!("copying {}", source.display()))?;
                mount["source"] = Value::from(copy.to_string_lossy().into_owned());
            }
        }
        let serialized = config.to_string();
        if serialized.contains(&*container_dir.to_string_lossy()) {
            bail!("berth's config.json names its container dir in a place not rewritten here");
        }
        Ok(RuncBundle {
            binary,
            dir,
            state,
            config,
            cgroup_parent: format!("berth-bench-{}", std::process::id()),
            runs: 0,
        })
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--root").arg(&self.state);
        command
    }

    /// Times `runc run -d --bundle B ID` with a new id and cgroup (the config is written
    /// before the clock starts), then deletes the container.
    pub async fn start(&mut self) -> anyhow::Result<Duration> {
        self.runs += 1;
        let id = format!("bench-{}", self.runs);
        self.config["linux"]["cgroupsPath"] = Value::from(format!("/{}/{id}", self.cgroup_parent));
        std::fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec(&self.config)?,
        )?;
        let timed = process::timed(
            self.command()
                .args(["run", "-d", "--bundle"])
                .arg(&self.dir)
                .arg(&id),
            &self.dir,
            "runc run -d",
        )
        .await?;
        process::output(self.command().args(["delete", "-f", &id]), "runc delete -f").await?;
        Ok(timed.elapsed)
    }
}

impl Drop for RuncBundle {
    fn drop(&mut self) {
        let state = self.state.to_string_lossy();
        let runc = self.binary.to_string_lossy();
        let ids = process::cleanup(&runc, &["--root", &state, "list", "-q"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            process::cleanup(&runc, &["--root", &state, "delete", "-f", id]);
        }
        // runc removes each run's cgroup on delete, and leaves the parent in every hierarchy.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for hierarchy in hierarchies.flatten() {
                let _ = std::fs::remove_dir(hierarchy.path().join(&self.cgroup_parent));
            }
        }
    }
}
