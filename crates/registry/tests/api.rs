//! The distribution API over HTTP: every endpoint, and every bad input with its exact status
//! and error code.
#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use berth_oci::media_type::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use berth_oci::{Algorithm, Digest};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::{expect_error, files, header, image_manifest, TestRegistry};

#[tokio::test]
async fn base_endpoint_answers_with_api_version() {
    let reg = TestRegistry::start().await;
    let r = reg.req(Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
}

#[tokio::test]
async fn monolithic_push_then_pull_whole_and_by_range() {
    let reg = TestRegistry::start().await;
    let data: Vec<u8> = (0..100u8).collect();
    let digest = Digest::sha256(&data);
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/lib/app/blobs/uploads/?digest={digest}"),
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "location"),
        format!("/v2/lib/app/blobs/{digest}")
    );
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());

    let r = reg
        .req(Method::HEAD, &format!("/v2/lib/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), "100");
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());

    let r = reg
        .req(Method::GET, &format!("/v2/lib/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);

    for (range, start, end) in [
        ("bytes=10-19", 10, 19),
        ("bytes=90-", 90, 99),
        ("bytes=-5", 95, 99),
    ] {
        let r = reg
            .req(Method::GET, &format!("/v2/lib/app/blobs/{digest}"))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&r, "content-range"),
            format!("bytes {start}-{end}/100")
        );
        assert_eq!(
            r.bytes().await.unwrap().to_vec(),
            data[start..=end].to_vec()
        );
    }
    for range in ["bytes=100-", "bytes=200-300", "bytes=50-10"] {
        let r = reg
            .req(Method::GET, &format!("/v2/lib/app/blobs/{digest}"))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(header(&r, "content-range"), "bytes */100");
        expect_error(r, 416, "BLOB_UPLOAD_INVALID").await;
    }
}

#[tokio::test]
async fn post_then_put_and_sha512() {
    let reg = TestRegistry::start().await;
    let data = b"two-step upload".to_vec();
    for digest in [Digest::sha256(&data), Digest::of(Algorithm::Sha512, &data)] {
        let r = reg
            .req(Method::POST, "/v2/r/blobs/uploads/")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let location = header(&r, "location").to_owned();
        assert!(location.starts_with("/v2/r/blobs/uploads/"));
        assert_eq!(header(&r, "range"), "0-0");
        assert!(!header(&r, "docker-upload-uuid").is_empty());
        let r = reg
            .req(Method::PUT, &format!("{location}?digest={digest}"))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{digest}");
        assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
        let r = reg
            .req(Method::GET, &format!("/v2/r/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().to_vec(), data);
    }
}

#[tokio::test]
async fn chunked_upload_enforces_order() {
    let reg = TestRegistry::start().await;
    let data: Vec<u8> = (0..30u8).collect();
    let digest = Digest::sha256(&data);
    let r = reg
        .req(Method::POST, "/v2/r/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&r, "location").to_owned();
    let patch = |range: &str, body: &[u8]| {
        reg.req(Method::PATCH, &location)
            .header("content-range", range)
            .header("content-type", "application/octet-stream")
            .body(body.to_vec())
    };
    let r = patch("0-9", &data[0..10]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-9");
    assert_eq!(header(&r, "location"), location);

    let r = reg.req(Method::GET, &location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-9");

    // Out of order (a gap) and repeated chunks are refused; the session is unharmed.
    let r = patch("20-29", &data[20..30]).send().await.unwrap();
    assert_eq!(header(&r, "range"), "0-9");
    expect_error(r, 416, "BLOB_UPLOAD_INVALID").await;
    let r = patch("0-9", &data[0..10]).send().await.unwrap();
    expect_error(r, 416, "BLOB_UPLOAD_INVALID").await;
    let r = patch("5-14", &data[5..15]).send().await.unwrap();
    expect_error(r, 416, "BLOB_UPLOAD_INVALID").await;

    let r = patch("10-19", &data[10..20]).send().await.unwrap();
    assert_eq!(header(&r, "range"), "0-19");
    // A streamed chunk without Content-Range is appended.
    let r = reg
        .req(Method::PATCH, &location)
        .body(data[20..25].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "range"), "0-24");
    // The final PUT may carry the last chunk.
    let r = reg
        .req(Method::PUT, &format!("{location}?digest={digest}"))
        .header("content-range", "25-29")
        .body(data[25..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = reg
        .req(Method::GET, &format!("/v2/r/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);
    // The session is gone once committed.
    let r = reg.req(Method::GET, &location).send().await.unwrap();
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn cancelled_and_unknown_uploads() {
    let reg = TestRegistry::start().await;
    let r = reg
        .req(Method::POST, "/v2/r/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&r, "location").to_owned();
    reg.req(Method::PATCH, &location)
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    let r = reg.req(Method::DELETE, &location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = reg.req(Method::GET, &location).send().await.unwrap();
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let r = reg
        .req(Method::PATCH, &location)
        .body(vec![1u8])
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    for id in ["00000000-0000-0000-0000-000000000000", "..%2F..%2Fetc"] {
        let r = reg
            .req(Method::GET, &format!("/v2/r/blobs/uploads/{id}"))
            .send()
            .await
            .unwrap();
        expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    }
    // A session belongs to the repository it was opened in.
    let r = reg
        .req(Method::POST, "/v2/r/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let id = header(&r, "docker-upload-uuid").to_owned();
    let r = reg
        .req(Method::GET, &format!("/v2/other/blobs/uploads/{id}"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn bad_and_mismatched_digests() {
    let reg = TestRegistry::start().await;
    let data = b"some content".to_vec();
    let wrong = Digest::sha256(b"other content");
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/r/blobs/uploads/?digest={wrong}"),
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 400, "DIGEST_INVALID").await;
    assert_eq!(body["errors"][0]["detail"]["expected"], wrong.to_string());
    let r = reg
        .req(Method::HEAD, &format!("/v2/r/blobs/{wrong}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let real = Digest::sha256(&data);
    let r = reg
        .req(Method::HEAD, &format!("/v2/r/blobs/{real}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "mismatched content must not be stored"
    );

    // Two-step with a wrong digest.
    let r = reg
        .req(Method::POST, "/v2/r/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&r, "location").to_owned();
    let r = reg
        .req(Method::PUT, &format!("{location}?digest={wrong}"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;

    for bad in [
        "sha256:xyz",
        "foo",
        "sha256:ABC",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
    ] {
        let r = reg
            .req(Method::GET, &format!("/v2/r/blobs/{bad}"))
            .send()
            .await
            .unwrap();
        expect_error(r, 400, "DIGEST_INVALID").await;
        let r = reg
            .req(Method::POST, &format!("/v2/r/blobs/uploads/?digest={bad}"))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        expect_error(r, 400, "DIGEST_INVALID").await;
        let r = reg
            .req(Method::GET, &format!("/v2/r/referrers/{bad}"))
            .send()
            .await
            .unwrap();
        expect_error(r, 400, "DIGEST_INVALID").await;
    }
    // A manifest by a malformed digest names nothing: MANIFEST_UNKNOWN, the message says why.
    reg.push_blob("r", b"makes the repository exist").await;
    let r = reg
        .req(Method::GET, "/v2/r/manifests/sha256:nothex")
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("sha256 needs 64 lowercase hex characters"),
        "{body}"
    );
    // PUT without a digest.
    let r = reg
        .req(Method::POST, "/v2/r/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&r, "location").to_owned();
    let r = reg
        .req(Method::PUT, &location)
        .body(data)
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn cross_repository_and_automatic_mounts() {
    let reg = TestRegistry::start().await;
    let digest = reg.push_blob("a", b"shared layer").await;
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/b/blobs/uploads/?mount={digest}&from=a"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/b/blobs/{digest}"));
    let r = reg
        .req(Method::GET, &format!("/v2/b/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"shared layer");
    // No `from`: mounted from wherever the blob is.
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/c/blobs/uploads/?mount={digest}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Not mountable: an ordinary upload session starts instead.
    let unknown = Digest::sha256(b"nowhere");
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/d/blobs/uploads/?mount={unknown}&from=a"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(header(&r, "location").starts_with("/v2/d/blobs/uploads/"));
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/d/blobs/uploads/?mount={digest}&from=Bad..Name"),
        )
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "NAME_INVALID").await;
}

#[tokio::test]
async fn concurrent_pushes_of_one_blob_store_it_once() {
    let reg = TestRegistry::start().await;
    let data = vec![7u8; 256 * 1024];
    let digest = Digest::sha256(&data);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let client = reg.client.clone();
        let url = format!(
            "{}/v2/repo{}/blobs/uploads/?digest={digest}",
            reg.url,
            i % 4
        );
        let body = data.clone();
        tasks.push(tokio::spawn(async move {
            client.post(url).body(body).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    for i in 0..4 {
        let r = reg
            .req(Method::GET, &format!("/v2/repo{i}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().to_vec(), data);
    }
    let stored = files(&reg.dir().join("data/blobs"));
    assert_eq!(stored.len(), 1, "deduplicated: {stored:?}");
    assert!(files(&reg.dir().join("data/uploads")).is_empty());
}

#[tokio::test]
async fn manifests_by_tag_and_digest() {
    let reg = TestRegistry::start().await;
    let (manifest, digest) = reg.push_image("shop/web", "1.0", b"layer one").await;
    for reference in ["1.0".to_owned(), digest.to_string()] {
        let r = reg
            .req(Method::GET, &format!("/v2/shop/web/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
        assert_eq!(header(&r, "content-length"), manifest.len().to_string());
        assert_eq!(r.text().await.unwrap(), manifest);
        let r = reg
            .req(Method::HEAD, &format!("/v2/shop/web/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-length"), manifest.len().to_string());
    }
    // Pushing by digest must match the content.
    let r = reg
        .put_manifest("shop/web", &digest.to_string(), OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let other = Digest::sha256(b"x");
    let r = reg
        .put_manifest("shop/web", &other.to_string(), OCI_MANIFEST, &manifest)
        .await;
    expect_error(r, 400, "DIGEST_INVALID").await;
    let r = reg
        .req(Method::GET, "/v2/shop/web/manifests/nope")
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = reg
        .req(Method::GET, "/v2/shop/nothing/manifests/1.0")
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn invalid_manifests_are_rejected() {
    let reg = TestRegistry::start().await;
    let config = reg.push_blob("r", b"{}").await;
    let layer = reg.push_blob("r", b"layer").await;
    let missing = Digest::sha256(b"never pushed");
    let cases = [
        ("not json", OCI_MANIFEST, "{".to_owned(), "MANIFEST_INVALID"),
        ("schema 1", OCI_MANIFEST, r#"{"schemaVersion":1}"#.to_owned(), "MANIFEST_INVALID"),
        ("no config", OCI_MANIFEST, r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#.to_owned(), "MANIFEST_INVALID"),
        ("bad layer digest", OCI_MANIFEST, image_manifest(&config, 2, &layer, 5, "").replace(&layer.to_string(), "sha256:1234"), "MANIFEST_INVALID"),
        ("media type mismatch", DOCKER_MANIFEST, image_manifest(&config, 2, &layer, 5, ""), "MANIFEST_INVALID"),
        ("missing layer", OCI_MANIFEST, image_manifest(&config, 2, &missing, 5, ""), "MANIFEST_BLOB_UNKNOWN"),
        ("missing config", OCI_MANIFEST, image_manifest(&missing, 2, &layer, 5, ""), "MANIFEST_BLOB_UNKNOWN"),
        ("wrong layer size", OCI_MANIFEST, image_manifest(&config, 2, &layer, 6, ""), "MANIFEST_INVALID"),
        (
            "index with missing child",
            OCI_INDEX,
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{missing}","size":10}}]}}"#),
            "MANIFEST_BLOB_UNKNOWN",
        ),
    ];
    for (what, media_type, body, code) in cases {
        let r = reg.put_manifest("r", "t", media_type, &body).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status.as_u16(), 400, "{what}: {body}");
        assert_eq!(body["errors"][0]["code"], code, "{what}: {body}");
    }
    let r = reg.put_manifest("r", "bad:tag:x", OCI_MANIFEST, "{}").await;
    expect_error(r, 400, "DIGEST_INVALID").await;
    let r = reg.put_manifest("r", ".badtag", OCI_MANIFEST, "{}").await;
    expect_error(r, 400, "MANIFEST_INVALID").await;
    let r = reg
        .req(Method::GET, "/v2/r/tags/list")
        .send()
        .await
        .unwrap();
    let tags: Value = r.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!([]), "nothing was tagged");
}

#[tokio::test]
async fn oversized_manifest_is_refused() {
    let reg = TestRegistry::start_with(berth_registry::RegistryConfig {
        max_manifest_bytes: Some(1024),
        ..Default::default()
    })
    .await;
    let body = format!(
        r#"{{"schemaVersion":2,"manifests":[],"annotations":{{"a":"{}"}}}}"#,
        "x".repeat(2000)
    );
    let r = reg.put_manifest("r", "big", OCI_INDEX, &body).await;
    expect_error(r, 413, "SIZE_INVALID").await;
}

#[tokio::test]
async fn indexes_and_docker_media_types() {
    let reg = TestRegistry::start().await;
    let (m1, d1) = reg.push_image("multi", "amd64", b"amd64 layer").await;
    let (m2, d2) = reg.push_image("multi", "arm64", b"arm64 layer").await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d1}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{d2}","size":{},"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#,
        m1.len(),
        m2.len()
    );
    let r = reg.put_manifest("multi", "latest", OCI_INDEX, &index).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = reg
        .req(Method::GET, "/v2/multi/manifests/latest")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    assert_eq!(r.text().await.unwrap(), index);

    // Docker schema 2 manifest and manifest list.
    let config = reg.push_blob("dock", b"{\"os\":\"linux\"}").await;
    let layer = reg.push_blob("dock", b"docker layer").await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{config}","size":14}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{layer}","size":12}}]}}"#
    );
    let r = reg
        .put_manifest("dock", "v2", DOCKER_MANIFEST, &manifest)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let md = Digest::sha256(manifest.as_bytes());
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{md}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        manifest.len()
    );
    let r = reg
        .put_manifest("dock", "list", DOCKER_MANIFEST_LIST, &list)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = reg
        .req(Method::HEAD, "/v2/dock/manifests/list")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type"), DOCKER_MANIFEST_LIST);
    let r = reg
        .req(Method::HEAD, "/v2/dock/manifests/v2")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type"), DOCKER_MANIFEST);
}

#[tokio::test]
async fn referrers_api_with_subject_and_filter() {
    let reg = TestRegistry::start().await;
    let (subject_manifest, subject) = reg.push_image("app", "v1", b"app layer").await;
    let empty = reg.push_blob("app", b"{}").await;
    let mut pushed = Vec::new();
    for (i, artifact_type) in [
        "application/vnd.example.sbom",
        "application/vnd.example.sig",
    ]
    .iter()
    .enumerate()
    {
        let payload = reg
            .push_blob("app", format!("payload {i}").as_bytes())
            .await;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{artifact_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/octet-stream","digest":"{payload}","size":9}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":{}}},"annotations":{{"n":"{i}"}}}}"#,
            subject_manifest.len()
        );
        let digest = Digest::sha256(manifest.as_bytes());
        let r = reg
            .put_manifest("app", &digest.to_string(), OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        assert_eq!(header(&r, "oci-subject"), subject.to_string());
        pushed.push(digest);
    }
    let r = reg
        .req(Method::GET, &format!("/v2/app/referrers/{subject}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    assert!(r.headers().get("oci-filters-applied").is_none());
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    for d in &pushed {
        assert!(listed.contains(&d.to_string().as_str()));
    }
    let sig = &index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["artifactType"] == "application/vnd.example.sig")
        .unwrap();
    assert_eq!(sig["mediaType"], OCI_MANIFEST);
    assert_eq!(sig["annotations"]["n"], "1");

    let r = reg
        .req(
            Method::GET,
            &format!("/v2/app/referrers/{subject}?artifactType=application/vnd.example.sig"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "oci-filters-applied"), "artifactType");
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["digest"], pushed[1].to_string());

    // A subject with no referrers, or that does not exist, has an empty list.
    let nothing = Digest::sha256(b"no such manifest");
    let r = reg
        .req(Method::GET, &format!("/v2/app/referrers/{nothing}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["manifests"], serde_json::json!([]));

    // Deleting a referrer removes it from the list.
    let r = reg
        .req(Method::DELETE, &format!("/v2/app/manifests/{}", pushed[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = reg
        .req(Method::GET, &format!("/v2/app/referrers/{subject}"))
        .send()
        .await
        .unwrap();
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn tags_and_catalog_paginate_with_link_headers() {
    let reg = TestRegistry::start().await;
    let (manifest, _) = reg.push_image("pager", "a", b"l").await;
    for tag in ["e", "c", "b", "d"] {
        let r = reg
            .put_manifest("pager", tag, OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = reg
        .req(Method::GET, "/v2/pager/tags/list")
        .send()
        .await
        .unwrap();
    let all: Value = r.json().await.unwrap();
    assert_eq!(
        all,
        serde_json::json!({"name": "pager", "tags": ["a", "b", "c", "d", "e"]})
    );
    let r = reg
        .req(Method::GET, "/v2/pager/tags/list?n=2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "link"),
        "</v2/pager/tags/list?n=2&last=b>; rel=\"next\""
    );
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["tags"], serde_json::json!(["a", "b"]));
    let r = reg
        .req(Method::GET, "/v2/pager/tags/list?n=2&last=d")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("link").is_none());
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["tags"], serde_json::json!(["e"]));
    let r = reg
        .req(Method::GET, "/v2/pager/tags/list?n=0")
        .send()
        .await
        .unwrap();
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["tags"], serde_json::json!([]));

    let r = reg
        .req(Method::GET, "/v2/unknown/repo/tags/list")
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NAME_UNKNOWN").await;

    reg.push_blob("zeta", b"z").await;
    reg.push_blob("alpha/one", b"a").await;
    let r = reg
        .req(Method::GET, "/v2/_catalog?n=2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "link"),
        "</v2/_catalog?n=2&last=pager>; rel=\"next\""
    );
    let page: Value = r.json().await.unwrap();
    assert_eq!(
        page["repositories"],
        serde_json::json!(["alpha/one", "pager"])
    );
    let r = reg
        .req(Method::GET, "/v2/_catalog?n=2&last=pager")
        .send()
        .await
        .unwrap();
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["repositories"], serde_json::json!(["zeta"]));
}

#[tokio::test]
async fn deletes_of_tags_manifests_and_blobs() {
    let reg = TestRegistry::start().await;
    let (manifest, digest) = reg.push_image("del", "keep", b"layer").await;
    reg.put_manifest("del", "drop", OCI_MANIFEST, &manifest)
        .await;
    // By tag: only the tag goes.
    let r = reg
        .req(Method::DELETE, "/v2/del/manifests/drop")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = reg
        .req(Method::GET, "/v2/del/manifests/drop")
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = reg
        .req(Method::GET, "/v2/del/manifests/keep")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = reg
        .req(Method::DELETE, "/v2/del/manifests/drop")
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    // By digest: the manifest and every tag pointing at it.
    let r = reg
        .req(Method::DELETE, &format!("/v2/del/manifests/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for reference in [digest.to_string(), "keep".into()] {
        let r = reg
            .req(Method::GET, &format!("/v2/del/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    }
    let r = reg
        .req(Method::GET, "/v2/del/tags/list")
        .send()
        .await
        .unwrap();
    let tags: Value = r.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!([]));
    // Blobs.
    let blob = Digest::sha256(b"layer");
    let r = reg
        .req(Method::DELETE, &format!("/v2/del/blobs/{blob}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = reg
        .req(Method::GET, &format!("/v2/del/blobs/{blob}"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UNKNOWN").await;
    let r = reg
        .req(Method::DELETE, &format!("/v2/del/blobs/{blob}"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn deletes_can_be_disabled() {
    let reg = TestRegistry::start_with(berth_registry::RegistryConfig {
        deletes: Some(false),
        ..Default::default()
    })
    .await;
    let (_, digest) = reg.push_image("r", "t", b"l").await;
    let r = reg
        .req(Method::DELETE, &format!("/v2/r/manifests/{digest}"))
        .send()
        .await
        .unwrap();
    expect_error(r, 405, "UNSUPPORTED").await;
}

#[tokio::test]
async fn traversal_and_invalid_names_are_name_invalid() {
    let reg = TestRegistry::start().await;
    for path in [
        "/v2/../../etc/manifests/latest",
        "/v2/a/../b/tags/list",
        "/v2/a/%2e%2e/b/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "/v2/UPPER/tags/list",
        "/v2/a//b/tags/list",
        "/v2/a_/blobs/uploads/",
    ] {
        let (status, body) = reg.raw("GET", path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["errors"][0]["code"], "NAME_INVALID", "{path}");
    }
    let (status, _) = reg.raw("POST", "/v2/../x/blobs/uploads/").await;
    assert_eq!(status, 400);
    assert!(std::fs::read_dir(reg.dir())
        .unwrap()
        .all(|e| e.unwrap().file_name() == "data"));
}

#[tokio::test]
async fn unsupported_methods_and_unknown_paths() {
    let reg = TestRegistry::start().await;
    let r = reg
        .req(Method::POST, "/v2/r/manifests/t")
        .send()
        .await
        .unwrap();
    expect_error(r, 405, "UNSUPPORTED").await;
    let r = reg
        .req(Method::PUT, "/v2/r/tags/list")
        .send()
        .await
        .unwrap();
    expect_error(r, 405, "UNSUPPORTED").await;
    let r = reg.req(Method::GET, "/v2/onlyname").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_count_requests() {
    let reg = TestRegistry::start().await;
    reg.push_blob("m", b"metric me").await;
    let text = reg
        .req(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "berth_registry_requests_total{route=\"upload\",method=\"POST\",status=\"201\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("berth_registry_received_bytes_total 9"),
        "{text}"
    );
    assert!(
        text.contains("berth_registry_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn manifests_by_a_malformed_reference_are_unknown() {
    let reg = TestRegistry::start().await;
    reg.push_image("r", "t", b"layer").await;
    let long = "a".repeat(129);
    let short_digest = format!("sha256:{}", "a".repeat(63));
    for reference in [
        ".INVALID_MANIFEST_NAME",
        "-dash",
        long.as_str(),
        "sha256:zz",
        short_digest.as_str(),
        "md5:0123",
    ] {
        let path = format!("/v2/r/manifests/{reference}");
        let r = reg.req(Method::GET, &path).send().await.unwrap();
        let body = expect_error(r, 404, "MANIFEST_UNKNOWN").await;
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!(
                "manifest {reference:?} is not in r: it is neither a tag nor a digest ("
            )),
            "{message}"
        );
        let r = reg.req(Method::HEAD, &path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "HEAD {reference}");
        let r = reg.req(Method::DELETE, &path).send().await.unwrap();
        expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    }
    // In a repository that does not exist, the repository is what is unknown.
    let r = reg
        .req(Method::GET, "/v2/nothing/manifests/.INVALID_MANIFEST_NAME")
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NAME_UNKNOWN").await;
    // Pushing by such a reference stays a client error, as in distribution's API description.
    let r = reg
        .put_manifest("r", ".INVALID_MANIFEST_NAME", OCI_MANIFEST, "{}")
        .await;
    expect_error(r, 400, "MANIFEST_INVALID").await;
    // The tag still works.
    let r = reg
        .req(Method::GET, "/v2/r/manifests/t")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// An image manifest with `config` and `layers` (JSON descriptors).
fn manifest_with(media_type: &str, config: &str, layers: &[String]) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{config},"layers":[{}]}}"#,
        layers.join(",")
    )
}

fn descriptor(media_type: &str, digest: &Digest, size: usize, urls: &[&str]) -> String {
    let urls = if urls.is_empty() {
        String::new()
    } else {
        format!(",\"urls\":{}", serde_json::json!(urls))
    };
    format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}{urls}}}"#)
}

#[tokio::test]
async fn non_distributable_layers_need_not_be_pushed() {
    use berth_oci::media_type::{
        DOCKER_FOREIGN_LAYER, OCI_NONDISTRIBUTABLE_LAYER, OCI_NONDISTRIBUTABLE_LAYER_GZIP,
        OCI_NONDISTRIBUTABLE_LAYER_ZSTD,
    };
    const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    let reg = TestRegistry::start().await;
    let config_bytes = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = reg.push_blob("r", config_bytes).await;
    let config = descriptor(
        "application/vnd.oci.image.config.v1+json",
        &config_digest,
        config_bytes.len(),
        &[],
    );
    let pushed = reg.push_blob("r", b"an ordinary layer").await;
    let ordinary = descriptor(LAYER, &pushed, 17, &[]);
    let absent = |n: u8| Digest::sha256(&[n; 8]);
    let url = |n: u8| format!("https://store.example.com/blobs/sha256/{}", absent(n).hex());

    // Every non-distributable type with URLs, never pushed, beside an ordinary layer.
    let manifest = manifest_with(
        OCI_MANIFEST,
        &config,
        &[
            descriptor(
                OCI_NONDISTRIBUTABLE_LAYER_GZIP,
                &absent(1),
                123_456,
                &[&url(1)],
            ),
            descriptor(OCI_NONDISTRIBUTABLE_LAYER, &absent(2), 12_345, &[&url(2)]),
            descriptor(
                OCI_NONDISTRIBUTABLE_LAYER_ZSTD,
                &absent(3),
                1_234,
                &[&url(3)],
            ),
            ordinary.clone(),
        ],
    );
    let r = reg.put_manifest("r", "nd", OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let r = reg
        .req(Method::GET, "/v2/r/manifests/nd")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), manifest);
    // The registry serves only what it holds.
    let r = reg
        .req(Method::HEAD, &format!("/v2/r/blobs/{}", absent(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // A Docker schema 2 manifest with a foreign layer.
    let docker = manifest_with(
        DOCKER_MANIFEST,
        &descriptor(
            "application/vnd.docker.container.image.v1+json",
            &config_digest,
            config_bytes.len(),
            &[],
        ),
        &[descriptor(DOCKER_FOREIGN_LAYER, &absent(4), 99, &[&url(4)])],
    );
    let r = reg
        .put_manifest("r", "foreign", DOCKER_MANIFEST, &docker)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);

    // Every other missing blob is still refused, naming the blob.
    let refused = [
        (
            "non-distributable without urls",
            manifest_with(
                OCI_MANIFEST,
                &config,
                &[descriptor(
                    OCI_NONDISTRIBUTABLE_LAYER_GZIP,
                    &absent(5),
                    9,
                    &[],
                )],
            ),
            absent(5),
        ),
        (
            "ordinary layer with urls",
            manifest_with(
                OCI_MANIFEST,
                &config,
                &[descriptor(LAYER, &absent(6), 9, &[&url(6)])],
            ),
            absent(6),
        ),
        (
            "foreign layer without urls",
            manifest_with(
                DOCKER_MANIFEST,
                &config.replace(
                    "application/vnd.oci.image.config.v1+json",
                    "application/vnd.docker.container.image.v1+json",
                ),
                &[descriptor(DOCKER_FOREIGN_LAYER, &absent(7), 9, &[])],
            ),
            absent(7),
        ),
        (
            "missing config beside external layers",
            manifest_with(
                OCI_MANIFEST,
                &descriptor(
                    "application/vnd.oci.image.config.v1+json",
                    &absent(8),
                    9,
                    &[],
                ),
                &[descriptor(
                    OCI_NONDISTRIBUTABLE_LAYER,
                    &absent(2),
                    12_345,
                    &[&url(2)],
                )],
            ),
            absent(8),
        ),
    ];
    for (what, body, missing) in refused {
        let media_type = if body.contains(DOCKER_MANIFEST) {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        };
        let r = reg.put_manifest("r", "refused", media_type, &body).await;
        let body = expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
        assert_eq!(
            body["errors"][0]["detail"]["digest"],
            missing.to_string(),
            "{what}"
        );
    }

    // A non-distributable layer that was pushed anyway is checked like any blob.
    let held = reg.push_blob("r", b"pushed anyway").await;
    let wrong_size = manifest_with(
        OCI_MANIFEST,
        &config,
        &[descriptor(
            OCI_NONDISTRIBUTABLE_LAYER,
            &held,
            99,
            &[&url(9)],
        )],
    );
    let r = reg
        .put_manifest("r", "refused", OCI_MANIFEST, &wrong_size)
        .await;
    let body = expect_error(r, 400, "MANIFEST_INVALID").await;
    assert_eq!(
        body["errors"][0]["message"],
        format!("manifest says blob {held} has 99 bytes, but it has 13")
    );
    // And URLs must be ones a client can fetch.
    let bad_url = manifest_with(
        OCI_MANIFEST,
        &config,
        &[descriptor(
            OCI_NONDISTRIBUTABLE_LAYER,
            &absent(2),
            12_345,
            &["file:///etc/shadow"],
        )],
    );
    let r = reg
        .put_manifest("r", "refused", OCI_MANIFEST, &bad_url)
        .await;
    expect_error(r, 400, "MANIFEST_INVALID").await;
    let r = reg
        .req(Method::GET, "/v2/r/tags/list")
        .send()
        .await
        .unwrap();
    let tags: Value = r.json().await.unwrap();
    assert_eq!(
        tags["tags"],
        serde_json::json!(["foreign", "nd"]),
        "nothing refused was tagged"
    );
}
