//! The OCI runtime bundle's `config.json`: the process from the image and the request, and
//! berth's security defaults (a docker-like capability set, no new privileges, masked and
//! read-only kernel paths, rlimits within the host's hard limits).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Capabilities a container's processes keep (docker's default set); everything else root
/// could do is dropped.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The file-descriptor limit containers get, lowered to the host's hard limit when that is
/// smaller (root here may lack CAP_SYS_RESOURCE to go above it).
pub const NOFILE: u64 = 1_048_576;

/// CPU quota period, in microseconds.
const CPU_PERIOD: u64 = 100_000;

/// Processes and threads a container may have when its request sets no `pids`: far more than
/// a service needs (a JVM with a thousand threads fits four times over), far fewer than the
/// host's pid space (`pid_max`, 32768 on many hosts), so a fork bomb stops inside its cgroup.
pub const DEFAULT_PIDS: i64 = 4096;
/// The smallest `pids` limit: one process (0 would read as "no limit" to some tools).
pub const MIN_PIDS: i64 = 1;
/// The largest `pids` limit: the kernel's largest possible `pid_max` on 64-bit hosts.
pub const MAX_PIDS: i64 = 4_194_304;
/// The smallest memory limit. Below what the OCI runtime itself uses while it sets the
/// container up (runc: about 2.3 MiB here) the start fails late, inside the runtime; 6 MiB,
/// docker's minimum too, leaves room.
pub const MIN_MEMORY: u64 = 6 << 20;
/// The smallest CPU limit: a quota of 1 ms per 100 ms period, the kernel's minimum quota.
pub const MIN_CPUS: f64 = 0.01;

/// A limit no container can run under.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum LimitError {
    /// Memory below [`MIN_MEMORY`].
    #[error("a memory limit of {0} bytes is too small: give at least 6MiB (like 64Mi or 1Gi), or no limit")]
    Memory(u64),
    /// CPUs below [`MIN_CPUS`], or not a number.
    #[error("{0} CPUs is not a CPU limit: give a number of CPUs of at least 0.01 (1% of one CPU), like 0.5 or 2, or no limit")]
    Cpus(f64),
    /// Pids outside [`MIN_PIDS`]`..=`[`MAX_PIDS`].
    #[error("{0} is not a process limit: give a count from 1 to 4194304 (without one a container gets 4096)")]
    Pids(i64),
}

/// Resource limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit in bytes; the kernel OOM-kills the container above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// CPUs, e.g. 0.5 for half of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Most processes (and threads) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

impl Resources {
    /// Refuses limits no container can run under (a zero, a negative, too small to start),
    /// saying what is allowed, before anything is set up.
    pub fn check(&self) -> Result<(), LimitError> {
        if let Some(memory) = self.memory.filter(|m| *m < MIN_MEMORY) {
            return Err(LimitError::Memory(memory));
        }
        if let Some(cpus) = self.cpus.filter(|c| !(c.is_finite() && *c >= MIN_CPUS)) {
            return Err(LimitError::Cpus(cpus));
        }
        if let Some(pids) = self.pids.filter(|p| !(MIN_PIDS..=MAX_PIDS).contains(p)) {
            return Err(LimitError::Pids(pids));
        }
        Ok(())
    }

    /// These limits with the node's defaults for what they leave unset: [`DEFAULT_PIDS`]
    /// processes; memory and CPU stay unlimited unless asked for.
    pub fn with_defaults(self) -> Resources {
        Resources {
            pids: self.pids.or(Some(DEFAULT_PIDS)),
            ..self
        }
    }
}

/// The user the process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// A host path bound into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// On the host.
    pub source: PathBuf,
    /// In the container.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A tmpfs mounted in the container (memory-backed scratch space, gone with the container).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tmpfs {
    /// In the container.
    pub destination: String,
    /// Its size limit in bytes; the kernel's default (half the RAM) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Everything `config.json` is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleSpec {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// Who runs it.
    pub user: User,
    /// The container's hostname.
    pub hostname: String,
    /// The root filesystem (the overlay mount).
    pub rootfs: PathBuf,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    /// Extra bind mounts (`/etc/hosts`, volumes, ...).
    pub binds: Vec<Bind>,
    /// tmpfs mounts.
    pub tmpfs: Vec<Tmpfs>,
    /// A network namespace to join; `None` gives the container a new empty one.
    pub netns: Option<PathBuf>,
    /// The container's cgroup, e.g. `/berth/<id>`.
    pub cgroups_path: String,
    /// Limits.
    pub resources: Resources,
    /// The host's hard `RLIMIT_NOFILE`, if known.
    pub host_nofile_hard: Option<u64>,
}

/// The container's cgroup (under the v1 controllers' or the v2 root).
pub fn cgroup_path(id: &str) -> String {
    format!("/berth/{id}")
}

/// The bundle's `config.json`.
pub fn config_json(spec: &BundleSpec) -> Value {
    let caps: Vec<&str> = DEFAULT_CAPABILITIES.to_vec();
    let nofile = spec
        .host_nofile_hard
        .map_or(NOFILE, |hard| NOFILE.min(hard));
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for bind in &spec.binds {
        let mut options = vec!["rbind", "rprivate", "nosuid", "nodev"];
        if bind.read_only {
            options.push("ro");
        }
        mounts.push(json!({
            "destination": bind.destination,
            "type": "bind",
            "source": bind.source,
            "options": options,
        }));
    }
    for tmpfs in &spec.tmpfs {
        let mut options = vec![
            "nosuid".to_owned(),
            "nodev".to_owned(),
            "mode=1777".to_owned(),
        ];
        if let Some(size) = tmpfs.size {
            options.push(format!("size={size}"));
        }
        mounts.push(json!({
            "destination": tmpfs.destination,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": options,
        }));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    namespaces.push(match &spec.netns {
        Some(path) => json!({"type": "network", "path": path}),
        None => json!({"type": "network"}),
    });
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(memory) = spec.resources.memory {
        // No swap beyond the limit: memory+swap is capped at the same value.
        resources["memory"] = json!({"limit": memory, "swap": memory});
    }
    if let Some(cpus) = spec.resources.cpus {
        // `Resources::check` keeps this at 1000 µs (the kernel's minimum quota) or more.
        let quota = (cpus * CPU_PERIOD as f64).round() as i64;
        resources["cpu"] = json!({"quota": quota, "period": CPU_PERIOD});
    }
    if let Some(pids) = spec.resources.pids {
        resources["pids"] = json!({"limit": pids});
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {
                "uid": spec.user.uid,
                "gid": spec.user.gid,
                "additionalGids": spec.user.additional_gids,
            },
            "args": spec.args,
            "env": spec.env,
            "cwd": spec.cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": true,
        },
        "root": {"path": spec.rootfs, "readonly": spec.read_only},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": spec.cgroups_path,
            "resources": resources,
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    })
}

#[cfg(test)]
mod tests;
