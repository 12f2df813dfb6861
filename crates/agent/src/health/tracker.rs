//! The health state machine, pure: probe verdicts with their times in, transitions out.

#[cfg(test)]
mod tests;

use std::fmt;
use std::time::{Duration, Instant};

use berth_core::spec::HealthSpec;

/// An instance's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    /// Not yet healthy since it started.
    Starting,
    /// Passed `healthy_after` checks in a row and has not failed `unhealthy_after` since.
    Healthy,
    /// Failed `unhealthy_after` checks in a row and has not passed `healthy_after` since.
    Unhealthy,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// The thresholds of the state machine (from a service's [`HealthSpec`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive passes that make an instance healthy (at least 1).
    pub healthy_after: u32,
    /// Consecutive failures that make an instance unhealthy (at least 1).
    pub unhealthy_after: u32,
    /// While starting, failures within this time after the start do not count.
    pub start_period: Duration,
}

impl From<&HealthSpec> for HealthPolicy {
    fn from(spec: &HealthSpec) -> Self {
        HealthPolicy {
            healthy_after: spec.healthy_after,
            unhealthy_after: spec.unhealthy_after,
            start_period: spec.start_period,
        }
    }
}

/// A change of health, to be reported as an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The health before.
    pub from: Health,
    /// The health after.
    pub to: Health,
    /// When the probe that caused it finished.
    pub at: Instant,
    /// The consecutive passes (to healthy) or failures (to unhealthy) that caused it.
    pub streak: u32,
}

/// Follows one instance's health from its probe verdicts.
///
/// Every failure breaks a run of passes and every pass breaks a run of failures. While the
/// instance is [`Health::Starting`], failures within `start_period` of its start do not count
/// towards `unhealthy_after` (but still break a run of passes); once it has been healthy, the
/// start period no longer matters.
#[derive(Clone, Debug)]
pub struct HealthTracker {
    policy: HealthPolicy,
    started: Instant,
    health: Health,
    passes: u32,
    failures: u32,
}

impl HealthTracker {
    /// A tracker for an instance that started at `started`.
    pub fn new(policy: HealthPolicy, started: Instant) -> HealthTracker {
        HealthTracker {
            policy: HealthPolicy {
                healthy_after: policy.healthy_after.max(1),
                unhealthy_after: policy.unhealthy_after.max(1),
                start_period: policy.start_period,
            },
            started,
            health: Health::Starting,
            passes: 0,
            failures: 0,
        }
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Consecutive passes up to now (0 after a failure).
    pub fn passes(&self) -> u32 {
        self.passes
    }

    /// Consecutive failures that counted up to now (0 after a pass).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Takes the verdict of a probe that finished at `at`; the transition it causes, if any.
    pub fn observe(&mut self, at: Instant, ok: bool) -> Option<Transition> {
        let to = if ok {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            (self.health != Health::Healthy && self.passes >= self.policy.healthy_after)
                .then_some((Health::Healthy, self.passes))
        } else {
            self.passes = 0;
            let in_start_period = self.health == Health::Starting
                && at.saturating_duration_since(self.started) < self.policy.start_period;
            if !in_start_period {
                self.failures = self.failures.saturating_add(1);
            }
            (self.health != Health::Unhealthy && self.failures >= self.policy.unhealthy_after)
                .then_some((Health::Unhealthy, self.failures))
        };
        let (to, streak) = to?;
        let from = std::mem::replace(&mut self.health, to);
        Some(Transition {
            from,
            to,
            at,
            streak,
        })
    }
}
