//! The app spec: `berth.toml`, parsed, merged with an environment overlay and validated.
//!
//! Parsing walks the TOML document with its spans (`toml::de::DeTable`) instead of going
//! through serde, so that every error — an unknown key, a wrong type, a dependency cycle —
//! points at the line and column it is about and carries a hint. See `docs/berth-toml.md`.

mod check;
mod read;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use berth_oci::{Digest, RepositoryName, Tag};

/// A whole app: the parsed `berth.toml`, with the selected environment's overlay applied.
#[derive(Clone, Debug, PartialEq)]
pub struct AppSpec {
    /// The app's name (a DNS label).
    pub app: String,
    /// The environment whose overlay was applied, if any.
    pub env: Option<String>,
    /// The services, by name.
    pub services: BTreeMap<String, ServiceSpec>,
}

/// One service: a set of identical instances of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    /// The image to run; a tag is resolved to a digest when a release is made.
    pub image: ImageRef,
    /// Overrides the image's entrypoint and command.
    pub command: Option<Vec<String>>,
    /// Plain environment variables.
    pub env: BTreeMap<String, String>,
    /// Names of secrets exposed as environment variables.
    pub secrets: Vec<String>,
    /// Secrets delivered as files: name -> absolute path of the (read-only) file in the
    /// container. A secret may be both a variable and a file.
    pub secret_files: BTreeMap<String, String>,
    /// How many instances to run (default 1).
    pub replicas: u32,
    /// Resource limits.
    pub resources: Resources,
    /// Named container ports.
    pub ports: BTreeMap<String, u16>,
    /// The health check, if any.
    pub health: Option<HealthSpec>,
    /// Services that must be started or healthy before this one starts.
    pub depends_on: BTreeMap<String, DependencyCondition>,
    /// What to do when an instance exits.
    pub restart: RestartPolicy,
    /// How long an instance gets between SIGTERM and SIGKILL (default 10s).
    pub stop_grace: Duration,
    /// Mounts, by name.
    pub volumes: BTreeMap<String, VolumeSpec>,
    /// The HTTP route the proxy sends to this service, if any.
    pub route: Option<RouteSpec>,
    /// How a new release replaces the old one.
    pub deploy: DeploySpec,
    /// Tags the catalog shows for its instances (Consul's `ServiceTags`).
    pub tags: Vec<String>,
    /// Metadata the catalog shows for its instances (Consul's `ServiceMeta`).
    pub meta: BTreeMap<String, String>,
}

impl ServiceSpec {
    /// Every secret the service uses, as a variable or as a file.
    pub fn secret_names(&self) -> std::collections::BTreeSet<&str> {
        self.secrets
            .iter()
            .chain(self.secret_files.keys())
            .map(String::as_str)
            .collect()
    }

    /// Whether the service mounts a named volume that only one instance may use at a time.
    pub fn has_exclusive_volume(&self) -> bool {
        self.volumes
            .values()
            .any(|volume| matches!(volume, VolumeSpec::Named { shared: false, .. }))
    }
}

/// An image reference: `[registry/]repository[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host (and port), when the reference names one.
    pub registry: Option<String>,
    /// The repository inside the registry.
    pub repository: RepositoryName,
    /// The tag, if written.
    pub tag: Option<Tag>,
    /// The digest, if written; it wins over the tag.
    pub digest: Option<Digest>,
}

/// Resource limits; `None` means no limit, except for `pids` where it means the node's
/// default (4096, see berth-runtime's `DEFAULT_PIDS`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// Memory limit in bytes, at least [`MIN_MEMORY`].
    pub memory: Option<u64>,
    /// CPU limit in cores (0.5 is half a core), at least [`MIN_CPUS`].
    pub cpus: Option<f64>,
    /// Maximum number of processes, from [`MIN_PIDS`] to [`MAX_PIDS`].
    pub pids: Option<u32>,
}

/// The smallest `memory` a service may ask for: a container cannot even start in less. The
/// node runtime enforces the same bounds (its `Resources::check`).
pub const MIN_MEMORY: u64 = 6 << 20;
/// The smallest `cpus`: 1% of a core, the kernel's minimum quota.
pub const MIN_CPUS: f64 = 0.01;
/// The smallest `pids`: one process.
pub const MIN_PIDS: i64 = 1;
/// The largest `pids`: the largest `pid_max` a 64-bit kernel allows.
pub const MAX_PIDS: i64 = 4_194_304;

/// A port, by its name in `ports` or by number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    /// A name declared in the service's `ports`.
    Named(String),
    /// A container port number.
    Number(u16),
}

/// A health check and its timing.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthSpec {
    /// What is checked.
    pub check: HealthCheck,
    /// Time between checks (default 5s).
    pub interval: Duration,
    /// How long one check may take (default 2s).
    pub timeout: Duration,
    /// Consecutive passes before an instance is healthy (default 1).
    pub healthy_after: u32,
    /// Consecutive failures before a healthy instance is unhealthy (default 3).
    pub unhealthy_after: u32,
    /// Failures during this time after start do not count (default 0s).
    pub start_period: Duration,
}

/// The kind of health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheck {
    /// An HTTP GET that must answer 2xx or 3xx.
    Http {
        /// The port to connect to.
        port: PortRef,
        /// The request path.
        path: String,
    },
    /// A TCP connect.
    Tcp {
        /// The port to connect to.
        port: PortRef,
    },
    /// A command run inside the container that must exit 0.
    Exec(Vec<String>),
}

/// When a dependency counts as ready for its dependents to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DependencyCondition {
    /// At least one instance is running.
    Started,
    /// At least one instance is healthy.
    Healthy,
}

/// What happens when an instance exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always replaced.
    #[default]
    Always,
    /// Replaced unless it exited with code 0.
    OnFailure,
    /// Never replaced.
    No,
}

/// A mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeSpec {
    /// A named volume managed by berth; it outlives instances, deploys and rollbacks.
    Named {
        /// Where it is mounted in the container.
        path: String,
        /// Whether several instances may mount it at once.
        shared: bool,
        /// Mounted read-only.
        read_only: bool,
    },
    /// A directory of the node bind-mounted into the container.
    Bind {
        /// The directory on the node.
        host: String,
        /// Where it is mounted in the container.
        path: String,
        /// Mounted read-only.
        read_only: bool,
    },
    /// An in-memory filesystem, empty at every start.
    Tmpfs {
        /// Where it is mounted in the container.
        path: String,
        /// Its size limit in bytes.
        size: Option<u64>,
    },
}

/// Where the proxy routes requests to this service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// The `Host` to match.
    pub host: String,
    /// The path prefix to match (default `/`).
    pub path: String,
    /// The port requests go to; when `None`, the service declares exactly one port.
    pub port: Option<PortRef>,
    /// How the proxy picks an instance (default: the one with the fewest requests in
    /// flight).
    pub balance: Balance,
}

/// How the proxy spreads a route's requests over instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// The instance with the fewest requests in flight.
    #[default]
    LeastOutstanding,
    /// Each instance in turn.
    RoundRobin,
}

/// How a new release replaces the running one.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploySpec {
    /// The strategy and its parameters.
    pub strategy: Strategy,
    /// Error-rate and latency limits the proxy watches after a deploy (kept for the proxy).
    pub auto_rollback: Option<AutoRollback>,
    /// How long the instances a deploy replaces stay warm (frozen with the cgroup freezer:
    /// their memory kept, no CPU used), so that a rollback to them is a route switch
    /// (default 5m; `0s` stops them at once).
    pub keep_warm: Duration,
}

impl DeploySpec {
    /// The default `keep_warm`.
    pub const DEFAULT_KEEP_WARM: Duration = Duration::from_secs(300);
}

impl Default for DeploySpec {
    fn default() -> Self {
        DeploySpec {
            strategy: Strategy::Rolling(Rolling::default()),
            auto_rollback: None,
            keep_warm: DeploySpec::DEFAULT_KEEP_WARM,
        }
    }
}

/// A deploy strategy.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    /// Replace instances a few at a time.
    Rolling(Rolling),
    /// Start a full new set, switch when all are healthy, keep the old set a while.
    BlueGreen(BlueGreen),
    /// Move to the new release in steps, pausing between them.
    Canary(Canary),
}

/// Rolling deploy parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rolling {
    /// Instances allowed above `replicas` during the deploy (default 1).
    pub max_surge: u32,
    /// Healthy instances allowed below `replicas` during the deploy (default 0).
    pub max_unavailable: u32,
    /// How long a new instance must stay healthy before an old one is stopped (default 10s).
    pub min_healthy_time: Duration,
    /// How long a new instance may take to become healthy before the deploy fails (default 5m).
    pub healthy_deadline: Duration,
}

impl Default for Rolling {
    fn default() -> Self {
        Rolling {
            max_surge: 1,
            max_unavailable: 0,
            min_healthy_time: Duration::from_secs(10),
            healthy_deadline: Duration::from_secs(300),
        }
    }
}

/// Blue/green deploy parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlueGreen {
    /// How long the new set may take to become healthy (default 5m).
    pub healthy_deadline: Duration,
    /// How long the old set keeps running after the switch, for an instant rollback
    /// (default 5m).
    pub keep_old: Duration,
}

impl Default for BlueGreen {
    fn default() -> Self {
        BlueGreen {
            healthy_deadline: Duration::from_secs(300),
            keep_old: Duration::from_secs(300),
        }
    }
}

/// Canary deploy parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canary {
    /// How many instances run the new release at each step; the last step is `100%`.
    pub steps: Vec<CanaryStep>,
    /// The pause between steps.
    pub pause: Pause,
    /// How long a new instance must stay healthy before it counts (default 10s).
    pub min_healthy_time: Duration,
    /// How long a step's new instances may take to become healthy (default 5m).
    pub healthy_deadline: Duration,
}

/// One canary step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CanaryStep {
    /// A number of instances.
    Count(u32),
    /// A percentage of `replicas`, rounded up.
    Percent(u32),
}

impl CanaryStep {
    /// The number of new instances this step asks for out of `replicas`.
    pub fn instances(self, replicas: u32) -> u32 {
        match self {
            CanaryStep::Count(count) => count.min(replicas),
            CanaryStep::Percent(percent) => (u64::from(replicas) * u64::from(percent))
                .div_ceil(100)
                .try_into()
                .unwrap_or(replicas),
        }
    }
}

/// The pause between canary steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// A fixed time.
    For(Duration),
    /// Until someone runs `berth promote`.
    Manual,
}

/// Limits the proxy watches after a deploy; crossing one rolls back.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoRollback {
    /// Fraction of 5xx responses (0.02 is 2%).
    pub error_rate: Option<f64>,
    /// 99th-percentile latency.
    pub p99: Option<Duration>,
    /// How long to watch after the deploy finished.
    pub watch: Duration,
    /// The sliding window the limits are judged over: the most recent requests only, so a
    /// release that breaks late is caught as fast as one that breaks at once, and a slow
    /// start is forgotten (default 30s).
    pub window: Duration,
    /// The fewest requests in the window that say anything about a release (default 20).
    pub min_requests: u64,
}

impl AutoRollback {
    /// The default sliding window.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
    /// The default fewest requests in a window.
    pub const DEFAULT_MIN_REQUESTS: u64 = 20;
}

/// One problem in a `berth.toml`, with where it is and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The file name, as given to [`AppSpec::parse_file`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}\n  hint: {}",
            self.file, self.line, self.column, self.message, self.hint
        )
    }
}

impl std::error::Error for SpecError {}

/// Every problem found in a `berth.toml`, in the order they appear in the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl AppSpec {
    /// Parses a `berth.toml` named `berth.toml`; see [`AppSpec::parse_file`].
    pub fn parse(text: &str, env: Option<&str>) -> Result<AppSpec, SpecErrors> {
        AppSpec::parse_file("berth.toml", text, env)
    }

    /// Parses `text`, applies the overlay `[env.<env>]` when `env` is given, and validates the
    /// result. Every overlay is validated, not only the selected one, so that a mistake in
    /// `[env.production]` is found while deploying to staging.
    pub fn parse_file(file: &str, text: &str, env: Option<&str>) -> Result<AppSpec, SpecErrors> {
        read::parse(text, env).map_err(|errors| {
            SpecErrors(
                errors
                    .into_iter()
                    .map(|error| error.locate(file, text))
                    .collect(),
            )
        })
    }
}
