//! What a listener allows: how many connections in all and per client, how long a client may
//! take to send its first request head (a TLS handshake included), and how long a connection
//! with no request in flight stays open.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The limits of one listener (or of a group of listeners sharing one [`Limiter`]).
///
/// [`Limiter`]: crate::Limiter
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most. When it is reached, the oldest connection that has not sent
    /// a complete request head yet is closed to make room (then the connection idle the
    /// longest); only when every connection is busy is the newcomer refused.
    pub max_connections: usize,
    /// Open connections at most from one client address (IPv6: one /64). At the cap, that
    /// client's oldest connection without a request head is closed to make room; when all
    /// of them are busy, the newcomer is refused.
    pub max_connections_per_client: usize,
    /// How long a new connection may take to complete its TLS handshake and its first
    /// request head.
    pub header_timeout: Duration,
    /// How long a connection with no request in flight stays open. A request in flight (its
    /// response still streaming, a blocking query waiting, an upgraded connection) is never
    /// idle.
    pub idle_timeout: Duration,
}

impl Limits {
    /// The registry's defaults.
    pub const REGISTRY: Limits = Limits {
        max_connections: 1024,
        max_connections_per_client: 128,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };
    /// The `/v1` API's defaults.
    pub const API: Limits = Limits {
        max_connections: 256,
        max_connections_per_client: 64,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };
    /// The proxy's defaults (each client connection may hold an upstream connection too).
    pub const PROXY: Limits = Limits {
        max_connections: 4096,
        max_connections_per_client: 256,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };
    /// The Consul-compatible catalog's defaults (blocking queries hold a connection each).
    pub const CATALOG: Limits = Limits {
        max_connections: 1024,
        max_connections_per_client: 128,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };
    /// DNS over TCP's defaults (a "request head" is a whole DNS message).
    pub const DNS: Limits = Limits {
        max_connections: 256,
        max_connections_per_client: 16,
        header_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
    };

    /// Refuses limits that would stop the listener from serving anyone.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_connections == 0 {
            return Err(LimitsError::new(
                "max_connections must be at least 1 (it bounds the open connections)",
            ));
        }
        if self.max_connections_per_client == 0 {
            return Err(LimitsError::new(
                "max_connections_per_client must be at least 1",
            ));
        }
        if self.max_connections_per_client > self.max_connections {
            return Err(LimitsError::new(format!(
                "max_connections_per_client ({}) cannot be above max_connections ({})",
                self.max_connections_per_client, self.max_connections
            )));
        }
        if self.header_timeout.is_zero() || self.idle_timeout.is_zero() {
            return Err(LimitsError::new(
                "header_timeout and idle_timeout must be above 0 (e.g. 10s)",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max_connections={},max_connections_per_client={},header_timeout={},idle_timeout={}",
            self.max_connections,
            self.max_connections_per_client,
            format_duration(self.header_timeout),
            format_duration(self.idle_timeout)
        )
    }
}

/// Limits that are not usable, or an override that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitsError(String);

impl LimitsError {
    fn new(message: impl Into<String>) -> LimitsError {
        LimitsError(message.into())
    }
}

/// Overrides of some [`Limits`], as a flag or an environment variable writes them:
/// `max_connections=512,max_connections_per_client=32,header_timeout=5s,idle_timeout=30s`
/// (any subset, in any order; durations in `ms`, `s`, `m` or `h`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitsConfig {
    /// [`Limits::max_connections`].
    pub max_connections: Option<usize>,
    /// [`Limits::max_connections_per_client`].
    pub max_connections_per_client: Option<usize>,
    /// [`Limits::header_timeout`].
    pub header_timeout: Option<Duration>,
    /// [`Limits::idle_timeout`].
    pub idle_timeout: Option<Duration>,
}

impl LimitsConfig {
    /// `defaults` with the keys this sets replaced, checked with [`Limits::validate`].
    pub fn apply(&self, defaults: Limits) -> Result<Limits, LimitsError> {
        let limits = Limits {
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            max_connections_per_client: self
                .max_connections_per_client
                .unwrap_or(defaults.max_connections_per_client),
            header_timeout: self.header_timeout.unwrap_or(defaults.header_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(defaults.idle_timeout),
        };
        limits.validate()?;
        Ok(limits)
    }
}

impl FromStr for LimitsConfig {
    type Err = LimitsError;

    fn from_str(text: &str) -> Result<LimitsConfig, LimitsError> {
        let mut config = LimitsConfig::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| {
                LimitsError::new(format!(
                    "{item:?}: write KEY=VALUE, e.g. max_connections=512 or header_timeout=5s"
                ))
            })?;
            let (key, value) = (key.trim(), value.trim());
            let count = || {
                value.parse::<usize>().map_err(|_| {
                    LimitsError::new(format!("{key}: {value:?} is not a whole number"))
                })
            };
            match key {
                "max_connections" => config.max_connections = Some(count()?),
                "max_connections_per_client" => config.max_connections_per_client = Some(count()?),
                "header_timeout" => config.header_timeout = Some(parse_duration(key, value)?),
                "idle_timeout" => config.idle_timeout = Some(parse_duration(key, value)?),
                _ => {
                    return Err(LimitsError::new(format!(
                        "unknown limit {key:?}: the limits are max_connections, \
                         max_connections_per_client, header_timeout and idle_timeout"
                    )))
                }
            }
        }
        Ok(config)
    }
}

/// A duration as everywhere in berth (`250ms`, `10s`, `2m`, `1h30m`; see `berth_units`).
fn parse_duration(key: &str, value: &str) -> Result<Duration, LimitsError> {
    berth_units::parse_duration(value)
        .map_err(|e| LimitsError::new(format!("{key}: {value:?} is not a duration: {e}")))
}

fn format_duration(duration: Duration) -> String {
    berth_units::HumanDuration(duration).to_string()
}

/// One listener's share of the open-files budget, for [`fit_to_open_files`].
#[derive(Debug)]
pub struct Budgeted<'a> {
    /// Its name, for the warning.
    pub name: &'static str,
    /// Its limits, scaled down in place when needed.
    pub limits: &'a mut Limits,
    /// File descriptors one connection may use (2 for the proxy: the client's and the
    /// upstream's).
    pub descriptors_per_connection: usize,
}

/// Scales every listener's caps down in proportion when, together, they could use more
/// than three quarters of `open_files` (the process's soft `RLIMIT_NOFILE`): the rest is
/// left for files, stores and logs. Returns what it changed, for a warning, or `None` when
/// everything fits.
pub fn fit_to_open_files(open_files: u64, parts: &mut [Budgeted<'_>]) -> Option<String> {
    let open_files = usize::try_from(open_files).unwrap_or(usize::MAX);
    let budget = open_files.saturating_sub((open_files / 4).max(64));
    let needed: usize = parts
        .iter()
        .map(|p| {
            p.limits
                .max_connections
                .saturating_mul(p.descriptors_per_connection.max(1))
        })
        .fold(0, usize::saturating_add);
    if needed <= budget {
        return None;
    }
    let mut changes = Vec::new();
    for part in parts.iter_mut() {
        let scaled = u128::try_from(part.limits.max_connections).unwrap_or(u128::MAX)
            * u128::try_from(budget).unwrap_or(0)
            / u128::try_from(needed).unwrap_or(u128::MAX);
        let scaled = usize::try_from(scaled).unwrap_or(usize::MAX).max(8);
        if scaled < part.limits.max_connections {
            part.limits.max_connections = scaled;
            part.limits.max_connections_per_client =
                part.limits.max_connections_per_client.min(scaled);
            changes.push(format!("{} {scaled}", part.name));
        }
    }
    Some(format!(
        "the open-files limit ({open_files}) is too low for the connection caps: lowered to {} \
         (raise the hard nofile limit, or set the caps explicitly)",
        changes.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn overrides_parse_and_apply() {
        let config: LimitsConfig =
            "max_connections=10, max_connections_per_client=2,header_timeout=500ms,idle_timeout=2m"
                .parse()
                .unwrap();
        let limits = config.apply(Limits::PROXY).unwrap();
        assert_eq!(limits.max_connections, 10);
        assert_eq!(limits.max_connections_per_client, 2);
        assert_eq!(limits.header_timeout, Duration::from_millis(500));
        assert_eq!(limits.idle_timeout, Duration::from_secs(120));
        let partial: LimitsConfig = "idle_timeout=1h".parse().unwrap();
        let limits = partial.apply(Limits::DNS).unwrap();
        assert_eq!(limits.idle_timeout, Duration::from_secs(3600));
        assert_eq!(limits.max_connections, Limits::DNS.max_connections);
        assert_eq!("".parse::<LimitsConfig>().unwrap(), LimitsConfig::default());
        assert_eq!(
            Limits::REGISTRY
                .to_string()
                .parse::<LimitsConfig>()
                .unwrap()
                .apply(Limits::DNS),
            Ok(Limits::REGISTRY)
        );
    }

    #[test]
    fn bad_overrides_say_what_is_allowed() {
        for (text, expected) in [
            ("max_connections", "KEY=VALUE"),
            ("max_conns=4", "unknown limit"),
            ("max_connections=-1", "whole number"),
            ("header_timeout=10", "not a duration"),
            // (`d` is a unit like everywhere in berth: units.md)
            ("header_timeout=10w", "not a duration"),
            ("idle_timeout=s", "not a duration"),
        ] {
            let error = text.parse::<LimitsConfig>().unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
        for (text, expected) in [
            ("max_connections=0", "at least 1"),
            ("max_connections_per_client=0", "at least 1"),
            (
                "max_connections=4,max_connections_per_client=5",
                "cannot be above",
            ),
            ("header_timeout=0s", "above 0"),
        ] {
            let error = text
                .parse::<LimitsConfig>()
                .unwrap()
                .apply(Limits::API)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn caps_shrink_to_fit_a_small_open_files_limit() {
        let (mut proxy, mut registry) = (Limits::PROXY, Limits::REGISTRY);
        assert_eq!(
            fit_to_open_files(
                1 << 20,
                &mut [
                    Budgeted {
                        name: "proxy",
                        limits: &mut proxy,
                        descriptors_per_connection: 2
                    },
                    Budgeted {
                        name: "registry",
                        limits: &mut registry,
                        descriptors_per_connection: 1
                    },
                ]
            ),
            None
        );
        assert_eq!((proxy, registry), (Limits::PROXY, Limits::REGISTRY));
        let warning = fit_to_open_files(
            1024,
            &mut [
                Budgeted {
                    name: "proxy",
                    limits: &mut proxy,
                    descriptors_per_connection: 2,
                },
                Budgeted {
                    name: "registry",
                    limits: &mut registry,
                    descriptors_per_connection: 1,
                },
            ],
        )
        .unwrap();
        assert!(warning.contains("proxy"), "{warning}");
        let used = proxy.max_connections * 2 + registry.max_connections;
        assert!(used <= 768, "{used} descriptors for 1024");
        assert!(proxy.max_connections_per_client <= proxy.max_connections);
        assert!(registry.max_connections_per_client <= registry.max_connections);
        proxy.validate().unwrap();
        registry.validate().unwrap();
    }
}
