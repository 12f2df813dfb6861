//! `berth registry gc | du | pin | unpin | pins` against a running registry.
#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::process::Command;

use berth_oci::Digest;
use support::{run, stdout, Berth};

fn berth(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["registry"])
        .args(args)
        .env("BERTH_REGISTRY_URL", url);
    cmd
}

#[test]
fn gc_du_and_pins_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Berth::start(dir.path(), &["--gc-grace", "0s"]);
    let data = vec![7u8; 3000];
    let digest = Digest::sha256(&data);
    let r = reqwest::blocking::Client::new()
        .post(format!(
            "{}/v2/cli/app/blobs/uploads/?digest={digest}",
            registry.url
        ))
        .body(data)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);

    let du = stdout(&run(&mut berth(&registry.url, &["du"])));
    assert!(du.contains("cli/app") && du.contains("2.9 KiB"), "{du}");

    let dry = stdout(&run(&mut berth(&registry.url, &["gc", "--dry-run"])));
    assert!(
        dry.starts_with("would free 2.9 KiB: 1 unreferenced blobs"),
        "{dry}"
    );

    let d = digest.to_string();
    run(&mut berth(
        &registry.url,
        &["pin", &d, "--reason", "release cli#1"],
    ));
    let pins = stdout(&run(&mut berth(&registry.url, &["pins"])));
    assert!(
        pins.contains(&d) && pins.contains("release cli#1"),
        "{pins}"
    );
    let kept = stdout(&run(&mut berth(&registry.url, &["gc"])));
    assert!(
        kept.starts_with("freed 0 B") && kept.contains("1 pinned digests kept"),
        "{kept}"
    );

    run(&mut berth(&registry.url, &["unpin", &d]));
    let again = berth(&registry.url, &["unpin", &d]).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not pinned"));
    let freed = stdout(&run(&mut berth(&registry.url, &["gc"])));
    assert!(freed.starts_with("freed 2.9 KiB"), "{freed}");

    let unreachable = berth("http://127.0.0.1:1", &["du"]).output().unwrap();
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the registry"));
}
