//! The registry with the clients people really use, installed from Debian by
//! scripts/install-deps.sh: podman (build FROM scratch, push, pull, run, login), skopeo
//! (copy both ways with `oci:` layouts, single images and a multi-arch index; inspect;
//! list-tags) and umoci (to make layouts). Each test runs its own registry and its own
//! podman storage, and removes both.
#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_oci::Digest;
use serde_json::Value;
use support::{run, stdout, Berth};

const MARKER: &str = "hello from a berth-pushed image";

/// podman/buildah/skopeo with their own storage and config under a temp dir, so tests
/// neither see nor touch the machine's containers, and run on this host as it is (runc,
/// cgroupfs, rlimits within the hard limit).
struct Containers {
    dir: tempfile::TempDir,
}

impl Containers {
    fn new(registry_host: &str) -> Containers {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[network]
network_config_dir = "{d}/networks"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
"#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("storage.conf"),
            format!("[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/runroot\"\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("registries.conf"),
            format!("unqualified-search-registries = []\n[[registry]]\nlocation = \"{registry_host}\"\ninsecure = true\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("auth.json"), "{}").unwrap();
        Containers { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("REGISTRY_AUTH_FILE", self.path("auth.json"));
        if program == "skopeo" {
            cmd.arg("--policy").arg(self.path("policy.json"));
        }
        cmd
    }

    /// Builds `tag` FROM scratch with busybox-static, printing MARKER when run.
    fn build_busybox_image(&self, tag: &str) {
        let ctx = self.path("ctx");
        std::fs::create_dir_all(ctx.join("rootfs/bin")).unwrap();
        std::fs::copy("/bin/busybox", ctx.join("rootfs/bin/busybox")).unwrap();
        for applet in ["sh", "echo", "cat", "ls"] {
            let link = ctx.join("rootfs/bin").join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link).unwrap();
            }
        }
        std::fs::write(
            ctx.join("Containerfile"),
            format!("FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/echo\", \"{MARKER}\"]\n"),
        )
        .unwrap();
        run(self
            .cmd("podman")
            .args(["build", "--network", "none", "-q", "-t", tag])
            .arg(&ctx));
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        // Unmounts overlay layers and removes the storage; then the temp dir goes.
        let _ = self.cmd("podman").args(["rm", "-af"]).output();
        let _ = self.cmd("podman").args(["system", "reset", "-f"]).output();
    }
}

/// An OCI layout made with umoci: a busybox image under `tag`, for `arch`.
fn umoci_image(layout: &Path, tag: &str, arch: &str) {
    if !layout.join("index.json").exists() {
        run(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    }
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]));
    let bundle = layout.with_file_name(format!("bundle-{tag}"));
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &image])
        .arg(&bundle));
    std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    std::fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox")).unwrap();
    std::fs::write(bundle.join("rootfs/arch"), arch).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--architecture",
        arch,
        "--config.cmd",
        "/bin/busybox",
    ]));
    std::fs::remove_dir_all(&bundle).unwrap();
}

/// The manifest digest `tag` points at in an OCI layout's index.json.
fn layout_digest(layout: &Path, tag: &str) -> (String, Value) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"))
        .clone();
    (entry["digest"].as_str().unwrap().to_owned(), entry)
}

#[test]
fn podman_builds_pushes_pulls_and_runs() {
    let data = tempfile::tempdir().unwrap();
    let berth = Berth::start(data.path(), &[]);
    let c = Containers::new(berth.host());
    c.build_busybox_image("localhost/e2e/busybox:v1");
    let remote = format!("{}/e2e/busybox:v1", berth.host());
    run(c.cmd("podman").args([
        "push",
        "-q",
        "--tls-verify=false",
        "localhost/e2e/busybox:v1",
        &remote,
    ]));
    run(c.cmd("podman").args(["rmi", "-a", "-f"]));
    let images = run(c.cmd("podman").args(["images", "-q"]));
    assert_eq!(stdout(&images), "", "local images were not removed");
    run(c
        .cmd("podman")
        .args(["pull", "-q", "--tls-verify=false", &remote]));
    let out = run(c
        .cmd("podman")
        .args(["run", "--rm", "--network", "none", &remote]));
    assert_eq!(stdout(&out), MARKER);
}

#[test]
fn skopeo_copies_a_single_image_both_ways() {
    let data = tempfile::tempdir().unwrap();
    let berth = Berth::start(data.path(), &[]);
    let c = Containers::new(berth.host());
    let layout = c.path("layout");
    umoci_image(&layout, "v1", "amd64");
    let (digest, _) = layout_digest(&layout, "v1");
    let remote = format!("docker://{}/e2e/single:v1", berth.host());
    run(c
        .cmd("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(&remote));

    let inspect: Value = serde_json::from_slice(
        &run(c
            .cmd("skopeo")
            .args(["inspect", "--tls-verify=false", &remote]))
        .stdout,
    )
    .unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["RepoTags"], serde_json::json!(["v1"]));
    let raw = run(c
        .cmd("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &remote]))
    .stdout;
    assert_eq!(
        Digest::sha256(&raw).to_string(),
        digest,
        "manifest bytes changed in transit"
    );

    run(c
        .cmd("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{}/e2e/single:v2", berth.host())));
    let tags: Value = serde_json::from_slice(
        &run(c.cmd("skopeo").args([
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{}/e2e/single", berth.host()),
        ]))
        .stdout,
    )
    .unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1", "v2"]));

    let back = c.path("back");
    run(c
        .cmd("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false", &remote])
        .arg(format!("oci:{}:v1", back.display())));
    assert_eq!(layout_digest(&back, "v1").0, digest);
}

#[test]
fn skopeo_copies_a_multi_arch_index_both_ways() {
    let data = tempfile::tempdir().unwrap();
    let berth = Berth::start(data.path(), &[]);
    let c = Containers::new(berth.host());
    let layout = c.path("layout");
    umoci_image(&layout, "amd64", "amd64");
    umoci_image(&layout, "arm64", "arm64");
    // An image index over both, written into the layout as a blob and tagged `multi`.
    let (_, amd) = layout_digest(&layout, "amd64");
    let (_, arm) = layout_digest(&layout, "arm64");
    let child = |entry: &Value, arch: &str| {
        serde_json::json!({
            "mediaType": entry["mediaType"], "digest": entry["digest"], "size": entry["size"],
            "platform": {"architecture": arch, "os": "linux"}
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [child(&amd, "amd64"), child(&arm, "arm64")],
    }))
    .unwrap();
    let index_digest = Digest::sha256(&index);
    std::fs::write(layout.join("blobs/sha256").join(index_digest.hex()), &index).unwrap();
    let mut top: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest.to_string(),
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();

    let remote = format!("docker://{}/e2e/multi:1", berth.host());
    run(c
        .cmd("skopeo")
        .args(["copy", "-q", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:multi", layout.display()))
        .arg(&remote));
    let raw = run(c
        .cmd("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &remote]))
    .stdout;
    assert_eq!(
        Digest::sha256(&raw),
        index_digest,
        "index bytes changed in transit"
    );
    let listed: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(listed["manifests"].as_array().unwrap().len(), 2);
    for arch in ["amd64", "arm64"] {
        let inspect: Value = serde_json::from_slice(
            &run(c.cmd("skopeo").args([
                "inspect",
                "--tls-verify=false",
                "--override-arch",
                arch,
                &remote,
            ]))
            .stdout,
        )
        .unwrap();
        assert_eq!(inspect["Architecture"], arch);
    }
    let back = c.path("back");
    run(c
        .cmd("skopeo")
        .args(["copy", "-q", "--all", "--src-tls-verify=false", &remote])
        .arg(format!("oci:{}:multi", back.display())));
    assert_eq!(layout_digest(&back, "multi").0, index_digest.to_string());
}

#[test]
fn podman_login_then_authenticated_push() {
    let data = tempfile::tempdir().unwrap();
    let hash = {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["registry", "hash-password"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"s3cret-pw\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        stdout(&out)
    };
    let users = data.path().join("users.toml");
    std::fs::write(
        &users,
        format!("[[users]]\nname = \"alice\"\npassword = \"{hash}\"\npush = [\"alice/*\"]\n"),
    )
    .unwrap();
    let berth = Berth::start(
        &data.path().join("registry"),
        &["--users", users.to_str().unwrap()],
    );
    let c = Containers::new(berth.host());
    c.build_busybox_image("localhost/e2e/auth:v1");
    let remote = format!("{}/alice/app:v1", berth.host());

    let anonymous = c
        .cmd("podman")
        .args([
            "push",
            "--tls-verify=false",
            "localhost/e2e/auth:v1",
            &remote,
        ])
        .output()
        .unwrap();
    assert!(!anonymous.status.success(), "anonymous push was accepted");
    let wrong = c
        .cmd("podman")
        .args([
            "login",
            "--tls-verify=false",
            "-u",
            "alice",
            "-p",
            "wrong",
            berth.host(),
        ])
        .output()
        .unwrap();
    assert!(
        !wrong.status.success(),
        "login with a wrong password succeeded"
    );

    run(c.cmd("podman").args([
        "login",
        "--tls-verify=false",
        "-u",
        "alice",
        "-p",
        "s3cret-pw",
        berth.host(),
    ]));
    run(c.cmd("podman").args([
        "push",
        "-q",
        "--tls-verify=false",
        "localhost/e2e/auth:v1",
        &remote,
    ]));
    let denied = c
        .cmd("podman")
        .args([
            "push",
            "--tls-verify=false",
            "localhost/e2e/auth:v1",
            &format!("{}/bob/app:v1", berth.host()),
        ])
        .output()
        .unwrap();
    assert!(
        !denied.status.success(),
        "push outside alice/* was accepted"
    );
    let tags: Value = serde_json::from_slice(
        &run(c.cmd("skopeo").args([
            "list-tags",
            "--tls-verify=false",
            "--creds",
            "alice:s3cret-pw",
            &format!("docker://{}/alice/app", berth.host()),
        ]))
        .stdout,
    )
    .unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));
}

#[test]
fn referrer_artifact_is_listed_by_the_referrers_api() {
    let data = tempfile::tempdir().unwrap();
    let berth = Berth::start(data.path(), &[]);
    let c = Containers::new(berth.host());
    let layout = c.path("layout");
    umoci_image(&layout, "v1", "amd64");
    let (subject, subject_entry) = layout_digest(&layout, "v1");
    let remote = format!("docker://{}/e2e/signed:v1", berth.host());
    run(c
        .cmd("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(&remote));

    // An artifact (e.g. a signature) whose subject is the image, pushed over the API.
    let client = reqwest::blocking::Client::new();
    let base = format!("{}/v2/e2e/signed", berth.url);
    let push_blob = |data: &[u8]| {
        let digest = Digest::sha256(data);
        let r = client
            .post(format!("{base}/blobs/uploads/?digest={digest}"))
            .body(data.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        digest
    };
    let empty = push_blob(b"{}");
    let payload = push_blob(b"signature bytes");
    let artifact = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.to_string(), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": payload.to_string(), "size": 15}],
        "subject": {"mediaType": subject_entry["mediaType"], "digest": subject, "size": subject_entry["size"]},
    }))
    .unwrap();
    let artifact_digest = Digest::sha256(&artifact);
    let r = client
        .put(format!("{base}/manifests/{artifact_digest}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(artifact)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["oci-subject"], subject.as_str());

    for filter in ["", "?artifactType=application/vnd.example.signature"] {
        let r = client
            .get(format!("{base}/referrers/{subject}{filter}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers().contains_key("oci-filters-applied"),
            !filter.is_empty()
        );
        let index: Value = r.json().unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
        assert_eq!(index["manifests"][0]["digest"], artifact_digest.to_string());
        assert_eq!(
            index["manifests"][0]["artifactType"],
            "application/vnd.example.signature"
        );
    }
    let r = client
        .get(format!(
            "{base}/referrers/{subject}?artifactType=application/other"
        ))
        .send()
        .unwrap();
    let index: Value = r.json().unwrap();
    assert_eq!(index["manifests"], serde_json::json!([]));
    // skopeo still sees the image itself untouched.
    let inspect: Value = serde_json::from_slice(
        &run(c
            .cmd("skopeo")
            .args(["inspect", "--tls-verify=false", &remote]))
        .stdout,
    )
    .unwrap();
    assert_eq!(inspect["Digest"], subject.as_str());
}
