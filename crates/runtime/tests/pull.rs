//! `ImageStore::pull` against real registries (berth's own in process, Debian's
//! docker-registry with htpasswd) and a fake one for faults: corrupt blobs, cut connections,
//! Bearer tokens.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::HashSet;
use std::os::unix::fs::FileTypeExt;
use std::sync::Arc;

use berth_oci::Digest;
use berth_runtime::image::{
    Credentials, ImageError, ImageStore, LayerOutcome, PrunePolicy, PullOptions,
};
use support::*;

/// Options that read no auth file of the machine running the tests.
fn options() -> PullOptions {
    PullOptions {
        auth_files: Vec::new(),
        ..PullOptions::default()
    }
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    (dir, store)
}

/// Base layer (gzip), an upper layer with a whiteout (plain tar), a zstd layer.
fn layers() -> (Layer, Layer, Layer) {
    let base = Layer::new(
        LAYER_GZIP,
        gzip(&tar(&[
            Entry::Dir("etc/"),
            Entry::File("etc/os-release", b"ID=berth-test\n"),
            Entry::File("etc/obsolete", b"gone in the upper layer\n"),
            Entry::Dir("bin/"),
            Entry::Symlink("bin/sh", "busybox"),
        ])),
    );
    let upper = Layer::new(
        LAYER_TAR,
        tar(&[
            Entry::Dir("etc/"),
            Entry::File("etc/.wh.obsolete", b""),
            Entry::File("etc/app.conf", b"port=8080\n"),
        ]),
    );
    let zstd_layer = Layer::new(
        LAYER_ZSTD,
        zstd(&tar(&[
            Entry::Dir("srv/"),
            Entry::File("srv/index.html", b"<h1>zstd</h1>\n"),
        ])),
    );
    (base, upper, zstd_layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_berth_registry_and_shares_layers() {
    let registry = BerthRegistry::start().await;
    let (base, upper, zstd_layer) = layers();
    let first = TestImage::oci(
        "first",
        vec![base.clone(), upper.clone(), zstd_layer.clone()],
    );
    let other = Layer::new(
        LAYER_TAR,
        tar(&[Entry::File("other.txt", b"second image\n")]),
    );
    let second = TestImage::oci("second", vec![base.clone(), other.clone()]);
    let pusher = Pusher::new(&registry.url, None);
    pusher.image("team/app", "v1", &first).await;
    pusher.image("team/other", "v1", &second).await;

    let (_dir, store) = store();
    let recorder = Arc::new(Recorder::default());
    let opts = PullOptions {
        progress: Some(recorder.clone()),
        ..options()
    };
    let reference = format!("{}/team/app:v1", registry.host);
    let image = store.pull(&reference, &opts).await.unwrap();
    assert_eq!(image.id, first.id());
    assert_eq!(image.references, std::slice::from_ref(&reference));
    assert_eq!(
        image.layers,
        [base.digest(), upper.digest(), zstd_layer.digest()]
    );
    assert_eq!(image.config.cmd, ["first"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(image.config.exposed_ports, [(8080, "tcp".to_owned())]);
    assert!(image.size > 0 && image.size == image.layer_sizes.iter().sum::<u64>());

    let dirs = store.layer_dirs(&image);
    assert_eq!(dirs.len(), 3);
    assert_eq!(
        std::fs::read_to_string(dirs[0].join("etc/os-release")).unwrap(),
        "ID=berth-test\n"
    );
    assert_eq!(
        std::fs::read_link(dirs[0].join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    let whiteout = std::fs::symlink_metadata(dirs[1].join("etc/obsolete")).unwrap();
    assert!(
        whiteout.file_type().is_char_device(),
        "whiteout became a 0/0 char device"
    );
    assert!(!dirs[1].join("etc/.wh.obsolete").exists());
    assert_eq!(
        std::fs::read_to_string(dirs[2].join("srv/index.html")).unwrap(),
        "<h1>zstd</h1>\n"
    );

    // The second image shares the base layer: it is not downloaded nor unpacked again.
    let second_ref = format!("{}/team/other:v1", registry.host);
    let image2 = store.pull(&second_ref, &opts).await.unwrap();
    assert_eq!(image2.id, second.id());
    let outcomes = recorder.outcomes.lock().unwrap().clone();
    assert_eq!(
        outcomes
            .iter()
            .filter(|(d, o)| d == &base.digest() && *o == LayerOutcome::Pulled)
            .count(),
        1
    );
    assert!(outcomes.contains(&(base.digest(), LayerOutcome::AlreadyPresent)));
    assert_eq!(store.layer_dirs(&image2)[0], dirs[0]);
    let snapshots: Vec<_> = std::fs::read_dir(store.root().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(snapshots.len(), 4, "{snapshots:?}");
    assert!(
        tree(&store.root().join("downloads")).is_empty(),
        "downloads are deleted after unpacking"
    );

    // Pulling again changes nothing; by digest adds a reference to the same image.
    let again = store.pull(&reference, &opts).await.unwrap();
    assert_eq!(again.id, image.id);
    let by_digest = format!("{}/team/app@{}", registry.host, first.id());
    let again = store.pull(&by_digest, &opts).await.unwrap();
    assert_eq!(again.references, [reference.clone(), by_digest.clone()]);
    assert_eq!(store.list().unwrap().len(), 2);
    assert_eq!(store.get(&by_digest).unwrap().unwrap().id, image.id);
    assert_eq!(
        store.get(&image.id.hex()[..12]).unwrap().unwrap().id,
        image.id
    );

    // Removing the first image keeps the shared base for the second.
    let report = store
        .remove(&image.id.to_string(), &HashSet::new())
        .unwrap();
    assert_eq!(report.deleted, std::slice::from_ref(&image.id));
    assert_eq!(report.snapshots_removed.len(), 2);
    assert!(dirs[0].is_dir() && !dirs[1].exists() && !dirs[2].exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_picks_the_host_platform() {
    let registry = BerthRegistry::start().await;
    let (base, upper, _) = layers();
    let amd64 = TestImage::oci("amd64", vec![base.clone()]);
    let arm64 = TestImage::oci("arm64", vec![upper.clone()]);
    let pusher = Pusher::new(&registry.url, None);
    pusher.image("multi", "amd64", &amd64).await;
    pusher.image("multi", "arm64", &arm64).await;
    pusher
        .manifest(
            "multi",
            "both",
            OCI_INDEX,
            &index(&[("arm64", &arm64), ("amd64", &amd64)]),
        )
        .await;
    pusher
        .manifest("multi", "s390x", OCI_INDEX, &index(&[("s390x", &amd64)]))
        .await;
    let (_dir, store) = store();
    let image = store
        .pull(&format!("{}/multi:both", registry.host), &options())
        .await
        .unwrap();
    let host = match std::env::consts::ARCH {
        "aarch64" => &arm64,
        _ => &amd64,
    };
    assert_eq!(
        image.id,
        host.id(),
        "the image id is the platform manifest's digest"
    );

    // A Docker manifest list of Docker images works the same way.
    let docker_amd64 = TestImage::docker("docker-amd64", vec![base.clone()]);
    let docker_arm64 = TestImage::docker("docker-arm64", vec![upper.clone()]);
    pusher.image("multi", "docker-amd64", &docker_amd64).await;
    pusher.image("multi", "docker-arm64", &docker_arm64).await;
    let list = index_of(
        DOCKER_MANIFEST_LIST,
        &[("arm64", &docker_arm64), ("amd64", &docker_amd64)],
    );
    pusher
        .manifest("multi", "docker-list", DOCKER_MANIFEST_LIST, &list)
        .await;
    let image = store
        .pull(&format!("{}/multi:docker-list", registry.host), &options())
        .await
        .unwrap();
    let host = match std::env::consts::ARCH {
        "aarch64" => &docker_arm64,
        _ => &docker_amd64,
    };
    assert_eq!(image.id, host.id());
    assert_eq!(
        image.config.cmd,
        [if std::env::consts::ARCH == "aarch64" {
            "docker-arm64"
        } else {
            "docker-amd64"
        }]
    );

    let err = store
        .pull(&format!("{}/multi:s390x", registry.host), &options())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::NoMatchingPlatform { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("linux/s390x"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_docker_registry_with_basic_auth() {
    let registry = DockerRegistry::start("alice", "wonderland");
    let (base, upper, zstd_layer) = layers();
    // A Docker schema 2 image with docker's gzip layer type, and an OCI one.
    let docker_base = Layer::new(DOCKER_LAYER, base.blob.clone());
    let docker_image = TestImage::docker("docker", vec![docker_base, upper.clone()]);
    let oci_image = TestImage::oci("oci", vec![base.clone(), zstd_layer.clone()]);
    let pusher = Pusher::new(&registry.url, Some(("alice", "wonderland")));
    pusher.image("library/docker", "v1", &docker_image).await;
    pusher.image("library/oci", "v1", &oci_image).await;

    let (dir, store) = store();
    let reference = format!("{}/library/docker:v1", registry.host);
    let err = store.pull(&reference, &options()).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("--creds"), "{err}");

    let wrong = PullOptions {
        credentials: Some("alice:guess".parse().unwrap()),
        ..options()
    };
    let err = store.pull(&reference, &wrong).await.unwrap_err();
    assert!(err.to_string().contains("not accepted"), "{err}");

    let with_creds = PullOptions {
        credentials: Some(Credentials {
            username: "alice".to_owned(),
            password: "wonderland".to_owned(),
        }),
        ..options()
    };
    let image = store.pull(&reference, &with_creds).await.unwrap();
    assert_eq!(image.id, docker_image.id());
    assert_eq!(image.config.cmd, ["docker"]);
    let dirs = store.layer_dirs(&image);
    assert!(dirs[0].join("etc/os-release").is_file());
    assert!(dirs[1].join("etc/app.conf").is_file());

    // Credentials from an auth file, as podman and docker write them.
    use base64::Engine as _;
    let auth_file = dir.path().join("auth.json");
    std::fs::write(
        &auth_file,
        serde_json::json!({"auths": {registry.host.clone(): {
            "auth": base64::engine::general_purpose::STANDARD.encode("alice:wonderland")
        }}})
        .to_string(),
    )
    .unwrap();
    let from_file = PullOptions {
        auth_files: vec![auth_file],
        ..options()
    };
    let image = store
        .pull(&format!("{}/library/oci:v1", registry.host), &from_file)
        .await
        .unwrap();
    assert_eq!(image.id, oci_image.id());
    assert!(store.layer_dirs(&image)[1].join("srv/index.html").is_file());

    let err = store
        .pull(&format!("{}/library/missing:v1", registry.host), &from_file)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
}

/// Runs skopeo with its own policy and auth file, so the machine's config plays no part.
fn skopeo(dir: &std::path::Path, args: &[&str]) -> String {
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let out = std::process::Command::new("skopeo")
        .arg("--policy")
        .arg(&policy)
        .args(args)
        .env("REGISTRY_AUTH_FILE", dir.join("skopeo-auth.json"))
        .env("TMPDIR", dir)
        .output()
        .expect("skopeo (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_what_skopeo_wrote_as_docker_schema2_and_oci() {
    let source = BerthRegistry::start().await;
    let target = DockerRegistry::start("carol", "pw");
    let (base, upper, _) = layers();
    let srv = Layer::new(
        LAYER_TAR,
        tar(&[
            Entry::Dir("srv/"),
            Entry::File("srv/index.html", b"<h1>plain</h1>\n"),
        ]),
    );
    let image = TestImage::oci("skopeo", vec![base, upper, srv]);
    Pusher::new(&source.url, None)
        .image("src/app", "v1", &image)
        .await;
    let work = tempfile::tempdir().unwrap();
    let from = format!("docker://{}/src/app:v1", source.host);
    // Rewritten by a real client: as Docker schema 2, and as OCI, every layer gzip.
    for (tag, extra) in [
        (
            "v2s2",
            &[
                "--format",
                "v2s2",
                "--dest-compress-format",
                "gzip",
                "--dest-compress",
            ][..],
        ),
        (
            "oci",
            &[
                "--format",
                "oci",
                "--dest-compress-format",
                "gzip",
                "--dest-compress",
            ][..],
        ),
    ] {
        let to = format!("docker://{}/dst/app:{tag}", target.host);
        let mut args = vec![
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--dest-creds",
            "carol:pw",
        ];
        args.extend_from_slice(extra);
        args.extend([from.as_str(), to.as_str()]);
        skopeo(work.path(), &args);
    }
    let (_dir, store) = store();
    let opts = PullOptions {
        credentials: Some("carol:pw".parse().unwrap()),
        ..options()
    };
    for tag in ["v2s2", "oci"] {
        let reference = format!("{}/dst/app:{tag}", target.host);
        let inspected = skopeo(
            work.path(),
            &[
                "inspect",
                "--tls-verify=false",
                "--creds",
                "carol:pw",
                &format!("docker://{reference}"),
            ],
        );
        let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
        let wanted = match tag {
            "v2s2" => DOCKER_LAYER,
            _ => LAYER_GZIP,
        };
        let raw = skopeo(
            work.path(),
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--creds",
                "carol:pw",
                &format!("docker://{reference}"),
            ],
        );
        let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
        for layer in raw["layers"].as_array().unwrap() {
            assert_eq!(layer["mediaType"], wanted, "{raw}");
        }
        let pulled = store.pull(&reference, &opts).await.unwrap();
        assert_eq!(pulled.id.to_string(), inspected["Digest"], "{tag}");
        assert_eq!(pulled.config.cmd, ["skopeo"]);
        let dirs = store.layer_dirs(&pulled);
        assert_eq!(
            std::fs::read_to_string(dirs[0].join("etc/os-release")).unwrap(),
            "ID=berth-test\n"
        );
        let whiteout = std::fs::symlink_metadata(dirs[1].join("etc/obsolete")).unwrap();
        assert!(whiteout.file_type().is_char_device(), "{tag}");
        assert!(dirs[2].join("srv/index.html").is_file(), "{tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow() {
    let registry = FakeRegistry::start(FakeBehaviour {
        bearer: Some(("bob".to_owned(), "builder".to_owned())),
        ..FakeBehaviour::default()
    })
    .await;
    let (base, ..) = layers();
    let image = TestImage::oci("bearer", vec![base]);
    registry.add("v1", &image);
    let (_dir, store) = store();
    let reference = format!("{}/app:v1", registry.host);

    let err = store.pull(&reference, &options()).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");

    let opts = PullOptions {
        credentials: Some("bob:builder".parse().unwrap()),
        ..options()
    };
    let pulled = store.pull(&reference, &opts).await.unwrap();
    assert_eq!(pulled.id, image.id());
    let tokens = registry.state.token_requests.lock().unwrap().clone();
    assert!(
        tokens
            .iter()
            .any(|q| q.contains("scope=repository%3Aapp%3Apull") && q.contains("service=fake")),
        "{tokens:?}"
    );
    // One token serves the whole pull: a token request per pull attempt, not per blob.
    assert_eq!(tokens.len(), 2, "{tokens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_is_a_clear_error_and_leaves_nothing() {
    let registry = FakeRegistry::start(FakeBehaviour::default()).await;
    let (base, upper, zstd_layer) = layers();
    let image = TestImage::oci("corrupt", vec![base, upper.clone(), zstd_layer]);
    registry.add("v1", &image);
    let mut tampered = upper.blob.clone();
    tampered[600] ^= 0xff;
    registry.replace_blob(&upper.digest(), tampered);

    let (_dir, store) = store();
    let err = store
        .pull(&format!("{}/app:v1", registry.host), &options())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(&upper.digest().to_string()), "{message}");
    assert!(message.contains("nothing was stored"), "{message}");
    assert!(tree(&store.root().join("snapshots")).is_empty());
    assert!(tree(&store.root().join("downloads")).is_empty());
    assert!(store.list().unwrap().is_empty());

    // A manifest that does not match the digest it was pulled by.
    let other = TestImage::oci(
        "other",
        vec![Layer::new(LAYER_TAR, tar(&[Entry::File("x", b"x")]))],
    );
    registry.add("v2", &other);
    registry.state.manifests.lock().unwrap().insert(
        other.id().to_string(),
        (OCI_MANIFEST.to_owned(), image.manifest.clone()),
    );
    let err = store
        .pull(&format!("{}/app@{}", registry.host, other.id()), &options())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::DigestMismatch {
                what: "manifest",
                ..
            }
        ),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_refused_before_anything_is_downloaded() {
    let registry = FakeRegistry::start(FakeBehaviour::default()).await;
    let chart = Layer::new(
        "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        gzip(&tar(&[Entry::File("Chart.yaml", b"name: x\n")])),
    );
    let artifact = TestImage::artifact("application/vnd.cncf.helm.config.v1+json", vec![chart]);
    registry.add("chart", &artifact);
    let (_dir, store) = store();
    let err = store
        .pull(&format!("{}/app:chart", registry.host), &options())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Manifest { .. }), "{err}");
    assert!(err.to_string().contains("not a container image"), "{err}");
    assert!(registry.state.blob_requests.lock().unwrap().is_empty());
    assert!(store.list().unwrap().is_empty());
}

fn big_layer() -> Layer {
    let data = noise(600_000, 7);
    Layer::new(LAYER_GZIP, gzip(&tar(&[Entry::File("big.bin", &data)])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_resumes_with_range() {
    let layer = big_layer();
    let cut_at = layer.blob.len() / 2;
    let registry = FakeRegistry::start(FakeBehaviour {
        cut: Some((layer.digest(), cut_at)),
        ..FakeBehaviour::default()
    })
    .await;
    let image = TestImage::oci("big", vec![layer.clone()]);
    registry.add("v1", &image);
    let (_dir, store) = store();
    let reference = format!("{}/app:v1", registry.host);

    // No retries within the pull: the first pull fails and leaves the partial download.
    let once = PullOptions {
        retries: 0,
        ..options()
    };
    let err = store.pull(&reference, &once).await.unwrap_err();
    assert!(matches!(err, ImageError::Connection { .. }), "{err}");
    assert!(err.to_string().contains("resume"), "{err}");
    let partial = store
        .root()
        .join(format!("downloads/{}.partial", layer.digest().hex()));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), cut_at as u64);
    assert!(store.list().unwrap().is_empty());

    let recorder = Arc::new(Recorder::default());
    let opts = PullOptions {
        progress: Some(recorder.clone()),
        ..once
    };
    let pulled = store.pull(&reference, &opts).await.unwrap();
    assert_eq!(pulled.id, image.id());
    let requests = registry.state.blob_requests.lock().unwrap().clone();
    let layer_requests: Vec<_> = requests
        .iter()
        .filter(|(d, _)| d == &layer.digest().to_string())
        .map(|(_, range)| range.clone())
        .collect();
    assert_eq!(layer_requests, [None, Some(format!("bytes={cut_at}-"))]);
    assert_eq!(
        recorder.started.lock().unwrap()[0],
        (layer.digest(), layer.blob.len() as u64, cut_at as u64)
    );
    assert_eq!(
        std::fs::read(store.layer_dirs(&pulled)[0].join("big.bin")).unwrap(),
        noise(600_000, 7)
    );
    assert!(!partial.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_within_one_pull_and_servers_that_ignore_range() {
    let layer = big_layer();
    let cut_at = layer.blob.len() / 3;
    let registry = FakeRegistry::start(FakeBehaviour {
        cut: Some((layer.digest(), cut_at)),
        ignore_range: true,
        ..FakeBehaviour::default()
    })
    .await;
    let image = TestImage::oci("big", vec![layer.clone()]);
    registry.add("v1", &image);
    let (_dir, store) = store();
    // The default options retry: one pull survives the cut; the server answers the Range
    // request with 200, so the blob is taken again from the start.
    let pulled = store
        .pull(&format!("{}/app:v1", registry.host), &options())
        .await
        .unwrap();
    assert_eq!(pulled.id, image.id());
    let ranges: Vec<_> = registry
        .state
        .blob_requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(d, _)| d == &layer.digest().to_string())
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(ranges, [None, Some(format!("bytes={cut_at}-"))]);
    assert!(store.layer_dirs(&pulled)[0].join("big.bin").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_mid_download_leaves_nothing_registered_and_resumes() {
    let (base, ..) = layers();
    let layer = big_layer();
    let cut_at = layer.blob.len() / 2;
    let registry = FakeRegistry::start(FakeBehaviour {
        cut: Some((layer.digest(), cut_at)),
        stall: true,
        ..FakeBehaviour::default()
    })
    .await;
    let image = TestImage::oci("killed", vec![base.clone(), layer.clone()]);
    registry.add("v1", &image);
    let (_dir, store) = store();
    let reference = format!("{}/app:v1", registry.host);
    let partial = store
        .root()
        .join(format!("downloads/{}.partial", layer.digest().hex()));

    let pulling = {
        let store = store.clone();
        let reference = reference.clone();
        tokio::spawn(async move { store.pull(&reference, &options()).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < cut_at as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the download never got to the cut"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The base layer is small: wait until it is unpacked, so the kill leaves a snapshot
    // that no image records.
    while !store.snapshot_dir(&base.digest()).is_dir() {
        assert!(
            std::time::Instant::now() < deadline,
            "the base layer never got unpacked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    pulling.abort();
    assert!(pulling.await.unwrap_err().is_cancelled());

    assert!(store.list().unwrap().is_empty(), "nothing registered");
    assert!(
        !store.snapshot_dir(&layer.digest()).exists(),
        "no half-unpacked snapshot"
    );
    // An unregistered snapshot of a killed pull is garbage for the next prune.
    let report = store
        .prune(&PrunePolicy::default(), &HashSet::new())
        .unwrap();
    assert_eq!(
        report.snapshots_removed,
        std::slice::from_ref(&base.digest())
    );

    let pulled = store.pull(&reference, &options()).await.unwrap();
    assert_eq!(pulled.id, image.id());
    let ranges: Vec<_> = registry
        .state
        .blob_requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(d, _)| d == &layer.digest().to_string())
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(ranges, [None, Some(format!("bytes={cut_at}-"))]);
    for dir in store.layer_dirs(&pulled) {
        assert!(dir.is_dir());
    }
}

#[test]
fn concurrent_pulls_of_one_image_share_the_work() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = runtime.block_on(BerthRegistry::start());
    let (base, upper, zstd_layer) = layers();
    let image = TestImage::oci("both", vec![base, upper, zstd_layer, big_layer()]);
    runtime.block_on(Pusher::new(&registry.url, None).image("app", "v1", &image));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let reference = format!("{}/app:v1", registry.host);

    // Separate stores and runtimes on separate threads: as close to two processes as a test
    // gets (flock excludes separate open files even in one process).
    let pulls: Vec<_> = (0..3)
        .map(|_| {
            let root = root.clone();
            let reference = reference.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let store = ImageStore::open(&root).unwrap();
                runtime.block_on(store.pull(&reference, &options()))
            })
        })
        .collect();
    let ids: Vec<Digest> = pulls
        .into_iter()
        .map(|t| t.join().unwrap().unwrap().id)
        .collect();
    assert!(ids.iter().all(|id| id == &image.id()));
    let store = ImageStore::open(&root).unwrap();
    let images = store.list().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].references, [reference]);
    let snapshots = tree(&root.join("snapshots"));
    let top: Vec<_> = snapshots
        .iter()
        .filter(|p| p.components().count() == 1)
        .collect();
    assert_eq!(top.len(), 4, "{top:?}");
    assert!(store.layer_dirs(&images[0])[3].join("big.bin").is_file());
    drop(registry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_never_removes_pinned_or_in_use_images() {
    let registry = BerthRegistry::start().await;
    let (base, upper, zstd_layer) = layers();
    let pusher = Pusher::new(&registry.url, None);
    let images = [
        TestImage::oci("a", vec![base.clone(), upper.clone()]),
        TestImage::oci("b", vec![base.clone(), zstd_layer.clone()]),
        TestImage::oci(
            "c",
            vec![Layer::new(LAYER_TAR, tar(&[Entry::File("c", b"c")]))],
        ),
    ];
    for (name, image) in ["a", "b", "c"].iter().zip(&images) {
        pusher.image("prune", name, image).await;
    }
    let (_dir, store) = store();
    for name in ["a", "b", "c"] {
        store
            .pull(&format!("{}/prune:{name}", registry.host), &options())
            .await
            .unwrap();
    }
    store
        .pin(&format!("{}/prune:a", registry.host), true)
        .unwrap();
    let in_use: HashSet<Digest> = [images[1].id()].into();
    let policy = PrunePolicy {
        all_unused: true,
        ..PrunePolicy::default()
    };
    let report = store.prune(&policy, &in_use).unwrap();
    assert_eq!(report.images.len(), 1);
    assert_eq!(report.images[0].0, images[2].id());
    let left: Vec<Digest> = store.list().unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(left.len(), 2);
    for image in &images[..2] {
        let record = store.get(&image.id().to_string()).unwrap().unwrap();
        for dir in store.layer_dirs(&record) {
            assert!(dir.is_dir(), "{} lost a layer", image.id());
        }
    }
    assert!(report.usage_after < report.usage_before);
    // Water marks far below the usage still spare them.
    let policy = PrunePolicy {
        high_water: Some(0),
        low_water: Some(0),
        ..PrunePolicy::default()
    };
    assert!(store.prune(&policy, &in_use).unwrap().images.is_empty());
    assert_eq!(store.list().unwrap().len(), 2);
}

#[tokio::test]
async fn bare_names_and_unreachable_registries_are_clear_errors() {
    let (_dir, store) = store();
    let err = store.pull("busybox", &options()).await.unwrap_err();
    assert!(err.to_string().contains("names no registry"), "{err}");
    // Nothing listens on port 1.
    let err = store
        .pull("127.0.0.1:1/app:v1", &options())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Connection { .. }), "{err}");
}
