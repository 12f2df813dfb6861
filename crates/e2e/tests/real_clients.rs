//! Real clients (podman, buildah, skopeo, curl-free HTTP for the referrers API) against the
//! real `berth registry serve` process.
//!
//! `E2E_TARGET=distribution` runs the tests that only need the plain distribution API against
//! Debian's docker-registry instead, to tell a client quirk from a berth bug.
#![allow(clippy::unwrap_used, missing_docs)]

use std::fs;
use std::path::Path;
use std::process::Command;

use berth_e2e::api::{self, sha256_digest, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST};
use berth_e2e::process::{
    output, report, run, run_failing, run_with_stdin, stdout_of, COMMAND_TIMEOUT,
};
use berth_e2e::{
    berth_binary, BerthOptions, BerthRegistry, DockerRegistry, Podman, Registry, Tls, MARKER,
};
use serde_json::{json, Value};

/// The registry most tests run against: berth, unless E2E_TARGET says otherwise.
fn registry() -> Box<dyn Registry> {
    match std::env::var("E2E_TARGET").as_deref() {
        Err(_) | Ok("" | "berth") => Box::new(BerthRegistry::start(BerthOptions::default())),
        Ok("distribution") => Box::new(DockerRegistry::start()),
        Ok(other) => panic!("E2E_TARGET={other}: expected `berth` or `distribution`"),
    }
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `skopeo inspect --raw` of `reference`: the manifest bytes exactly as stored.
fn raw_manifest(podman: &Podman, reference: &str) -> String {
    let mut args = vec!["inspect", "--raw"];
    if reference.starts_with("docker://") {
        args.push("--tls-verify=false");
    }
    args.push(reference);
    podman.run_skopeo(&args)
}

#[test]
fn podman_build_push_rmi_pull_run() {
    let registry = registry();
    let podman = Podman::new();
    let local = "localhost/e2e/busybox:v1";
    podman.build_busybox_image(local);
    let built_id = podman.run_podman(&["image", "inspect", "--format", "{{.Id}}", local]);
    let remote = format!("{}/e2e/busybox:v1", registry.host());

    podman.run_podman(&["push", "--tls-verify=false", local, &remote]);
    podman.run_podman(&["rmi", local]);
    assert_eq!(
        podman.run_podman(&["images", "--quiet"]),
        "",
        "the image is gone locally"
    );

    let pulled_id = podman.run_podman(&["pull", "--quiet", "--tls-verify=false", &remote]);
    assert_eq!(pulled_id, built_id, "the pulled image is the pushed one");
    let printed = podman.run_podman(&["run", "--rm", "--network", "none", &remote]);
    assert_eq!(printed, MARKER);
}

#[test]
fn skopeo_copies_an_image_to_the_registry_and_back() {
    let registry = registry();
    let podman = Podman::new();
    let local = "localhost/e2e/busybox:v1";
    podman.build_busybox_image(local);
    let source = podman.save_oci_layout(local, false, &podman.dir().join("layout"), "v1");
    let repo = format!("docker://{}/e2e/skopeo", registry.host());

    for tag in ["v1", "v2"] {
        let destination = format!("{repo}:{tag}");
        podman.run_skopeo(&["copy", "--dest-tls-verify=false", &source, &destination]);
    }
    let local_raw = raw_manifest(&podman, &source);
    let remote_raw = raw_manifest(&podman, &format!("{repo}:v1"));
    assert_eq!(
        remote_raw, local_raw,
        "the registry serves the manifest byte for byte"
    );
    let digest = sha256_digest(local_raw.as_bytes());

    let inspected =
        json_of(&podman.run_skopeo(&["inspect", "--tls-verify=false", &format!("{repo}:v1")]));
    assert_eq!(inspected["Digest"], digest.as_str());
    assert_eq!(inspected["Os"], "linux");
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(1));
    let manifest = json_of(&local_raw);
    assert_eq!(inspected["Layers"][0], manifest["layers"][0]["digest"]);

    let tags = json_of(&podman.run_skopeo(&["list-tags", "--tls-verify=false", &repo]));
    assert_eq!(tags["Tags"], json!(["v1", "v2"]));

    let back = podman.dir().join("back");
    let back_ref = format!("oci:{}:v1", back.display());
    podman.run_skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("{repo}@{digest}"),
        &back_ref,
    ]);
    assert_eq!(raw_manifest(&podman, &back_ref), local_raw);
    assert_layout_has_blobs(&back, &manifest);
}

#[test]
fn skopeo_copies_a_multi_arch_index_to_the_registry_and_back() {
    let registry = registry();
    let podman = Podman::new();
    let multi = podman.build_multiarch_list("localhost/e2e/multi:v1");
    let source = podman.save_oci_layout(&multi.list, true, &podman.dir().join("layout"), "v1");
    let local_raw = raw_manifest(&podman, &source);
    let index = json_of(&local_raw);
    assert_eq!(index["mediaType"], OCI_INDEX, "{local_raw}");
    let children = index["manifests"].as_array().unwrap().clone();
    assert_eq!(children.len(), 2, "{local_raw}");

    let remote = format!("docker://{}/e2e/multi:v1", registry.host());
    podman.run_skopeo(&["copy", "--all", "--dest-tls-verify=false", &source, &remote]);
    assert_eq!(
        raw_manifest(&podman, &remote),
        local_raw,
        "the index byte for byte"
    );
    let digest = sha256_digest(local_raw.as_bytes());
    let inspected = json_of(&podman.run_skopeo(&["inspect", "--tls-verify=false", &remote]));
    assert_eq!(inspected["Digest"], digest.as_str());

    let repo = format!("docker://{}/e2e/multi", registry.host());
    for child in &children {
        let child_digest = child["digest"].as_str().unwrap();
        let child_raw = raw_manifest(&podman, &format!("{repo}@{child_digest}"));
        assert_eq!(sha256_digest(child_raw.as_bytes()), child_digest);
        assert_eq!(child_raw.len() as u64, child["size"].as_u64().unwrap());
    }

    let back = podman.dir().join("back");
    let back_ref = format!("oci:{}:v1", back.display());
    podman.run_skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("{repo}@{digest}"),
        &back_ref,
    ]);
    assert_eq!(raw_manifest(&podman, &back_ref), local_raw);
    for child in &children {
        let child_digest = child["digest"].as_str().unwrap();
        let blob = blob_path(&back, child_digest);
        let child_manifest = json_of(&fs::read_to_string(&blob).unwrap());
        assert_layout_has_blobs(&back, &child_manifest);
    }
}

#[test]
fn podman_pushes_a_manifest_list_and_pulls_each_platform() {
    let registry = registry();
    let podman = Podman::new();
    let multi = podman.build_multiarch_list("localhost/e2e/multi:v1");
    let remote = format!("{}/e2e/multi:v1", registry.host());
    podman.run_podman(&[
        "manifest",
        "push",
        "--all",
        "--tls-verify=false",
        &multi.list,
        &format!("docker://{remote}"),
    ]);
    for (arch, marker) in &multi.platforms {
        let id = podman.run_podman(&[
            "pull",
            "--quiet",
            "--tls-verify=false",
            "--arch",
            arch,
            &remote,
        ]);
        let printed = podman.run_podman(&["run", "--rm", "--network", "none", &id]);
        assert_eq!(&printed, marker, "linux/{arch} resolved to its own image");
    }
}

#[test]
fn buildah_commits_and_pushes_an_image_that_podman_runs() {
    let registry = registry();
    let podman = Podman::new();
    podman.build_busybox_image("localhost/e2e/base:v1");
    let working = stdout_of(podman.buildah().args(["from", "localhost/e2e/base:v1"]));
    let marker = "berth-e2e: committed by buildah";
    run(podman
        .buildah()
        .args(["config", "--cmd", &format!("/bin/echo {marker}"), &working]));
    run(podman
        .buildah()
        .args(["commit", "--quiet", &working, "localhost/e2e/buildah:v1"]));
    run(podman.buildah().args(["rm", &working]));
    let remote = format!("{}/e2e/buildah:v1", registry.host());
    run(podman.buildah().args([
        "push",
        "--tls-verify=false",
        "localhost/e2e/buildah:v1",
        &format!("docker://{remote}"),
    ]));
    podman.run_podman(&["rmi", "--all", "--force"]);
    podman.run_podman(&["pull", "--quiet", "--tls-verify=false", &remote]);
    let printed = podman.run_podman(&["run", "--rm", "--network", "none", &remote]);
    assert_eq!(printed, marker);
}

/// A users file with `alice` (push to `alice/*` and `public/*`, pull everything) and
/// anonymous pulls of `public/*`.
fn users_file(dir: &Path, alice_password: &str) -> std::path::PathBuf {
    let hash = run_with_stdin(
        Command::new(berth_binary()).args(["registry", "hash-password"]),
        Some(alice_password.as_bytes()),
    );
    let hash = String::from_utf8_lossy(&hash.stdout).trim().to_owned();
    assert!(hash.starts_with("$2"), "a bcrypt hash: {hash}");
    let path = dir.join("users.toml");
    fs::write(
        &path,
        format!(
            "[anonymous]\npull = [\"public/*\"]\n\n\
             [[users]]\nname = \"alice\"\npassword = \"{hash}\"\n\
             pull = [\"*\"]\npush = [\"alice/*\", \"public/*\"]\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn pushes_need_a_login_and_the_right() {
    let podman = Podman::new();
    let users = users_file(podman.dir(), "alice-secret");
    let registry = BerthRegistry::start(BerthOptions {
        users: Some(users),
        ..BerthOptions::default()
    });
    let host = registry.host();
    let local = "localhost/e2e/busybox:v1";
    podman.build_busybox_image(local);
    let push = |destination: &str| {
        let mut cmd = podman.podman();
        cmd.args([
            "push",
            "--tls-verify=false",
            local,
            &format!("{host}/{destination}"),
        ]);
        cmd
    };

    let refused = run_failing(&mut push("alice/app:v1"), None);
    assert!(
        refused.contains("authentication required") || refused.contains("unauthorized"),
        "anonymous push refused for want of credentials: {refused}"
    );

    let mut login = podman.podman();
    login.args([
        "login",
        "--tls-verify=false",
        "--username",
        "alice",
        "--password-stdin",
        host,
    ]);
    let wrong = run_failing(&mut login, Some(b"not-her-password"));
    assert!(
        wrong.contains("invalid username/password") || wrong.contains("unauthorized"),
        "a wrong password is refused: {wrong}"
    );
    let auth = fs::read_to_string(podman.auth_file()).unwrap();
    assert!(
        !auth.contains(host),
        "no credentials stored after a failed login: {auth}"
    );

    run_with_stdin(&mut login, Some(b"alice-secret"));
    run(&mut push("alice/app:v1"));
    run(&mut push("public/app:v1"));
    let denied = run_failing(&mut push("bob/app:v1"), None);
    assert!(
        denied.contains("denied") || denied.contains("403"),
        "alice may not push outside her repositories: {denied}"
    );

    run(podman.podman().args(["logout", host]));
    podman.run_podman(&["rmi", "--all", "--force"]);
    // Without credentials for a registry that answered `/v2/` with a Basic challenge,
    // podman and skopeo send `Authorization: Basic Og==` (an empty user and password):
    // that must count as anonymous, not as a failed login.
    let mut anonymous_pull = podman.podman();
    anonymous_pull.args([
        "pull",
        "--quiet",
        "--tls-verify=false",
        &format!("{host}/public/app:v1"),
    ]);
    let out = output(&mut anonymous_pull, None, COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "anonymous clients pull public/*: {}",
        report(&anonymous_pull, &out)
    );
    let private = run_failing(
        podman.podman().args([
            "pull",
            "--tls-verify=false",
            &format!("{host}/alice/app:v1"),
        ]),
        None,
    );
    assert!(
        private.contains("authentication required") || private.contains("unauthorized"),
        "anonymous clients do not pull alice/*: {private}"
    );
    let with_creds = podman.run_skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "alice:alice-secret",
        &format!("docker://{host}/alice/app:v1"),
    ]);
    assert_eq!(json_of(&with_creds)["Os"], "linux");
}

#[test]
fn referrers_list_and_filter_artifacts_pushed_with_a_subject() {
    let registry = BerthRegistry::start(BerthOptions::default());
    let podman = Podman::new();
    let repo = "e2e/signed";
    podman.build_busybox_image("localhost/e2e/busybox:v1");
    let remote = format!("{}/{repo}:v1", registry.host());
    podman.run_podman(&[
        "push",
        "--tls-verify=false",
        "localhost/e2e/busybox:v1",
        &remote,
    ]);
    let image_raw = raw_manifest(&podman, &format!("docker://{remote}"));
    let subject = json!({
        "mediaType": json_of(&image_raw)["mediaType"],
        "digest": sha256_digest(image_raw.as_bytes()),
        "size": image_raw.len(),
    });
    let subject_digest = subject["digest"].as_str().unwrap().to_owned();

    let client = api::Client::new(registry.url());
    let empty = client.push_blob(repo, b"{}");
    let sbom_type = "application/vnd.berth.e2e.sbom+json";
    let signature_type = "application/vnd.berth.e2e.signature";
    let mut artifacts = Vec::new();
    for (artifact_type, content) in [
        (sbom_type, &b"{\"packages\":[]}"[..]),
        (signature_type, b"signed"),
    ] {
        let layer = client.push_blob(repo, content);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": artifact_type, "digest": layer, "size": content.len()}],
            "subject": subject,
            "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
        }))
        .unwrap();
        let digest = sha256_digest(&manifest);
        let response = client.put_manifest(repo, &digest, OCI_MANIFEST, &manifest);
        let oci_subject = response
            .headers()
            .get("OCI-Subject")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        assert_eq!(response.status().as_u16(), 201, "{}", api::show(response));
        assert_eq!(oci_subject.as_deref(), Some(subject_digest.as_str()));
        artifacts.push((artifact_type, digest, manifest.len()));
    }

    let referrers = |query: &str| {
        let response = client.get(&format!("/v2/{repo}/referrers/{subject_digest}{query}"));
        let status = response.status().as_u16();
        let content_type = header(&response, "Content-Type");
        let filters = header(&response, "OCI-Filters-Applied");
        let body = response.text().unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(content_type.starts_with(OCI_INDEX), "{content_type}");
        (filters, json_of(&body))
    };
    let (filters, all) = referrers("");
    assert_eq!(filters, "", "no filter asked for, none applied");
    let listed = all["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{all}");
    for (artifact_type, digest, size) in &artifacts {
        let entry = listed
            .iter()
            .find(|entry| entry["digest"] == digest.as_str())
            .unwrap_or_else(|| panic!("{digest} not among the referrers: {all}"));
        assert_eq!(entry["artifactType"], *artifact_type);
        assert_eq!(entry["mediaType"], OCI_MANIFEST);
        assert_eq!(entry["size"].as_u64(), Some(*size as u64));
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.created"],
            "2026-01-01T00:00:00Z"
        );
    }

    // `+` must be escaped in a query string, or it reads as a space.
    let escaped = sbom_type.replace('+', "%2B");
    let (filters, sboms) = referrers(&format!("?artifactType={escaped}"));
    assert_eq!(filters, "artifactType");
    assert_eq!(
        sboms["manifests"].as_array().map(Vec::len),
        Some(1),
        "{sboms}"
    );
    assert_eq!(sboms["manifests"][0]["digest"], artifacts[0].1.as_str());

    let (filters, none) = referrers("?artifactType=application/vnd.berth.e2e.unknown");
    assert_eq!(filters, "artifactType");
    assert_eq!(none["manifests"], json!([]), "{none}");

    // The image itself is untouched by its referrers.
    podman.run_podman(&["rmi", "--all", "--force"]);
    let printed = podman.run_podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--tls-verify=false",
        &remote,
    ]);
    assert_eq!(printed, MARKER);
}

fn header(response: &reqwest::blocking::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn pushed_images_survive_sigkill_and_restart() {
    let mut registry = BerthRegistry::start(BerthOptions::default());
    let podman = Podman::new();
    podman.build_busybox_image("localhost/e2e/busybox:v1");
    let remote = format!("{}/e2e/durable:v1", registry.host());
    podman.run_podman(&[
        "push",
        "--tls-verify=false",
        "localhost/e2e/busybox:v1",
        &remote,
    ]);

    let url = registry.url().to_owned();
    registry.kill9();
    registry.restart();
    assert_eq!(registry.url(), url, "restarted on the same address");

    podman.run_podman(&["rmi", "--all", "--force"]);
    podman.run_podman(&["pull", "--quiet", "--tls-verify=false", &remote]);
    let printed = podman.run_podman(&["run", "--rm", "--network", "none", &remote]);
    assert_eq!(printed, MARKER);
}

#[test]
fn podman_verifies_the_registry_certificate() {
    let podman = Podman::new();
    let certs = podman.dir().join("certs");
    fs::create_dir(&certs).unwrap();
    let (cert, key) = (certs.join("ca.crt"), podman.dir().join("key.pem"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let registry = BerthRegistry::start(BerthOptions {
        tls: Some(Tls {
            cert: cert.clone(),
            key,
        }),
        ..BerthOptions::default()
    });
    assert!(registry.url().starts_with("https://"), "{}", registry.url());
    // `localhost`, unlike 127.0.0.1, is not marked insecure in registries.conf: podman
    // verifies the certificate.
    let port = registry.host().rsplit(':').next().unwrap();
    let remote = format!("localhost:{port}/e2e/tls:v1");
    podman.build_busybox_image("localhost/e2e/busybox:v1");

    let untrusted = run_failing(
        podman
            .podman()
            .args(["push", "localhost/e2e/busybox:v1", &remote]),
        None,
    );
    assert!(
        untrusted.contains("certificate"),
        "an unknown CA is refused: {untrusted}"
    );

    let cert_dir = certs.to_str().unwrap();
    podman.run_podman(&[
        "push",
        "--cert-dir",
        cert_dir,
        "localhost/e2e/busybox:v1",
        &remote,
    ]);
    podman.run_podman(&["rmi", "--all", "--force"]);
    podman.run_podman(&["pull", "--quiet", "--cert-dir", cert_dir, &remote]);
    let printed = podman.run_podman(&["run", "--rm", "--network", "none", &remote]);
    assert_eq!(printed, MARKER);
}

fn blob_path(layout: &Path, digest: &str) -> std::path::PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(algorithm).join(hex)
}

/// Every blob `manifest` names is in the OCI layout with the right content.
fn assert_layout_has_blobs(layout: &Path, manifest: &Value) {
    let config = std::iter::once(&manifest["config"]);
    for descriptor in config.chain(manifest["layers"].as_array().unwrap()) {
        let digest = descriptor["digest"].as_str().unwrap();
        let content = fs::read(blob_path(layout, digest))
            .unwrap_or_else(|e| panic!("blob {digest} missing from {}: {e}", layout.display()));
        assert_eq!(sha256_digest(&content), digest);
    }
}
