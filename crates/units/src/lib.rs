//! Sizes and durations, with one meaning everywhere in berth: `berth.toml`, the registry's
//! configuration, and every command-line flag.
//!
//! **Sizes** are whole numbers with an optional unit; the unit says what it means:
//!
//! | unit | means | example |
//! |---|---|---|
//! | none, `B` | bytes | `512`, `512B` |
//! | `k`/`K`/`kB`/`KB`, `M`/`MB`, `G`/`GB`, `T`/`TB` | SI: powers of 1000 | `2GB` is 2,000,000,000 bytes |
//! | `Ki`/`KiB`, `Mi`/`MiB`, `Gi`/`GiB`, `Ti`/`TiB` | IEC: powers of 1024 | `2GiB` is 2,147,483,648 bytes |
//!
//! Docker's lowercase `m` and `g` mean MiB and GiB there, but mega and giga elsewhere; berth
//! refuses them (and `mb`, `gb`, ...) with a hint instead of guessing.
//!
//! **Durations** are one or more `<whole number><unit>` parts, units `ms`, `s`, `m` (minutes),
//! `h`, `d`: `500ms`, `30s`, `1h30m`, `7d`. A bare `0` is zero.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a size or a duration does not parse; the message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

/// Parses a size in bytes (see the crate documentation).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(UnitError(format!(
            "`{text}` is not a size: write a whole number of bytes with an optional unit, like 512, 64Mi or 2GB"
        )));
    }
    let (number, unit) = text.split_at(digits);
    let value: u64 = number
        .parse()
        .map_err(|_| UnitError(format!("`{text}` is too large")))?;
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "k" | "K" | "kB" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        "m" | "g" | "t" | "mb" | "gb" | "tb" | "kb" | "mib" | "gib" | "kib" => {
            let upper = unit[..1].to_ascii_uppercase();
            return Err(UnitError(format!(
                "`{text}` is ambiguous: write {number}{upper}i (IEC, powers of 1024) or {number}{upper} (SI, powers of 1000)"
            )));
        }
        other => {
            return Err(UnitError(format!(
                "unknown unit `{other}`: units are B, kB/MB/GB/TB (powers of 1000) and KiB/MiB/GiB/TiB (powers of 1024), the B optional"
            )))
        }
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| UnitError(format!("`{text}` is too large")))
}

/// Parses a duration (see the crate documentation).
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(UnitError(
            "empty: write a duration like 500ms, 30s, 5m, 1h30m or 7d".into(),
        ));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(UnitError(format!(
                "expected a number at `{rest}` (a duration is like 500ms, 30s, 5m, 1h30m or 7d)"
            )));
        }
        let (number, tail) = rest.split_at(digits);
        let too_large = || UnitError(format!("`{text}` is too large"));
        let value: u64 = number.parse().map_err(|_| too_large())?;
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = |factor: u64| {
            value
                .checked_mul(factor)
                .map(Duration::from_secs)
                .ok_or_else(too_large)
        };
        let part = match unit {
            "ms" => Ok(Duration::from_millis(value)),
            "s" => seconds(1),
            "m" => seconds(60),
            "h" => seconds(3600),
            "d" => seconds(86_400),
            "" => Err(UnitError(format!(
                "`{number}` has no unit (ms, s, m, h or d)"
            ))),
            other => Err(UnitError(format!(
                "unknown unit `{other}`: units are ms, s, m, h and d"
            ))),
        }?;
        total = total.checked_add(part).ok_or_else(too_large)?;
        rest = tail;
    }
    Ok(total)
}

/// A size in bytes, as configuration files and flags write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    /// The exact size with the largest IEC unit that divides it (`512MiB`), else bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
        let bytes = self.0;
        for (unit, shift) in UNITS {
            let size = 1u64 << shift;
            if bytes >= size && bytes.is_multiple_of(size) {
                return write!(f, "{}{unit}", bytes / size);
            }
        }
        write!(f, "{bytes}")
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

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A duration, as configuration files and flags write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    /// The largest units that say it exactly: `2h`, `1h30m`, `1500ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 {
            return write!(f, "0s");
        }
        if !millis.is_multiple_of(1000) {
            return write!(f, "{millis}ms");
        }
        let mut seconds = millis / 1000;
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if seconds >= size {
                write!(f, "{}{unit}", seconds / size)?;
                seconds %= size;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `bytes` for people, in IEC units: `1.5 GiB`, `312.0 KiB`, `17 B`.
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
mod tests;
