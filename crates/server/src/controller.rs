//! The controller: one reconcile pass per app, every [`TICK`] and whenever the state store
//! changes under `apps/` or an instance's health changes.
//!
//! A pass observes the app's containers on the node (found by name, so a restarted server
//! finds its instances again), the health of each and the starts and stops still under way;
//! asks the planner what to do; stores the deploy bookkeeping with a compare-and-swap (a
//! deploy or rollback that raced the pass wins, and the pass plans again); then starts and
//! stops containers in the background and publishes what it saw for the API.

mod removal;
#[cfg(test)]
mod tests;
mod warm;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berth_agent::health::{HealthChecker, HealthPolicy, Probe};
use berth_agent::secrets::{env_vars, SecretKey, SecretStore};
use berth_core::plan::{
    plan, Action, Desired, Instance, InstanceState, Observed, ReleaseId, Timestamp,
};
use berth_core::spec::ServiceSpec;
use berth_core::AppSpec;
use berth_runtime::container::{ContainerRequest, NetworkMode, RestartPolicy, SecretEnv, Status};
use berth_runtime::image::PullOptions;
use berth_runtime::node::{Container, Node};
use berth_store::{CasOutcome, Expect, Store};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify};

use crate::events::{Event, EventKind, EventLog, EVENTS_KEPT};
use crate::mounts::mounts;
use crate::registry_pins::RegistryPins;
use crate::releases::{
    release_key, releases_prefix, state_key, AppState, InstanceName, Release, ReleaseStatus,
    APPS_PREFIX,
};
use crate::traffic::{
    listed, routes, sync_catalog, traffic_verdict, NoTraffic, RouteIntent, Traffic,
};
use crate::{node_name, now, ServerError};
use berth_discovery::Catalog;

/// The longest a controller waits between two passes.
pub const TICK: Duration = Duration::from_millis(500);

/// How long a failed start is reported as `failed` before the planner may try again.
const START_RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long the traffic samples of a release nobody judges any more are kept.
const WINDOW_IDLE: Duration = Duration::from_secs(600);

/// How many recent events `GET /v1/apps/{app}` shows (the store keeps more).
const RECENT_EVENTS: usize = 100;

/// Carries out the planner's actions on one node.
pub struct Controller {
    store: Arc<dyn Store>,
    node: Arc<Node>,
    pull: PullOptions,
    secrets: SecretStore,
    wake: Notify,
    events: EventLog,
    inner: Mutex<Inner>,
    views: RwLock<BTreeMap<String, AppView>>,
    /// When this controller started: instances running since before then have no health
    /// verdict of ours until their checks decide.
    started: Timestamp,
    /// The healthy instances, for DNS, the HTTP catalog and the proxy.
    catalog: Catalog,
    /// The proxy: routes and draining.
    traffic: RwLock<Arc<dyn Traffic>>,
    /// This node's name in the catalog.
    node_name: String,
    /// Held shared while a start creates and mounts named volumes, exclusively while
    /// `berth volume rm` checks and removes one: a volume is never removed under a start.
    volumes: tokio::sync::RwLock<()>,
    registry_pins: RegistryPins,
    /// Set once the first pass over every app is done: before it, this controller has not
    /// said what any app's routes are.
    first_pass: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct Inner {
    /// Starts and stops under way, by container name.
    work: HashMap<String, Work>,
    /// Health of running instances, by container id.
    health: HashMap<String, HealthEntry>,
    /// Image digests pinned for each app.
    pinned: BTreeMap<String, BTreeSet<String>>,
    /// Recent events of each app.
    events: BTreeMap<String, VecDeque<Event>>,
    /// The routes last given to the proxy, by app.
    routes: BTreeMap<String, Vec<RouteIntent>>,
    /// When the traffic watch of a finished deploy ends, by app, service and release.
    watch_until: BTreeMap<(String, String, ReleaseId), Timestamp>,
    /// Recent samples of the proxy's counters, to judge releases over sliding windows.
    windows: crate::traffic::window::Windows,
    /// Since when parked (frozen) containers were healthy before they were parked, by
    /// container id: a thawed one is healthy again at once (its checker goes on from there).
    warm_health: HashMap<String, Timestamp>,
}

/// Something the controller is doing to a container.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// Being created and started.
    Starting {
        /// The app.
        app: String,
        /// The planner's instance id.
        instance: String,
        /// The service.
        service: String,
        /// The release.
        release: ReleaseId,
    },
    /// Being stopped and removed.
    Stopping,
    /// Leaving traffic (drained), then frozen.
    Parking,
    /// An exited container being removed.
    Removing,
    /// The start failed; kept a while so the planner sees it (and does not retry at once).
    Failed {
        /// The app.
        app: String,
        /// The planner's instance id.
        instance: String,
        /// The service.
        service: String,
        /// The release.
        release: ReleaseId,
        /// When it failed.
        at: Timestamp,
        /// Why.
        error: String,
    },
}

struct HealthEntry {
    _checker: Option<HealthChecker>,
    healthy: Option<bool>,
    since: Option<Timestamp>,
    detail: String,
}

/// An app as the controller last saw it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AppView {
    /// The app.
    pub app: String,
    /// The release every service should run.
    pub desired_release: ReleaseId,
    /// Its status.
    pub desired_status: Option<ReleaseStatus>,
    /// The services of the desired release.
    pub services: Vec<ServiceView>,
    /// Instances of services no longer desired.
    pub orphans: Vec<InstanceView>,
    /// Releases newer than the desired one whose deploy failed, newest first: what the app
    /// was rolled back from, and why.
    #[serde(default)]
    pub rolled_back: Vec<FailedRelease>,
    /// Recent events, oldest first.
    pub events: Vec<Event>,
}

/// A release whose deploy failed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FailedRelease {
    /// The release.
    pub release: ReleaseId,
    /// Why it failed (for an automatic rollback, what the proxy saw).
    pub reason: String,
}

/// One service.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceView {
    /// The service.
    pub name: String,
    /// Desired instances.
    pub replicas: u32,
    /// The release it should run.
    pub release: ReleaseId,
    /// How it deploys: `rolling`, `blue_green` or `canary`.
    pub strategy: &'static str,
    /// The latest deploy of the service.
    pub deploy: Option<crate::releases::DeployRecord>,
    /// What the planner waits for, if anything.
    pub waiting: Vec<String>,
    /// Its instances.
    pub instances: Vec<InstanceView>,
}

/// One instance.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct InstanceView {
    /// The planner's id, e.g. `web-7-a`.
    pub id: String,
    /// The container name on the node, e.g. `shop.web-7-a`.
    pub container: String,
    /// The service.
    pub service: String,
    /// The release it runs.
    pub release: ReleaseId,
    /// `pending`, `starting`, `running`, `stopping`, `exited` or `failed`.
    pub state: String,
    /// `starting`, `healthy`, `unhealthy`, `unknown` (not checked since a server restart),
    /// or `none` when not running.
    pub health: String,
    /// Its address on the bridge.
    pub address: Option<String>,
    /// When its process started (ms since the epoch).
    pub started_at: Option<u64>,
    /// The last health probe's outcome, or why it failed to start.
    pub detail: Option<String>,
}

/// What the controller needs of a container, from the node.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    /// Its name.
    pub container: String,
    /// Its id.
    pub id: String,
    /// Parsed from the name.
    pub name: InstanceName,
    /// Lifecycle.
    pub status: Status,
    /// When the current run started.
    pub started_at: Option<Timestamp>,
    /// When the last run ended.
    pub finished_at: Option<Timestamp>,
    /// The last exit code.
    pub exit_code: Option<i32>,
    /// Restarts by the monitor.
    pub restarts: u32,
    /// Bridge address.
    pub address: Option<String>,
    /// Since when it has been paused (frozen), if it is.
    pub paused_at: Option<Timestamp>,
}

impl Seen {
    /// The container as the controller sees it; `None` when not one of the server's.
    pub fn from_container(container: &Container) -> Option<Seen> {
        let name = InstanceName::parse(&container.record.name)?;
        Some(Seen {
            container: container.record.name.clone(),
            id: container.record.id.clone(),
            name,
            status: container.state.status,
            started_at: parse_time(container.state.started_at.as_deref()),
            finished_at: parse_time(container.state.finished_at.as_deref()),
            exit_code: container.state.exit.map(|exit| exit.code),
            restarts: container.state.restart_count,
            address: container
                .record
                .network
                .as_ref()
                .map(|attachment| attachment.ip.to_string()),
            paused_at: parse_time(container.state.paused_at.as_deref()),
        })
    }
}

fn parse_time(text: Option<&str>) -> Option<Timestamp> {
    let parsed = OffsetDateTime::parse(text?, &Rfc3339).ok()?;
    let millis = u64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()?;
    Some(Timestamp::from_millis(millis))
}

/// The health the planner is told about one running instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenHealth {
    /// The verdict so far (`None` while starting).
    pub healthy: Option<bool>,
    /// Since when it has been healthy.
    pub since: Option<Timestamp>,
}

/// Builds the planner's view of `app` from its containers, the controller's work and the
/// health verdicts (by container id). Services without a health check (`checked` lacks
/// them) count as healthy as soon as they run. An instance with a health check that was
/// running before `started` (when this controller started) and has no verdict yet is
/// [`InstanceState::Unknown`]: it may be serving. Pure, so it is unit-tested.
pub fn observe(
    app: &str,
    seen: &[Seen],
    work: &HashMap<String, Work>,
    health: &HashMap<String, SeenHealth>,
    checked: &BTreeSet<(String, ReleaseId)>,
    started: Timestamp,
) -> Vec<Instance> {
    let mut instances = Vec::new();
    let mut named = BTreeSet::new();
    for container in seen.iter().filter(|c| c.name.app == app) {
        named.insert(container.container.clone());
        let work = work.get(&container.container);
        let key = (container.name.service.clone(), container.name.release);
        let verdict = health.get(&container.id).copied();
        let state = match (work, container.status) {
            (Some(Work::Stopping | Work::Removing | Work::Parking), _) => InstanceState::Stopping,
            (_, Status::Paused) => InstanceState::Parked {
                since: container.paused_at.unwrap_or_default(),
            },
            (_, Status::Running)
                if checked.contains(&key)
                    && verdict.and_then(|v| v.healthy).is_none()
                    && container.started_at.is_some_and(|at| at < started) =>
            {
                InstanceState::Unknown {
                    since: container.started_at.unwrap_or_default(),
                }
            }
            (_, Status::Running) => InstanceState::Running {
                healthy: if checked.contains(&key) {
                    verdict.and_then(|v| v.healthy)
                } else {
                    Some(true)
                },
                since: container.started_at.unwrap_or_default(),
            },
            (Some(_), Status::Created) => InstanceState::Starting,
            // Created but never started, and no start of ours under way: a server killed
            // between the two steps left it. It is dead and `remove_exited` removes it; until
            // it is gone it still holds an address and counts against the surge, so the
            // planner sees it as stopping and starts its replacement only after.
            (None, Status::Created) => InstanceState::Stopping,
            // The server starts containers without a restart policy; a monitor restarting
            // one is not serving now.
            (_, Status::Restarting) => InstanceState::Running {
                healthy: Some(false),
                since: container.started_at.unwrap_or_default(),
            },
            (_, Status::Exited) => InstanceState::Exited {
                code: container.exit_code.unwrap_or(-1),
                at: container.finished_at.unwrap_or_default(),
            },
        };
        let healthy_since = match state {
            InstanceState::Running {
                healthy: Some(true),
                since,
            } => Some(verdict.and_then(|v| v.since).unwrap_or(since)),
            _ => None,
        };
        instances.push(Instance {
            id: container.name.instance.clone(),
            service: container.name.service.clone(),
            release: container.name.release,
            state,
            started_at: container.started_at,
            healthy_since,
            restarts: container.restarts,
        });
    }
    let mut pending: Vec<(&String, &Work)> = work.iter().collect();
    pending.sort_by_key(|(name, _)| *name);
    for (container, work) in pending {
        if named.contains(container) {
            continue;
        }
        let (instance, service, release, state) = match work {
            Work::Starting {
                app: of,
                instance,
                service,
                release,
            } if of == app => (instance, service, release, InstanceState::Pending),
            Work::Failed {
                app: of,
                instance,
                service,
                release,
                ..
            } if of == app => (instance, service, release, InstanceState::Failed),
            _ => continue,
        };
        instances.push(Instance {
            id: instance.clone(),
            service: service.clone(),
            release: *release,
            state,
            started_at: None,
            healthy_since: None,
            restarts: 0,
        });
    }
    instances
}

/// The container request for one instance of `service` at `release`.
pub fn container_request(
    app: &str,
    instance: &str,
    service_name: &str,
    service: &ServiceSpec,
    release: &Release,
    image: &str,
) -> ContainerRequest {
    let mut env: Vec<String> = service
        .env
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    env.extend([
        format!("BERTH_APP={app}"),
        format!("BERTH_SERVICE={service_name}"),
        format!("BERTH_RELEASE={}", release.number),
        format!("BERTH_INSTANCE={instance}"),
    ]);
    ContainerRequest {
        name: Some(InstanceName::container(app, instance)),
        image: image.to_owned(),
        command: service.command.clone().unwrap_or_default(),
        env,
        resources: berth_runtime::spec::Resources {
            memory: service.resources.memory,
            cpus: service.resources.cpus,
            pids: service.resources.pids.map(i64::from),
        },
        // The controller replaces instances that exit; the monitor must not restart them
        // behind its back.
        restart: RestartPolicy::No,
        network: NetworkMode::Bridge,
        stop_timeout: service.stop_grace.as_secs().max(1),
        ..ContainerRequest::default()
    }
}

/// The error of a start of `service` of `app` that failed within [`START_RETRY_AFTER`]
/// (older failures are forgotten at the start of every pass).
fn recent_failure<'a>(
    work: &'a HashMap<String, Work>,
    app: &str,
    service: &str,
) -> Option<&'a str> {
    work.values().find_map(|work| match work {
        Work::Failed {
            app: of,
            service: failed,
            error,
            ..
        } if of == app && failed == service => Some(error.as_str()),
        _ => None,
    })
}

/// Whether an exited instance of `service` is replaced, so its container can go.
fn replaced(service: Option<&ServiceSpec>, code: Option<i32>) -> bool {
    use berth_core::plan::RestartPolicy as Policy;
    match service.map(|s| s.restart) {
        None | Some(Policy::Always) => true,
        Some(Policy::OnFailure) => code != Some(0),
        Some(Policy::No) => false,
    }
}

/// The event of a planner's `Stop`: a replacement when the instance is of another release
/// than the desired one, else a plain stop (scale down, unhealthy, removed service).
fn stop_event(
    app: &str,
    instances: &[Instance],
    desired: ReleaseId,
    instance: &str,
    reason: &str,
) -> Event {
    let found = instances.iter().find(|i| i.id == instance);
    let kind = match found {
        Some(found) if found.release != desired => EventKind::InstanceReplaced,
        _ => EventKind::InstanceStopping,
    };
    let mut event = Event::new(app, kind, format!("stop {instance}: {reason}")).instance(instance);
    if let Some(found) = found {
        event = event.service(&found.service).release(found.release);
    }
    event
}

/// The events of a deploy-bookkeeping action the store has recorded in `state`.
fn bookkeeping_events(app: &str, action: &Action, state: &AppState) -> Vec<Event> {
    let reason = action.reason().to_owned();
    match action {
        Action::BeginDeploy {
            service,
            to_release,
            ..
        } => vec![Event::new(app, EventKind::DeployBegun, reason)
            .service(service)
            .release(*to_release)],
        Action::AdvanceStep {
            service, release, ..
        } => vec![Event::new(app, EventKind::StepAdvanced, reason)
            .service(service)
            .release(*release)],
        Action::FinishDeploy {
            service, release, ..
        } => {
            vec![Event::new(app, EventKind::DeployFinished, reason)
                .service(service)
                .release(*release)]
        }
        Action::MarkDeployFailed {
            service, release, ..
        } => {
            let failed = Event::new(app, EventKind::DeployFailed, reason)
                .service(service)
                .release(*release);
            // A failed first deploy has nothing to go back to.
            let back = (state.desired != *release).then(|| {
                let from = state.desired;
                Event::new(
                    app,
                    EventKind::RolledBack,
                    format!("release {release} failed: back to release {from}"),
                )
                .service(service)
                .release(from)
            });
            std::iter::once(failed).chain(back).collect()
        }
        Action::Start { .. }
        | Action::Stop { .. }
        | Action::Park { .. }
        | Action::Unpark { .. }
        | Action::Wait { .. } => Vec::new(),
    }
}

impl Controller {
    /// A controller for `node`, keeping its state in `store`; pulls use `pull`; the apps'
    /// secrets are sealed with `secret_key` in `store`.
    pub fn new(
        store: Arc<dyn Store>,
        node: Arc<Node>,
        pull: PullOptions,
        secret_key: SecretKey,
    ) -> Arc<Controller> {
        Arc::new(Controller {
            secrets: SecretStore::new(store.clone(), secret_key),
            events: EventLog::new(store.clone(), EVENTS_KEPT),
            store,
            node,
            pull,
            wake: Notify::new(),
            inner: Mutex::new(Inner::default()),
            views: RwLock::new(BTreeMap::new()),
            started: now(),
            catalog: Catalog::new(),
            traffic: RwLock::new(Arc::new(NoTraffic)),
            node_name: node_name(),
            volumes: tokio::sync::RwLock::new(()),
            registry_pins: RegistryPins::default(),
            first_pass: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Excludes starts from creating or mounting named volumes while held (for removing one).
    pub async fn lock_volumes(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.volumes.write().await
    }

    /// The catalog of healthy instances this controller keeps.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Routes and drains through `traffic` (the proxy) from now on.
    pub fn set_traffic(&self, traffic: Arc<dyn Traffic>) {
        *self
            .traffic
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = traffic;
    }

    /// The proxy (or [`NoTraffic`]).
    pub fn traffic(&self) -> Arc<dyn Traffic> {
        self.traffic
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The pins of release images in berth's own registry (attach the registry before
    /// [`Controller::run`]).
    pub fn registry_pins(&self) -> &RegistryPins {
        &self.registry_pins
    }

    /// The node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The pull options.
    pub fn pull_options(&self) -> &PullOptions {
        &self.pull
    }

    /// The apps' secrets.
    pub fn secrets(&self) -> &SecretStore {
        &self.secrets
    }

    /// Resolves once the first pass over every app is done (each app's routes and catalog
    /// entries said).
    pub async fn first_pass_done(&self) {
        let mut done = self.first_pass.subscribe();
        let _ = done.wait_for(|done| *done).await;
    }

    /// Plans again soon.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// What the controller last saw of `app`.
    pub fn view(&self, app: &str) -> Option<AppView> {
        self.views
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(app)
            .cloned()
    }

    /// Records an event (also traced): in the store, and among the app's recent ones.
    pub fn event(&self, event: Event) {
        tracing::info!(app = event.app, kind = ?event.kind, "{}", event.message);
        let mut inner = self.lock();
        let events = inner.events.entry(event.app.clone()).or_default();
        events.push_back(event.clone());
        while events.len() > RECENT_EVENTS {
            events.pop_front();
        }
        drop(inner);
        self.events.record(event);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reconciles forever: every [`TICK`], on store changes under `apps/`, and on wake-ups.
    pub async fn run(self: Arc<Self>) {
        let watcher = self.clone();
        tokio::spawn(async move {
            loop {
                match watcher.store.watch(APPS_PREFIX, None).await {
                    Ok(mut watch) => {
                        while let Some(event) = watch.recv().await {
                            if event.is_err() {
                                break;
                            }
                            watcher.wake();
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "watching the state store"),
                }
                tokio::time::sleep(TICK).await;
            }
        });
        loop {
            if let Err(e) = self.clone().pass().await {
                tracing::warn!(error = %e, "reconcile pass failed");
            }
            self.first_pass.send_replace(true);
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// One pass over every app.
    pub async fn pass(self: Arc<Self>) -> Result<(), ServerError> {
        // Failed starts are reported for a while, then forgotten so the planner retries.
        let now = now();
        self.lock().work.retain(|_, work| match work {
            Work::Failed { at, .. } => now.since(*at) < START_RETRY_AFTER,
            _ => true,
        });
        // Work first, containers second: a start that finishes in between is then seen as
        // a container, never as neither.
        let work = self.lock().work.clone();
        let node = self.node.clone();
        let containers = tokio::task::spawn_blocking(move || node.list())
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))??;
        let seen: Vec<Seen> = containers.iter().filter_map(Seen::from_container).collect();
        self.forget_gone(&seen);
        let listing = self.store.list(APPS_PREFIX).await?;
        let apps: BTreeSet<String> = listing
            .entries
            .iter()
            .filter_map(|entry| entry.key.strip_prefix(APPS_PREFIX))
            .filter_map(|rest| rest.strip_suffix("/state"))
            .map(str::to_owned)
            .collect();
        for app in apps {
            if let Err(e) = self
                .clone()
                .reconcile(&app, &seen, &containers, &work)
                .await
            {
                tracing::warn!(app, error = %e, "reconciling failed");
            }
        }
        for event in self.registry_pins.sync().await {
            self.event(event);
        }
        self.lock().windows.forget_idle(now, WINDOW_IDLE);
        Ok(())
    }

    /// Writes `app`'s state if it is still at `mod_revision` (a deploy or rollback may have
    /// changed it since it was read).
    async fn save_state(
        &self,
        app: &str,
        state: &AppState,
        mod_revision: u64,
    ) -> Result<CasOutcome, ServerError> {
        let value = serde_json::to_vec(state)
            .map_err(|e| ServerError::Internal(format!("encoding app state: {e}")))?;
        Ok(self
            .store
            .cas(
                &state_key(app),
                Expect::ModRevision(mod_revision),
                Some(value),
                None,
            )
            .await?)
    }

    /// A service whose new release the proxy saw cross its `auto_rollback` limits within the
    /// watch window (which ends `watch` after the deploy finished): the service, the release
    /// and why.
    fn traffic_rollback(
        &self,
        app: &str,
        state: &AppState,
        desired: &Release,
        specs: &BTreeMap<ReleaseId, AppSpec>,
    ) -> Option<(String, ReleaseId, String)> {
        let traffic = self.traffic();
        let now = now();
        for (service, deploy) in state.deploy_states() {
            let (Some(from), false) = (deploy.from_release, deploy.failed) else {
                continue;
            };
            let to = deploy.to_release;
            if to != desired.revision(&service) {
                continue;
            }
            let Some(limits) = specs
                .get(&to)
                .and_then(|spec| spec.services.get(&service))
                .and_then(|s| s.deploy.auto_rollback.clone())
            else {
                continue;
            };
            if deploy.finished {
                let key = (app.to_owned(), service.clone(), to);
                let until = *self
                    .lock()
                    .watch_until
                    .entry(key)
                    .or_insert(now + limits.watch);
                if now > until {
                    continue;
                }
            }
            let Some(new) = traffic.counters(app, &service, to) else {
                continue;
            };
            let old = traffic.counters(app, &service, from);
            let (new, old) = {
                let mut inner = self.lock();
                let windows = &mut inner.windows;
                let key = |release| (app.to_owned(), service.clone(), release);
                let new = windows.observe(key(to), now, new, limits.window);
                let old = old.map(|old| windows.observe(key(from), now, old, limits.window));
                (new, old)
            };
            if let Some(reason) = traffic_verdict(&limits, &new, old.as_ref()) {
                return Some((service, to, reason));
            }
        }
        None
    }

    /// Drops the health checkers of containers that are gone.
    fn forget_gone(&self, seen: &[Seen]) {
        let ids: BTreeSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
        let mut inner = self.lock();
        inner.health.retain(|id, _| ids.contains(id.as_str()));
        inner.warm_health.retain(|id, _| ids.contains(id.as_str()));
    }

    async fn reconcile(
        self: Arc<Self>,
        app: &str,
        seen: &[Seen],
        containers: &[Container],
        work: &HashMap<String, Work>,
    ) -> Result<(), ServerError> {
        let Some(entry) = self.store.get(&state_key(app)).await? else {
            return Ok(());
        };
        let mut state: AppState = serde_json::from_slice(&entry.value)
            .map_err(|e| ServerError::Internal(format!("app state of {app}: {e}")))?;
        let releases = load_releases(self.store.as_ref(), app).await?;
        let numbers: Vec<ReleaseId> = releases.keys().copied().collect();
        let specs: BTreeMap<ReleaseId, AppSpec> = releases
            .iter()
            .filter_map(|(number, release)| release.app_spec().ok().map(|spec| (*number, spec)))
            .collect();
        if state.removing.is_some() {
            return self
                .remove_app(app, &state, entry.mod_revision, seen, work, &specs)
                .await;
        }
        let Some(release) = releases.get(&state.desired) else {
            return Err(ServerError::Internal(format!(
                "{app}: desired release {} is missing",
                state.desired
            )));
        };
        let Some(spec) = specs.get(&state.desired).map(|spec| state.scaled(spec)) else {
            return Err(ServerError::Internal(format!(
                "{app}: release {} no longer parses",
                release.number
            )));
        };
        let spec = &spec;

        if let Some((service, release, reason)) =
            self.traffic_rollback(app, &state, release, &specs)
        {
            let action = Action::MarkDeployFailed {
                service: service.clone(),
                release,
                reason: reason.clone(),
            };
            state.apply(&action, now());
            let outcome = self.save_state(app, &state, entry.mod_revision).await?;
            if let CasOutcome::Applied { .. } = outcome {
                self.event(
                    Event::new(
                        app,
                        EventKind::AutoRolledBack,
                        format!(
                            "release {release} of `{service}` rolled back to release {}: {reason}",
                            state.desired
                        ),
                    )
                    .service(&service)
                    .release(release),
                );
            }
            self.wake();
            return Ok(());
        }

        self.watch_health(app, seen, containers, &specs);
        let (health, details) = self.health_snapshot();
        let checked: BTreeSet<(String, ReleaseId)> = specs
            .iter()
            .flat_map(|(number, spec)| {
                spec.services
                    .iter()
                    .filter(|(_, service)| service.health.is_some())
                    .map(|(name, _)| (name.clone(), *number))
            })
            .collect();
        let instances = observe(app, seen, work, &health, &checked, self.started);
        let desired = Desired::at_revisions(spec, |service| release.revision(service));
        let observed = Observed {
            instances: instances.clone(),
            deploys: state.deploy_states(),
            failed: state.failed_revisions.clone(),
        };
        let now = now();
        let actions = plan(&desired, &observed, now);

        let mut changed = false;
        for action in &actions {
            changed |= state.apply(action, now);
        }
        if changed {
            let outcome = self.save_state(app, &state, entry.mod_revision).await?;
            if let CasOutcome::Conflict { .. } = outcome {
                // A deploy or rollback came in: plan again with it.
                self.wake();
                return Ok(());
            }
        }

        // The catalog and the proxy first: an instance about to stop leaves them before its
        // stop begins (and `stop` drains it), a new healthy one joins them.
        let stopping: BTreeSet<String> = actions
            .iter()
            .filter_map(|action| match action {
                Action::Stop { instance, .. } | Action::Park { instance, .. } => {
                    Some(instance.clone())
                }
                _ => None,
            })
            .collect();
        let endpoints = listed(
            app,
            &self.node_name,
            spec,
            &specs,
            &state.deploy_states(),
            &instances,
            seen,
            &stopping,
        );
        sync_catalog(&self.catalog, app, &endpoints);
        let routes = routes(app, spec, &endpoints);
        let changed = self.lock().routes.get(app) != Some(&routes);
        if changed {
            self.traffic().set_routes(app, routes.clone());
            self.lock().routes.insert(app.to_owned(), routes);
        }

        let mut waiting: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for action in actions {
            match action {
                Action::Start {
                    service,
                    release,
                    instance,
                    reason,
                } => {
                    if let Some(error) = recent_failure(work, app, &service) {
                        // Restart backoff: a start that just failed is not retried at once.
                        waiting.entry(service).or_default().push(format!(
                            "a start failed less than {}s ago ({error}); retrying then",
                            START_RETRY_AFTER.as_secs()
                        ));
                        continue;
                    }
                    self.event(
                        Event::new(
                            app,
                            EventKind::InstanceStarting,
                            format!("start {instance}: {reason}"),
                        )
                        .service(&service)
                        .instance(&instance)
                        .release(release),
                    );
                    self.clone()
                        .start(app, &service, release, &instance, &releases, &specs);
                }
                Action::Stop { instance, reason } => {
                    self.event(stop_event(
                        app,
                        &instances,
                        state.desired,
                        &instance,
                        &reason,
                    ));
                    let address = seen
                        .iter()
                        .find(|s| s.name.app == app && s.name.instance == instance)
                        .and_then(|s| s.address.as_deref()?.parse().ok());
                    self.clone().stop(app, &instance, address, spec);
                }
                Action::Park { instance, reason } => {
                    let found = seen
                        .iter()
                        .find(|s| s.name.app == app && s.name.instance == instance);
                    let address = found.and_then(|s| s.address.as_deref()?.parse().ok());
                    self.clone().park(app, &instance, &reason, address, spec);
                }
                Action::Unpark { instance, reason } => {
                    self.unpark(app, &instance, &reason, seen).await;
                }
                Action::Wait {
                    service, reason, ..
                } => waiting.entry(service).or_default().push(reason),
                other => {
                    for event in bookkeeping_events(app, &other, &state) {
                        self.event(event);
                    }
                }
            }
        }
        self.remove_exited(app, seen, work, &specs);
        self.pin(app, &state, &releases, &numbers).await;
        self.publish(
            app, &state, spec, &releases, &instances, seen, &details, waiting,
        );
        Ok(())
    }

    /// Starts a health checker for every running instance that has a health check and none.
    fn watch_health(
        self: &Arc<Self>,
        app: &str,
        seen: &[Seen],
        containers: &[Container],
        specs: &BTreeMap<ReleaseId, AppSpec>,
    ) {
        for container in seen.iter().filter(|c| c.name.app == app) {
            if container.status != Status::Running || self.lock().health.contains_key(&container.id)
            {
                continue;
            }
            let Some(health) = specs
                .get(&container.name.release)
                .and_then(|spec| spec.services.get(&container.name.service))
                .and_then(|service| service.health.as_ref().map(|h| (h, service)))
            else {
                continue;
            };
            let Some(full) = containers.iter().find(|c| c.record.id == container.id) else {
                continue;
            };
            let (health, service) = health;
            let probe = match Probe::for_container(
                &health.check,
                &service.ports,
                self.node.clone(),
                full,
            ) {
                Ok(probe) => probe,
                Err(e) => {
                    self.lock().health.insert(
                        container.id.clone(),
                        HealthEntry {
                            _checker: None,
                            healthy: Some(false),
                            since: None,
                            detail: e.to_string(),
                        },
                    );
                    continue;
                }
            };
            let (sender, mut receiver) = mpsc::channel(8);
            let checker = HealthChecker::spawn(
                probe,
                HealthPolicy::from(health),
                health.interval,
                health.timeout,
                sender,
            );
            let mut inner = self.lock();
            // A thawed warm instance was healthy when it was frozen: it is again at once,
            // and its checker goes on from there.
            let warm = inner.warm_health.remove(&container.id);
            inner.health.insert(
                container.id.clone(),
                HealthEntry {
                    _checker: Some(checker),
                    healthy: warm.map(|_| true),
                    since: warm,
                    detail: String::new(),
                },
            );
            drop(inner);
            let controller = Arc::downgrade(self);
            let id = container.id.clone();
            let name = container.name.clone();
            tokio::spawn(async move {
                while let Some(event) = receiver.recv().await {
                    let Some(controller) = controller.upgrade() else {
                        return;
                    };
                    let healthy = event.transition.to == berth_agent::health::Health::Healthy;
                    if let Some(entry) = controller.lock().health.get_mut(&id) {
                        entry.healthy = Some(healthy);
                        entry.since = healthy.then(now);
                        entry.detail = event.result.detail.clone();
                    }
                    let (kind, verdict) = if healthy {
                        (EventKind::InstanceHealthy, "healthy")
                    } else {
                        (EventKind::InstanceUnhealthy, "unhealthy")
                    };
                    controller.event(
                        Event::new(
                            &name.app,
                            kind,
                            format!("{} is {verdict}: {}", name.instance, event.result.detail),
                        )
                        .service(&name.service)
                        .instance(&name.instance)
                        .release(name.release),
                    );
                    controller.wake();
                }
            });
        }
    }

    fn health_snapshot(&self) -> (HashMap<String, SeenHealth>, HashMap<String, String>) {
        let inner = self.lock();
        let health = inner
            .health
            .iter()
            .map(|(id, entry)| {
                (
                    id.clone(),
                    SeenHealth {
                        healthy: entry.healthy,
                        since: entry.since,
                    },
                )
            })
            .collect();
        let details = inner
            .health
            .iter()
            .map(|(id, entry)| (id.clone(), entry.detail.clone()))
            .collect();
        (health, details)
    }

    fn start(
        self: Arc<Self>,
        app: &str,
        service: &str,
        release: ReleaseId,
        instance: &str,
        releases: &BTreeMap<ReleaseId, Release>,
        specs: &BTreeMap<ReleaseId, AppSpec>,
    ) {
        let container = InstanceName::container(app, instance);
        let starting = Work::Starting {
            app: app.to_owned(),
            instance: instance.to_owned(),
            service: service.to_owned(),
            release,
        };
        self.lock().work.insert(container.clone(), starting);
        let found = releases.get(&release).and_then(|r| {
            let spec = specs.get(&release)?.services.get(service)?;
            Some((r.clone(), spec.clone(), r.images.get(service)?.clone()))
        });
        let (app, service, instance) = (app.to_owned(), service.to_owned(), instance.to_owned());
        tokio::spawn(async move {
            let result = match found {
                None => Err(format!("release {release} has no service `{service}`")),
                Some((release_record, spec, image)) => {
                    let run = async {
                        if self
                            .node
                            .images()
                            .get(&image.digest)
                            .map_err(|e| e.to_string())?
                            .is_none()
                        {
                            self.node
                                .images()
                                .pull(&image.pinned_reference, &self.pull)
                                .await
                                .map_err(|e| e.to_string())?;
                        }
                        let mut request = container_request(
                            &app,
                            &instance,
                            &service,
                            &spec,
                            &release_record,
                            &image.digest,
                        );
                        request.secret_env = self.secret_env(&app, &spec, &release_record).await?;
                        let _volumes = self.volumes.read().await;
                        request.secret_files = crate::secrets_api::secret_files(
                            &self.secrets,
                            &app,
                            &spec,
                            &release_record,
                        )
                        .await?;
                        let mounts = mounts(&self.node.root().join("volumes"), &app, &spec);
                        for dir in &mounts.named {
                            std::fs::create_dir_all(dir)
                                .map_err(|e| format!("creating volume {}: {e}", dir.display()))?;
                        }
                        request.volumes = mounts.binds;
                        request.tmpfs = mounts.tmpfs;
                        let node = self.node.clone();
                        tokio::task::spawn_blocking(move || node.run(request))
                            .await
                            .map_err(|e| e.to_string())?
                            .map_err(|e| e.to_string())
                    };
                    run.await.map(|_| ())
                }
            };
            match result {
                Ok(()) => {
                    self.lock().work.remove(&container);
                    self.event(
                        Event::new(
                            &app,
                            EventKind::InstanceStarted,
                            format!("{instance} started"),
                        )
                        .service(&service)
                        .instance(&instance)
                        .release(release),
                    );
                }
                Err(error) => {
                    self.event(
                        Event::new(
                            &app,
                            EventKind::InstanceFailed,
                            format!("{instance} failed to start: {error}"),
                        )
                        .service(&service)
                        .instance(&instance)
                        .release(release),
                    );
                    let node = self.node.clone();
                    let name = container.clone();
                    // Whatever of it was created goes, so the name is free for a retry.
                    let _ = tokio::task::spawn_blocking(move || node.remove(&name, true)).await;
                    let failed = Work::Failed {
                        app,
                        instance,
                        service,
                        release,
                        at: now(),
                        error,
                    };
                    self.lock().work.insert(container, failed);
                }
            }
            self.wake();
        });
    }

    /// `NAME=value` for each secret `service` uses, at the version `release` pinned.
    async fn secret_env(
        &self,
        app: &str,
        service: &ServiceSpec,
        release: &Release,
    ) -> Result<SecretEnv, String> {
        let mut values = Vec::new();
        for name in &service.secrets {
            let version = release.secrets.get(name).ok_or_else(|| {
                format!(
                    "release {} pins no version of secret {name}",
                    release.number
                )
            })?;
            let value = self
                .secrets
                .get(app, name, *version)
                .await
                .map_err(|e| e.to_string())?;
            values.push((name.clone(), value));
        }
        let vars = env_vars(&values).map_err(|e| e.to_string())?;
        Ok(SecretEnv(
            vars.iter()
                .filter_map(|var| var.expose_str().map(str::to_owned))
                .collect(),
        ))
    }

    /// Stops `instance` in the background: drains its `address` in the proxy, then SIGTERM
    /// (SIGKILL after the service's `stop_grace`) and removal.
    fn stop(
        self: Arc<Self>,
        app: &str,
        instance: &str,
        address: Option<std::net::IpAddr>,
        spec: &AppSpec,
    ) {
        let grace = InstanceName::parse(&InstanceName::container(app, instance))
            .and_then(|name| spec.services.get(&name.service).map(|s| s.stop_grace))
            .unwrap_or(Duration::from_secs(10));
        self.stop_with_grace(app, instance, address, grace);
    }

    /// Stops `instance` in the background as [`Controller::stop`] does, with `grace`
    /// between SIGTERM and SIGKILL.
    fn stop_with_grace(
        self: Arc<Self>,
        app: &str,
        instance: &str,
        address: Option<std::net::IpAddr>,
        grace: Duration,
    ) {
        let container = InstanceName::container(app, instance);
        self.lock().work.insert(container.clone(), Work::Stopping);
        let app = app.to_owned();
        tokio::spawn(async move {
            // It left the catalog and the proxy's rotation in this pass: let its in-flight
            // requests finish before SIGTERM.
            if let Some(address) = address {
                let left = self.traffic().drain(address, grace).await;
                if left > 0 {
                    tracing::warn!(container, left, "stopping with requests still in flight");
                }
            }
            let node = self.node.clone();
            let name = container.clone();
            let result = tokio::task::spawn_blocking(move || {
                node.stop(&name, grace)?;
                node.remove(&name, true)
            })
            .await;
            let name = InstanceName::parse(&container);
            let event = |kind, message: String| {
                let mut event = Event::new(&app, kind, message);
                if let Some(name) = &name {
                    event = event
                        .service(&name.service)
                        .instance(&name.instance)
                        .release(name.release);
                }
                event
            };
            match result {
                Ok(Ok(())) => self.event(event(
                    EventKind::InstanceStopped,
                    format!("{container} stopped and removed"),
                )),
                Ok(Err(e)) => self.event(event(
                    EventKind::InstanceStopped,
                    format!("stopping {container}: {e}"),
                )),
                Err(e) => self.event(event(
                    EventKind::InstanceStopped,
                    format!("stopping {container}: {e}"),
                )),
            }
            self.lock().work.remove(&container);
            self.wake();
        });
    }

    /// Removes exited containers the planner has replaced (or will), and containers created
    /// but never started by an earlier server process, so they do not pile up.
    fn remove_exited(
        self: &Arc<Self>,
        app: &str,
        seen: &[Seen],
        work: &HashMap<String, Work>,
        specs: &BTreeMap<ReleaseId, AppSpec>,
    ) {
        for container in seen.iter().filter(|c| c.name.app == app) {
            let service = specs
                .get(&container.name.release)
                .and_then(|spec| spec.services.get(&container.name.service));
            // Created with no start under way: a killed server's leftover (see `observe`).
            let dead = match container.status {
                Status::Exited => replaced(service, container.exit_code),
                Status::Created => true,
                _ => false,
            };
            if !dead || work.contains_key(&container.container) {
                continue;
            }
            self.event(
                Event::new(
                    app,
                    EventKind::InstanceExited,
                    format!(
                        "{} exited with code {}; removing it",
                        container.name.instance,
                        container.exit_code.unwrap_or(-1)
                    ),
                )
                .service(&container.name.service)
                .instance(&container.name.instance)
                .release(container.name.release),
            );
            self.lock()
                .work
                .insert(container.container.clone(), Work::Removing);
            let controller = self.clone();
            let name = container.container.clone();
            tokio::spawn(async move {
                let node = controller.node.clone();
                let target = name.clone();
                let _ = tokio::task::spawn_blocking(move || node.remove(&target, true)).await;
                controller.lock().work.remove(&name);
                controller.wake();
            });
        }
    }

    /// Pins the images of the releases a rollback may need and unpins the app's others, on
    /// the node and (at the end of the pass) in berth's own registry.
    async fn pin(
        &self,
        app: &str,
        state: &AppState,
        releases: &BTreeMap<ReleaseId, Release>,
        numbers: &[ReleaseId],
    ) {
        let window = crate::registry_pins::window(state, releases, numbers);
        self.registry_pins.want(app, window);
        let wanted: BTreeSet<String> = state
            .pinned_releases(numbers)
            .iter()
            .filter_map(|number| releases.get(number))
            .flat_map(|release| release.images.values().map(|image| image.digest.clone()))
            .collect();
        self.set_node_pins(app, wanted);
    }

    /// Makes the node's pins of `app` exactly `wanted` (image digests); a digest leaves the
    /// node's pins only when no other app still wants it.
    fn set_node_pins(&self, app: &str, wanted: BTreeSet<String>) {
        let had = self.lock().pinned.get(app).cloned().unwrap_or_default();
        if had == wanted {
            return;
        }
        let images = self.node.images();
        for digest in wanted.difference(&had) {
            if let Err(e) = images.pin(digest, true) {
                tracing::debug!(app, %digest, error = %e, "pinning");
            }
        }
        let others: BTreeSet<String> = self
            .lock()
            .pinned
            .iter()
            .filter(|(other, _)| other.as_str() != app)
            .flat_map(|(_, digests)| digests.iter().cloned())
            .collect();
        for digest in had.difference(&wanted) {
            if !others.contains(digest) {
                let _ = images.pin(digest, false);
            }
        }
        self.lock().pinned.insert(app.to_owned(), wanted);
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        app: &str,
        state: &AppState,
        spec: &AppSpec,
        releases: &BTreeMap<ReleaseId, Release>,
        instances: &[Instance],
        seen: &[Seen],
        details: &HashMap<String, String>,
        mut waiting: BTreeMap<String, Vec<String>>,
    ) {
        let work = self.lock().work.clone();
        let view_of = |instance: &Instance| {
            let container = InstanceName::container(app, &instance.id);
            let found = seen.iter().find(|s| s.container == container);
            let (state_name, health) = match instance.state {
                InstanceState::Pending => ("pending", "none"),
                InstanceState::Starting => ("starting", "none"),
                InstanceState::Running { healthy, .. } => (
                    "running",
                    match healthy {
                        None => "starting",
                        Some(true) => "healthy",
                        Some(false) => "unhealthy",
                    },
                ),
                InstanceState::Unknown { .. } => ("running", "unknown"),
                InstanceState::Stopping => ("stopping", "none"),
                InstanceState::Parked { .. } => ("parked", "none"),
                InstanceState::Exited { .. } => ("exited", "none"),
                InstanceState::Failed => ("failed", "none"),
            };
            let detail = match work.get(&container) {
                Some(Work::Failed { error, .. }) => Some(error.clone()),
                _ => found
                    .and_then(|s| details.get(&s.id))
                    .filter(|d| !d.is_empty())
                    .cloned(),
            };
            InstanceView {
                id: instance.id.clone(),
                container,
                service: instance.service.clone(),
                release: instance.release,
                state: state_name.to_owned(),
                health: health.to_owned(),
                address: found.and_then(|s| s.address.clone()),
                started_at: instance.started_at.map(Timestamp::as_millis),
                detail,
            }
        };
        let services = spec
            .services
            .iter()
            .map(|(name, service)| ServiceView {
                name: name.clone(),
                replicas: service.replicas,
                release: releases
                    .get(&state.desired)
                    .map_or(state.desired, |release| release.revision(name)),
                strategy: match service.deploy.strategy {
                    berth_core::spec::Strategy::Rolling(_) => "rolling",
                    berth_core::spec::Strategy::BlueGreen(_) => "blue_green",
                    berth_core::spec::Strategy::Canary(_) => "canary",
                },
                deploy: state.deploys.get(name).cloned(),
                waiting: waiting.remove(name).unwrap_or_default(),
                instances: instances
                    .iter()
                    .filter(|i| &i.service == name)
                    .map(view_of)
                    .collect(),
            })
            .collect();
        let orphans = instances
            .iter()
            .filter(|i| !spec.services.contains_key(&i.service))
            .map(view_of)
            .collect();
        let events = self
            .lock()
            .events
            .get(app)
            .map(|events| events.iter().cloned().collect())
            .unwrap_or_default();
        let view = AppView {
            app: app.to_owned(),
            desired_release: state.desired,
            desired_status: Some(state.status_of(state.desired, releases)),
            services,
            orphans,
            rolled_back: state
                .failed
                .iter()
                .rev()
                .filter(|(release, _)| **release > state.desired)
                .map(|(release, reason)| FailedRelease {
                    release: *release,
                    reason: reason.clone(),
                })
                .collect(),
            events,
        };
        self.views
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(app.to_owned(), view);
    }
}

/// Every release of `app`, by number.
pub async fn load_releases(
    store: &dyn Store,
    app: &str,
) -> Result<BTreeMap<ReleaseId, Release>, ServerError> {
    let listing = store.list(&releases_prefix(app)).await?;
    let mut releases = BTreeMap::new();
    for entry in listing.entries {
        let release: Release = serde_json::from_slice(&entry.value)
            .map_err(|e| ServerError::Internal(format!("release {}: {e}", entry.key)))?;
        debug_assert_eq!(entry.key, release_key(app, release.number));
        releases.insert(release.number, release);
    }
    Ok(releases)
}
