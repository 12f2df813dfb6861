//! The query string of a Consul read, parsed once with Consul's rules: the blocking-query
//! parameters (`index`, `wait`) and the filters (`tag`, `passing`, `node-meta`, `dc`). A bad
//! value is a [`QueryError`], answered with 400 and a plain-text message.

use std::time::Duration;

/// How long a blocking query waits when `wait` is absent or zero (Consul's default).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);

/// The longest a blocking query waits; longer `wait` values are cut to this (as Consul does).
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// A query parameter that Consul defines and berth cannot honour or that has a bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `index` is not a non-negative integer.
    #[error("invalid index {0:?}: expected a non-negative integer, the X-Consul-Index of an earlier response")]
    Index(String),
    /// `wait` is not a duration.
    #[error("invalid wait time {0:?}: expected a duration such as 10s, 1m30s or 500ms")]
    Wait(String),
    /// `passing` has a value other than a boolean.
    #[error("invalid value {0:?} for ?passing: expected true or false, or no value")]
    Passing(String),
    /// `node-meta` is not `key:value`.
    #[error("invalid node-meta {0:?}: expected key:value")]
    NodeMeta(String),
    /// `dc` names another datacenter.
    #[error("unknown datacenter {asked:?}: this catalog serves datacenter {served:?}")]
    Datacenter {
        /// The datacenter the query asked for.
        asked: String,
        /// The datacenter this catalog serves.
        served: String,
    },
    /// `filter` was given; berth does not evaluate Consul's filter expressions.
    #[error("?filter expressions are not supported by berth's Consul-compatible catalog: select instances with ?tag= or filter on the client")]
    Filter,
}

/// A parsed query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The index the client has seen; 0 means "do not block".
    pub index: u64,
    /// How long to block at most, before jitter: `wait`, or the default, at most [`MAX_WAIT`].
    pub wait: Duration,
    /// Instances must carry every one of these tags.
    pub tags: Vec<String>,
    /// Only instances whose checks all pass (every instance in berth's catalog passes).
    pub passing: bool,
    /// Instances must run on a node whose metadata has every one of these pairs.
    pub node_meta: Vec<(String, String)>,
    /// The datacenter asked for, if any.
    pub datacenter: Option<String>,
    /// Indented JSON (`?pretty`).
    pub pretty: bool,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            index: 0,
            wait: DEFAULT_WAIT,
            tags: Vec::new(),
            passing: false,
            node_meta: Vec::new(),
            datacenter: None,
            pretty: false,
        }
    }
}

impl Query {
    /// Parses a raw query string (without the `?`). Parameters Consul defines but that change
    /// nothing here (`stale`, `consistent`, `cached`, `near`, `ns`, `partition`, …) and unknown
    /// ones are ignored, as Consul ignores unknown parameters.
    pub fn parse(raw: Option<&str>) -> Result<Query, QueryError> {
        let mut query = Query::default();
        let Some(raw) = raw else {
            return Ok(query);
        };
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            match key.as_ref() {
                "index" if !value.is_empty() => {
                    query.index = value
                        .parse::<u64>()
                        .map_err(|_| QueryError::Index(value.to_string()))?;
                }
                "wait" if !value.is_empty() => {
                    let wait = parse_duration(&value)
                        .ok_or_else(|| QueryError::Wait(value.to_string()))?;
                    query.wait = if wait.is_zero() {
                        DEFAULT_WAIT
                    } else {
                        wait.min(MAX_WAIT)
                    };
                }
                "tag" if !value.is_empty() => query.tags.push(value.into_owned()),
                "passing" => {
                    query.passing = match value.as_ref() {
                        "" | "true" | "1" | "t" | "T" | "TRUE" | "True" => true,
                        "false" | "0" | "f" | "F" | "FALSE" | "False" => false,
                        other => return Err(QueryError::Passing(other.to_owned())),
                    };
                }
                "node-meta" if !value.is_empty() => {
                    let (key, meta) = value
                        .split_once(':')
                        .ok_or_else(|| QueryError::NodeMeta(value.to_string()))?;
                    query.node_meta.push((key.to_owned(), meta.to_owned()));
                }
                "dc" if !value.is_empty() => query.datacenter = Some(value.into_owned()),
                "filter" if !value.is_empty() => return Err(QueryError::Filter),
                "pretty" => query.pretty = true,
                _ => {}
            }
        }
        Ok(query)
    }
}

/// Parses a duration as Go's `time.ParseDuration` does (Consul's `wait` is one): a sequence of
/// decimal numbers, each with an optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`,
/// `m`, `h`), such as `10s`, `1m30s` or `1.5s`; a bare `0` is zero. Negative durations and
/// overflows are refused.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.strip_prefix('+').unwrap_or(text);
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let whole_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (whole, after) = rest.split_at(whole_len);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => {
                let len = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                after.split_at(len)
            }
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut nanos = whole.checked_mul(nanos_per_unit)?;
        // Digits past the 18th cannot change a whole nanosecond count of these units.
        let fraction = &fraction[..fraction.len().min(18)];
        if !fraction.is_empty() {
            let digits: u128 = fraction.parse().ok()?;
            let scale = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
            nanos = nanos.checked_add(digits.checked_mul(nanos_per_unit)? / scale)?;
        }
        total = total.checked_add(nanos)?;
        rest = after;
    }
    let total = u64::try_from(total).ok()?;
    Some(Duration::from_nanos(total))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations_parse_as_go_parses_them() {
        let cases = [
            ("0", Duration::ZERO),
            ("10s", Duration::from_secs(10)),
            ("1m", Duration::from_secs(60)),
            ("500ms", Duration::from_millis(500)),
            ("120000ms", Duration::from_secs(120)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("2h", Duration::from_secs(7200)),
            ("3us", Duration::from_micros(3)),
            ("3µs", Duration::from_micros(3)),
            ("7ns", Duration::from_nanos(7)),
            ("+5s", Duration::from_secs(5)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Some(expected), "{text}");
        }
        for bad in [
            "",
            "abc",
            "10",
            "s",
            ".s",
            "-1s",
            "1x",
            "1.2.3s",
            "1 s",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?} should be refused");
        }
    }

    #[test]
    fn blocking_parameters_follow_consul() {
        let query = Query::parse(Some("index=42&wait=10s")).unwrap();
        assert_eq!((query.index, query.wait), (42, Duration::from_secs(10)));

        let query = Query::parse(None).unwrap();
        assert_eq!((query.index, query.wait), (0, DEFAULT_WAIT));

        // Zero means the default, and anything above the maximum is cut to it.
        assert_eq!(Query::parse(Some("wait=0s")).unwrap().wait, DEFAULT_WAIT);
        assert_eq!(Query::parse(Some("wait=1h")).unwrap().wait, MAX_WAIT);
        // Empty values are absent values.
        assert_eq!(
            Query::parse(Some("index=&wait=")).unwrap(),
            Query::default()
        );

        assert_eq!(
            Query::parse(Some("index=-1")),
            Err(QueryError::Index("-1".into()))
        );
        assert_eq!(
            Query::parse(Some("index=abc")),
            Err(QueryError::Index("abc".into()))
        );
        assert_eq!(
            Query::parse(Some("wait=abc")),
            Err(QueryError::Wait("abc".into()))
        );
    }

    #[test]
    fn filters_are_collected() {
        let query = Query::parse(Some(
            "tag=v1&tag=blue&passing&node-meta=rack:a&dc=berth&stale&pretty",
        ))
        .unwrap();
        assert_eq!(query.tags, vec!["v1", "blue"]);
        assert!(query.passing);
        assert!(query.pretty);
        assert_eq!(query.node_meta, vec![("rack".into(), "a".into())]);
        assert_eq!(query.datacenter.as_deref(), Some("berth"));

        assert!(Query::parse(Some("passing=true")).unwrap().passing);
        assert!(!Query::parse(Some("passing=false")).unwrap().passing);
        assert_eq!(
            Query::parse(Some("passing=maybe")),
            Err(QueryError::Passing("maybe".into()))
        );
        assert_eq!(
            Query::parse(Some("node-meta=rack")),
            Err(QueryError::NodeMeta("rack".into()))
        );
        assert_eq!(
            Query::parse(Some("filter=Service.Port%20%3D%3D%2080")),
            Err(QueryError::Filter)
        );
        // Percent-encoded tags are decoded.
        assert_eq!(
            Query::parse(Some("tag=a%2Cb")).unwrap().tags,
            vec!["a,b".to_owned()]
        );
    }
}
