//! Step-by-step strategy tests and property tests, driven by a small simulator that carries
//! out the planned actions, advances time one second per tick and decides health.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::{
    any, prop_assert, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig, TestCaseError,
};
use proptest::strategy::Strategy as PropStrategy;

use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn rolling(max_surge: u32, max_unavailable: u32, min_healthy_secs: u64) -> DeployStrategy {
    DeployStrategy::Rolling {
        max_surge,
        max_unavailable,
        min_healthy_time: Duration::from_secs(min_healthy_secs),
        healthy_deadline: Duration::from_secs(30),
    }
}

fn service(release: ReleaseId, replicas: u32, strategy: DeployStrategy) -> DesiredService {
    DesiredService {
        release,
        replicas,
        strategy,
        depends_on: BTreeMap::new(),
        volumes_exclusive: false,
        restart: RestartPolicy::Always,
        keep_warm: Duration::ZERO,
    }
}

/// How instances of a release behave once running.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    /// Healthy two seconds after it runs.
    Healthy,
    /// Runs but never passes its health check.
    NeverHealthy,
    /// Exits with code 1 two seconds after it runs.
    Crashes,
}

struct Sim {
    desired: Desired,
    observed: Observed,
    now: Timestamp,
    behaviour: BTreeMap<(String, ReleaseId), Behaviour>,
    failed: Vec<(String, ReleaseId)>,
    auto_promote: bool,
}

impl Sim {
    fn new(desired: Desired) -> Sim {
        Sim {
            desired,
            observed: Observed::default(),
            now: Timestamp::from_millis(1_000_000),
            behaviour: BTreeMap::new(),
            failed: Vec::new(),
            auto_promote: true,
        }
    }

    /// `count` healthy instances of `release`, from a finished deploy.
    fn running(&mut self, name: &str, release: ReleaseId, count: u32) {
        for index in 0..count {
            self.observed.instances.push(Instance {
                id: format!("{name}-{release}-old{index}"),
                service: name.to_string(),
                release,
                state: InstanceState::Running {
                    healthy: Some(true),
                    since: self.now,
                },
                started_at: Some(self.now),
                healthy_since: Some(self.now),
                restarts: 0,
            });
        }
        let mut state = DeployState::begin(None, release, self.now);
        state.finished = true;
        self.observed.deploys.insert(name.to_string(), state);
    }

    /// The controller restarted: the running instances of `name` are healthy in fact, but
    /// their health is not known until their checks decide (on the next tick).
    fn restarted(&mut self, name: &str) {
        for instance in &mut self.observed.instances {
            if let (true, InstanceState::Running { since, .. }) =
                (instance.service == name, instance.state)
            {
                instance.state = InstanceState::Unknown { since };
                instance.healthy_since = None;
            }
        }
    }

    fn behaves(&mut self, name: &str, release: ReleaseId, behaviour: Behaviour) {
        self.behaviour
            .insert((name.to_string(), release), behaviour);
    }

    fn live(&self, name: &str) -> Vec<&Instance> {
        self.observed
            .instances
            .iter()
            .filter(|i| i.service == name && i.is_live())
            .collect()
    }

    /// Instances that can take traffic in fact: ready ones, and the ones whose health the
    /// planner does not know yet (they are healthy in this simulation).
    fn ready(&self, name: &str) -> usize {
        // A failed release's instances serve nothing, whatever their health.
        self.live(name)
            .iter()
            .filter(|i| !self.observed.failed.contains(&(name.to_owned(), i.release)))
            .filter(|i| i.is_ready() || matches!(i.state, InstanceState::Unknown { .. }))
            .count()
    }

    fn instance(&mut self, id: &str) -> &mut Instance {
        self.observed
            .instances
            .iter_mut()
            .find(|i| i.id == id)
            .expect("planned instance exists")
    }

    /// Plans, checks the invariants, applies the actions, then lets a second pass.
    fn tick(&mut self) -> Result<Vec<Action>, String> {
        let actions = plan(&self.desired, &self.observed, self.now);
        let ready_before: BTreeMap<String, usize> = self
            .desired
            .services
            .keys()
            .map(|name| (name.clone(), self.ready(name)))
            .collect();
        let live_before: BTreeMap<String, usize> = self
            .desired
            .services
            .keys()
            .map(|name| (name.clone(), self.live(name).len()))
            .collect();
        // Parked instances held their memory already: one stopped (it thaws, then stops)
        // does not count against the limits.
        let parked_before: BTreeSet<String> = self
            .observed
            .instances
            .iter()
            .filter(|i| i.is_parked())
            .map(|i| i.id.clone())
            .collect();
        for action in &actions {
            if let Action::Start { service, .. } = action {
                check_dependencies(&self.desired, &self.observed, service)?;
            }
        }
        for action in &actions {
            self.apply(action);
        }
        for (name, service) in &self.desired.services.clone() {
            // Starting from above the cap (a scale-down), the planner must not add to it.
            let live = self
                .live(name)
                .iter()
                .filter(|i| !parked_before.contains(&i.id))
                .count();
            let (cap, max_unavailable) = bounds(service);
            if live > live_before[name].max(cap as usize) {
                return Err(format!(
                    "{name}: {live} live instances, more than the cap {cap} at {:?}",
                    self.now
                ));
            }
            let floor = service.replicas.saturating_sub(max_unavailable) as usize;
            let ready = self.ready(name);
            if ready < ready_before[name].min(floor) {
                return Err(format!(
                    "{name}: stopped ready instances down to {ready}, below {floor}: {actions:#?}"
                ));
            }
        }
        self.advance();
        Ok(actions)
    }

    fn apply(&mut self, action: &Action) {
        let now = self.now;
        match action {
            Action::BeginDeploy {
                service,
                from_release,
                to_release,
                ..
            } => {
                self.observed.deploys.insert(
                    service.clone(),
                    DeployState::begin(*from_release, *to_release, now),
                );
            }
            Action::Start {
                service,
                release,
                instance,
                ..
            } => self.observed.instances.push(Instance {
                id: instance.clone(),
                service: service.clone(),
                release: *release,
                state: InstanceState::Pending,
                started_at: None,
                healthy_since: None,
                restarts: 0,
            }),
            Action::Stop { instance, .. } => {
                self.instance(instance).state = InstanceState::Stopping
            }
            Action::Park { instance, .. } => {
                self.instance(instance).state = InstanceState::Parked { since: now }
            }
            Action::Unpark { instance, .. } => {
                let instance = self.instance(instance);
                instance.state = InstanceState::Running {
                    healthy: Some(true),
                    since: instance.started_at.unwrap_or(now),
                };
            }
            Action::AdvanceStep { service, step, .. } => {
                if let Some(state) = self.observed.deploys.get_mut(service) {
                    state.step = *step;
                    state.step_started_at = now;
                    state.promoted_at = None;
                }
            }
            Action::Wait {
                service,
                until: None,
                ..
            } => {
                if let Some(state) = self.observed.deploys.get_mut(service) {
                    if self.auto_promote && state.step > 0 && !state.finished {
                        state.promoted_at = Some(now);
                    }
                }
            }
            Action::Wait { .. } => {}
            Action::MarkDeployFailed {
                service, release, ..
            } => {
                self.failed.push((service.clone(), *release));
                self.observed.failed.insert((service.clone(), *release));
                if let Some(state) = self.observed.deploys.get_mut(service) {
                    state.failed = true;
                    if let (Some(from), Some(wanted)) =
                        (state.from_release, self.desired.services.get_mut(service))
                    {
                        wanted.release = from;
                    }
                }
            }
            Action::FinishDeploy { service, .. } => {
                if let Some(state) = self.observed.deploys.get_mut(service) {
                    state.finished = true;
                }
            }
        }
    }

    fn advance(&mut self) {
        self.now = self.now + SECOND;
        let now = self.now;
        for instance in &mut self.observed.instances {
            let behaviour = self
                .behaviour
                .get(&(instance.service.clone(), instance.release))
                .copied()
                .unwrap_or(Behaviour::Healthy);
            instance.state = match instance.state {
                InstanceState::Pending => InstanceState::Starting,
                InstanceState::Starting => {
                    instance.started_at = Some(now);
                    InstanceState::Running {
                        healthy: None,
                        since: now,
                    }
                }
                InstanceState::Running {
                    healthy: None,
                    since,
                } if now.since(since) >= 2 * SECOND => match behaviour {
                    Behaviour::Healthy => {
                        instance.healthy_since = Some(now);
                        InstanceState::Running {
                            healthy: Some(true),
                            since,
                        }
                    }
                    Behaviour::NeverHealthy => instance.state,
                    Behaviour::Crashes => InstanceState::Exited { code: 1, at: now },
                },
                InstanceState::Stopping => InstanceState::Exited { code: 0, at: now },
                InstanceState::Unknown { since } => {
                    instance.healthy_since = Some(now);
                    InstanceState::Running {
                        healthy: Some(true),
                        since,
                    }
                }
                state => state,
            };
        }
    }

    /// Every service on its desired release, finished (or failed with nothing to go back to).
    fn settled(&self) -> bool {
        self.desired.services.iter().all(|(name, service)| {
            let Some(state) = self.observed.deploys.get(name) else {
                return false;
            };
            if state.to_release != service.release {
                return false;
            }
            if state.failed {
                return true;
            }
            let live = self.live(name);
            state.finished
                && live.len() == service.replicas as usize
                && live
                    .iter()
                    .all(|i| i.release == service.release && i.is_ready())
        })
    }

    fn run(&mut self, ticks: usize) -> Result<Vec<Action>, String> {
        let mut all = Vec::new();
        for _ in 0..ticks {
            all.extend(self.tick()?);
            if self.settled() {
                return Ok(all);
            }
        }
        Err(format!(
            "not settled after {ticks} ticks: {:#?}",
            self.observed
        ))
    }
}

/// The most live instances the strategy allows, and the most ready ones it may take away.
fn bounds(service: &DesiredService) -> (u32, u32) {
    let replicas = service.replicas;
    if service.volumes_exclusive {
        return (1, 1);
    }
    match &service.strategy {
        DeployStrategy::Rolling {
            max_surge,
            max_unavailable,
            ..
        } => {
            let surge = if *max_surge == 0 && *max_unavailable == 0 {
                1
            } else {
                *max_surge
            };
            (replicas + surge, *max_unavailable)
        }
        DeployStrategy::BlueGreen { .. } => (replicas * 2, 0),
        DeployStrategy::Canary { steps, .. } => {
            let mut previous = 0;
            let mut surge = 1;
            for step in steps.iter().map(|s| (*s).min(replicas)).chain([replicas]) {
                surge = surge.max(step.saturating_sub(previous));
                previous = previous.max(step);
            }
            (replicas + surge, 0)
        }
    }
}

fn check_dependencies(desired: &Desired, observed: &Observed, service: &str) -> Result<(), String> {
    for (dependency, condition) in &desired.services[service].depends_on {
        if desired.services[dependency].replicas == 0 {
            continue;
        }
        let mut instances = observed
            .instances
            .iter()
            .filter(|i| i.service == *dependency);
        let met = match condition {
            Condition::Started => instances.any(Instance::is_running),
            Condition::Healthy => instances.any(Instance::is_ready),
        };
        if !met {
            return Err(format!(
                "started `{service}` before `{dependency}` was {condition:?}"
            ));
        }
    }
    Ok(())
}

fn starts(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Start { .. }))
        .count()
}

fn stops(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop { instance, .. } => Some(instance.as_str()),
            _ => None,
        })
        .collect()
}

fn desired(services: Vec<(&str, DesiredService)>) -> Desired {
    Desired {
        services: services
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect(),
    }
}

#[test]
fn rolling_surges_one_and_waits_for_min_healthy_time() {
    let mut sim = Sim::new(desired(vec![("web", service(2, 3, rolling(1, 0, 5)))]));
    sim.running("web", 1, 3);
    let first = sim.tick().expect("invariants");
    assert!(matches!(
        &first[0],
        Action::BeginDeploy {
            from_release: Some(1),
            to_release: 2,
            ..
        }
    ));
    assert_eq!(starts(&first), 1, "max_surge = 1");
    assert!(stops(&first).is_empty(), "max_unavailable = 0");
    // Running at +2s, healthy at +4s; old ones wait until healthy for 5s.
    for _ in 0..4 {
        let actions = sim.tick().expect("invariants");
        assert!(
            stops(&actions).is_empty() && starts(&actions) == 0,
            "{actions:#?}"
        );
    }
    let waiting = sim.tick().expect("invariants");
    assert!(
        matches!(&waiting[..], [Action::Wait { until: Some(_), reason, .. }] if reason.contains("healthy for 5s")),
        "{waiting:#?}"
    );
    let all = sim.run(200).expect("converges");
    assert_eq!(stops(&all).len(), 3);
    assert!(matches!(
        all.last(),
        Some(Action::FinishDeploy { release: 2, .. })
    ));
}

/// After a server restart the old instances' health is not known yet: none of them is
/// stopped (they may be serving) until their checks decide, even with max_unavailable = 1.
#[test]
fn old_instances_of_unknown_health_are_not_stopped() {
    let mut sim = Sim::new(desired(vec![("web", service(2, 3, rolling(1, 1, 0)))]));
    sim.running("web", 1, 3);
    sim.restarted("web");
    let first = plan(&sim.desired, &sim.observed, sim.now);
    assert!(stops(&first).is_empty(), "{first:#?}");
    assert_eq!(starts(&first), 1, "max_surge = 1 still starts one");
    // Once they are known to be healthy, max_unavailable = 1 lets one go.
    sim.tick().expect("invariants");
    let next = sim.tick().expect("invariants");
    assert_eq!(stops(&next).len(), 1, "{next:#?}");
    sim.run(200).expect("converges");
}

/// With nothing else to do, the plan says why it waits.
#[test]
fn a_deploy_waits_for_unknown_health_and_says_so() {
    let mut sim = Sim::new(desired(vec![("web", service(2, 1, rolling(0, 1, 0)))]));
    sim.running("web", 1, 1);
    sim.restarted("web");
    let actions = plan(&sim.desired, &sim.observed, sim.now);
    assert!(
        actions.iter().any(|a| matches!(a, Action::Wait { reason, .. } if reason.contains("health check of web-1-old0"))),
        "{actions:#?}"
    );
    assert!(stops(&actions).is_empty(), "{actions:#?}");
}

#[test]
fn exclusive_volume_stops_the_old_instance_first() {
    let mut db = service(2, 1, rolling(1, 0, 0));
    db.volumes_exclusive = true;
    let mut sim = Sim::new(desired(vec![("db", db)]));
    sim.running("db", 1, 1);
    let first = sim.tick().expect("invariants");
    assert_eq!(starts(&first), 0);
    let Some(Action::Stop { reason, .. }) = first.iter().find(|a| matches!(a, Action::Stop { .. }))
    else {
        panic!("stops the old instance: {first:#?}")
    };
    assert!(reason.contains("exclusive"), "{reason}");
    let second = sim.tick().expect("invariants");
    assert_eq!(starts(&second), 1, "the old one has exited: {second:#?}");
    sim.run(50).expect("converges");
}

#[test]
fn blue_green_switches_when_all_are_healthy_and_keeps_the_old_set() {
    let strategy = DeployStrategy::BlueGreen {
        healthy_deadline: Duration::from_secs(30),
        keep_old: Duration::from_secs(10),
    };
    let mut sim = Sim::new(desired(vec![("web", service(2, 3, strategy))]));
    sim.running("web", 1, 3);
    assert_eq!(
        starts(&sim.tick().expect("invariants")),
        3,
        "a full new set at once"
    );
    let mut switched_at = None;
    let mut old_stopped_at = None;
    for _ in 0..40 {
        let actions = sim.tick().expect("invariants");
        if actions
            .iter()
            .any(|a| matches!(a, Action::AdvanceStep { step: 1, .. }))
        {
            assert_eq!(sim.ready("web"), 6, "switch only with all new healthy");
            switched_at = Some(sim.now);
        }
        if !stops(&actions).is_empty() && old_stopped_at.is_none() {
            old_stopped_at = Some(sim.now);
        }
    }
    let (switched, stopped) = (
        switched_at.expect("switched"),
        old_stopped_at.expect("old stopped"),
    );
    assert_eq!(stopped.since(switched), Duration::from_secs(10), "keep_old");
    assert!(sim.settled());
}

#[test]
fn canary_follows_steps_and_waits_for_a_manual_promote() {
    let strategy = DeployStrategy::Canary {
        steps: vec![1, 2, 4],
        pause: None,
        min_healthy_time: Duration::ZERO,
        healthy_deadline: Duration::from_secs(30),
    };
    let mut sim = Sim::new(desired(vec![("web", service(2, 4, strategy))]));
    sim.auto_promote = false;
    sim.running("web", 1, 4);
    for _ in 0..20 {
        sim.tick().expect("invariants");
    }
    let new = |sim: &Sim| sim.live("web").iter().filter(|i| i.release == 2).count();
    assert_eq!(new(&sim), 1, "step 1 is one instance");
    assert_eq!(sim.live("web").len(), 4, "one old instance made room");
    let waiting = sim.tick().expect("invariants");
    assert!(
        matches!(&waiting[..], [Action::Wait { until: None, reason, .. }] if reason.contains("berth promote")),
        "{waiting:#?}"
    );
    sim.observed
        .deploys
        .get_mut("web")
        .expect("deploy")
        .promoted_at = Some(sim.now);
    for _ in 0..10 {
        sim.tick().expect("invariants");
    }
    assert_eq!(new(&sim), 2, "step 2 after the promote");
    sim.auto_promote = true;
    sim.run(100).expect("converges");
}

#[test]
fn dependencies_start_first() {
    let mut web = service(1, 2, rolling(1, 0, 0));
    web.depends_on.insert("db".into(), Condition::Healthy);
    let mut sim = Sim::new(desired(vec![
        ("db", service(1, 1, rolling(1, 0, 0))),
        ("web", web),
    ]));
    let first = sim.tick().expect("invariants");
    assert!(first
        .iter()
        .all(|a| !matches!(a, Action::Start { service, .. } if service == "web")));
    assert!(first.iter().any(
        |a| matches!(a, Action::Wait { reason, .. } if reason == "waiting for `db` to be healthy")
    ));
    sim.run(50).expect("converges");
}

#[test]
fn a_release_that_never_gets_healthy_fails_and_rolls_back() {
    let mut sim = Sim::new(desired(vec![("web", service(2, 3, rolling(1, 0, 0)))]));
    sim.running("web", 1, 3);
    sim.behaves("web", 2, Behaviour::Crashes);
    let all = sim.run(200).expect("settles");
    assert_eq!(sim.failed, [("web".to_string(), 2)]);
    let failure = all
        .iter()
        .find(|a| matches!(a, Action::MarkDeployFailed { .. }))
        .expect("failed");
    assert!(
        failure.reason().contains("rolling back to release 1"),
        "{}",
        failure.reason()
    );
    assert!(sim
        .live("web")
        .iter()
        .all(|i| i.release == 1 && i.is_ready()));
    assert_eq!(sim.live("web").len(), 3);
}

#[test]
fn self_healing_replaces_exited_and_unhealthy_instances_without_overshooting() {
    let mut sim = Sim::new(desired(vec![("web", service(1, 3, rolling(1, 0, 0)))]));
    sim.running("web", 1, 3);
    sim.observed.instances[0].state = InstanceState::Exited {
        code: 1,
        at: sim.now,
    };
    sim.observed.instances[1].state = InstanceState::Exited {
        code: 137,
        at: sim.now,
    };
    sim.observed.instances[2].state = InstanceState::Running {
        healthy: Some(false),
        since: sim.now,
    };
    let actions = sim.tick().expect("invariants");
    assert_eq!(stops(&actions), ["web-1-old2"]);
    assert_eq!(
        starts(&actions),
        3,
        "one per missing replica, within replicas + max_surge"
    );
    assert_eq!(
        starts(&sim.tick().expect("invariants")),
        0,
        "no more while they start"
    );
    sim.run(50).expect("converges");
}

#[test]
fn removed_services_are_stopped_and_scale_is_a_changed_replica_count() {
    let mut sim = Sim::new(desired(vec![("web", service(1, 1, rolling(1, 0, 0)))]));
    sim.running("web", 1, 3);
    sim.running("old", 1, 1);
    let actions = sim.tick().expect("invariants");
    assert!(actions.iter().any(|a| matches!(a, Action::Stop { instance, reason } if instance == "old-1-old0" && reason.contains("no longer"))));
    assert_eq!(
        stops(&actions).len(),
        3,
        "two web instances scaled away, one removed service"
    );
}

#[test]
fn instance_names_count_in_letters() {
    let mut taken = BTreeSet::from(["web-7-a".to_string()]);
    assert_eq!(instance_name("web", 7, &mut taken), "web-7-b");
    for _ in 0..24 {
        instance_name("web", 7, &mut taken);
    }
    assert_eq!(instance_name("web", 7, &mut taken), "web-7-aa");
}

fn strategy() -> impl PropStrategy<Value = DeployStrategy> {
    prop_oneof![
        (0u32..3, 0u32..3, 0u64..4).prop_map(|(surge, unavailable, mht)| rolling(
            surge,
            unavailable,
            mht
        )),
        (0u64..12).prop_map(|keep| DeployStrategy::BlueGreen {
            healthy_deadline: Duration::from_secs(30),
            keep_old: Duration::from_secs(keep)
        }),
        (
            proptest::collection::vec(1u32..6, 1..4),
            proptest::option::of(0u64..8),
            0u64..4
        )
            .prop_map(|(mut steps, pause, mht)| {
                steps.sort_unstable();
                DeployStrategy::Canary {
                    steps,
                    pause: pause.map(Duration::from_secs),
                    min_healthy_time: Duration::from_secs(mht),
                    healthy_deadline: Duration::from_secs(30),
                }
            }),
    ]
}

fn behaviour() -> impl PropStrategy<Value = Behaviour> {
    prop_oneof![
        3 => Just(Behaviour::Healthy),
        1 => Just(Behaviour::NeverHealthy),
        1 => Just(Behaviour::Crashes),
    ]
}

fn condition() -> impl PropStrategy<Value = Option<Condition>> {
    prop_oneof![
        Just(None),
        Just(Some(Condition::Started)),
        Just(Some(Condition::Healthy))
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Random apps deployed to completion: limits hold on every plan, and the deploy either
    /// converges on the new release or fails and converges back on the old one.
    #[test]
    fn deploys_keep_their_limits_and_converge(
        db_replicas in 0u32..2,
        db_old in 0u32..2,
        db_exclusive in any::<bool>(),
        db_strategy in strategy(),
        web_replicas in 0u32..6,
        web_old in 0u32..6,
        web_strategy in strategy(),
        web_behaviour in behaviour(),
        web_needs in condition(),
        web_restarted in any::<bool>(),
        web_warm in any::<bool>(),
    ) {
        let mut db = service(2, db_replicas, db_strategy);
        db.volumes_exclusive = db_exclusive;
        let mut web = service(2, web_replicas, web_strategy);
        if web_warm {
            web.keep_warm = Duration::from_secs(30);
        }
        if let Some(condition) = web_needs {
            web.depends_on.insert("db".into(), condition);
        }
        let mut sim = Sim::new(desired(vec![("db", db), ("web", web)]));
        sim.running("db", 1, db_old);
        sim.running("web", 1, web_old);
        if web_restarted {
            sim.restarted("web");
        }
        sim.behaves("web", 2, web_behaviour);
        if let Err(violation) = sim.run(600) {
            return Err(TestCaseError::fail(violation));
        }
        let web_failed = sim.failed.iter().any(|(service, _)| service == "web");
        if web_behaviour == Behaviour::Healthy || web_replicas == 0 {
            prop_assert!(sim.failed.is_empty(), "healthy releases never fail: {:?}", sim.failed);
            prop_assert_eq!(sim.desired.services["web"].release, 2);
        } else {
            prop_assert!(web_failed, "a release that never gets healthy fails");
            prop_assert!(sim.failed.iter().all(|(_, release)| *release == 2));
            if web_old > 0 {
                prop_assert_eq!(sim.desired.services["web"].release, 1, "rolled back");
                let live = sim.live("web");
                prop_assert_eq!(live.len(), web_replicas as usize);
                prop_assert!(live.iter().all(|i| i.release == 1 && i.is_ready()));
            }
        }
        let db_live = sim.live("db");
        prop_assert_eq!(db_live.len(), db_replicas as usize);
        prop_assert!(db_live.iter().all(|i| i.release == 2 && i.is_ready()));
    }
}

#[test]
fn a_paused_deploy_does_nothing_and_goes_on_after_its_deadline_would_have_passed() {
    let mut sim = Sim::new(desired(vec![("web", service(2, 3, rolling(1, 0, 0)))]));
    sim.running("web", 1, 3);
    for _ in 0..3 {
        sim.tick().expect("invariants");
    }
    let before: Vec<(String, InstanceState)> = sim
        .observed
        .instances
        .iter()
        .map(|i| (i.id.clone(), i.state))
        .collect();
    let deploy = sim.observed.deploys.get_mut("web").expect("deploy");
    deploy.paused_since = Some(sim.now);
    // Twice the 30 s deadline: nothing starts, stops or fails.
    for _ in 0..60 {
        let actions = sim.tick().expect("invariants");
        assert!(
            matches!(&actions[..], [Action::Wait { until: None, reason, .. }] if reason.contains("berth resume")),
            "{actions:#?}"
        );
    }
    let ids: Vec<&String> = sim.observed.instances.iter().map(|i| &i.id).collect();
    assert_eq!(ids, before.iter().map(|(id, _)| id).collect::<Vec<_>>());
    let deploy = sim.observed.deploys.get_mut("web").expect("deploy");
    deploy.paused_since = None;
    deploy.resumed_at = Some(sim.now);
    sim.run(100).expect("converges after the resume");
    assert!(sim.failed.is_empty(), "{:?}", sim.failed);
}

#[test]
fn a_canary_promoted_after_its_deadline_would_have_passed_goes_on() {
    let strategy = DeployStrategy::Canary {
        steps: vec![1, 2],
        pause: None,
        min_healthy_time: Duration::ZERO,
        healthy_deadline: Duration::from_secs(30),
    };
    let mut sim = Sim::new(desired(vec![("web", service(2, 4, strategy))]));
    sim.auto_promote = false;
    sim.running("web", 1, 4);
    // Step 1 done, then an operator takes 100 s to promote.
    for _ in 0..110 {
        sim.tick().expect("invariants");
    }
    sim.observed
        .deploys
        .get_mut("web")
        .expect("deploy")
        .promoted_at = Some(sim.now);
    sim.auto_promote = true;
    sim.run(100).expect("converges");
    assert!(
        sim.failed.is_empty(),
        "failed after the promote: {:?}",
        sim.failed
    );
}

#[test]
fn a_failed_canary_stops_at_once_and_the_stable_release_fills_up() {
    let strategy = DeployStrategy::Canary {
        steps: vec![1, 2],
        pause: Some(Duration::from_secs(60)),
        min_healthy_time: Duration::ZERO,
        healthy_deadline: Duration::from_secs(30),
    };
    let mut sim = Sim::new(desired(vec![("web", service(2, 4, strategy))]));
    sim.running("web", 1, 4);
    for _ in 0..30 {
        sim.tick().expect("invariants");
    }
    let canaries: Vec<String> = sim
        .live("web")
        .iter()
        .filter(|i| i.release == 2)
        .map(|i| i.id.clone())
        .collect();
    assert!(!canaries.is_empty(), "the canary runs");
    // The proxy saw the canary fail: the controller marks it failed and goes back to 1.
    sim.apply(&Action::MarkDeployFailed {
        service: "web".into(),
        release: 2,
        reason: "5xx".into(),
    });
    let actions = plan(&sim.desired, &sim.observed, sim.now);
    let stopped = stops(&actions);
    for canary in &canaries {
        assert!(
            stopped.contains(&canary.as_str()),
            "{canary} still runs: {actions:#?}"
        );
    }
    sim.run(100).expect("back on release 1");
    assert!(sim
        .live("web")
        .iter()
        .all(|i| i.release == 1 && i.is_ready()));
    assert_eq!(sim.live("web").len(), 4);
}

#[test]
fn replaced_instances_are_kept_warm_and_a_rollback_thaws_them() {
    let mut warm = service(2, 3, rolling(1, 0, 0));
    warm.keep_warm = Duration::from_secs(60);
    let mut sim = Sim::new(desired(vec![("web", warm)]));
    sim.running("web", 1, 3);
    let all = sim.run(100).expect("deploys");
    let parked = |sim: &Sim| -> Vec<String> {
        sim.observed
            .instances
            .iter()
            .filter(|i| i.is_parked())
            .map(|i| i.id.clone())
            .collect()
    };
    assert_eq!(
        parked(&sim).len(),
        3,
        "the old instances are parked, not stopped"
    );
    assert!(
        !all.iter().any(|a| matches!(a, Action::Stop { .. })),
        "{all:#?}"
    );

    // A rollback to release 1: the three warm instances thaw, none starts.
    sim.desired.services.get_mut("web").expect("web").release = 1;
    let first = sim.tick().expect("invariants");
    let unparked = first
        .iter()
        .filter(|a| matches!(a, Action::Unpark { .. }))
        .count();
    assert_eq!(unparked, 3, "{first:#?}");
    assert_eq!(starts(&first), 0, "{first:#?}");
    // In the next plan release 2 is replaced at once: the thawed ones count as available.
    let second = sim.tick().expect("invariants");
    assert_eq!(
        second
            .iter()
            .filter(|a| matches!(a, Action::Park { .. }))
            .count(),
        3,
        "{second:#?}"
    );
    sim.run(100).expect("settles on release 1");
    assert!(sim.live("web").iter().all(|i| i.release == 1));

    // Warm instances go when their time is up.
    for _ in 0..61 {
        sim.tick().expect("invariants");
    }
    assert!(parked(&sim).is_empty(), "{:?}", parked(&sim));
}

#[test]
fn only_the_release_a_deploy_replaced_stays_warm() {
    let mut warm = service(2, 2, rolling(1, 0, 0));
    warm.keep_warm = Duration::from_secs(600);
    let mut sim = Sim::new(desired(vec![("web", warm)]));
    sim.running("web", 1, 2);
    sim.run(100).expect("deploys 2");
    sim.desired.services.get_mut("web").expect("web").release = 3;
    sim.run(100).expect("deploys 3");
    for _ in 0..5 {
        sim.tick().expect("invariants");
    }
    let warm: BTreeSet<ReleaseId> = sim
        .observed
        .instances
        .iter()
        .filter(|i| i.is_parked())
        .map(|i| i.release)
        .collect();
    assert_eq!(warm, BTreeSet::from([2]));
}
