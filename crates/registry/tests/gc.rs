//! Garbage collection, retention, pins, quotas and usage through the admin API.
#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::path::Path;

use berth_oci::media_type::{OCI_INDEX, OCI_MANIFEST};
use berth_oci::Digest;
use berth_registry::RegistryConfig;
use rand::RngCore;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::{expect_error, header, TestRegistry};

fn config(toml_text: &str) -> RegistryConfig {
    toml::from_str(toml_text).unwrap()
}

async fn gc(reg: &TestRegistry, query: &str) -> Value {
    let r = reg
        .req(Method::POST, &format!("/admin/gc?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    r.json().await.unwrap()
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    v
}

fn stored_bytes(data: &Path) -> u64 {
    support::files(&data.join("blobs"))
        .iter()
        .map(|f| f.metadata().unwrap().len())
        .sum()
}

async fn status(reg: &TestRegistry, method: Method, path: &str) -> u16 {
    reg.req(method, path)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn deleting_half_the_images_and_collecting_frees_their_space() {
    let reg = TestRegistry::start_with(config("gc_grace = \"0s\"")).await;
    let mut images = Vec::new();
    for i in 0..10 {
        let layer = random(256 * 1024);
        let (_, digest) = reg.push_image("space/app", &format!("t{i}"), &layer).await;
        images.push((digest, layer));
    }
    let before = stored_bytes(&reg.dir().join("data"));
    for (digest, _) in &images[..5] {
        assert_eq!(
            status(
                &reg,
                Method::DELETE,
                &format!("/v2/space/app/manifests/{digest}")
            )
            .await,
            202
        );
    }
    let dry = gc(&reg, "dry_run=true").await;
    assert_eq!(dry["blobs"], 10, "5 layers and 5 manifests: {dry}");
    assert_eq!(
        stored_bytes(&reg.dir().join("data")),
        before,
        "a dry run changes nothing"
    );
    let report = gc(&reg, "").await;
    assert_eq!(report["blobs"], 10, "{report}");
    let after = stored_bytes(&reg.dir().join("data"));
    assert_eq!(before - after, report["blob_bytes"].as_u64().unwrap());
    assert!(before - after >= 5 * 256 * 1024);
    eprintln!(
        "10 images of 256 KiB, 5 deleted: {before} bytes stored before GC, {after} after, {} freed",
        before - after
    );
    // The other half is intact, the shared config too.
    for (i, (digest, layer)) in images.iter().enumerate().skip(5) {
        let r = reg
            .req(Method::GET, &format!("/v2/space/app/manifests/t{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
        let r = reg
            .req(
                Method::GET,
                &format!("/v2/space/app/blobs/{}", Digest::sha256(layer)),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().to_vec(), *layer);
    }
    for (_, layer) in &images[..5] {
        let path = format!("/v2/space/app/blobs/{}", Digest::sha256(layer));
        assert_eq!(status(&reg, Method::HEAD, &path).await, 404);
    }
    assert_eq!(gc(&reg, "").await["blobs"], 0, "nothing left to collect");
}

#[tokio::test]
async fn the_grace_period_protects_fresh_uploads() {
    let reg = TestRegistry::start_with(config("gc_grace = \"1h\"")).await;
    let digest = reg
        .push_blob("fresh/app", b"layer whose manifest is still coming")
        .await;
    let report = gc(&reg, "").await;
    assert_eq!(report["blobs"], 0);
    assert_eq!(
        status(&reg, Method::HEAD, &format!("/v2/fresh/app/blobs/{digest}")).await,
        200
    );

    let reg = TestRegistry::start_with(config("gc_grace = \"0s\"")).await;
    let digest = reg.push_blob("fresh/app", b"layer nobody referenced").await;
    assert_eq!(gc(&reg, "dry_run=true").await["blobs"], 1);
    assert_eq!(
        status(&reg, Method::HEAD, &format!("/v2/fresh/app/blobs/{digest}")).await,
        200
    );
    assert_eq!(gc(&reg, "").await["blobs"], 1);
    assert_eq!(
        status(&reg, Method::HEAD, &format!("/v2/fresh/app/blobs/{digest}")).await,
        404
    );
}

#[tokio::test]
async fn pins_untagged_manifests_referrers_and_index_children() {
    let reg = TestRegistry::start_with(config("gc_grace = \"0s\"")).await;
    let (a_manifest, a) = reg.push_image("pin/app", "a", b"layer a").await;
    let (_, b) = reg.push_image("pin/app", "b", b"layer b").await;
    assert_eq!(
        status(&reg, Method::DELETE, "/v2/pin/app/manifests/b").await,
        202
    );

    // A pinned manifest survives untagged deletion and refuses DELETE.
    let r = reg
        .req(Method::PUT, &format!("/admin/pins/{b}"))
        .body(r#"{"reason":"release app#2"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let pins: Value = reg.json("/admin/pins").await;
    assert_eq!(pins["pins"][0]["digest"], b.to_string());
    assert_eq!(pins["pins"][0]["reason"], "release app#2");
    let report = gc(&reg, "delete_untagged=true").await;
    assert_eq!(
        report["untagged_manifests"],
        serde_json::json!([]),
        "{report}"
    );
    assert_eq!(report["pinned"], 1);
    assert_eq!(
        status(&reg, Method::GET, &format!("/v2/pin/app/manifests/{b}")).await,
        200
    );
    let r = reg
        .req(Method::DELETE, &format!("/v2/pin/app/manifests/{b}"))
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 403, "DENIED").await;
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("release app#2"));

    // An untagged referrer of a live manifest, and untagged children of a tagged index, stay.
    let empty = reg.push_blob("pin/app", b"{}").await;
    let sig = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/x.sig","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{a}","size":{}}}}}"#,
        a_manifest.len()
    );
    let sig_digest = Digest::sha256(sig.as_bytes());
    assert_eq!(
        reg.put_manifest("pin/app", &sig_digest.to_string(), OCI_MANIFEST, &sig)
            .await
            .status(),
        201
    );
    let (c_manifest, c) = reg.push_image("pin/app", "c", b"layer c").await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{c}","size":{}}}]}}"#,
        c_manifest.len()
    );
    assert_eq!(
        reg.put_manifest("pin/app", "multi", OCI_INDEX, &index)
            .await
            .status(),
        201
    );
    assert_eq!(
        status(&reg, Method::DELETE, "/v2/pin/app/manifests/c").await,
        202
    );

    let report = gc(&reg, "delete_untagged=true").await;
    assert_eq!(
        report["untagged_manifests"],
        serde_json::json!([]),
        "{report}"
    );
    for digest in [&sig_digest, &c] {
        assert_eq!(
            status(
                &reg,
                Method::GET,
                &format!("/v2/pin/app/manifests/{digest}")
            )
            .await,
            200
        );
    }

    // A pin with an owner is removed only by force.
    let r = reg
        .req(Method::PUT, &format!("/admin/pins/{b}"))
        .body(r#"{"reason":"berth server: kept for rollback, app app","owner":"berth server"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let pins: Value = reg.json("/admin/pins").await;
    assert_eq!(pins["pins"][0]["owner"], "berth server");
    let r = reg
        .req(Method::DELETE, &format!("/admin/pins/{b}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("pinned by berth server") && message.contains("force=true"),
        "{message}"
    );
    assert_eq!(
        status(&reg, Method::DELETE, &format!("/admin/pins/{b}?force=yes")).await,
        400
    );

    // Unpinned, b goes with its layer.
    assert_eq!(
        status(&reg, Method::DELETE, &format!("/admin/pins/{b}?force=true")).await,
        204
    );
    assert_eq!(
        status(&reg, Method::DELETE, &format!("/admin/pins/{b}")).await,
        404
    );
    let report = gc(&reg, "delete_untagged=true").await;
    assert_eq!(
        report["untagged_manifests"][0]["digest"],
        b.to_string(),
        "{report}"
    );
    assert_eq!(
        status(&reg, Method::GET, &format!("/v2/pin/app/manifests/{b}")).await,
        404
    );
    let layer_b = Digest::sha256(b"layer b");
    assert_eq!(
        status(&reg, Method::HEAD, &format!("/v2/pin/app/blobs/{layer_b}")).await,
        404
    );
    assert_eq!(
        status(&reg, Method::GET, "/v2/pin/app/manifests/a").await,
        200
    );
}

#[tokio::test]
async fn retention_keeps_the_last_n_and_matching_tags_with_a_dry_run() {
    let reg = TestRegistry::start_with(config(
        r#"
gc_grace = "0s"
[[retention]]
repositories = "ret/*"
keep_last = 2
keep_tags = "^release-"
delete_untagged_after = "0s"
"#,
    ))
    .await;
    for (i, tag) in ["release-1", "dev-1", "dev-2", "dev-3", "dev-4"]
        .iter()
        .enumerate()
    {
        reg.push_image("ret/app", tag, format!("layer {i}").as_bytes())
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    reg.push_image("other/app", "dev-1", b"not governed").await;

    let dry = gc(&reg, "dry_run=true").await;
    let expired: Vec<&str> = dry["expired_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tag"].as_str().unwrap())
        .collect();
    assert_eq!(expired, ["dev-1", "dev-2"], "{dry}");
    assert_eq!(
        dry["expired_tags"][0]["reason"],
        "not among the 2 most recently pushed; does not match \"^release-\""
    );
    let tags: Value = reg.json("/v2/ret/app/tags/list").await;
    assert_eq!(
        tags["tags"].as_array().unwrap().len(),
        5,
        "dry run deleted tags"
    );

    let report = gc(&reg, "").await;
    assert_eq!(report["expired_tags"].as_array().unwrap().len(), 2);
    assert_eq!(
        report["untagged_manifests"].as_array().unwrap().len(),
        2,
        "{report}"
    );
    let tags: Value = reg.json("/v2/ret/app/tags/list").await;
    assert_eq!(
        tags["tags"],
        serde_json::json!(["dev-3", "dev-4", "release-1"])
    );
    let tags: Value = reg.json("/v2/other/app/tags/list").await;
    assert_eq!(tags["tags"], serde_json::json!(["dev-1"]));
    for gone in ["layer 1", "layer 2"] {
        let path = format!("/v2/ret/app/blobs/{}", Digest::sha256(gone.as_bytes()));
        assert_eq!(status(&reg, Method::HEAD, &path).await, 404, "{gone}");
    }
}

#[tokio::test]
async fn quotas_refuse_pushes_that_would_exceed_them() {
    let reg = TestRegistry::start_with(config(
        r#"
[[quotas]]
repositories = "quota/*"
max_bytes = "100KiB"
"#,
    ))
    .await;
    reg.push_blob("quota/app", &random(60 * 1024)).await;
    let second = random(60 * 1024);
    let r = reg
        .req(
            Method::POST,
            &format!(
                "/v2/quota/app/blobs/uploads/?digest={}",
                Digest::sha256(&second)
            ),
        )
        .body(second.clone())
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 403, "DENIED").await;
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("quota exceeded")
            && message.contains("100.0 KiB")
            && message.contains("60.0 KiB"),
        "{message}"
    );
    assert_eq!(body["errors"][0]["detail"]["quota"], 102400);
    assert_eq!(body["errors"][0]["detail"]["usage"], 61440);
    // Nothing of the refused push remains, and a repository without a quota is unaffected.
    assert_eq!(
        status(
            &reg,
            Method::HEAD,
            &format!("/v2/quota/app/blobs/{}", Digest::sha256(&second))
        )
        .await,
        404
    );
    reg.push_blob("free/app", &second).await;
    // Mounting into the full repository is refused too.
    let r = reg
        .req(
            Method::POST,
            &format!(
                "/v2/quota/app/blobs/uploads/?mount={}&from=free/app",
                Digest::sha256(&second)
            ),
        )
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "DENIED").await;

    let metrics = reg
        .req(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("berth_registry_repository_bytes{repository=\"quota/app\"} 61440"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_registry_repository_quota_bytes{repository=\"quota/app\"} 102400"),
        "{metrics}"
    );
    let usage: Value = reg.json("/admin/usage").await;
    let quota_app = usage["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repository"] == "quota/app")
        .unwrap();
    assert_eq!(quota_app["bytes"], 61440);
    assert_eq!(quota_app["quota"], 102400);
}

#[tokio::test]
async fn usage_splits_shared_and_exclusive_bytes() {
    let reg = TestRegistry::start().await;
    let shared = reg.push_blob("du/a", &[1u8; 1000]).await;
    reg.push_blob("du/a", &[2u8; 300]).await;
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/du/b/blobs/uploads/?mount={shared}&from=du/a"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let usage: Value = reg.json("/admin/usage").await;
    let find = |name: &str| {
        usage["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["repository"] == name)
            .unwrap()
            .clone()
    };
    let (a, b) = (find("du/a"), find("du/b"));
    assert_eq!(
        (
            a["bytes"].as_u64(),
            a["shared"].as_u64(),
            a["exclusive"].as_u64()
        ),
        (Some(1300), Some(1000), Some(300))
    );
    assert_eq!(
        (
            b["bytes"].as_u64(),
            b["shared"].as_u64(),
            b["exclusive"].as_u64()
        ),
        (Some(1000), Some(1000), Some(0))
    );
    assert_eq!(usage["stored_bytes"], 1300);
}

#[tokio::test]
async fn abandoned_uploads_and_orphaned_files_are_removed() {
    let reg = TestRegistry::start_with(config("gc_grace = \"0s\"\nupload_max_age = \"0s\"")).await;
    let r = reg
        .req(Method::POST, "/v2/up/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&r, "location").to_owned();
    reg.req(Method::PATCH, &location)
        .body(vec![0u8; 1000])
        .send()
        .await
        .unwrap();
    // A file with no record, as a crash between a commit's rename and its record leaves.
    let orphan = b"orphaned content";
    let digest = Digest::sha256(orphan);
    let dir = reg.dir().join("data/blobs/sha256").join(&digest.hex()[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(digest.hex()), orphan).unwrap();

    let dry = gc(&reg, "dry_run=true").await;
    assert_eq!(
        (dry["uploads"].as_u64(), dry["orphan_files"].as_u64()),
        (Some(1), Some(1)),
        "{dry}"
    );
    assert!(dir.join(digest.hex()).exists());
    let report = gc(&reg, "").await;
    assert_eq!(
        (report["uploads"].as_u64(), report["orphan_files"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(report["orphan_bytes"], orphan.len());
    assert!(!dir.join(digest.hex()).exists());
    let r = reg.req(Method::GET, &location).send().await.unwrap();
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn the_admin_api_needs_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let hash = bcrypt::hash("pw", 4).unwrap();
    std::fs::write(
        &users,
        format!("[[users]]\nname = \"root\"\npassword = \"{hash}\"\nadmin = true\n[[users]]\nname = \"dev\"\npassword = \"{hash}\"\npush = [\"*\"]\n"),
    )
    .unwrap();
    let reg = TestRegistry::start_with(RegistryConfig {
        users: Some(users),
        ..Default::default()
    })
    .await;
    let r = reg
        .req(Method::POST, "/admin/gc?dry_run=true")
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
    let r = reg
        .req(Method::POST, "/admin/gc?dry_run=true")
        .basic_auth("dev", Some("pw"))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "DENIED").await;
    let r = reg
        .req(Method::POST, "/admin/gc?dry_run=true")
        .basic_auth("root", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = reg
        .req(Method::PUT, "/admin/pins/sha256:bad")
        .basic_auth("root", Some("pw"))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn scheduled_collections_run_on_their_interval() {
    let reg = TestRegistry::start_with(config("gc_grace = \"0s\"\ngc_interval = \"1s\"")).await;
    let digest = reg
        .push_blob("sched/app", b"collected without being asked")
        .await;
    let path = format!("/v2/sched/app/blobs/{digest}");
    for _ in 0..50 {
        if status(&reg, Method::HEAD, &path).await == 404 {
            let metrics = reg
                .req(Method::GET, "/metrics")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                metrics.contains("berth_registry_gc_runs_total"),
                "{metrics}"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no scheduled collection removed the blob within 5 s");
}

#[tokio::test]
async fn keep_within_counts_pulls_recorded_by_the_registry() {
    let reg = TestRegistry::start_with(config(
        r#"
gc_grace = "0s"
[[retention]]
repositories = "window/*"
keep_within = "2s"
"#,
    ))
    .await;
    reg.push_image("window/app", "pulled", b"layer pulled")
        .await;
    reg.push_image("window/app", "idle", b"layer idle").await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // Pushed 2.5 s ago, but pulled just now: kept.
    assert_eq!(
        status(&reg, Method::GET, "/v2/window/app/manifests/pulled").await,
        200
    );
    let report = gc(&reg, "").await;
    let expired: Vec<&str> = report["expired_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tag"].as_str().unwrap())
        .collect();
    assert_eq!(expired, ["idle"], "{report}");
    assert_eq!(
        report["expired_tags"][0]["reason"],
        "not pushed or pulled within 2s"
    );
}

#[tokio::test]
async fn non_distributable_layers_through_gc_pins_and_referrers() {
    use berth_oci::media_type::OCI_NONDISTRIBUTABLE_LAYER_GZIP;
    let reg = TestRegistry::start_with(config("gc_grace = \"0s\"")).await;
    let repo = "nd/app";
    let config_bytes = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = reg.push_blob(repo, config_bytes).await;
    let layer = reg.push_blob(repo, b"ordinary layer").await;
    // One external layer was never pushed; a copy of the other one was pushed anyway.
    let absent = Digest::sha256(b"lives on store.example.com");
    let held_bytes = b"pushed here anyway";
    let held = reg.push_blob(repo, held_bytes).await;
    let manifest = |external: &Digest, size: usize| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"{OCI_NONDISTRIBUTABLE_LAYER_GZIP}","digest":"{external}","size":{size},"urls":["https://store.example.com/{}"]}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":14}}]}}"#,
            config_bytes.len(),
            external.hex()
        )
    };
    let a_body = manifest(&absent, 4096);
    let b_body = manifest(&held, held_bytes.len());
    for (tag, body) in [("a", &a_body), ("b", &b_body)] {
        let r = reg.put_manifest(repo, tag, OCI_MANIFEST, body).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    }
    let (a, b) = (
        Digest::sha256(a_body.as_bytes()),
        Digest::sha256(b_body.as_bytes()),
    );
    let sig_config = reg.push_blob(repo, b"{}").await;
    let sig = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/x.sig","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{sig_config}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{a}","size":{}}}}}"#,
        a_body.len()
    );
    let sig_digest = Digest::sha256(sig.as_bytes());
    let r = reg
        .put_manifest(repo, &sig_digest.to_string(), OCI_MANIFEST, &sig)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let referrers: Value = reg.json(&format!("/v2/{repo}/referrers/{a}")).await;
    assert_eq!(referrers["manifests"][0]["digest"], sig_digest.to_string());

    // Nothing referenced goes, and the absent layer is neither counted nor looked for.
    let dry = gc(&reg, "dry_run=true").await;
    assert_eq!(dry["blobs"], 0, "{dry}");
    assert_eq!(dry["orphan_files"], 0, "{dry}");
    let report = gc(&reg, "").await;
    assert_eq!(report["blobs"], 0, "{report}");
    let blob = |d: &Digest| format!("/v2/{repo}/blobs/{d}");
    assert_eq!(status(&reg, Method::GET, &blob(&held)).await, 200);
    let usage: Value = reg.json("/admin/usage").await;
    let stored = usage["repositories"][0]["bytes"].as_u64().unwrap();
    assert!(
        stored < 4096,
        "the absent layer's declared size is not counted as stored: {usage}"
    );

    // The copy pushed anyway goes with the last manifest that references it.
    assert_eq!(
        status(&reg, Method::DELETE, &format!("/v2/{repo}/manifests/{b}")).await,
        202
    );
    let report = gc(&reg, "").await;
    assert_eq!(
        report["blobs"], 2,
        "b's manifest and the held layer: {report}"
    );
    assert_eq!(status(&reg, Method::HEAD, &blob(&held)).await, 404);

    // A pinned manifest with an absent layer is kept, with everything it has here.
    let r = reg
        .req(Method::PUT, &format!("/admin/pins/{a}"))
        .body(r#"{"reason":"release nd#1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = reg
        .req(Method::DELETE, &format!("/v2/{repo}/manifests/{a}"))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "DENIED").await;
    assert_eq!(gc(&reg, "delete_untagged=true").await["blobs"], 0);
    assert_eq!(status(&reg, Method::GET, &blob(&layer)).await, 200);
    assert_eq!(
        status(&reg, Method::GET, &format!("/v2/{repo}/manifests/a")).await,
        200
    );

    // Unpinned and deleted: its manifest, config and layer and the referrer all go.
    assert_eq!(
        status(&reg, Method::DELETE, &format!("/admin/pins/{a}")).await,
        204
    );
    assert_eq!(
        status(&reg, Method::DELETE, &format!("/v2/{repo}/manifests/{a}")).await,
        202
    );
    let report = gc(&reg, "delete_untagged=true").await;
    assert_eq!(
        report["untagged_manifests"][0]["digest"],
        sig_digest.to_string(),
        "{report}"
    );
    assert_eq!(
        report["blobs"], 5,
        "a, its config and layer, the referrer and its config: {report}"
    );
    assert_eq!(gc(&reg, "delete_untagged=true").await["blobs"], 0);
}
