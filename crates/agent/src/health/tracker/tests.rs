use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn policy(healthy_after: u32, unhealthy_after: u32, start_period: Duration) -> HealthPolicy {
    HealthPolicy {
        healthy_after,
        unhealthy_after,
        start_period,
    }
}

/// Feeds verdicts one second apart, starting one second after the start; the health after each.
fn run(policy: HealthPolicy, verdicts: &[bool]) -> Vec<Health> {
    let start = Instant::now();
    let mut tracker = HealthTracker::new(policy, start);
    verdicts
        .iter()
        .enumerate()
        .map(|(i, ok)| {
            tracker.observe(start + Duration::from_secs(i as u64 + 1), *ok);
            tracker.health()
        })
        .collect()
}

use Health::{Healthy as H, Starting as S, Unhealthy as U};

#[test]
fn starts_starting_and_becomes_healthy_after_enough_passes() {
    assert_eq!(run(policy(1, 3, Duration::ZERO), &[true]), [H]);
    assert_eq!(
        run(policy(3, 3, Duration::ZERO), &[true, true, true]),
        [S, S, H]
    );
}

#[test]
fn a_failure_restarts_the_count_of_passes() {
    let verdicts = [true, true, false, true, true, true];
    assert_eq!(
        run(policy(3, 5, Duration::ZERO), &verdicts),
        [S, S, S, S, S, H]
    );
}

#[test]
fn becomes_unhealthy_after_enough_consecutive_failures() {
    let verdicts = [true, false, false, true, false, false, false];
    assert_eq!(
        run(policy(1, 3, Duration::ZERO), &verdicts),
        [H, H, H, H, H, H, U]
    );
}

#[test]
fn recovers_after_enough_passes() {
    let verdicts = [false, false, true, false, true, true];
    assert_eq!(
        run(policy(2, 2, Duration::ZERO), &verdicts),
        [S, U, U, U, U, H]
    );
}

#[test]
fn a_starting_instance_that_never_passes_becomes_unhealthy() {
    assert_eq!(run(policy(1, 2, Duration::ZERO), &[false, false]), [S, U]);
}

#[test]
fn failures_within_the_start_period_do_not_count() {
    // Probes at 1s..=6s; the start period covers the first four (1s, 2s, 3s, 4s).
    let verdicts = [false, false, false, false, false, false];
    assert_eq!(
        run(policy(1, 2, Duration::from_millis(4500)), &verdicts),
        [S, S, S, S, S, U]
    );
}

#[test]
fn a_pass_within_the_start_period_makes_it_healthy() {
    let verdicts = [false, true];
    assert_eq!(
        run(policy(1, 1, Duration::from_secs(60)), &verdicts),
        [S, H]
    );
}

#[test]
fn the_start_period_does_not_apply_once_healthy() {
    let verdicts = [true, false];
    assert_eq!(
        run(policy(1, 1, Duration::from_secs(60)), &verdicts),
        [H, U]
    );
}

#[test]
fn thresholds_of_zero_act_as_one() {
    assert_eq!(
        run(policy(0, 0, Duration::ZERO), &[true, false, true]),
        [H, U, H]
    );
}

#[test]
fn transitions_are_reported_once_with_their_streak() {
    let start = Instant::now();
    let mut tracker = HealthTracker::new(policy(2, 2, Duration::ZERO), start);
    let at = |s: u64| start + Duration::from_secs(s);
    assert_eq!(tracker.observe(at(1), true), None);
    assert_eq!(
        tracker.observe(at(2), true),
        Some(Transition {
            from: S,
            to: H,
            at: at(2),
            streak: 2
        })
    );
    assert_eq!(tracker.observe(at(3), true), None);
    assert_eq!(tracker.observe(at(4), false), None);
    assert_eq!(
        tracker.observe(at(5), false),
        Some(Transition {
            from: H,
            to: U,
            at: at(5),
            streak: 2
        })
    );
    assert_eq!(tracker.observe(at(6), false), None);
    assert_eq!((tracker.passes(), tracker.failures()), (0, 3));
}

#[test]
fn policy_comes_from_the_spec() {
    let spec = berth_core::spec::HealthSpec {
        check: berth_core::spec::HealthCheck::Exec(vec!["true".into()]),
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        healthy_after: 2,
        unhealthy_after: 4,
        start_period: Duration::from_secs(30),
    };
    assert_eq!(
        HealthPolicy::from(&spec),
        policy(2, 4, Duration::from_secs(30))
    );
}

proptest! {
    /// Healthy only with `healthy_after` passes since the last failure; unhealthy only with
    /// `unhealthy_after` counted failures since the last pass; transitions are reported
    /// exactly when the health changes, and never back to starting.
    #[test]
    fn health_follows_the_streaks(
        healthy_after in 1u32..5,
        unhealthy_after in 1u32..5,
        start_period_s in 0u64..6,
        verdicts in prop::collection::vec(any::<bool>(), 0..60),
    ) {
        let start = Instant::now();
        let start_period = Duration::from_secs(start_period_s);
        let mut tracker = HealthTracker::new(policy(healthy_after, unhealthy_after, start_period), start);
        let mut passes_since_failure = 0u32;
        // The times (seconds after the start) of the failures since the last pass.
        let mut failure_run: Vec<u64> = Vec::new();
        let mut ever_left_starting = false;
        for (i, ok) in verdicts.iter().enumerate() {
            let t = i as u64 + 1;
            let at = start + Duration::from_secs(t);
            let before = tracker.health();
            if *ok {
                passes_since_failure += 1;
                failure_run.clear();
            } else {
                passes_since_failure = 0;
                failure_run.push(t);
            }
            // A run of failures that ends a start is wholly within it: starting never returns.
            let counted_failures = if before == Health::Starting {
                failure_run.iter().filter(|&&f| f >= start_period_s).count() as u32
            } else {
                failure_run.len() as u32
            };
            let transition = tracker.observe(at, *ok);
            let after = tracker.health();
            match transition {
                Some(t) => {
                    prop_assert_eq!((t.from, t.to, t.at), (before, after, at));
                    prop_assert_ne!(before, after);
                }
                None => prop_assert_eq!(before, after),
            }
            if after == Health::Healthy && before != Health::Healthy {
                prop_assert!(passes_since_failure >= healthy_after);
            }
            if after == Health::Unhealthy && before != Health::Unhealthy {
                prop_assert!(counted_failures >= unhealthy_after);
            }
            ever_left_starting |= after != Health::Starting;
            prop_assert!(!(ever_left_starting && after == Health::Starting));
            // A full streak always lands in the matching state.
            if passes_since_failure >= healthy_after {
                prop_assert_eq!(after, Health::Healthy);
            }
            if counted_failures >= unhealthy_after {
                prop_assert_eq!(after, Health::Unhealthy);
            }
        }
    }
}
