//! Containers as berth records them: the request, the record written at creation
//! (`container.json`), and the state the monitor keeps current (`state.json`), plus the pure
//! decisions over them (the process to run, when to restart).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::image::ImageConfig;
use crate::logs::LogLimits;
use crate::network::{Attachment, PortMapping};
use crate::oci_runtime::RuntimeConfig;
use crate::secret_files::SecretFiles;
use crate::spec::{Bind, Resources, Tmpfs, User};

/// The record's file in a container's directory.
pub const RECORD_FILE: &str = "container.json";
/// The state's file in a container's directory.
pub const STATE_FILE: &str = "state.json";
/// Present while a stop was asked for: the monitor does not restart the container.
pub const STOP_FILE: &str = "stop-requested";
/// The marker of a paused container (it holds the time it was paused, RFC 3339).
pub const PAUSED_FILE: &str = "paused";

/// When the monitor restarts a container that exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "policy")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// When it exits with a non-zero code, at most `max_retries` times if given.
    OnFailure {
        /// Restarts allowed.
        max_retries: Option<u32>,
    },
    /// Whatever the exit code, until stopped.
    Always,
}

impl FromStr for RestartPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "no" => Ok(RestartPolicy::No),
            None if s == "always" => Ok(RestartPolicy::Always),
            None if s == "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: None }),
            Some(("on-failure", n)) => n
                .parse()
                .map(|n| RestartPolicy::OnFailure {
                    max_retries: Some(n),
                })
                .map_err(|_| format!("invalid retry count {n:?} in restart policy {s:?}")),
            _ => Err(format!(
                "unknown restart policy {s:?}: use no, on-failure[:MAX] or always"
            )),
        }
    }
}

/// First delay before restarting a container that keeps failing; it doubles per failure.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest delay between restarts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A container that ran this long before exiting starts over at [`BACKOFF_START`].
pub const BACKOFF_RESET: Duration = Duration::from_secs(10);

/// How a run of the container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Exit {
    /// Exit code; `128 + signal` when killed by a signal, as shells report it.
    pub code: i32,
    /// The signal that killed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Killed by the kernel for exceeding its memory limit.
    #[serde(default)]
    pub oom_killed: bool,
}

/// Whether and after how long to restart: `None` means the container stays exited.
/// `failures` counts the consecutive short runs before this one.
pub fn restart_delay(
    policy: RestartPolicy,
    exit: Exit,
    restarts: u32,
    failures: u32,
    ran_for: Duration,
    stop_requested: bool,
) -> Option<Duration> {
    if stop_requested {
        return None;
    }
    let restart = match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure { max_retries } => {
            exit.code != 0 && max_retries.is_none_or(|max| restarts < max)
        }
    };
    if !restart {
        return None;
    }
    if ran_for >= BACKOFF_RESET {
        return Some(BACKOFF_START);
    }
    let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
    Some(BACKOFF_START.saturating_mul(factor).min(BACKOFF_MAX))
}

/// The network a container is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own namespace on berth's bridge, with an address.
    #[default]
    Bridge,
    /// Its own namespace with no interfaces but loopback.
    None,
}

impl FromStr for NetworkMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bridge" => Ok(NetworkMode::Bridge),
            "none" => Ok(NetworkMode::None),
            _ => Err(format!("unknown network {s:?}: use bridge or none")),
        }
    }
}

/// What the caller asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRequest {
    /// A unique name; generated when absent.
    pub name: Option<String>,
    /// The image reference or id.
    pub image: String,
    /// Replaces the image's `Cmd`.
    #[serde(default)]
    pub command: Vec<String>,
    /// Replaces the image's `Entrypoint` (an empty list clears it).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=value`, added to (and overriding) the image's.
    #[serde(default)]
    pub env: Vec<String>,
    /// Replaces the image's working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Replaces the image's user: `name`, `uid`, `name:group` or `uid:gid`.
    #[serde(default)]
    pub user: Option<String>,
    /// The hostname; the name by default.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Limits.
    #[serde(default)]
    pub resources: Resources,
    /// Restarts.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Host ports forwarded to the container.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Network.
    #[serde(default)]
    pub network: NetworkMode,
    /// Host paths mounted in.
    #[serde(default)]
    pub volumes: Vec<Bind>,
    /// tmpfs mounts.
    #[serde(default)]
    pub tmpfs: Vec<Tmpfs>,
    /// Root filesystem read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Time between the stop signal and SIGKILL, in seconds.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: u64,
    /// How much log to keep.
    #[serde(default)]
    pub log: LogLimits,
    /// `KEY=value` entries holding secrets, added after (and overriding) `env`. Never
    /// serialized: they are written only into the bundle's `config.json` (mode 0600), so the
    /// container record, `berth inspect` and the state file never hold them.
    #[serde(skip)]
    pub secret_env: SecretEnv,
    /// Secrets delivered as read-only files on a tmpfs of the container's own (see
    /// [`crate::secret_files`]). Never serialized, like `secret_env`.
    #[serde(skip)]
    pub secret_files: SecretFiles,
}

impl ContainerRequest {
    /// Refuses what no node could run, saying what is allowed: limits a container cannot
    /// start under, ports published with no network to reach them, a host port published
    /// twice. Checked before anything is pulled or set up.
    pub fn check(&self) -> Result<(), String> {
        self.resources.check().map_err(|e| e.to_string())?;
        if self.network == NetworkMode::None && !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(ToString::to_string).collect();
            return Err(format!(
                "cannot publish {} with network none: such a container has only loopback, so nothing could reach it; use network bridge or publish nothing",
                ports.join(", ")
            ));
        }
        for (i, port) in self.ports.iter().enumerate() {
            if let Some(earlier) = self.ports[..i].iter().find(|p| p.clashes_with(port)) {
                return Err(format!(
                    "host port {} is published twice ({earlier} and {port}): a host port forwards to one container port",
                    port.host_side()
                ));
            }
        }
        Ok(())
    }
}

/// Environment entries holding secrets: `Debug` shows only the names.
#[derive(Clone, Default, PartialEq)]
pub struct SecretEnv(pub Vec<String>);

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = self
            .0
            .iter()
            .map(|var| var.split_once('=').map_or("?", |(k, _)| k));
        f.debug_list().entries(names).finish()
    }
}

fn default_stop_timeout() -> u64 {
    10
}

/// The process a container runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Command and arguments.
    pub args: Vec<String>,
    /// `KEY=value`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// The user as asked (`name`, `uid`, `uid:gid`, ...), resolved against the image.
    pub user: String,
    /// The signal that asks it to stop.
    pub stop_signal: String,
    /// The ports the image says it listens on, as `80/tcp`.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process from the image's config and the request; an error when there is nothing to run.
pub fn process_for(image: &ImageConfig, request: &ContainerRequest) -> Result<Process, String> {
    let entrypoint = request
        .entrypoint
        .clone()
        .unwrap_or_else(|| image.entrypoint.clone());
    // As with docker: a new entrypoint drops the image's Cmd; a command replaces it.
    let cmd = if !request.command.is_empty() {
        request.command.clone()
    } else if request.entrypoint.is_some() {
        Vec::new()
    } else {
        image.cmd.clone()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(
            "no command: the image has no entrypoint or cmd; give one after the image".into(),
        );
    }
    let mut env: Vec<String> = Vec::new();
    for var in image.env.iter().chain(&request.env) {
        let Some((key, _)) = var.split_once('=') else {
            return Err(format!(
                "invalid environment variable {var:?}: use KEY=value"
            ));
        };
        env.retain(|v| v.split_once('=').map(|(k, _)| k) != Some(key));
        env.push(var.clone());
    }
    if !env.iter().any(|v| v.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    let cwd = request
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    if !cwd.starts_with('/') {
        return Err(format!("working directory {cwd:?} is not absolute"));
    }
    Ok(Process {
        args,
        env,
        cwd,
        user: request
            .user
            .clone()
            .or_else(|| image.user.clone())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "0".to_owned()),
        stop_signal: image
            .stop_signal
            .clone()
            .map(|s| s.trim_start_matches("SIG").to_owned())
            .unwrap_or_else(|| "TERM".to_owned()),
        exposed_ports: image
            .exposed_ports
            .iter()
            .map(|(port, protocol)| format!("{port}/{protocol}"))
            .collect(),
    })
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`) with the image's `/etc/passwd`
/// and `/etc/group` text (either may be empty).
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<User, String> {
    let (who, grp) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entries = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(':').map(str::to_owned).collect())
            .collect()
    };
    let passwd = entries(passwd);
    let groups = entries(group);
    let (uid, primary, name) = match who.parse::<u32>() {
        Ok(uid) => {
            let entry = passwd
                .iter()
                .find(|e| e.get(2).map(String::as_str) == Some(who));
            (
                uid,
                entry.and_then(|e| e.get(3)?.parse().ok()),
                entry.and_then(|e| e.first().cloned()),
            )
        }
        Err(_) => {
            let entry = passwd
                .iter()
                .find(|e| e.first().map(String::as_str) == Some(who))
                .ok_or_else(|| format!("user {who:?} is not in the image's /etc/passwd"))?;
            let uid = entry
                .get(2)
                .and_then(|u| u.parse().ok())
                .ok_or_else(|| format!("user {who:?} has no valid uid in /etc/passwd"))?;
            (
                uid,
                entry.get(3).and_then(|g| g.parse().ok()),
                Some(who.to_owned()),
            )
        }
    };
    let gid = match grp {
        None => primary.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.first().map(String::as_str) == Some(g))
                .and_then(|e| e.get(2)?.parse().ok())
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        },
    };
    let additional_gids = match (&name, grp) {
        (Some(name), None) => groups
            .iter()
            .filter(|e| {
                e.get(3)
                    .is_some_and(|members| members.split(',').any(|m| m == name))
            })
            .filter_map(|e| e.get(2)?.parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        _ => Vec::new(),
    };
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

/// What berth writes when it creates a container; it does not change afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex characters.
    pub id: String,
    /// Unique on this node.
    pub name: String,
    /// The image as asked for.
    pub image: String,
    /// The image's manifest digest.
    pub image_id: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The request.
    pub request: ContainerRequest,
    /// The process it runs.
    pub process: Process,
    /// The runtime that drives it.
    pub runtime: RuntimeConfig,
    /// Its network namespace, when on the bridge.
    pub netns: Option<PathBuf>,
    /// Its address on the bridge.
    pub network: Option<Attachment>,
}

/// The lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Set up, not started yet.
    #[default]
    Created,
    /// Its process runs.
    Running,
    /// It exited and the monitor waits to start it again.
    Restarting,
    /// It exited and stays so.
    Exited,
    /// Its processes are frozen (`berth` paused it with the cgroup freezer): it holds its
    /// memory and uses no CPU. Never written by the monitor: a container is paused while
    /// the `paused` marker of its directory exists.
    Paused,
}

/// What the monitor keeps current.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    /// Lifecycle.
    pub status: Status,
    /// The init process while running.
    #[serde(default)]
    pub pid: Option<i32>,
    /// The monitor process.
    #[serde(default)]
    pub monitor_pid: Option<u32>,
    /// When the current (or last) run started, RFC 3339.
    #[serde(default)]
    pub started_at: Option<String>,
    /// When the last run ended, RFC 3339.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// How the last run ended.
    #[serde(default)]
    pub exit: Option<Exit>,
    /// Restarts so far.
    #[serde(default)]
    pub restart_count: u32,
    /// Why it could not start or could not be watched.
    #[serde(default)]
    pub error: Option<String>,
    /// Since when it has been paused, RFC 3339 (from the `paused` marker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<String>,
}

/// Writes `value` as JSON to `path` atomically (temporary file, rename) and durably (fsync
/// before the rename): for what must survive a power loss, like a container's record, which
/// says what to clean up. Like every state file of the node, it is readable by root only
/// (mode 0600 from its creation).
pub fn write_json(path: &Path, value: &impl Serialize) -> io::Result<()> {
    write_json_with(path, value, true)
}

/// Like [`write_json`], atomic but without the fsync: for files rewritten often or rebuilt
/// from the record (`state.json`, the bundle's `config.json`, which holds the container's
/// secret environment). A process crash cannot tear them; a power loss can only take back the
/// latest version.
pub fn write_json_fast(path: &Path, value: &impl Serialize) -> io::Result<()> {
    write_json_with(path, value, false)
}

fn write_json_with(path: &Path, value: &impl Serialize, durable: bool) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    {
        use std::io::Write;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // A temporary file left behind keeps its old mode when opened again.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(&data)?;
        if durable {
            file.sync_all()?;
        }
    }
    fs::rename(&tmp, path)
}

/// Reads JSON written by [`write_json`] or [`write_json_fast`].
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<T> {
    let data = fs::read(path)?;
    serde_json::from_slice(&data).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests;
