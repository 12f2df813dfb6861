//! The OCI runtime binary behind a narrow trait: start a bundle detached, signal, delete,
//! query, exec. runc and crun share the command line; crun on a hybrid cgroup host runs in a
//! private mount namespace without the cgroup2 mount (see [`crate::host`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::{Deserialize, Serialize};

use crate::host::{self, RuntimeKind};

/// Why the runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The binary could not be started.
    #[error("cannot run {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The runtime ran and reported an error.
    #[error("{runtime} {verb} failed: {message}")]
    Failed {
        /// runc or crun.
        runtime: &'static str,
        /// The subcommand.
        verb: &'static str,
        /// What it said.
        message: String,
    },
    /// No OCI runtime can run containers here.
    #[error("no usable OCI runtime: {0}")]
    Unavailable(String),
}

/// What the runtime says about a container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RuntimeState {
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The init process, 0 once stopped.
    #[serde(default)]
    pub pid: i32,
}

/// An OCI runtime.
pub trait OciRuntime: Send + Sync {
    /// runc or crun.
    fn kind(&self) -> RuntimeKind;
    /// Creates and starts the container `id` from `bundle` without waiting for it; its stdio
    /// is `stdout`/`stderr` (stdin is /dev/null). The init pid is written to `pid_file`.
    fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<(), DriverError>;
    /// Sends `signal` (a name like `TERM` or a number) to the container's init.
    fn kill(&self, id: &str, signal: &str) -> Result<(), DriverError>;
    /// Freezes every process of the container (the cgroup freezer): it keeps its memory and
    /// uses no CPU.
    fn pause(&self, id: &str) -> Result<(), DriverError>;
    /// Thaws a paused container.
    fn resume(&self, id: &str) -> Result<(), DriverError>;
    /// Deletes the container (also when it still runs: `--force`). Deleting an unknown
    /// container is not an error.
    fn delete(&self, id: &str) -> Result<(), DriverError>;
    /// The container's state, `None` if the runtime does not know it.
    fn state(&self, id: &str) -> Result<Option<RuntimeState>, DriverError>;
    /// A command that runs `args` inside the container with the caller's stdio.
    fn exec_command(&self, id: &str, env: &[String], cwd: &str, args: &[String]) -> Command;
}

/// How to run a runtime binary: serialised into each container's record so that a container
/// is always driven by the runtime that created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// runc or crun.
    pub kind: RuntimeKindName,
    /// The binary.
    pub binary: PathBuf,
    /// The runtime's state directory (`--root`), berth's own.
    pub state_root: PathBuf,
    /// Run it in a private mount namespace without the cgroup2 mount (crun on hybrid hosts).
    pub private_cgroup_namespace: bool,
    /// The command that does that and then execs the runtime with its arguments
    /// (`berth internal-cgroup-ns`); empty: `unshare` and `sh` do it.
    #[serde(default)]
    pub namespace_helper: Vec<PathBuf>,
}

/// [`RuntimeKind`] as it appears in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKindName {
    /// runc.
    Runc,
    /// crun.
    Crun,
}

impl From<RuntimeKind> for RuntimeKindName {
    fn from(kind: RuntimeKind) -> Self {
        match kind {
            RuntimeKind::Runc => RuntimeKindName::Runc,
            RuntimeKind::Crun => RuntimeKindName::Crun,
        }
    }
}

impl From<RuntimeKindName> for RuntimeKind {
    fn from(kind: RuntimeKindName) -> Self {
        match kind {
            RuntimeKindName::Runc => RuntimeKind::Runc,
            RuntimeKindName::Crun => RuntimeKind::Crun,
        }
    }
}

impl RuntimeConfig {
    /// Detects the host and chooses the runtime (`preferred` if given), with state under
    /// `state_dir/<name>`.
    pub fn detect(
        preferred: Option<RuntimeKind>,
        state_dir: &Path,
        namespace_helper: &[PathBuf],
    ) -> Result<RuntimeConfig, DriverError> {
        let search = std::env::var("PATH").unwrap_or_default();
        let search = format!("{search}:/usr/sbin:/usr/bin:/sbin:/bin");
        let layout = host::CgroupLayout::detect(Path::new("/sys/fs/cgroup"));
        let selection = host::choose(
            &layout,
            host::RuntimeBinary::locate(RuntimeKind::Runc, &search),
            host::RuntimeBinary::locate(RuntimeKind::Crun, &search),
            preferred,
        );
        let binary = selection
            .runtime
            .ok_or_else(|| DriverError::Unavailable(selection.reason.clone()))?;
        Ok(RuntimeConfig {
            kind: binary.kind.into(),
            state_root: state_dir.join(binary.kind.name()),
            binary: binary.path,
            private_cgroup_namespace: selection.private_cgroup_namespace,
            namespace_helper: if selection.private_cgroup_namespace {
                namespace_helper.to_vec()
            } else {
                Vec::new()
            },
        })
    }

    /// The driver.
    pub fn driver(&self) -> CliRuntime {
        CliRuntime {
            config: self.clone(),
        }
    }
}

/// runc or crun, driven through their (shared) command line.
#[derive(Debug, Clone)]
pub struct CliRuntime {
    config: RuntimeConfig,
}

impl CliRuntime {
    fn name(&self) -> &'static str {
        RuntimeKind::from(self.config.kind).name()
    }

    fn command(&self) -> Command {
        let mut command = match self.config.namespace_helper.split_first() {
            _ if !self.config.private_cgroup_namespace => Command::new(&self.config.binary),
            Some((helper, args)) => {
                let mut c = Command::new(helper);
                c.args(args).arg(&self.config.binary);
                c
            }
            None => {
                // crun refuses hybrid cgroups; in a private mount namespace without the
                // cgroup2 mount it sees (and correctly drives) a v1 host.
                let mut c = Command::new("unshare");
                c.args([
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    "umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$0\" \"$@\"",
                ])
                .arg(&self.config.binary);
                c
            }
        };
        command.arg("--root").arg(&self.config.state_root);
        command
    }

    fn output(&self, verb: &'static str, args: &[&str]) -> Result<Output, DriverError> {
        self.command()
            .arg(verb)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| DriverError::Spawn {
                binary: self.config.binary.display().to_string(),
                source,
            })
    }

    fn failed(&self, verb: &'static str, output: &Output) -> DriverError {
        DriverError::Failed {
            runtime: self.name(),
            verb,
            message: last_error(&String::from_utf8_lossy(&output.stderr)),
        }
    }
}

/// The useful part of a runtime's stderr: the last non-empty line, without log decoration.
fn last_error(stderr: &str) -> String {
    let line = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no error message");
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
        if let Some(msg) = value.get("msg").and_then(|m| m.as_str()) {
            return msg.to_owned();
        }
    }
    line.to_owned()
}

fn is_not_found(message: &str) -> bool {
    message.contains("does not exist") || message.contains("not found")
}

impl OciRuntime for CliRuntime {
    fn kind(&self) -> RuntimeKind {
        self.config.kind.into()
    }

    fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<(), DriverError> {
        std::fs::create_dir_all(&self.config.state_root).map_err(|source| DriverError::Spawn {
            binary: self.config.binary.display().to_string(),
            source,
        })?;
        // The runtime's own messages go to a file: its stdio becomes the container's.
        let log = bundle.join("runtime.log");
        let _ = std::fs::remove_file(&log);
        let mut command = self.command();
        command
            .arg("--log")
            .arg(&log)
            .arg("--log-format")
            .arg("json")
            .arg("run")
            .arg("--detach")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let status = command.status().map_err(|source| DriverError::Spawn {
            binary: self.config.binary.display().to_string(),
            source,
        })?;
        if status.success() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let message = text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("level").and_then(|l| l.as_str()) == Some("error"))
            .find_map(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| last_error(&text));
        Err(DriverError::Failed {
            runtime: self.name(),
            verb: "run",
            message,
        })
    }

    fn kill(&self, id: &str, signal: &str) -> Result<(), DriverError> {
        let output = self.output("kill", &[id, signal])?;
        if output.status.success() {
            Ok(())
        } else {
            Err(self.failed("kill", &output))
        }
    }

    fn pause(&self, id: &str) -> Result<(), DriverError> {
        let output = self.output("pause", &[id])?;
        if output.status.success() {
            Ok(())
        } else {
            Err(self.failed("pause", &output))
        }
    }

    fn resume(&self, id: &str) -> Result<(), DriverError> {
        let output = self.output("resume", &[id])?;
        if output.status.success() {
            Ok(())
        } else {
            Err(self.failed("resume", &output))
        }
    }

    fn delete(&self, id: &str) -> Result<(), DriverError> {
        let output = self.output("delete", &["--force", id])?;
        if output.status.success() {
            return Ok(());
        }
        match self.failed("delete", &output) {
            DriverError::Failed { ref message, .. } if is_not_found(message) => Ok(()),
            error => Err(error),
        }
    }

    fn state(&self, id: &str) -> Result<Option<RuntimeState>, DriverError> {
        let output = self.output("state", &[id])?;
        if !output.status.success() {
            return match self.failed("state", &output) {
                DriverError::Failed { ref message, .. } if is_not_found(message) => Ok(None),
                error => Err(error),
            };
        }
        serde_json::from_slice(&output.stdout)
            .map(Some)
            .map_err(|e| DriverError::Failed {
                runtime: self.name(),
                verb: "state",
                message: format!("unreadable state: {e}"),
            })
    }

    fn exec_command(&self, id: &str, env: &[String], cwd: &str, args: &[String]) -> Command {
        let mut command = self.command();
        command.arg("exec").arg("--cwd").arg(cwd);
        for var in env {
            command.arg("--env").arg(var);
        }
        command.arg(id).args(args);
        command
    }
}

/// Enters a private mount namespace without the cgroup2 mount, where crun sees a plain v1
/// host on a hybrid one, and runs `program` there (replacing this process). For
/// `berth internal-cgroup-ns`: one exec instead of `unshare` + `sh` + the runtime. Must run
/// while the process has one thread (a new mount namespace is per process).
pub fn exec_in_private_cgroup_namespace(
    program: &Path,
    args: &[std::ffi::OsString],
) -> std::io::Error {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use std::os::unix::process::CommandExt;
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS) {
        return std::io::Error::other(format!("entering a private mount namespace: {e}"));
    }
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        return std::io::Error::other(format!("making the mount namespace private: {e}"));
    }
    // Not mounted (a v1-only host) is fine.
    let _ = umount2("/sys/fs/cgroup/unified", MntFlags::MNT_DETACH);
    Command::new(program).args(args).exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_errors_are_reduced_to_their_message() {
        assert_eq!(
            last_error("{\"level\":\"error\",\"msg\":\"container \\\"x\\\" does not exist\",\"time\":\"t\"}\n"),
            "container \"x\" does not exist"
        );
        assert_eq!(last_error("plain\nlast line\n\n"), "last line");
        assert_eq!(last_error(""), "no error message");
        assert!(is_not_found("container \"x\" does not exist"));
    }
}
