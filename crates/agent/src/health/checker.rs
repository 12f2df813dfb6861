//! The task that probes one instance every interval and reports its health transitions.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{probe, HealthPolicy, HealthTracker, Probe, ProbeResult, Transition};

/// A health transition of one instance, with the probe result that caused it.
#[derive(Clone, Debug)]
pub struct HealthEvent {
    /// The change.
    pub transition: Transition,
    /// The probe that caused it.
    pub result: ProbeResult,
}

/// Probes one instance every `interval` (the first probe at once) and sends each transition
/// on a channel. It stops when dropped, when [`HealthChecker::stop`] is called, or when the
/// channel's receiver is gone.
#[derive(Debug)]
pub struct HealthChecker {
    task: JoinHandle<()>,
}

impl HealthChecker {
    /// Starts checking with `probe`; the instance is taken to have started now. Must be called
    /// within a tokio runtime.
    pub fn spawn(
        probe: Probe,
        policy: HealthPolicy,
        interval: Duration,
        timeout: Duration,
        events: mpsc::Sender<HealthEvent>,
    ) -> HealthChecker {
        let tracker = HealthTracker::new(policy, Instant::now());
        let task = tokio::spawn(check(probe, tracker, interval, timeout, events));
        HealthChecker { task }
    }

    /// Stops checking and waits until no probe is running any more.
    pub async fn stop(mut self) {
        self.task.abort();
        // The task only ends by abort or because the receiver is gone; either is fine here.
        let _ = (&mut self.task).await;
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn check(
    probe_: Probe,
    mut tracker: HealthTracker,
    interval: Duration,
    timeout: Duration,
    events: mpsc::Sender<HealthEvent>,
) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
    // A slow probe delays the next one instead of causing a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = probe(&probe_, timeout).await;
        tracing::trace!(probe = ?probe_, ok = result.ok, detail = %result.detail, "health probe");
        let Some(transition) = tracker.observe(Instant::now(), result.ok) else {
            continue;
        };
        tracing::debug!(
            probe = ?probe_,
            from = %transition.from,
            to = %transition.to,
            detail = %result.detail,
            "health changed"
        );
        if events
            .send(HealthEvent { transition, result })
            .await
            .is_err()
        {
            return;
        }
    }
}
