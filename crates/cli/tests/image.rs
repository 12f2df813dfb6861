//! `berth pull`, `berth images` and `berth image …` against a real `berth registry serve`.
#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use sha2::Digest as _;
use support::Berth;

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn push_blob(http: &reqwest::blocking::Client, url: &str, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let r = http
        .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .body(data.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
    digest
}

/// Pushes a one-layer image whose layer is a tar of `files` made by GNU tar.
fn push_image(url: &str, repo: &str, tag: &str, work: &Path) -> String {
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hello"), format!("{repo}:{tag}\n")).unwrap();
    let out = Command::new("tar")
        .args(["-cf", "-", "-C"])
        .arg(&tree)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    let layer = out.stdout;
    let config = format!(r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["{tag}"]}}}}"#);
    let http = reqwest::blocking::Client::new();
    let config_digest = push_blob(&http, url, repo, config.as_bytes());
    let layer_digest = push_blob(&http, url, repo, &layer);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let r = http
        .put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
    sha256(manifest.as_bytes())
}

fn berth(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("BERTH_REGISTRY_CREDS")
        .env("REGISTRY_AUTH_FILE", root.join("no-auth.json"))
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pull_list_pin_prune_remove() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Berth::start(&dir.path().join("registry"), &[]);
    let id = push_image(&registry.url, "cli/app", "v1", dir.path());
    let root = dir.path().join("node");
    let reference = format!("{}/cli/app:v1", registry.host());

    let out = berth(&root, &["pull", &reference]);
    assert_eq!(ok(&out).trim(), id);
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("pulled"),
        "one line per layer without a TTY: {progress}"
    );
    let quiet = berth(&root, &["pull", "--quiet", &reference]);
    assert_eq!(ok(&quiet).trim(), id);
    assert!(quiet.stderr.is_empty());

    let table = ok(&berth(&root, &["images"]));
    let hex12 = &id[7..19];
    assert!(table.starts_with("REFERENCE"), "{table}");
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.starts_with(&reference) && row.contains(hex12) && row.contains("never"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&berth(&root, &["images", "--json"]))).unwrap();
    assert_eq!(json[0]["id"], id.as_str());
    assert_eq!(json[0]["config"]["cmd"][0], "v1");

    // Pinned: prune --all keeps it.
    ok(&berth(&root, &["image", "pin", hex12]));
    let prune = ok(&berth(&root, &["image", "prune", "--all"]));
    assert!(prune.contains("removed 0 images"), "{prune}");
    ok(&berth(&root, &["image", "unpin", &reference]));

    // Used by a container: prune keeps it, rm refuses.
    let container = root.join("containers/c1");
    std::fs::create_dir_all(&container).unwrap();
    std::fs::write(
        container.join("container.json"),
        format!(r#"{{"image_id":"{id}"}}"#),
    )
    .unwrap();
    let dry = ok(&berth(&root, &["image", "prune", "--all", "--dry-run"]));
    assert!(dry.contains("0 images would go"), "{dry}");
    let err = failed(&berth(&root, &["image", "rm", &reference]));
    assert!(err.contains("used by a container"), "{err}");
    std::fs::remove_dir_all(&container).unwrap();

    let dry = ok(&berth(
        &root,
        &["image", "prune", "--unused-for", "0s", "--dry-run"],
    ));
    assert!(dry.contains(&format!("would remove {reference}")), "{dry}");
    let prune = ok(&berth(
        &root,
        &["image", "prune", "--high", "1", "--low", "0"],
    ));
    assert!(prune.contains("removed 1 images, 1 snapshots"), "{prune}");
    assert_eq!(ok(&berth(&root, &["images"])).lines().count(), 1);

    // rm: untag, then delete.
    let reference2 = format!("{}/cli/app@{id}", registry.host());
    ok(&berth(&root, &["pull", "-q", &reference]));
    ok(&berth(&root, &["pull", "-q", &reference2]));
    let rm = ok(&berth(&root, &["image", "rm", &reference2]));
    assert!(rm.contains("untagged"), "{rm}");
    let rm = ok(&berth(&root, &["image", "rm", &reference]));
    assert!(rm.contains(&format!("deleted {id}")), "{rm}");
    let err = failed(&berth(&root, &["image", "rm", &reference]));
    assert!(err.contains("no image"), "{err}");
    assert!(std::fs::read_dir(root.join("images/snapshots"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn pull_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let err = failed(&berth(dir.path(), &["pull", "busybox"]));
    assert!(err.contains("names no registry"), "{err}");
    let err = failed(&berth(
        dir.path(),
        &["pull", "--creds", "nocolon", "localhost/a"],
    ));
    assert!(err.contains("user:password"), "{err}");
}
