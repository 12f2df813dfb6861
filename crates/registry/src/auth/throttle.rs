//! Failed logins per client: a token bucket per client address (IPv6: per /64). Each login
//! that needs a password check takes a token before bcrypt runs and gives it back when the
//! password was right, so only failures use tokens up, and a client cannot start more
//! checks at once than it has tokens. An empty bucket answers 429 with the time until the
//! next token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_listen::ClientKey;

/// Buckets kept at most; beyond, full ones are forgotten first, then arbitrary ones (a
/// forgotten client starts again with a full bucket).
const MAX_TRACKED: usize = 65_536;

/// How many failed logins a client may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failed logins a client may make in a row; then it waits for the bucket to refill.
    pub max_failures: u32,
    /// How long an empty bucket takes to refill completely (one failure per
    /// `window / max_failures`).
    pub window: Duration,
}

impl Default for LoginLimits {
    fn default() -> LoginLimits {
        LoginLimits {
            max_failures: 10,
            window: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every client that failed recently.
#[derive(Debug)]
pub(crate) struct Throttle {
    limits: LoginLimits,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
}

impl Throttle {
    pub(crate) fn new(limits: LoginLimits) -> Throttle {
        Throttle {
            limits,
            buckets: Mutex::default(),
        }
    }

    fn capacity(&self) -> f64 {
        f64::from(self.limits.max_failures.max(1))
    }

    /// Tokens per second.
    fn rate(&self) -> f64 {
        self.capacity() / self.limits.window.as_secs_f64().max(0.001)
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        Bucket {
            tokens: (bucket.tokens + elapsed * self.rate()).min(self.capacity()),
            at: now,
        }
    }

    /// Takes a token for a password check by `client`; `Err(retry_after)` when it has none.
    pub(crate) fn reserve(&self, client: ClientKey, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let full = Bucket {
            tokens: self.capacity(),
            at: now,
        };
        let bucket = self.refilled(*buckets.get(&client).unwrap_or(&full), now);
        if bucket.tokens < 1.0 {
            buckets.insert(client, bucket);
            let wait = (1.0 - bucket.tokens) / self.rate();
            return Err(Duration::from_secs_f64(wait.max(0.001)));
        }
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&client) {
            self.forget(&mut buckets, now);
        }
        buckets.insert(
            client,
            Bucket {
                tokens: bucket.tokens - 1.0,
                at: now,
            },
        );
        Ok(())
    }

    /// Gives back the token of a check that succeeded.
    pub(crate) fn refund(&self, client: ClientKey, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = buckets.get(&client).copied() {
            let mut bucket = self.refilled(bucket, now);
            bucket.tokens = (bucket.tokens + 1.0).min(self.capacity());
            if bucket.tokens >= self.capacity() {
                buckets.remove(&client);
            } else {
                buckets.insert(client, bucket);
            }
        }
    }

    fn forget(&self, buckets: &mut HashMap<ClientKey, Bucket>, now: Instant) {
        buckets.retain(|_, b| self.refilled(*b, now).tokens < self.capacity());
        if buckets.len() >= MAX_TRACKED {
            let drop: Vec<ClientKey> = buckets.keys().take(MAX_TRACKED / 2).copied().collect();
            for key in drop {
                buckets.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn client(last: u8) -> ClientKey {
        ClientKey::of([10, 0, 0, last].into())
    }

    #[test]
    fn failures_use_up_the_bucket_and_successes_give_tokens_back() {
        let throttle = Throttle::new(LoginLimits {
            max_failures: 3,
            window: Duration::from_secs(30),
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            throttle.reserve(client(1), t0).unwrap();
        }
        let wait = throttle.reserve(client(1), t0).unwrap_err();
        assert_eq!(wait.as_secs(), 10, "one token per 10 s");
        assert!(
            throttle.reserve(client(2), t0).is_ok(),
            "other clients keep theirs"
        );
        // A success gives its token back: honest clients are not throttled by their logins.
        throttle.refund(client(1), t0);
        throttle.reserve(client(1), t0).unwrap();
        assert!(throttle.reserve(client(1), t0).is_err());
        // The bucket refills with time.
        let later = t0 + Duration::from_secs(10);
        throttle.reserve(client(1), later).unwrap();
        assert!(throttle.reserve(client(1), later).is_err());
        let much_later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            throttle.reserve(client(1), much_later).unwrap();
        }
        assert!(throttle.reserve(client(1), much_later).is_err());
    }

    #[test]
    fn the_table_of_clients_stays_bounded() {
        let throttle = Throttle::new(LoginLimits::default());
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            let key = ClientKey::of(std::net::Ipv4Addr::from(i).into());
            throttle.reserve(key, now).unwrap();
        }
        assert!(throttle.buckets.lock().unwrap().len() <= MAX_TRACKED);
    }
}
