//! podman, buildah and skopeo with a private configuration and storage per test.
//!
//! Why each setting (see shared/MACHINE-PROBE.md): root here lacks CAP_SYS_RESOURCE and the
//! hard nofile limit is 20000, so podman's default ulimits (nofile 1048576) make every
//! container fail; crun refuses this host's hybrid cgroups, runc works; there is no systemd.
//! The storage driver is written into storage.conf before podman first runs: a database
//! created with another driver makes conmon's cleanup command fail and every attached
//! `podman run` hang for 20 s.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process;

/// A private podman/buildah/skopeo environment: containers.conf, storage.conf,
/// registries.conf, auth file and storage all live in one temporary directory. On drop,
/// `podman system reset` removes containers and images, any process or mount still using the
/// directory is killed or unmounted, and the directory is deleted.
pub struct Podman {
    dir: TempDir,
}

/// Variables that would point the tools at another configuration, a remote service or
/// another storage.
const FOREIGN_VARIABLES: &[&str] = &[
    "CONTAINER_HOST",
    "CONTAINER_CONNECTION",
    "CONTAINER_SSHKEY",
    "STORAGE_DRIVER",
    "STORAGE_OPTS",
    "BUILDAH_ISOLATION",
    "BUILDAH_RUNTIME",
    "XDG_CONFIG_HOME",
    "DOCKER_CONFIG",
];

impl Podman {
    /// Writes the configuration. Panics if podman, buildah or skopeo is not installed.
    pub fn new() -> Podman {
        for tool in ["podman", "buildah", "skopeo", "conmon"] {
            assert!(
                process::on_path(tool),
                "`{tool}` is not installed: run scripts/install-deps.sh"
            );
        }
        // runc lives in /usr/sbin, which a CI job's PATH may lack; podman looks there anyway.
        assert!(
            process::on_path("runc") || Path::new("/usr/sbin/runc").exists(),
            "`runc` is not installed: run scripts/install-deps.sh"
        );
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-podman.")
            .tempdir()
            .expect("a temporary directory");
        let root = dir.path();
        write_config(root).expect("writing the podman configuration");
        Podman { dir }
    }

    /// The directory holding the configuration and storage.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The credentials file that `podman login` writes and every tool here reads.
    pub fn auth_file(&self) -> PathBuf {
        self.dir().join("auth.json")
    }

    /// A `podman` command in this environment.
    pub fn podman(&self) -> Command {
        self.command("podman")
    }

    /// A `buildah` command in this environment.
    pub fn buildah(&self) -> Command {
        self.command("buildah")
    }

    /// A `skopeo` command in this environment.
    pub fn skopeo(&self) -> Command {
        self.command("skopeo")
    }

    /// Runs `podman ARGS` and returns its trimmed stdout; panics unless it succeeds.
    #[track_caller]
    pub fn run_podman(&self, args: &[&str]) -> String {
        process::stdout_of(self.podman().args(args))
    }

    /// Runs `skopeo ARGS` and returns its trimmed stdout; panics unless it succeeds.
    #[track_caller]
    pub fn run_skopeo(&self, args: &[&str]) -> String {
        process::stdout_of(self.skopeo().args(args))
    }

    fn command(&self, program: &str) -> Command {
        let root = self.dir();
        let mut cmd = Command::new(program);
        for name in FOREIGN_VARIABLES {
            cmd.env_remove(name);
        }
        cmd.env("CONTAINERS_CONF", root.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", root.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", root.join("registries.conf"))
            .env("REGISTRY_AUTH_FILE", root.join("auth.json"))
            .env("TMPDIR", root.join("tmp"));
        cmd
    }
}

impl Default for Podman {
    fn default() -> Podman {
        Podman::new()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed test unwinds. Containers a test
        // left running are killed first: `system reset` would give each 10 s to stop.
        let _ = process::try_output(
            self.podman()
                .args(["rm", "--all", "--force", "--time", "0"]),
            None,
            Duration::from_secs(60),
        );
        match process::try_output(
            self.podman().args(["system", "reset", "--force"]),
            None,
            Duration::from_secs(60),
        ) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cleanup: podman system reset failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(problem) => eprintln!("cleanup: {problem}"),
        }
        process::kill_processes_naming(self.dir());
        process::unmount_under(self.dir());
    }
}

/// Writes a podman/buildah/skopeo configuration that works on this machine kind into `root`
/// (see shared/MACHINE-PROBE.md): nofile and nproc ulimits within the hard limits (root lacks
/// CAP_SYS_RESOURCE), runc (crun refuses hybrid cgroups), cgroupfs, file events (no
/// systemd), overlay storage under `root` set before podman first runs (or conmon's cleanup
/// fails and podman waits 20 s), plain HTTP for registries on 127.0.0.1, an empty auth file.
/// Point the tools at it with `CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`,
/// `CONTAINERS_REGISTRIES_CONF` and `REGISTRY_AUTH_FILE`.
pub fn write_config(root: &Path) -> std::io::Result<()> {
    for sub in ["tmp", "networks"] {
        fs::create_dir_all(root.join(sub))?;
    }
    let containers_conf = format!(
        r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[network]
network_config_dir = "{root}/networks"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{root}/events.log"
tmp_dir = "{root}/libpod-tmp"
image_copy_tmp_dir = "{root}/tmp"
"#,
        root = root.display()
    );
    let storage_conf = format!(
        r#"[storage]
driver = "overlay"
graphroot = "{root}/graphroot"
runroot = "{root}/runroot"
"#,
        root = root.display()
    );
    // Every registry of the tests and benchmarks listens on 127.0.0.1: plain HTTP is fine.
    let registries_conf = r#"unqualified-search-registries = []
[[registry]]
location = "127.0.0.1"
insecure = true
"#;
    fs::write(root.join("containers.conf"), containers_conf)?;
    fs::write(root.join("storage.conf"), storage_conf)?;
    fs::write(root.join("registries.conf"), registries_conf)?;
    // podman refuses to run when REGISTRY_AUTH_FILE names a file that does not exist.
    fs::write(root.join("auth.json"), "{\"auths\":{}}\n")
}
