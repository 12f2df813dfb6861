//! Releases and an app's deploy state, as kept in the state store, and the pure rules over
//! them: which release a rollback goes to, which releases' images stay pinned, how a
//! planner action changes the stored deploy state, and how instances are named on the node.
//!
//! Keys: `apps/<app>/state` holds the [`AppState`]; `apps/<app>/releases/<number>` (ten
//! digits, so keys sort by number) holds each immutable [`Release`].

mod diff;
#[cfg(test)]
mod tests;

pub use diff::{changes, revisions, service_changes, ServiceAction, ServiceChange};

use std::collections::{BTreeMap, BTreeSet};

use berth_core::plan::{Action, DeployState, ReleaseId, Timestamp};
use berth_core::{AppSpec, SpecErrors};
use serde::{Deserialize, Serialize};

/// The prefix under which every app's keys live.
pub const APPS_PREFIX: &str = "apps/";

/// The key of an app's [`AppState`].
pub fn state_key(app: &str) -> String {
    format!("{APPS_PREFIX}{app}/state")
}

/// The prefix of an app's releases.
pub fn releases_prefix(app: &str) -> String {
    format!("{APPS_PREFIX}{app}/releases/")
}

/// The key of one release.
pub fn release_key(app: &str, number: ReleaseId) -> String {
    format!("{}{number:010}", releases_prefix(app))
}

/// One deploy of an app: the spec as sent and every image pinned by digest. Never changed
/// once written; a rollback makes an older release desired again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The app.
    pub app: String,
    /// `shop#7` is release 7.
    pub number: ReleaseId,
    /// The `berth.toml` text.
    pub spec: String,
    /// The file name the spec came from, for error messages.
    pub file: String,
    /// The `[env.<name>]` overlay applied, if any.
    pub env: Option<String>,
    /// Each service's image, resolved at deploy time.
    pub images: BTreeMap<String, ResolvedImage>,
    /// The version of each secret its services use, pinned when the release was made (the
    /// values stay sealed in the secret store).
    #[serde(default)]
    pub secrets: BTreeMap<String, u64>,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    /// Who asked for it (`user@host` as the client said), if known.
    #[serde(default)]
    pub by: Option<String>,
    /// What it changed compared with the release it replaced, for people.
    #[serde(default)]
    pub changes: Vec<String>,
    /// Each service's revision: the release whose instances run it, this release's number
    /// for a service it changed (or added), an older one for a service it left as it was.
    /// Empty for releases made before berth kept revisions: every service then runs this
    /// release's own instances.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revisions: BTreeMap<String, ReleaseId>,
    /// What it does to each service compared with the release it replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceChange>,
}

impl Release {
    /// The spec, parsed as it was when the release was made.
    pub fn app_spec(&self) -> Result<AppSpec, SpecErrors> {
        AppSpec::parse_file(&self.file, &self.spec, self.env.as_deref())
    }

    /// The release whose instances run `service` when this release is desired.
    pub fn revision(&self, service: &str) -> ReleaseId {
        self.revisions.get(service).copied().unwrap_or(self.number)
    }
}

/// A service's image as written in the spec and as pinned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// As written, e.g. `registry.local:5000/shop/web:1.4.2`.
    pub reference: String,
    /// The manifest digest the tag pointed at when the release was made.
    pub digest: String,
    /// `registry/repository@digest`: what is pulled if the node lacks the image.
    pub pinned_reference: String,
}

/// How many releases besides the desired one keep their images pinned (the newest that did
/// not fail), so that a rollback to any of them never waits for a pull or finds its manifest
/// collected.
pub const KEEP_RELEASES: usize = 2;

/// What the controller keeps about an app between plans.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    /// The app.
    pub app: String,
    /// The release every service should run.
    pub desired: ReleaseId,
    /// The highest release number handed out.
    pub latest: ReleaseId,
    /// Each service's latest deploy.
    pub deploys: BTreeMap<String, DeployRecord>,
    /// Releases whose deploy failed, with the planner's reason.
    pub failed: BTreeMap<ReleaseId, String>,
    /// The services' revisions whose deploy failed, as `(service, release)`: their
    /// instances serve nothing and stop at once.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub failed_revisions: BTreeSet<(String, ReleaseId)>,
    /// The release that was desired before the current one (unless it failed): kept on the
    /// node after a rollback, so going forward again is as quick as going back.
    #[serde(default)]
    pub previous: Option<ReleaseId>,
    /// Replicas set by `berth scale`, by service: they override the desired release's spec
    /// until another release is made desired (a deploy or a rollback runs the replicas its
    /// spec says).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scale: BTreeMap<String, u32>,
    /// `berth app rm` asked for the app to go: the controller stops its instances and then
    /// deletes it. Nothing else may change it meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removing: Option<Removal>,
}

/// An app's removal, as `berth app rm` asked for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// Remove its named volumes too (kept otherwise).
    pub volumes: bool,
    /// When it was asked for (milliseconds since the Unix epoch).
    pub requested_at: u64,
}

impl AppState {
    /// The state after a new release `number` was made desired (by a deploy or a rollback).
    pub fn with_desired(mut self, app: &str, number: ReleaseId) -> AppState {
        self.app = app.to_owned();
        if self.desired != number && self.desired != 0 && !self.failed.contains_key(&self.desired) {
            self.previous = Some(self.desired);
        }
        if self.desired != number {
            self.scale.clear();
        }
        self.desired = number;
        self.latest = self.latest.max(number);
        // Deploying a release again (a rollback to it) starts a fresh deploy, even if it
        // failed before.
        self.deploys.retain(|_, deploy| deploy.to_release != number);
        self.failed.remove(&number);
        self
    }

    /// `spec` with the replicas `berth scale` set.
    pub fn scaled(&self, spec: &AppSpec) -> AppSpec {
        let mut spec = spec.clone();
        for (service, replicas) in &self.scale {
            if let Some(service) = spec.services.get_mut(service) {
                service.replicas = *replicas;
            }
        }
        spec
    }

    /// Promotes the current step of the unfinished deploys of `service` (every service when
    /// `None`) that are not promoted yet, for canary steps with `pause = "manual"`. Returns
    /// the services promoted.
    pub fn promote(&mut self, service: Option<&str>, now: Timestamp) -> Vec<String> {
        self.change_deploys(
            service,
            |deploy| deploy.promoted_at.is_none(),
            |deploy| deploy.promoted_at = Some(now.as_millis()),
        )
    }

    /// Pauses the unfinished deploys of `service` (every service when `None`) that are not
    /// paused: they start and stop nothing until resumed, and their deadline stops. Returns
    /// the services paused.
    pub fn pause(&mut self, service: Option<&str>, now: Timestamp) -> Vec<String> {
        self.change_deploys(
            service,
            |deploy| deploy.paused_at.is_none(),
            |deploy| deploy.paused_at = Some(now.as_millis()),
        )
    }

    /// Lets the paused deploys of `service` (every service when `None`) go on; their
    /// deadline counts from now. Returns the services resumed.
    pub fn resume(&mut self, service: Option<&str>, now: Timestamp) -> Vec<String> {
        self.change_deploys(
            service,
            |deploy| deploy.paused_at.is_some(),
            |deploy| {
                deploy.paused_at = None;
                deploy.resumed_at = Some(now.as_millis());
            },
        )
    }

    /// Applies `change` to the unfinished, not failed deploys of `service` (every service
    /// when `None`) that are `eligible`; returns their services.
    fn change_deploys(
        &mut self,
        service: Option<&str>,
        eligible: impl Fn(&DeployRecord) -> bool,
        mut change: impl FnMut(&mut DeployRecord),
    ) -> Vec<String> {
        let mut changed = Vec::new();
        for (name, deploy) in &mut self.deploys {
            if service.is_some_and(|s| s != name)
                || deploy.finished
                || deploy.failed
                || !eligible(deploy)
            {
                continue;
            }
            change(deploy);
            changed.push(name.clone());
        }
        changed
    }

    /// The deploy progress in the planner's terms.
    pub fn deploy_states(&self) -> BTreeMap<String, DeployState> {
        self.deploys
            .iter()
            .map(|(service, record)| (service.clone(), record.clone().into()))
            .collect()
    }

    /// Carries out what a deploy-bookkeeping action asks (the others change nothing here).
    /// Returns whether the state changed.
    pub fn apply(&mut self, action: &Action, now: Timestamp) -> bool {
        match action {
            Action::BeginDeploy {
                service,
                from_release,
                to_release,
                ..
            } => {
                let mut record: DeployRecord =
                    DeployState::begin(*from_release, *to_release, now).into();
                // The app release that was desired before this deploy's release: where a
                // failure takes the whole app back.
                record.rollback_to = self.previous;
                self.deploys.insert(service.clone(), record);
                true
            }
            Action::AdvanceStep { service, step, .. } => {
                let Some(deploy) = self.deploys.get_mut(service) else {
                    return false;
                };
                deploy.step = *step;
                deploy.step_started_at = now.as_millis();
                deploy.promoted_at = None;
                true
            }
            Action::MarkDeployFailed {
                service,
                release,
                reason,
            } => {
                let Some(deploy) = self.deploys.get_mut(service) else {
                    return false;
                };
                deploy.failed = true;
                self.failed.insert(*release, reason.clone());
                self.failed_revisions.insert((service.clone(), *release));
                // `release` is the service's revision; the desired app release runs it, so
                // it failed too (unless it is the same release).
                if self.desired != *release {
                    self.failed.insert(self.desired, reason.clone());
                }
                // The whole app goes back to the release desired before this deploy: its
                // services were released together.
                if let Some(back) = deploy.rollback_to.or(deploy.from_release) {
                    if back != *release {
                        self.desired = back;
                    }
                }
                true
            }
            Action::FinishDeploy { service, .. } => {
                let Some(deploy) = self.deploys.get_mut(service) else {
                    return false;
                };
                let changed = !deploy.finished;
                deploy.finished = true;
                changed
            }
            Action::Start { .. }
            | Action::Stop { .. }
            | Action::Park { .. }
            | Action::Unpark { .. }
            | Action::Wait { .. } => false,
        }
    }

    /// The release `berth rollback APP` goes to: the newest one older than the desired
    /// release whose deploy did not fail.
    pub fn rollback_target(&self, releases: &[ReleaseId]) -> Option<ReleaseId> {
        releases
            .iter()
            .copied()
            .filter(|n| *n < self.desired && !self.failed.contains_key(n))
            .max()
    }

    /// Releases whose images must stay on the node and in the registry: the desired one, the
    /// [`KEEP_RELEASES`] newest others that did not fail, the previously desired one, the
    /// rollback target, and the release each unfinished deploy replaces.
    pub fn pinned_releases(&self, releases: &[ReleaseId]) -> BTreeSet<ReleaseId> {
        let mut pinned: BTreeSet<ReleaseId> = BTreeSet::from([self.desired]);
        let mut others: Vec<ReleaseId> = releases
            .iter()
            .copied()
            .filter(|number| *number != self.desired && !self.failed.contains_key(number))
            .collect();
        others.sort_unstable_by(|a, b| b.cmp(a));
        pinned.extend(others.into_iter().take(KEEP_RELEASES));
        pinned.extend(self.previous);
        pinned.extend(self.rollback_target(releases));
        pinned.extend(
            self.deploys
                .values()
                .filter(|deploy| !deploy.finished)
                .filter_map(|deploy| deploy.from_release),
        );
        pinned
    }

    /// Where a release stands (`releases`: every release of the app).
    pub fn status_of(
        &self,
        number: ReleaseId,
        releases: &BTreeMap<ReleaseId, Release>,
    ) -> ReleaseStatus {
        if self.failed.contains_key(&number) {
            return ReleaseStatus::Failed;
        }
        if number == self.desired && self.removing.is_some() {
            return ReleaseStatus::Removing;
        }
        if number == self.desired {
            let revisions = releases
                .get(&number)
                .map(|release| release.revisions.clone())
                .unwrap_or_default();
            let live = if revisions.is_empty() {
                // A release made before revisions: its services all deploy its own number.
                let deploys: Vec<&DeployRecord> = self
                    .deploys
                    .values()
                    .filter(|deploy| deploy.to_release == number)
                    .collect();
                !deploys.is_empty() && deploys.iter().all(|deploy| deploy.finished)
            } else {
                revisions.iter().all(|(service, revision)| {
                    self.deploys.get(service).is_some_and(|deploy| {
                        deploy.to_release == *revision && deploy.finished && !deploy.failed
                    })
                })
            };
            return if live {
                ReleaseStatus::Live
            } else {
                ReleaseStatus::Deploying
            };
        }
        let numbers: Vec<ReleaseId> = releases.keys().copied().collect();
        if self.rollback_target(&numbers) == Some(number) {
            ReleaseStatus::Previous
        } else {
            ReleaseStatus::Superseded
        }
    }
}

/// Where a release stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    /// Desired, and its deploy is under way.
    Deploying,
    /// Desired, and every service runs it.
    Live,
    /// Its deploy failed (and was rolled back, unless it was the first).
    Failed,
    /// Where `berth rollback` goes; its images stay pinned.
    Previous,
    /// Older.
    Superseded,
    /// Desired, and the app is being removed (`berth app rm`).
    Removing,
}

/// [`DeployState`] as stored (times in milliseconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRecord {
    /// The release being replaced.
    pub from_release: Option<ReleaseId>,
    /// The release being deployed.
    pub to_release: ReleaseId,
    /// When the deploy began.
    pub started_at: u64,
    /// The current step.
    pub step: usize,
    /// When the current step began.
    pub step_started_at: u64,
    /// When the current step was promoted.
    pub promoted_at: Option<u64>,
    /// The deploy completed.
    pub finished: bool,
    /// The deploy failed.
    pub failed: bool,
    /// The app release desired before the one this deploy is part of: where a failure of
    /// this deploy takes the app back.
    #[serde(default)]
    pub rollback_to: Option<ReleaseId>,
    /// When an operator paused the deploy (`berth pause`), while it is paused.
    #[serde(default)]
    pub paused_at: Option<u64>,
    /// When an operator last resumed it (`berth resume`).
    #[serde(default)]
    pub resumed_at: Option<u64>,
}

impl From<DeployState> for DeployRecord {
    fn from(state: DeployState) -> Self {
        DeployRecord {
            from_release: state.from_release,
            to_release: state.to_release,
            started_at: state.started_at.as_millis(),
            step: state.step,
            step_started_at: state.step_started_at.as_millis(),
            promoted_at: state.promoted_at.map(Timestamp::as_millis),
            finished: state.finished,
            failed: state.failed,
            rollback_to: None,
            paused_at: state.paused_since.map(Timestamp::as_millis),
            resumed_at: state.resumed_at.map(Timestamp::as_millis),
        }
    }
}

impl From<DeployRecord> for DeployState {
    fn from(record: DeployRecord) -> Self {
        DeployState {
            from_release: record.from_release,
            to_release: record.to_release,
            started_at: Timestamp::from_millis(record.started_at),
            step: record.step,
            step_started_at: Timestamp::from_millis(record.step_started_at),
            promoted_at: record.promoted_at.map(Timestamp::from_millis),
            finished: record.finished,
            failed: record.failed,
            paused_since: record.paused_at.map(Timestamp::from_millis),
            resumed_at: record.resumed_at.map(Timestamp::from_millis),
        }
    }
}

/// An instance as named on the node: the container `shop.web-7-a` is instance `web-7-a`
/// (service `web`, release 7) of app `shop`. App and service names are DNS labels, which
/// have no dots, so the name parses back unambiguously after a server restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceName {
    /// The app.
    pub app: String,
    /// The planner's instance id, `service-release-suffix`.
    pub instance: String,
    /// The service.
    pub service: String,
    /// The release.
    pub release: ReleaseId,
}

impl InstanceName {
    /// The container name of `instance` of `app`.
    pub fn container(app: &str, instance: &str) -> String {
        format!("{app}.{instance}")
    }

    /// Parses a container name; `None` for containers berth's server did not create.
    pub fn parse(container: &str) -> Option<InstanceName> {
        let (app, instance) = container.split_once('.')?;
        let mut parts = instance.rsplitn(3, '-');
        let suffix = parts.next()?;
        let release = parts.next()?.parse().ok()?;
        let service = parts.next()?;
        let valid = !app.is_empty()
            && !service.is_empty()
            && !suffix.is_empty()
            && suffix.bytes().all(|b| b.is_ascii_lowercase());
        valid.then(|| InstanceName {
            app: app.to_owned(),
            instance: instance.to_owned(),
            service: service.to_owned(),
            release,
        })
    }
}
