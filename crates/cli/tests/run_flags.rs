//! `berth run` refuses limits and ports no container could run with, up front (before a pull
//! and before anything is set up), with a message that says what is allowed.
#![allow(missing_docs, clippy::unwrap_used)]

use std::process::{Command, Output};

/// `berth run ARGS nothing/here:1 true` on an empty node root: the image does not exist, so
/// an answer that is not the refusal would be a pull error.
fn run(root: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--root")
        .arg(root)
        .arg("run")
        .args(args)
        .args(["127.0.0.1:1/nothing/here:1", "true"])
        .env("BERTH_LOG", "warn")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_limits_are_refused_by_the_flag_parser_with_what_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let cpus = "CPUs is not a CPU limit: give a number of CPUs of at least 0.01 (1% of one CPU), like 0.5 or 2, or no limit";
    let pids = "is not a process limit: give a count from 1 to 4194304 (without one a container gets 4096)";
    let cases: &[(&[&str], String)] = &[
        (&["--cpus", "0"], format!("invalid value '0' for '--cpus <CPUS>': 0 {cpus}")),
        (&["--cpus", "-1"], format!("invalid value '-1' for '--cpus <CPUS>': -1 {cpus}")),
        (&["--cpus", "0.001"], format!("invalid value '0.001' for '--cpus <CPUS>': 0.001 {cpus}")),
        (&["--cpus", "inf"], format!("invalid value 'inf' for '--cpus <CPUS>': inf {cpus}")),
        (
            &["--cpus", "half"],
            "invalid value 'half' for '--cpus <CPUS>': not a number: give a number of CPUs of at least 0.01 (1% of one CPU), like 0.5 or 2".into(),
        ),
        (&["--pids", "0"], format!("invalid value '0' for '--pids <N>': 0 {pids}")),
        (&["--pids", "-1"], format!("invalid value '-1' for '--pids <N>': -1 {pids}")),
        (&["--pids", "4194305"], format!("invalid value '4194305' for '--pids <N>': 4194305 {pids}")),
        (
            &["--pids", "many"],
            "invalid value 'many' for '--pids <N>': not a whole number: give a count from 1 to 4194304 (without --pids a container gets 4096)".into(),
        ),
        (
            &["--memory", "0"],
            "invalid value '0' for '--memory <SIZE>': a memory limit of 0 bytes is too small: give at least 6MiB (like 64Mi or 1Gi), or no limit".into(),
        ),
        (
            &["--memory", "1Mi"],
            "invalid value '1Mi' for '--memory <SIZE>': a memory limit of 1048576 bytes is too small: give at least 6MiB (like 64Mi or 1Gi), or no limit".into(),
        ),
        (
            &["--memory", "-1"],
            "invalid value '-1' for '--memory <SIZE>': `-1` is not a size: write a whole number of bytes with an optional unit, like 512, 64Mi or 2GB (a memory limit is at least 6MiB)".into(),
        ),
    ];
    for (args, message) in cases {
        let out = run(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(
            stderr(&out),
            format!("error: {message}\n\nFor more information, try '--help'.\n"),
            "{args:?}"
        );
    }
    assert!(
        !dir.path().join("containers").exists(),
        "refused before the node was even opened"
    );
}

#[test]
fn ports_without_a_network_or_published_twice_are_refused_before_a_pull() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--network", "none", "-p", "127.0.0.1:8080:80"],
            "berth: cannot publish 127.0.0.1:8080:80/tcp with network none: such a container has only loopback, so nothing could reach it; use network bridge or publish nothing\n",
        ),
        (
            &["-p", "8080:80", "-p", "127.0.0.1:8080:81"],
            "berth: host port 127.0.0.1:8080/tcp is published twice (8080:80/tcp and 127.0.0.1:8080:81/tcp): a host port forwards to one container port\n",
        ),
    ];
    for (args, message) in cases {
        let out = run(dir.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert_eq!(stderr(&out), *message, "{args:?}");
    }
    // A host port another program listens on: a DNAT rule would silently steal its traffic.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for publish in [format!("127.0.0.1:{port}:80"), format!("{port}:80")] {
        let out = run(dir.path(), &["-p", &publish]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let side = publish.trim_end_matches(":80");
        assert_eq!(
            stderr(&out),
            format!("berth: host port {side}/tcp is in use by another program on this host (`ss -ltnup` shows which): choose another host port\n")
        );
    }
}
