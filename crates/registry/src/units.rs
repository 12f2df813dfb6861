//! Human-friendly durations (`90s`, `15m`, `1h`, `7d`) and sizes (`512MiB`, `10GiB`, `2GB`,
//! plain bytes) for config files and flags.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Splits `90s` into `(90, "s")`; `None` without leading digits.
fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

/// A duration written as a number and a unit: `s`, `m`, `h` or `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (n, unit) = number_and_unit(s)
            .ok_or_else(|| format!("{s:?} is not a duration: write e.g. 90s, 15m, 1h or 7d"))?;
        let seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "" if n == 0 => 1,
            _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
        };
        Ok(HumanDuration(Duration::from_secs(n * seconds)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        match s {
            0 => write!(f, "0s"),
            s if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A size in bytes, written plain or with a unit: `KiB`, `MiB`, `GiB`, `TiB` (powers of
/// 1024) or `KB`, `MB`, `GB`, `TB` (powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (n, unit) = number_and_unit(s)
            .ok_or_else(|| format!("{s:?} is not a size: write e.g. 500MiB or 10GiB"))?;
        let multiplier: u64 = match unit {
            "" | "B" => 1,
            // Binary units, also as Kubernetes (`Mi`) and docker (`m`) write them.
            "KiB" | "Ki" | "k" => 1 << 10,
            "MiB" | "Mi" | "m" => 1 << 20,
            "GiB" | "Gi" | "g" => 1 << 30,
            "TiB" | "Ti" => 1 << 40,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "{s:?}: unknown size unit {other:?} (use KiB, MiB, GiB, TiB (or Mi, m, ...), KB, MB, GB, TB)"
                ))
            }
        };
        n.checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `bytes` for people: `1.5 GiB`, `312 KiB`, `17 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!("90s".parse(), Ok(HumanDuration(Duration::from_secs(90))));
        assert_eq!("15m".parse(), Ok(HumanDuration(Duration::from_secs(900))));
        assert_eq!(
            "7d".parse(),
            Ok(HumanDuration(Duration::from_secs(604_800)))
        );
        assert_eq!("0".parse(), Ok(HumanDuration(Duration::ZERO)));
        for bad in ["", "h", "5", "5w", "-1h", "1.5h"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?}");
        }
        assert_eq!(HumanDuration(Duration::from_secs(7200)).to_string(), "2h");
    }

    #[test]
    fn sizes() {
        assert_eq!("512MiB".parse(), Ok(ByteSize(512 << 20)));
        assert_eq!("2GB".parse(), Ok(ByteSize(2_000_000_000)));
        assert_eq!("100".parse(), Ok(ByteSize(100)));
        for bad in ["", "MiB", "5 gigs", "99999999999999TiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?}");
        }
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(17), "17 B");
    }
}
