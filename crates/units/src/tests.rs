#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

#[test]
fn si_and_iec_units_mean_what_they_say() {
    for (text, bytes) in [
        ("512", 512),
        ("512B", 512),
        ("1k", 1_000),
        ("1kB", 1_000),
        ("1KB", 1_000),
        ("2M", 2_000_000),
        ("2MB", 2_000_000),
        ("1G", 1_000_000_000),
        ("1GB", 1_000_000_000),
        ("1TB", 1_000_000_000_000),
        ("1Ki", 1024),
        ("1KiB", 1024),
        ("64Mi", 64 << 20),
        ("256MiB", 256 << 20),
        ("1Gi", 1 << 30),
        ("1GiB", 1 << 30),
        ("2TiB", 2 << 40),
        (" 10GiB ", 10 << 30),
    ] {
        assert_eq!(parse_size(text), Ok(bytes), "{text}");
    }
}

#[test]
fn ambiguous_and_unknown_units_are_refused_with_what_is_allowed() {
    let err = parse_size("64m").unwrap_err().to_string();
    assert_eq!(
        err,
        "`64m` is ambiguous: write 64Mi (IEC, powers of 1024) or 64M (SI, powers of 1000)"
    );
    for text in ["1g", "1gb", "1mb", "5t"] {
        assert!(
            parse_size(text)
                .unwrap_err()
                .to_string()
                .contains("ambiguous"),
            "{text}"
        );
    }
    for text in [
        "",
        "MiB",
        "1.5G",
        "5 gigs",
        "-1",
        "1XiB",
        "99999999999999TiB",
    ] {
        assert!(parse_size(text).is_err(), "{text}");
    }
    assert!(parse_size("1XB")
        .unwrap_err()
        .to_string()
        .contains("KiB/MiB/GiB/TiB"));
}

#[test]
fn durations() {
    for (text, duration) in [
        ("500ms", Duration::from_millis(500)),
        ("2s", Duration::from_secs(2)),
        ("5m", Duration::from_secs(300)),
        ("1h30m", Duration::from_secs(5400)),
        ("7d", Duration::from_secs(604_800)),
        ("1m30s500ms", Duration::from_millis(90_500)),
        ("0", Duration::ZERO),
    ] {
        assert_eq!(parse_duration(text), Ok(duration), "{text}");
    }
    for text in [
        "",
        "5",
        "5 s",
        "2w",
        "-1h",
        "1.5h",
        "h",
        "99999999999999999999d",
    ] {
        assert!(parse_duration(text).is_err(), "{text}");
    }
    assert!(parse_duration("5")
        .unwrap_err()
        .to_string()
        .contains("has no unit"));
}

#[test]
fn display_round_trips_and_reads_well() {
    assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
    assert_eq!(ByteSize(1_000_000_000).to_string(), "1000000000");
    assert_eq!(
        HumanDuration(Duration::from_secs(5400)).to_string(),
        "1h30m"
    );
    assert_eq!(
        HumanDuration(Duration::from_millis(1500)).to_string(),
        "1500ms"
    );
    assert_eq!(HumanDuration(Duration::ZERO).to_string(), "0s");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(17), "17 B");
    let json: ByteSize = serde_json::from_str("1048576").unwrap();
    assert_eq!(json, ByteSize(1 << 20));
    let json: ByteSize = serde_json::from_str("\"1MiB\"").unwrap();
    assert_eq!(json, ByteSize(1 << 20));
}

proptest! {
    #[test]
    fn every_size_and_duration_prints_as_it_parses(bytes in any::<u64>(), millis in 0u64..10_000_000_000) {
        let size = ByteSize(bytes);
        prop_assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
        let duration = HumanDuration(Duration::from_millis(millis));
        prop_assert_eq!(duration.to_string().parse::<HumanDuration>(), Ok(duration));
    }
}
