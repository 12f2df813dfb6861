#![allow(clippy::unwrap_used)]

use super::*;

fn texts(records: &[LogRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.text).into_owned())
        .collect()
}

#[test]
fn pump_splits_lines_marks_streams_and_long_lines() {
    let dir = tempfile::tempdir().unwrap();
    let writer = LogWriter::open(dir.path(), LogLimits::default()).unwrap();
    writer
        .pump(Stream::Stdout, &b"one\ntwo\nunfinished"[..])
        .unwrap();
    let long = vec![b'x'; MAX_LINE + 10];
    writer.pump(Stream::Stderr, &long[..]).unwrap();
    let records = read(dir.path(), &LogQuery::default()).unwrap();
    assert_eq!(records.len(), 5);
    assert_eq!(texts(&records[..3]), ["one", "two", "unfinished"]);
    assert!(!records[0].partial && records[2].partial);
    assert_eq!(records[3].stream, Stream::Stderr);
    assert_eq!(records[3].text.len(), MAX_LINE);
    assert_eq!(records[4].text.len(), 10);
    assert!(records[0].timestamp().is_some());
}

#[test]
fn rotation_bounds_the_files_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let limits = LogLimits {
        max_file_bytes: 1000,
        max_files: 3,
    };
    let writer = LogWriter::open(dir.path(), limits).unwrap();
    for i in 0..500 {
        writer
            .write_record(Stream::Stdout, false, format!("line {i}").as_bytes())
            .unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["container.log", "container.log.1", "container.log.2"]
    );
    let total: u64 = names
        .iter()
        .map(|n| fs::metadata(dir.path().join(n)).unwrap().len())
        .sum();
    assert!(total <= 3000, "{total} bytes kept");
    let records = read(dir.path(), &LogQuery::default()).unwrap();
    let numbers: Vec<u32> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.text)[5..].parse().unwrap())
        .collect();
    assert_eq!(*numbers.last().unwrap(), 499);
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "in order");
}

#[test]
fn tail_and_since_select_records() {
    let dir = tempfile::tempdir().unwrap();
    let writer = LogWriter::open(dir.path(), LogLimits::default()).unwrap();
    writer.write_record(Stream::Stdout, false, b"old").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let cut = OffsetDateTime::now_utc();
    writer.write_record(Stream::Stdout, false, b"new1").unwrap();
    writer.write_record(Stream::Stdout, false, b"new2").unwrap();
    let since = read(
        dir.path(),
        &LogQuery {
            since: Some(cut),
            tail: None,
        },
    )
    .unwrap();
    assert_eq!(texts(&since), ["new1", "new2"]);
    let tail = read(
        dir.path(),
        &LogQuery {
            since: None,
            tail: Some(1),
        },
    )
    .unwrap();
    assert_eq!(texts(&tail), ["new2"]);
}

#[test]
fn follow_sees_new_records_across_rotation_then_stops() {
    let dir = tempfile::tempdir().unwrap();
    let limits = LogLimits {
        max_file_bytes: 400,
        max_files: 5,
    };
    let writer = LogWriter::open(dir.path(), limits).unwrap();
    writer
        .write_record(Stream::Stdout, false, b"before")
        .unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let writer = writer.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            for i in 0..40 {
                writer
                    .write_record(Stream::Stdout, false, format!("live {i}").as_bytes())
                    .unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut seen = Vec::new();
    follow(
        dir.path(),
        &LogQuery::default(),
        || !done.load(std::sync::atomic::Ordering::SeqCst),
        |r| {
            seen.push(String::from_utf8_lossy(&r.text).into_owned());
            Ok(())
        },
    )
    .unwrap();
    producer.join().unwrap();
    let expected: Vec<String> = std::iter::once("before".to_owned())
        .chain((0..40).map(|i| format!("live {i}")))
        .collect();
    assert_eq!(seen, expected);
}
