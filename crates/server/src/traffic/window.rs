//! Judging a release by its recent traffic: the proxy's counters only grow, so the
//! controller samples them on every pass and looks at what changed within the sliding window
//! `auto_rollback.window`. A release that served well for an hour and then breaks is judged
//! on the breakage alone, and a slow start is forgotten once it leaves the window.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use berth_core::plan::{ReleaseId, Timestamp};
use berth_proxy::StatsSnapshot;

use super::ReleaseStats;

/// Which counters: the app, the service and the release.
pub type Key = (String, String, ReleaseId);

/// Samples of each release's counters, kept as long as a window needs them.
#[derive(Debug, Default)]
pub struct Windows {
    samples: HashMap<Key, VecDeque<(Timestamp, StatsSnapshot)>>,
}

impl Windows {
    /// Records `counters` of `key` at `now`, and returns what the release served within
    /// `window` before `now` (or since its first sample, when that is more recent).
    pub fn observe(
        &mut self,
        key: Key,
        now: Timestamp,
        counters: StatsSnapshot,
        window: Duration,
    ) -> ReleaseStats {
        let samples = self.samples.entry(key).or_default();
        samples.push_back((now, counters));
        let start = Timestamp::from_millis(
            now.as_millis()
                .saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX)),
        );
        // Keep one sample at or before the window's start: the baseline.
        while samples.len() > 1 && samples[1].0 <= start {
            samples.pop_front();
        }
        let (latest, baseline) = (&samples[samples.len() - 1].1, &samples[0].1);
        let stats = latest.since(baseline);
        ReleaseStats {
            requests: stats.requests,
            errors: stats.errors_5xx,
            p99: stats.p99,
        }
    }

    /// Forgets releases not sampled within `idle` before `now`.
    pub fn forget_idle(&mut self, now: Timestamp, idle: Duration) {
        self.samples
            .retain(|_, samples| samples.back().is_some_and(|(at, _)| now.since(*at) < idle));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(requests: u64, errors: u64) -> StatsSnapshot {
        let mut buckets = vec![0; berth_proxy::LATENCY_BUCKETS.len() + 1];
        buckets[0] = requests;
        StatsSnapshot {
            requests,
            errors_5xx: errors,
            latency_sum: Duration::ZERO,
            buckets,
        }
    }

    fn key() -> Key {
        ("shop".into(), "web".into(), 2)
    }

    #[test]
    fn a_release_that_breaks_late_is_judged_on_the_breakage() {
        let mut windows = Windows::default();
        let window = Duration::from_secs(30);
        let mut at = Timestamp::from_millis(0);
        // An hour of good traffic: 100 requests a second, no error.
        let mut total = 0;
        for _ in 0..3600 {
            total += 100;
            windows.observe(key(), at, counters(total, 0), window);
            at = at + Duration::from_secs(1);
        }
        // Then 10 s of nothing but 5xx.
        let mut stats = ReleaseStats::default();
        for second in 1..=10 {
            total += 100;
            stats = windows.observe(key(), at, counters(total, second * 100), window);
            at = at + Duration::from_secs(1);
        }
        assert_eq!(stats.requests, 3000, "the last 30 s only");
        assert_eq!(stats.errors, 1000);
        assert!((stats.error_rate() - 1.0 / 3.0).abs() < 1e-9);
        // Over the whole life it would look like 0.3%.
        assert!((1000.0 / total as f64) < 0.003);
    }

    #[test]
    fn a_slow_start_is_forgotten_once_it_leaves_the_window() {
        let mut windows = Windows::default();
        let window = Duration::from_secs(10);
        let mut at = Timestamp::from_millis(0);
        // Five seconds of errors at start, then good traffic.
        let (mut total, mut errors) = (0, 0);
        let mut stats = ReleaseStats::default();
        for second in 0..60 {
            total += 10;
            if second < 5 {
                errors += 10;
            }
            stats = windows.observe(key(), at, counters(total, errors), window);
            at = at + Duration::from_secs(1);
        }
        assert_eq!(stats.errors, 0);
        assert_eq!(stats.requests, 100);
    }

    #[test]
    fn a_short_history_is_judged_since_its_first_sample_and_idle_keys_go() {
        let mut windows = Windows::default();
        let window = Duration::from_secs(30);
        let t0 = Timestamp::from_millis(1_000);
        windows.observe(key(), t0, counters(500, 0), window);
        let stats = windows.observe(
            key(),
            t0 + Duration::from_secs(2),
            counters(530, 30),
            window,
        );
        assert_eq!((stats.requests, stats.errors), (30, 30));
        windows.forget_idle(t0 + Duration::from_secs(100), window);
        assert!(windows.samples.is_empty());
    }
}
