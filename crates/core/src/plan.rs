//! The deploy planner: `plan(desired, observed, now) -> Vec<Action>`.
//!
//! A pure function. The controller observes instances, persists each service's
//! [`DeployState`], calls [`plan`] and carries the actions out; then it plans again (at the
//! latest at the `until` of a [`Action::Wait`]). Every action carries a human reason, shown in
//! the deploy progress and in `berth events`.
//!
//! The strategies and the invariants they keep are described in `docs/deploy.md`.

mod service;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Add;
use std::time::Duration;

use crate::spec::{AppSpec, CanaryStep, Pause, ServiceSpec, Strategy};
pub use crate::spec::{DependencyCondition as Condition, RestartPolicy};

/// An app release: immutable, with every image pinned by digest (`shop#7` is release 7).
pub type ReleaseId = u64;

/// A point in time, in milliseconds since the Unix epoch. The planner never reads a clock:
/// the controller passes `now`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The time `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    fn add(self, duration: Duration) -> Timestamp {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(millis))
    }
}

/// What should run: every service at one release.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// The services, by name.
    pub services: BTreeMap<String, DesiredService>,
}

impl Desired {
    /// Every service of `app` at `release`.
    pub fn from_spec(app: &AppSpec, release: ReleaseId) -> Desired {
        Desired::at_revisions(app, |_| release)
    }

    /// Every service of `app` at its own revision: the release whose instances run it (a
    /// release that left a service as it was keeps the instances of an older one).
    pub fn at_revisions(app: &AppSpec, revision: impl Fn(&str) -> ReleaseId) -> Desired {
        Desired {
            services: app
                .services
                .iter()
                .map(|(name, spec)| {
                    (
                        name.clone(),
                        DesiredService::from_spec(spec, revision(name)),
                    )
                })
                .collect(),
        }
    }
}

/// One service as the planner needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredService {
    /// The release every instance should run.
    pub release: ReleaseId,
    /// How many instances.
    pub replicas: u32,
    /// How a new release replaces the old one.
    pub strategy: DeployStrategy,
    /// Services that must be started or healthy before an instance of this one starts.
    pub depends_on: BTreeMap<String, Condition>,
    /// Whether the service mounts a volume only one instance may use: then two of its
    /// instances never run at once, whatever the strategy says.
    pub volumes_exclusive: bool,
    /// Whether an exited instance is replaced.
    pub restart: RestartPolicy,
    /// How long instances a deploy replaces stay parked (frozen) for an instant rollback;
    /// zero stops them.
    pub keep_warm: Duration,
}

impl DesiredService {
    /// The service `spec` at `release`; canary percentages are resolved against its replicas.
    pub fn from_spec(spec: &ServiceSpec, release: ReleaseId) -> DesiredService {
        let replicas = spec.replicas;
        let strategy = match &spec.deploy.strategy {
            Strategy::Rolling(rolling) => DeployStrategy::Rolling {
                max_surge: rolling.max_surge,
                max_unavailable: rolling.max_unavailable,
                min_healthy_time: rolling.min_healthy_time,
                healthy_deadline: rolling.healthy_deadline,
            },
            Strategy::BlueGreen(blue_green) => DeployStrategy::BlueGreen {
                healthy_deadline: blue_green.healthy_deadline,
                keep_old: blue_green.keep_old,
            },
            Strategy::Canary(canary) => DeployStrategy::Canary {
                steps: canary
                    .steps
                    .iter()
                    .map(|step| CanaryStep::instances(*step, replicas))
                    .collect(),
                pause: match canary.pause {
                    Pause::For(duration) => Some(duration),
                    Pause::Manual => None,
                },
                min_healthy_time: canary.min_healthy_time,
                healthy_deadline: canary.healthy_deadline,
            },
        };
        DesiredService {
            release,
            replicas,
            strategy,
            depends_on: spec.depends_on.clone(),
            volumes_exclusive: spec.has_exclusive_volume(),
            restart: spec.restart,
            keep_warm: spec.deploy.keep_warm,
        }
    }
}

/// A deploy strategy with its parameters resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum DeployStrategy {
    /// Replace instances a few at a time.
    Rolling {
        /// Instances allowed above `replicas`.
        max_surge: u32,
        /// Ready instances allowed below `replicas`.
        max_unavailable: u32,
        /// How long a new instance stays healthy before it counts as replacing an old one.
        min_healthy_time: Duration,
        /// How long the deploy may go without a new instance becoming healthy.
        healthy_deadline: Duration,
    },
    /// A full new set, a switch when all are healthy, the old set kept for `keep_old`.
    BlueGreen {
        /// How long the deploy may go without a new instance becoming healthy.
        healthy_deadline: Duration,
        /// How long the old set runs after the switch.
        keep_old: Duration,
    },
    /// Steps of new instances, with a pause between steps.
    Canary {
        /// New instances at each step; the planner treats the last step as `replicas`.
        steps: Vec<u32>,
        /// The pause between steps; `None` waits for a promote.
        pause: Option<Duration>,
        /// How long a new instance stays healthy before it counts.
        min_healthy_time: Duration,
        /// How long a step may go without a new instance becoming healthy.
        healthy_deadline: Duration,
    },
}

/// What is running, and the deploy progress the controller keeps between plans.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Every known instance, including ones that have exited.
    pub instances: Vec<Instance>,
    /// Each service's latest deploy, by service name.
    pub deploys: BTreeMap<String, DeployState>,
    /// Services' releases whose deploy failed, as `(service, release)`. Their instances
    /// (unless the release is the service's desired one again) serve nothing and stop at
    /// once, whatever the strategy would otherwise keep: a failed canary leaves traffic and
    /// goes in the same plan.
    pub failed: BTreeSet<(String, ReleaseId)>,
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// Unique name, like `web-7-a`.
    pub id: String,
    /// The service it belongs to.
    pub service: String,
    /// The release it runs.
    pub release: ReleaseId,
    /// Where it is in its life.
    pub state: InstanceState,
    /// When its container started.
    pub started_at: Option<Timestamp>,
    /// Since when it has been healthy, if it is.
    pub healthy_since: Option<Timestamp>,
    /// How often the controller restarted it in place.
    pub restarts: u32,
}

/// The life of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    /// Planned; its image may still be pulling.
    Pending,
    /// Its container is being created.
    Starting,
    /// Its process runs. `healthy` is `None` until the health check has decided (during the
    /// start period), `Some(false)` once it failed `unhealthy_after` times. A service without a
    /// health check is reported `Some(true)` as soon as it runs.
    Running {
        /// The health check's verdict.
        healthy: Option<bool>,
        /// When the process started.
        since: Timestamp,
    },
    /// Its process runs, but nobody knows yet whether it is healthy: it was running before
    /// the controller started (a restarted server), and its health check has not decided
    /// since. It may well be serving, so it is neither stopped for being unready nor counted
    /// as available until the check decides.
    Unknown {
        /// When the process started.
        since: Timestamp,
    },
    /// Asked to stop; still holding its resources and volumes.
    Stopping,
    /// Replaced by a deploy and frozen (the cgroup freezer): it holds its memory but no
    /// CPU, serves nothing, and does not count against the strategy's limits. A rollback to
    /// its release thaws it ([`Action::Unpark`]) instead of starting a new instance;
    /// `keep_warm` after `since` it is stopped.
    Parked {
        /// When it was parked.
        since: Timestamp,
    },
    /// Its process exited.
    Exited {
        /// The exit code.
        code: i32,
        /// When.
        at: Timestamp,
    },
    /// It could not be started (pull or create failed).
    Failed,
}

impl Instance {
    /// Not exited, failed or parked: it counts against the strategy's limits.
    pub fn is_live(&self) -> bool {
        !matches!(
            self.state,
            InstanceState::Exited { .. } | InstanceState::Failed | InstanceState::Parked { .. }
        )
    }

    /// Frozen for an instant rollback.
    pub fn is_parked(&self) -> bool {
        matches!(self.state, InstanceState::Parked { .. })
    }

    /// Running and healthy: it can take traffic.
    pub fn is_ready(&self) -> bool {
        matches!(
            self.state,
            InstanceState::Running {
                healthy: Some(true),
                ..
            }
        )
    }

    /// Running, healthy or not (or not known yet).
    pub fn is_running(&self) -> bool {
        matches!(
            self.state,
            InstanceState::Running { .. } | InstanceState::Unknown { .. }
        )
    }

    /// Since when it has been ready, if it is.
    pub fn ready_since(&self) -> Option<Timestamp> {
        match self.state {
            InstanceState::Running {
                healthy: Some(true),
                since,
            } => Some(self.healthy_since.unwrap_or(since)),
            _ => None,
        }
    }
}

/// A service's deploy progress; the controller stores it and updates it as the deploy
/// actions say (see each [`Action`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployState {
    /// The release being replaced, `None` for a service's first deploy.
    pub from_release: Option<ReleaseId>,
    /// The release being deployed.
    pub to_release: ReleaseId,
    /// When the deploy began.
    pub started_at: Timestamp,
    /// The current step: a canary step index, or 1 once a blue/green deploy switched.
    pub step: usize,
    /// When the current step began.
    pub step_started_at: Timestamp,
    /// When someone promoted the current step (`berth promote`), for manual canary pauses.
    pub promoted_at: Option<Timestamp>,
    /// The deploy completed.
    pub finished: bool,
    /// The deploy failed; the controller rolled back (or, for a first deploy, gave up).
    pub failed: bool,
    /// Since when an operator has held the deploy (`berth pause`): it starts and stops
    /// nothing, and its deadline does not run.
    pub paused_since: Option<Timestamp>,
    /// When an operator last let a held deploy go on (`berth resume`): the deadline counts
    /// from then at the earliest.
    pub resumed_at: Option<Timestamp>,
}

impl DeployState {
    /// The state a controller stores for [`Action::BeginDeploy`] at `now`.
    pub fn begin(from_release: Option<ReleaseId>, to_release: ReleaseId, now: Timestamp) -> Self {
        DeployState {
            from_release,
            to_release,
            started_at: now,
            step: 0,
            step_started_at: now,
            promoted_at: None,
            finished: false,
            failed: false,
            paused_since: None,
            resumed_at: None,
        }
    }
}

/// One thing for the controller to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A new deploy: store [`DeployState::begin`]`(from_release, to_release, now)`.
    BeginDeploy {
        /// The service.
        service: String,
        /// The release being replaced, if any.
        from_release: Option<ReleaseId>,
        /// The release being deployed.
        to_release: ReleaseId,
        /// Why.
        reason: String,
    },
    /// Create and start a new instance.
    Start {
        /// The service.
        service: String,
        /// The release it runs.
        release: ReleaseId,
        /// Its name, unique among the observed instances.
        instance: String,
        /// Why.
        reason: String,
    },
    /// Stop an instance gracefully (SIGTERM, then SIGKILL after `stop_grace`).
    Stop {
        /// The instance's id.
        instance: String,
        /// Why.
        reason: String,
    },
    /// Move the deploy to `step`: set `step`, `step_started_at = now`, `promoted_at = None`.
    /// For blue/green, step 1 is the traffic switch to the new set.
    AdvanceStep {
        /// The service.
        service: String,
        /// The release being deployed.
        release: ReleaseId,
        /// The new step.
        step: usize,
        /// Why.
        reason: String,
    },
    /// Nothing to do for the service until `until` (or, when `None`, until something is
    /// observed to change or someone promotes).
    Wait {
        /// The service.
        service: String,
        /// When to plan again at the latest.
        until: Option<Timestamp>,
        /// What is awaited.
        reason: String,
    },
    /// The deploy failed: set `failed`, and roll back by making `from_release` the desired
    /// release again (the planner then deploys it like any release).
    MarkDeployFailed {
        /// The service.
        service: String,
        /// The release that failed.
        release: ReleaseId,
        /// Why.
        reason: String,
    },
    /// Freeze a replaced instance for an instant rollback (it leaves traffic first).
    Park {
        /// The instance's id.
        instance: String,
        /// Why.
        reason: String,
    },
    /// Thaw a parked instance of the release being deployed again (a rollback); it serves
    /// at once.
    Unpark {
        /// The instance's id.
        instance: String,
        /// Why.
        reason: String,
    },
    /// The deploy completed: set `finished`.
    FinishDeploy {
        /// The service.
        service: String,
        /// The release now running.
        release: ReleaseId,
        /// Why it counts as done.
        reason: String,
    },
}

impl Action {
    /// The human reason.
    pub fn reason(&self) -> &str {
        match self {
            Action::BeginDeploy { reason, .. }
            | Action::Start { reason, .. }
            | Action::Stop { reason, .. }
            | Action::Park { reason, .. }
            | Action::Unpark { reason, .. }
            | Action::AdvanceStep { reason, .. }
            | Action::Wait { reason, .. }
            | Action::MarkDeployFailed { reason, .. }
            | Action::FinishDeploy { reason, .. } => reason,
        }
    }
}

/// Plans the next actions to move `observed` toward `desired` at time `now`.
///
/// Services are planned in name order; a service's instances start only when its
/// dependencies are started or healthy as `depends_on` asks. Instances of services no longer
/// desired are stopped.
pub fn plan(desired: &Desired, observed: &Observed, now: Timestamp) -> Vec<Action> {
    let mut actions = Vec::new();
    for instance in &observed.instances {
        if (instance.is_live() || instance.is_parked())
            && instance.state != InstanceState::Stopping
            && !desired.services.contains_key(&instance.service)
        {
            actions.push(Action::Stop {
                instance: instance.id.clone(),
                reason: format!(
                    "service `{}` is no longer part of the app",
                    instance.service
                ),
            });
        }
    }
    let mut names: BTreeSet<String> = observed.instances.iter().map(|i| i.id.clone()).collect();
    for (name, service) in &desired.services {
        service::plan_service(
            name,
            service,
            desired,
            observed,
            now,
            &mut names,
            &mut actions,
        );
    }
    actions
}

/// Whether `dependency` satisfies `condition`, and if not, why.
fn dependency_unmet(
    dependency: &str,
    condition: Condition,
    desired: &Desired,
    observed: &Observed,
) -> Option<String> {
    let Some(wanted) = desired.services.get(dependency) else {
        return Some(format!("dependency `{dependency}` is not part of the app"));
    };
    if wanted.replicas == 0 {
        return None;
    }
    let mut instances = observed
        .instances
        .iter()
        .filter(|i| i.service == dependency);
    let met = match condition {
        Condition::Started => instances.any(Instance::is_running),
        Condition::Healthy => instances.any(Instance::is_ready),
    };
    (!met).then(|| match condition {
        Condition::Started => format!("waiting for `{dependency}` to be started"),
        Condition::Healthy => format!("waiting for `{dependency}` to be healthy"),
    })
}

/// `service-release-x` with the first suffix (a, b, …, z, aa, …) not taken.
fn instance_name(service: &str, release: ReleaseId, taken: &mut BTreeSet<String>) -> String {
    let mut index: usize = 0;
    loop {
        let mut suffix = Vec::new();
        let mut n = index;
        loop {
            suffix.push(b'a' + u8::try_from(n % 26).unwrap_or(0));
            if n < 26 {
                break;
            }
            n = n / 26 - 1;
        }
        suffix.reverse();
        let name = format!("{service}-{release}-{}", String::from_utf8_lossy(&suffix));
        if taken.insert(name.clone()) {
            return name;
        }
        index += 1;
    }
}
