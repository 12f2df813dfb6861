//! Durations (`500ms`, `2s`, `5m`, `1h30m`) and sizes (`64m`, `256Mi`, `1GiB`) as written in
//! `berth.toml`.

use std::time::Duration;

/// Parses a duration: one or more `<integer><unit>` parts, units `ms`, `s`, `m`, `h`, `d`.
///
/// `0` alone is accepted and means zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at `{rest}`"));
        }
        let (number, tail) = rest.split_at(digits);
        let value: u64 = number
            .parse()
            .map_err(|_| format!("`{number}` is too large"))?;
        let unit_len = tail.chars().take_while(char::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "d" => Duration::from_secs(value.saturating_mul(86_400)),
            "" => return Err(format!("`{number}` has no unit")),
            other => return Err(format!("unknown unit `{other}`")),
        };
        total = total.saturating_add(part);
        rest = tail;
    }
    Ok(total)
}

/// Parses a size in bytes: an integer with an optional unit. Binary units `Ki`, `Mi`, `Gi`,
/// `Ti` (optionally followed by `B`), decimal `k`/`K`, `m`/`M`, `g`/`G`, `t`/`T` (optionally
/// followed by `B`), or `B`/nothing for bytes. As in Docker, `64m` is 64 MiB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 {
        return Err("expected a number".into());
    }
    let (number, unit) = text.split_at(digits);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{number}` is too large"))?;
    let unit = unit.strip_suffix('B').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" | "K" | "Ki" => 10,
        "m" | "M" | "Mi" => 20,
        "g" | "G" | "Gi" => 30,
        "t" | "T" | "Ti" => 40,
        other => return Err(format!("unknown unit `{other}`")),
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 s").is_err());
        assert!(parse_duration("2w").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256Mi"), Ok(256 << 20));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("Mi").is_err());
        assert!(parse_size("1Xi").is_err());
    }
}
