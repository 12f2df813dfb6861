use super::*;

fn entry(key: &str, value: &[u8], lease: Option<LeaseId>) -> Entry {
    Entry {
        key: key.to_owned(),
        value: value.to_vec(),
        mod_revision: 7,
        create_revision: 3,
        lease,
    }
}

#[test]
fn entries_round_trip() {
    for original in [
        entry("/a", b"", None),
        entry("/apps/web", b"\0\xffvalue", Some(LeaseId(42))),
    ] {
        let decoded = decode_entry(&original.key, &encode_entry(&original));
        assert_eq!(decoded.ok(), Some(original));
    }
}

#[test]
fn events_round_trip() {
    let events = vec![
        WatchEvent {
            kind: EventKind::Put,
            entry: entry("/a", b"1", Some(LeaseId(1))),
            revision: 9,
        },
        WatchEvent {
            kind: EventKind::Delete,
            entry: entry("/b/\u{e9}", b"", None),
            revision: 9,
        },
    ];
    assert_eq!(decode_events(9, &encode_events(&events)).ok(), Some(events));
}

#[test]
fn truncated_records_are_corrupt_not_panics() {
    let bytes = encode_entry(&entry("/a", b"value", None));
    assert!(decode_entry("/a", &bytes[..10]).is_err());
    let events = encode_events(&[WatchEvent {
        kind: EventKind::Put,
        entry: entry("/a", b"value", None),
        revision: 1,
    }]);
    for cut in 1..events.len() {
        assert!(decode_events(1, &events[..cut]).is_err(), "cut at {cut}");
    }
    assert!(decode_lease(LeaseId(1), &[0; 15]).is_err());
}
