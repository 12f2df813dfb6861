//! Planning one service: deploy bookkeeping, then starts and stops within the strategy's
//! limits.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{
    dependency_unmet, instance_name, Action, DeployState, DeployStrategy, Desired, DesiredService,
    Instance, InstanceState, Observed, ReleaseId, RestartPolicy, Timestamp,
};

/// The limits one plan of a service works within.
struct Limits {
    /// New instances wanted now (a canary step may want fewer than `replicas`).
    start_target: u32,
    /// Live instances allowed, stopping ones included.
    cap: u32,
    /// Ready instances that must remain when stopping old ones.
    min_available: u32,
    /// How long a new instance must be ready before it counts as available.
    min_healthy_time: Duration,
    /// How long the deploy may go without a new instance becoming ready.
    healthy_deadline: Duration,
    /// Old ready instances must keep running (blue/green before its switch and `keep_old`).
    hold_old: Option<(Option<Timestamp>, String)>,
    /// The deploy waits (canary pause) before starting more new instances.
    gate: Option<(Option<Timestamp>, String)>,
}

pub(super) fn plan_service(
    name: &str,
    service: &DesiredService,
    desired: &Desired,
    observed: &Observed,
    now: Timestamp,
    names: &mut BTreeSet<String>,
    actions: &mut Vec<Action>,
) {
    let target = service.release;
    let replicas = service.replicas;
    let instances: Vec<&Instance> = observed
        .instances
        .iter()
        .filter(|i| i.service == name)
        .collect();
    let live: Vec<&Instance> = instances.iter().copied().filter(|i| i.is_live()).collect();

    let state = match observed.deploys.get(name) {
        Some(state) if state.to_release == target => state.clone(),
        _ => {
            let from = most_common_release(live.iter().filter(|i| i.release != target));
            actions.push(Action::BeginDeploy {
                service: name.to_string(),
                from_release: from,
                to_release: target,
                reason: match from {
                    Some(from) => format!("release {target} replaces release {from}"),
                    None => format!("first release of `{name}`: {target}"),
                },
            });
            DeployState::begin(from, target, now)
        }
    };
    if state.failed {
        actions.push(Action::Wait {
            service: name.to_string(),
            until: None,
            reason: format!(
                "the deploy of release {target} failed; waiting for a rollback or a new release"
            ),
        });
        return;
    }
    if let (Some(since), false) = (state.paused_since, state.finished) {
        actions.push(Action::Wait {
            service: name.to_string(),
            until: None,
            reason: format!(
                "the deploy of release {target} is paused (for {}s): `berth resume` lets it go on",
                now.since(since).as_secs()
            ),
        });
        return;
    }
    let first_deploy = state.from_release.is_none() || live.iter().all(|i| i.release == target);
    let before = actions.len();

    // Warm instances: thawed when their release is wanted again (a rollback: they serve at
    // once), stopped once their time is up or when they are not of the release this deploy
    // replaces (one warm release per service at most).
    let mut unpark_room =
        replicas.saturating_sub(count(live.iter().filter(|i| i.release == target)));
    let mut unparked = 0;
    for instance in instances.iter().filter(|i| i.is_parked()) {
        let InstanceState::Parked { since } = instance.state else {
            continue;
        };
        if instance.release == target && unpark_room > 0 {
            unpark_room -= 1;
            unparked += 1;
            actions.push(Action::Unpark {
                instance: instance.id.clone(),
                reason: format!(
                    "release {target} is wanted again: {} was kept warm and serves at once",
                    instance.id
                ),
            });
            continue;
        }
        let expired = now.since(since) >= service.keep_warm;
        let other = instance.release == target || state.from_release != Some(instance.release);
        let failed = observed
            .failed
            .contains(&(name.to_owned(), instance.release));
        if expired || other || failed {
            actions.push(Action::Stop {
                instance: instance.id.clone(),
                reason: if expired {
                    format!(
                        "{} (release {}) was kept warm for {}s",
                        instance.id,
                        instance.release,
                        service.keep_warm.as_secs()
                    )
                } else {
                    format!(
                        "{} (release {}) is no longer needed warm",
                        instance.id, instance.release
                    )
                },
            });
        }
    }

    // Unhealthy instances are replaced, old or new: they serve nothing. Instances of a
    // release that failed go at once, as long as the desired release has an instance that
    // can take their traffic (with none, they serve until replacements are ready, like any
    // old instance: some answers beat none).
    let target_ready = live.iter().any(|i| i.release == target && i.is_ready());
    let mut active: Vec<&Instance> = Vec::new();
    for instance in &live {
        match instance.state {
            InstanceState::Stopping => {}
            _ if target_ready
                && instance.release != target
                && observed
                    .failed
                    .contains(&(name.to_owned(), instance.release)) =>
            {
                actions.push(Action::Stop {
                    instance: instance.id.clone(),
                    reason: format!(
                        "release {} of `{name}` failed: {} stops at once",
                        instance.release, instance.id
                    ),
                });
            }
            InstanceState::Running {
                healthy: Some(false),
                ..
            } => {
                actions.push(Action::Stop {
                    instance: instance.id.clone(),
                    reason: format!("{} is unhealthy; a replacement will start", instance.id),
                });
            }
            _ => active.push(instance),
        }
    }
    let (new, old): (Vec<&Instance>, Vec<&Instance>) =
        active.iter().partition(|i| i.release == target);
    let settled = settled(service, &instances).min(replicas);
    let limits = limits(service, &state, first_deploy, now);
    let new_ready = count(new.iter().filter(|i| i.is_ready()));
    let new_stable = count(new.iter().filter(|i| {
        i.ready_since()
            .is_some_and(|since| now.since(since) >= limits.min_healthy_time)
    }));
    let total = count(live.iter());

    // Deadline: fail when no new instance became ready for `healthy_deadline`. Time the
    // deploy spent held (a canary pause, waiting for a promote, paused by an operator) does
    // not count: the clock starts again when it goes on.
    if !state.finished && limits.gate.is_none() && new_ready + settled < limits.start_target {
        let pause_ended = match &service.strategy {
            DeployStrategy::Canary {
                pause: Some(pause), ..
            } if state.step > 0 => Some(state.step_started_at + *pause),
            _ => None,
        };
        let progress = new
            .iter()
            .filter_map(|i| i.ready_since())
            .chain([state.step_started_at])
            .chain(state.promoted_at)
            .chain(state.resumed_at)
            .chain(pause_ended)
            .max()
            .unwrap_or(state.step_started_at);
        let deadline = progress + limits.healthy_deadline;
        if now >= deadline {
            actions.truncate(before);
            actions.push(Action::MarkDeployFailed {
                service: name.to_string(),
                release: target,
                reason: format!(
                    "release {target} of `{name}`: {new_ready} of {} instances healthy after {}s without progress{}",
                    limits.start_target,
                    limits.healthy_deadline.as_secs(),
                    match state.from_release {
                        Some(from) => format!("; rolling back to release {from}"),
                        None => String::new(),
                    }
                ),
            });
            return;
        }
    }

    // Starts: as many new instances as wanted, within the cap, once dependencies allow.
    let mut waits: Vec<(Option<Timestamp>, String)> = Vec::new();
    let want = limits
        .start_target
        .saturating_sub(count(new.iter()) + settled + unparked);
    let room = limits.cap.saturating_sub(total + unparked);
    if let Some(gate) = &limits.gate {
        waits.push(gate.clone());
    } else if want > 0 && room == 0 && service.volumes_exclusive && total > 0 {
        waits.push((None, format!("waiting for the old instance of `{name}` to stop: its volume is exclusive to one instance")));
    } else if want > 0 {
        let unmet: Vec<String> = service
            .depends_on
            .iter()
            .filter_map(|(dependency, condition)| {
                dependency_unmet(dependency, *condition, desired, observed)
            })
            .collect();
        if !unmet.is_empty() {
            waits.push((None, unmet.join("; ")));
        } else {
            let running = count(new.iter());
            for index in 0..want.min(room) {
                let instance = instance_name(name, target, names);
                let reason = if state.finished || first_deploy && state.from_release.is_none() {
                    format!(
                        "{} of {replicas} instances of release {target} running; starting one more",
                        running + index
                    )
                } else {
                    format!(
                        "deploying release {target}: new instance {} of {}",
                        running + index + 1,
                        limits.start_target
                    )
                };
                actions.push(Action::Start {
                    service: name.to_string(),
                    release: target,
                    instance,
                    reason,
                });
            }
        }
    }

    // Stops: old instances that are not ready go at once; ready ones while enough stay ready.
    let mut old_ready_left = count(old.iter().filter(|i| i.is_ready()));
    let mut available = old_ready_left + new_stable;
    let mut old_sorted = old.clone();
    old_sorted.sort_by_key(|i| (i.is_ready(), i.started_at, i.id.clone()));
    for instance in old_sorted {
        if matches!(instance.state, InstanceState::Unknown { .. }) {
            // Maybe serving: neither stopped as unready nor counted as available.
            waits.push((
                None,
                format!(
                    "waiting for the health check of {} (release {}) to decide",
                    instance.id, instance.release
                ),
            ));
            continue;
        }
        if !instance.is_ready() {
            actions.push(Action::Stop {
                instance: instance.id.clone(),
                reason: format!(
                    "{} (release {}) is not ready; release {target} replaces it",
                    instance.id, instance.release
                ),
            });
            continue;
        }
        if let Some(hold) = &limits.hold_old {
            // Held, but never more old instances than replicas: those would block the new set.
            if old_ready_left <= replicas {
                waits.push(hold.clone());
                break;
            }
            old_ready_left -= 1;
            actions.push(Action::Stop {
                instance: instance.id.clone(),
                reason: format!("`{name}` is scaled to {replicas} instances"),
            });
            continue;
        }
        if available <= limits.min_available {
            if new_ready > new_stable {
                let until = new
                    .iter()
                    .filter_map(|i| i.ready_since())
                    .map(|since| since + limits.min_healthy_time)
                    .filter(|until| *until > now)
                    .min();
                waits.push((
                    until,
                    format!(
                        "new instances of `{name}` must stay healthy for {}s before old ones stop",
                        limits.min_healthy_time.as_secs()
                    ),
                ));
            }
            break;
        }
        available -= 1;
        let warm = !service.keep_warm.is_zero()
            && !service.volumes_exclusive
            && state.from_release == Some(instance.release)
            && !observed
                .failed
                .contains(&(name.to_owned(), instance.release));
        if warm {
            actions.push(Action::Park {
                instance: instance.id.clone(),
                reason: format!(
                    "{} (release {}) is replaced by release {target}; kept warm for {}s for an instant rollback",
                    instance.id,
                    instance.release,
                    service.keep_warm.as_secs()
                ),
            });
            continue;
        }
        let reason = if service.volumes_exclusive {
            format!("stopping {} before its replacement starts: the volume of `{name}` is exclusive to one instance", instance.id)
        } else {
            format!(
                "{} (release {}) is replaced by release {target}",
                instance.id, instance.release
            )
        };
        actions.push(Action::Stop {
            instance: instance.id.clone(),
            reason,
        });
    }

    // More new instances than replicas (a scale-down): stop the least useful first.
    let mut surplus = count(new.iter()).saturating_sub(replicas);
    let mut by_use = new.clone();
    by_use.sort_by_key(|i| (i.is_ready(), std::cmp::Reverse(i.id.clone())));
    for instance in by_use {
        if surplus == 0 {
            break;
        }
        surplus -= 1;
        actions.push(Action::Stop {
            instance: instance.id.clone(),
            reason: format!("`{name}` is scaled to {replicas} instances"),
        });
    }

    // Deploy bookkeeping: steps and completion.
    let old_live = live.iter().filter(|i| i.release != target).count();
    if !state.finished && limits.gate.is_none() && new_stable + settled >= limits.start_target {
        match &service.strategy {
            DeployStrategy::Canary { steps, pause, .. }
                if !first_deploy && state.step + 1 < canary_counts(steps, replicas).len() =>
            {
                let steps = canary_counts(steps, replicas);
                actions.push(Action::AdvanceStep {
                    service: name.to_string(),
                    release: target,
                    step: state.step + 1,
                    reason: format!(
                        "canary step {} of {} healthy ({new_stable} of {replicas} instances on release {target}); {}",
                        state.step + 1,
                        steps.len(),
                        match pause {
                            Some(pause) => format!("pausing {}s", pause.as_secs()),
                            None => format!("waiting for `berth promote` of `{name}`"),
                        }
                    ),
                });
                return;
            }
            DeployStrategy::BlueGreen { keep_old, .. }
                if !first_deploy && state.step == 0 && !service.volumes_exclusive =>
            {
                actions.push(Action::AdvanceStep {
                    service: name.to_string(),
                    release: target,
                    step: 1,
                    reason: format!(
                        "all {replicas} instances of release {target} healthy: switching traffic; the old set stays {}s for an instant rollback",
                        keep_old.as_secs()
                    ),
                });
                return;
            }
            _ => {}
        }
        if old_live == 0 && count(new.iter()) + settled <= replicas {
            actions.push(Action::FinishDeploy {
                service: name.to_string(),
                release: target,
                reason: format!("{replicas} of {replicas} instances of `{name}` on release {target} and healthy"),
            });
            return;
        }
    }

    if actions.len() == before
        || actions[before..]
            .iter()
            .all(|a| matches!(a, Action::BeginDeploy { .. }))
    {
        if let Some((until, reason)) = waits
            .into_iter()
            .min_by_key(|(until, _)| until.unwrap_or(Timestamp(u64::MAX)))
        {
            actions.push(Action::Wait {
                service: name.to_string(),
                until,
                reason,
            });
        }
    }
}

fn limits(
    service: &DesiredService,
    state: &DeployState,
    first_deploy: bool,
    now: Timestamp,
) -> Limits {
    let replicas = service.replicas;
    let mut limits = match &service.strategy {
        _ if service.volumes_exclusive => Limits {
            start_target: replicas,
            cap: 1,
            min_available: replicas.saturating_sub(1),
            min_healthy_time: rolling_min_healthy_time(service),
            healthy_deadline: deadline_of(&service.strategy),
            hold_old: None,
            gate: None,
        },
        DeployStrategy::Rolling {
            max_surge,
            max_unavailable,
            min_healthy_time,
            healthy_deadline,
        } => {
            // Both zero could never progress; the spec refuses it, the planner surges by one.
            let surge = if *max_surge == 0 && *max_unavailable == 0 {
                1
            } else {
                *max_surge
            };
            Limits {
                start_target: replicas,
                cap: replicas + surge,
                min_available: replicas.saturating_sub(*max_unavailable),
                min_healthy_time: *min_healthy_time,
                healthy_deadline: *healthy_deadline,
                hold_old: None,
                gate: None,
            }
        }
        DeployStrategy::BlueGreen {
            healthy_deadline,
            keep_old,
        } => {
            let hold_old = match state.step {
                _ if first_deploy || state.finished => None,
                0 => Some((
                    None,
                    format!("the old set serves until all {replicas} new instances are healthy"),
                )),
                _ => {
                    let until = state.step_started_at + *keep_old;
                    (now < until).then(|| {
                        (
                            Some(until),
                            format!(
                                "the old set is kept {}s after the switch for an instant rollback",
                                keep_old.as_secs()
                            ),
                        )
                    })
                }
            };
            Limits {
                start_target: replicas,
                cap: replicas * 2,
                min_available: replicas,
                min_healthy_time: Duration::ZERO,
                healthy_deadline: *healthy_deadline,
                hold_old,
                gate: None,
            }
        }
        DeployStrategy::Canary {
            steps,
            pause,
            min_healthy_time,
            healthy_deadline,
        } => {
            let counts = canary_counts(steps, replicas);
            let step = state.step.min(counts.len() - 1);
            let mut start_target = counts[step];
            let mut gate = None;
            if step > 0 && !state.finished && !first_deploy {
                match pause {
                    Some(pause) if now < state.step_started_at + *pause => {
                        gate = Some((
                            Some(state.step_started_at + *pause),
                            format!(
                                "canary pause of {}s before step {}",
                                pause.as_secs(),
                                step + 1
                            ),
                        ));
                    }
                    None if state.promoted_at.is_none() => {
                        gate = Some((
                            None,
                            format!(
                                "canary step {step} done; run `berth promote` to go on to step {}",
                                step + 1
                            ),
                        ));
                    }
                    _ => {}
                }
                if gate.is_some() {
                    start_target = counts[step - 1];
                }
            }
            if first_deploy || state.finished {
                start_target = replicas;
            }
            let surge = counts
                .windows(2)
                .map(|w| w[1] - w[0])
                .chain([counts[0]])
                .max()
                .unwrap_or(1)
                .max(1);
            Limits {
                start_target,
                cap: replicas + surge,
                min_available: replicas,
                min_healthy_time: *min_healthy_time,
                healthy_deadline: *healthy_deadline,
                hold_old: None,
                gate,
            }
        }
    };
    if state.finished {
        limits.gate = None;
    }
    limits
}

/// Canary steps as increasing instance counts ending at `replicas`.
fn canary_counts(steps: &[u32], replicas: u32) -> Vec<u32> {
    let mut counts: Vec<u32> = Vec::new();
    for step in steps {
        let step = (*step).clamp(1, replicas.max(1)).min(replicas);
        if counts.last().is_none_or(|last| step > *last) {
            counts.push(step);
        }
    }
    if counts.last() != Some(&replicas) {
        counts.push(replicas);
    }
    counts
}

fn rolling_min_healthy_time(service: &DesiredService) -> Duration {
    match service.strategy {
        DeployStrategy::Rolling {
            min_healthy_time, ..
        }
        | DeployStrategy::Canary {
            min_healthy_time, ..
        } => min_healthy_time,
        DeployStrategy::BlueGreen { .. } => Duration::ZERO,
    }
}

fn deadline_of(strategy: &DeployStrategy) -> Duration {
    match strategy {
        DeployStrategy::Rolling {
            healthy_deadline, ..
        }
        | DeployStrategy::BlueGreen {
            healthy_deadline, ..
        }
        | DeployStrategy::Canary {
            healthy_deadline, ..
        } => *healthy_deadline,
    }
}

/// Exited instances of the desired release that the restart policy says stay exited.
fn settled(service: &DesiredService, instances: &[&Instance]) -> u32 {
    count(instances.iter().filter(|i| {
        i.release == service.release
            && matches!(
                (service.restart, i.state),
                (
                    RestartPolicy::No,
                    InstanceState::Exited { .. } | InstanceState::Failed
                ) | (
                    RestartPolicy::OnFailure,
                    InstanceState::Exited { code: 0, .. }
                )
            )
    }))
}

fn most_common_release<'a>(instances: impl Iterator<Item = &'a &'a Instance>) -> Option<ReleaseId> {
    let mut counts = std::collections::BTreeMap::new();
    for instance in instances {
        *counts.entry(instance.release).or_insert(0u32) += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(release, n)| (*n, *release))
        .map(|(release, _)| release)
}

fn count<T>(items: impl Iterator<Item = T>) -> u32 {
    u32::try_from(items.count()).unwrap_or(u32::MAX)
}
