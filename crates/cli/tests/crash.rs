//! Crash safety of the registry: SIGKILL the real `berth` process in the middle of uploads
//! and right after commits; after a restart every acknowledged blob and manifest is served
//! intact and nothing partial is visible.
#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_oci::Digest;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use reqwest::{Client, StatusCode};
use sha2::Digest as _;
use support::{files, Berth};

/// What the server acknowledged: (repo, digest, content) of blobs, (repo, tag, manifest).
#[derive(Default, Clone)]
struct Acked {
    blobs: Vec<(String, Digest, Vec<u8>)>,
    manifests: Vec<(String, String, String)>,
}

/// Pushes random blobs and one-layer manifests until the server dies; records every 201.
async fn pusher(client: Client, url: String, worker: usize, acked: Arc<Mutex<Acked>>) {
    let mut rng = StdRng::from_os_rng();
    for i in 0.. {
        let repo = format!("crash/w{worker}");
        let mut layer = vec![0u8; rng.random_range(1..256 * 1024)];
        rng.fill_bytes(&mut layer);
        let digest = Digest::sha256(&layer);
        // Alternate monolithic and two-step uploads.
        let ok = if i % 2 == 0 {
            match client
                .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={digest}"))
                .body(layer.clone())
                .send()
                .await
            {
                Ok(r) => r.status() == StatusCode::CREATED,
                Err(_) => return,
            }
        } else {
            let Ok(r) = client
                .post(format!("{url}/v2/{repo}/blobs/uploads/"))
                .send()
                .await
            else {
                return;
            };
            let location = r.headers()["location"].to_str().unwrap().to_owned();
            match client
                .put(format!("{url}{location}?digest={digest}"))
                .body(layer.clone())
                .send()
                .await
            {
                Ok(r) => r.status() == StatusCode::CREATED,
                Err(_) => return,
            }
        };
        if !ok {
            return;
        }
        acked
            .lock()
            .unwrap()
            .blobs
            .push((repo.clone(), digest.clone(), layer.clone()));
        let config = format!("{{\"worker\":{worker},\"i\":{i}}}");
        let config_digest = Digest::sha256(config.as_bytes());
        match client
            .post(format!(
                "{url}/v2/{repo}/blobs/uploads/?digest={config_digest}"
            ))
            .body(config.clone())
            .send()
            .await
        {
            Ok(r) if r.status() == StatusCode::CREATED => {}
            _ => return,
        }
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{digest}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        );
        let tag = format!("t{i}");
        match client
            .put(format!("{url}/v2/{repo}/manifests/{tag}"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.clone())
            .send()
            .await
        {
            Ok(r) if r.status() == StatusCode::CREATED => {
                acked.lock().unwrap().manifests.push((repo, tag, manifest));
            }
            _ => return,
        }
    }
}

/// An upload whose body trickles in forever (until the server dies).
async fn trickle(client: Client, url: String, digest: Digest) {
    let stream = futures::stream::unfold(0u32, |n| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Some((Ok::<_, std::io::Error>(vec![b'p'; 64 * 1024]), n + 1))
    });
    let _ = client
        .post(format!(
            "{url}/v2/crash/partial/blobs/uploads/?digest={digest}"
        ))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
}

async fn verify(client: &Client, url: &str, acked: &Acked, partial: &Digest) {
    for (repo, digest, content) in &acked.blobs {
        let r = client
            .get(format!("{url}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "acknowledged blob {digest} lost"
        );
        assert_eq!(
            &r.bytes().await.unwrap().to_vec(),
            content,
            "blob {digest} corrupted"
        );
    }
    for (repo, tag, manifest) in &acked.manifests {
        let r = client
            .get(format!("{url}/v2/{repo}/manifests/{tag}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "acknowledged manifest {repo}:{tag} lost"
        );
        assert_eq!(&r.text().await.unwrap(), manifest);
    }
    let r = client
        .head(format!("{url}/v2/crash/partial/blobs/{partial}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a partial upload became visible"
    );
}

/// Every stored blob file hashes to its name: nothing partial was ever installed.
fn verify_store(data: &Path) {
    for path in files(&data.join("blobs")) {
        let content = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&content)),
            name,
            "{}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_uploads_and_after_commits_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registry");
    let client = Client::new();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let partial = Digest::sha256(b"this content is never fully sent");
    let mut rng = rand::rng();

    for round in 0..4 {
        let berth = Berth::start(&data, &[]);
        let url = berth.url.clone();
        if round > 0 {
            let snapshot = acked.lock().unwrap().clone();
            verify(&client, &url, &snapshot, &partial).await;
        }
        // A chunked upload left open across the kill, to be resumed afterwards.
        let r = client
            .post(format!("{url}/v2/crash/resume/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let first = vec![b'a'; 100_000];
        let r = client
            .patch(format!("{url}{location}"))
            .header("content-range", format!("0-{}", first.len() - 1))
            .body(first.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);

        let workers: Vec<_> = (0..4)
            .map(|w| {
                tokio::spawn(pusher(
                    client.clone(),
                    url.clone(),
                    round * 10 + w,
                    acked.clone(),
                ))
            })
            .collect();
        let trickler = tokio::spawn(trickle(client.clone(), url.clone(), partial.clone()));
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
        berth.kill9();
        for w in workers {
            w.await.unwrap();
        }
        trickler.await.unwrap();

        let berth = Berth::start(&data, &[]);
        let url = berth.url.clone();
        let snapshot = acked.lock().unwrap().clone();
        verify(&client, &url, &snapshot, &partial).await;
        // The open session resumes where the stored data ends and commits correctly.
        let r = client.get(format!("{url}{location}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["range"], "0-99999");
        let rest = vec![b'b'; 50_000];
        let mut whole = first.clone();
        whole.extend_from_slice(&rest);
        let digest = Digest::sha256(&whole);
        let r = client
            .put(format!("{url}{location}?digest={digest}"))
            .header("content-range", "100000-149999")
            .body(rest)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = client
            .get(format!("{url}/v2/crash/resume/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().to_vec(), whole);
        berth.kill9();
        verify_store(&data);
    }
    let acked = acked.lock().unwrap();
    assert!(
        acked.blobs.len() > 20,
        "the workload did too little: {}",
        acked.blobs.len()
    );
    eprintln!(
        "verified {} blobs and {} manifests across 4 SIGKILLs",
        acked.blobs.len(),
        acked.manifests.len()
    );
}
