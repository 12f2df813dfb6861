//! Garbage collection under fire: pushers (new tags, re-tags, shared layers, cross-repo
//! mounts) and deleters run against the real binary while collections run back to back;
//! then a SIGKILL in the middle of a collection and a restart; then a second round. At the
//! end every tag that was not deleted pulls and verifies byte for byte, and the store holds
//! exactly what the live tags reach.
//!
//! `BERTH_STRESS_SECONDS` sets the length of each of the two rounds (default 60).
#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_oci::Digest;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use reqwest::{Client, StatusCode};
use support::Berth;

const GRACE_SECONDS: u64 = 2;
const SHARED_LAYERS: usize = 6;

/// What the pushers believe is in the registry: (repo, tag) -> manifest, and every blob's
/// content by digest.
#[derive(Default, Clone)]
struct Model {
    tags: BTreeMap<(String, String), String>,
    content: HashMap<Digest, Vec<u8>>,
}

#[derive(Default)]
struct Counters {
    pushes: AtomicU64,
    retags: AtomicU64,
    tag_deletes: AtomicU64,
    manifest_deletes: AtomicU64,
    mounts: AtomicU64,
    blob_unknown_retries: AtomicU64,
    collections: AtomicU64,
    freed: AtomicU64,
}

fn manifest_json(config: &Digest, config_len: usize, layers: &[(Digest, usize)]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, n)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{n}}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_len}}},"layers":[{}]}}"#,
        layers.join(",")
    )
}

async fn upload(client: &Client, url: &str, repo: &str, data: &[u8]) -> Result<(), String> {
    let digest = Digest::sha256(data);
    let r = client
        .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .body(data.to_vec())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() == StatusCode::CREATED {
        Ok(())
    } else {
        Err(format!("upload {digest}: {}", r.status()))
    }
}

/// Makes `data` available in `repo` the way clients do: HEAD, then mount, then upload.
async fn ensure_blob(
    client: &Client,
    url: &str,
    repo: &str,
    from: &str,
    data: &[u8],
    counters: &Counters,
) -> Result<(), String> {
    let digest = Digest::sha256(data);
    let head = client
        .head(format!("{url}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if head.status() == StatusCode::OK {
        return Ok(());
    }
    let r = client
        .post(format!(
            "{url}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"
        ))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() == StatusCode::CREATED {
        counters.mounts.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    upload(client, url, repo, data).await
}

async fn put_manifest(
    client: &Client,
    url: &str,
    repo: &str,
    tag: &str,
    body: &str,
) -> Result<StatusCode, String> {
    client
        .put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(body.to_owned())
        .send()
        .await
        .map(|r| r.status())
        .map_err(|e| e.to_string())
}

/// One pusher/deleter until `stop`.
async fn worker(
    w: usize,
    url: String,
    model: Arc<Mutex<Model>>,
    shared: Arc<Vec<Vec<u8>>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    round: usize,
) {
    let client = Client::new();
    let mut rng = StdRng::from_os_rng();
    let repos = [format!("stress/w{w}a"), format!("stress/w{w}b")];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let repo = &repos[rng.random_range(0..2)];
        let other = &repos.iter().find(|r| *r != repo).unwrap().clone();
        let live: Vec<((String, String), String)> = {
            let m = model.lock().unwrap();
            m.tags
                .iter()
                .filter(|((r, _), _)| r == repo)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let action = rng.random_range(0..100);
        if action < 50 || live.is_empty() {
            // A new image: one shared layer (mounted or deduplicated), one unique layer.
            let mut unique = vec![0u8; rng.random_range(1024..48 * 1024)];
            rng.fill_bytes(&mut unique);
            let shared_layer = &shared[rng.random_range(0..shared.len())];
            let config = format!("{{\"worker\":{w},\"round\":{round},\"n\":{n}}}").into_bytes();
            let tag = if !live.is_empty() && rng.random_bool(0.2) {
                live[rng.random_range(0..live.len())].0 .1.clone()
            } else {
                format!("r{round}-n{n}")
            };
            let body = manifest_json(
                &Digest::sha256(&config),
                config.len(),
                &[
                    (Digest::sha256(shared_layer), shared_layer.len()),
                    (Digest::sha256(&unique), unique.len()),
                ],
            );
            let mut pushed = false;
            for _attempt in 0..3 {
                let from = if rng.random_bool(0.5) {
                    other.as_str()
                } else {
                    "stress/base"
                };
                if ensure_blob(&client, &url, repo, from, shared_layer, &counters)
                    .await
                    .is_err()
                    || upload(&client, &url, repo, &unique).await.is_err()
                    || upload(&client, &url, repo, &config).await.is_err()
                {
                    continue;
                }
                match put_manifest(&client, &url, repo, &tag, &body).await {
                    Ok(StatusCode::CREATED) => {
                        pushed = true;
                        break;
                    }
                    // A layer that HEAD found was collected before the manifest arrived:
                    // what a client sees and handles by pushing it again.
                    Ok(StatusCode::BAD_REQUEST) => {
                        counters
                            .blob_unknown_retries
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(other) => panic!("manifest push answered {other}"),
                    Err(e) => panic!("manifest push failed: {e}"),
                }
            }
            assert!(pushed, "a manifest push failed three times");
            counters.pushes.fetch_add(1, Ordering::Relaxed);
            let mut m = model.lock().unwrap();
            m.content.insert(Digest::sha256(&unique), unique);
            m.content.insert(Digest::sha256(&config), config);
            m.content
                .insert(Digest::sha256(body.as_bytes()), body.clone().into_bytes());
            m.tags.insert((repo.clone(), tag), body);
        } else if action < 65 {
            // Re-tag an existing manifest.
            let (_, body) = &live[rng.random_range(0..live.len())];
            let tag = format!("r{round}-re{n}");
            match put_manifest(&client, &url, repo, &tag, body).await {
                Ok(StatusCode::CREATED) => {
                    counters.retags.fetch_add(1, Ordering::Relaxed);
                    model
                        .lock()
                        .unwrap()
                        .tags
                        .insert((repo.clone(), tag), body.clone());
                }
                // Its manifest may have been deleted by digest meanwhile; nothing changed.
                Ok(StatusCode::BAD_REQUEST) => {}
                other => panic!("re-tag answered {other:?}"),
            }
        } else if action < 85 {
            let ((_, tag), _) = &live[rng.random_range(0..live.len())];
            let r = client
                .delete(format!("{url}/v2/{repo}/manifests/{tag}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            counters.tag_deletes.fetch_add(1, Ordering::Relaxed);
            model
                .lock()
                .unwrap()
                .tags
                .remove(&(repo.clone(), tag.clone()));
        } else {
            let (_, body) = &live[rng.random_range(0..live.len())];
            let digest = Digest::sha256(body.as_bytes());
            let r = client
                .delete(format!("{url}/v2/{repo}/manifests/{digest}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            counters.manifest_deletes.fetch_add(1, Ordering::Relaxed);
            model
                .lock()
                .unwrap()
                .tags
                .retain(|(r, _), b| !(r == repo && b == body));
        }
    }
}

fn snapshot(model: &Mutex<Model>) -> Model {
    model.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

async fn collect(client: &Client, url: &str) -> Result<serde_json::Value, String> {
    let r = client
        .post(format!("{url}/admin/gc?delete_untagged=true"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != StatusCode::OK {
        return Err(format!("gc answered {}", r.status()));
    }
    r.json().await.map_err(|e| e.to_string())
}

async fn gc_loop(url: String, counters: Arc<Counters>, stop: Arc<AtomicBool>) {
    let client = Client::new();
    while !stop.load(Ordering::Relaxed) {
        let report = collect(&client, &url).await.expect("collection failed");
        counters.collections.fetch_add(1, Ordering::Relaxed);
        counters
            .freed
            .fetch_add(report["blob_bytes"].as_u64().unwrap(), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every live tag pulls and verifies, blob by blob.
async fn verify(url: &str, model: &Model) {
    let client = Client::new();
    for ((repo, tag), body) in &model.tags {
        let r = client
            .get(format!("{url}/v2/{repo}/manifests/{tag}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{repo}:{tag} lost");
        assert_eq!(&r.text().await.unwrap(), body, "{repo}:{tag} changed");
        let manifest: serde_json::Value = serde_json::from_str(body).unwrap();
        let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
        blobs.extend(
            manifest["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_owned()),
        );
        for digest in blobs {
            let r = client
                .get(format!("{url}/v2/{repo}/blobs/{digest}"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                StatusCode::OK,
                "{repo}:{tag}: blob {digest} lost"
            );
            let bytes = r.bytes().await.unwrap();
            assert_eq!(
                Digest::sha256(&bytes).to_string(),
                digest,
                "{repo}:{tag}: blob {digest} corrupted"
            );
            if let Some(expected) = model.content.get(&digest.parse().unwrap()) {
                assert_eq!(&bytes.to_vec(), expected);
            }
        }
    }
}

fn stored_digests(data: &Path) -> HashSet<String> {
    support::files(&data.join("blobs/sha256"))
        .iter()
        .map(|f| format!("sha256:{}", f.file_name().unwrap().to_string_lossy()))
        .collect()
}

fn reachable(model: &Model, base_manifest: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for body in model
        .tags
        .values()
        .map(String::as_str)
        .chain([base_manifest])
    {
        out.insert(Digest::sha256(body.as_bytes()).to_string());
        let manifest: serde_json::Value = serde_json::from_str(body).unwrap();
        out.insert(manifest["config"]["digest"].as_str().unwrap().to_owned());
        for layer in manifest["layers"].as_array().unwrap() {
            out.insert(layer["digest"].as_str().unwrap().to_owned());
        }
    }
    out
}

async fn round(
    url: &str,
    round: usize,
    seconds: u64,
    model: &Arc<Mutex<Model>>,
    shared: &Arc<Vec<Vec<u8>>>,
    counters: &Arc<Counters>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(worker(
                w,
                url.to_owned(),
                model.clone(),
                shared.clone(),
                counters.clone(),
                stop.clone(),
                round,
            ))
        })
        .collect();
    tasks.push(tokio::spawn(gc_loop(
        url.to_owned(),
        counters.clone(),
        stop.clone(),
    )));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_under_concurrent_pushes_deletes_and_a_sigkill_loses_nothing_live() {
    let seconds: u64 = std::env::var("BERTH_STRESS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registry");
    let flags = ["--gc-grace", "2s", "--upload-max-age", "10s"];
    let berth = Berth::start(&data, &flags);
    let client = Client::new();

    // Shared base layers, kept alive by a tagged base image.
    let mut rng = StdRng::from_os_rng();
    let shared: Vec<Vec<u8>> = (0..SHARED_LAYERS)
        .map(|_| {
            let mut v = vec![0u8; 32 * 1024];
            rng.fill_bytes(&mut v);
            v
        })
        .collect();
    let base_config = b"{\"base\":true}".to_vec();
    for layer in shared.iter().chain([&base_config]) {
        upload(&client, &berth.url, "stress/base", layer)
            .await
            .unwrap();
    }
    let layers: Vec<(Digest, usize)> = shared
        .iter()
        .map(|l| (Digest::sha256(l), l.len()))
        .collect();
    let base_manifest = manifest_json(&Digest::sha256(&base_config), base_config.len(), &layers);
    assert_eq!(
        put_manifest(&client, &berth.url, "stress/base", "base", &base_manifest)
            .await
            .unwrap(),
        StatusCode::CREATED
    );

    let model = Arc::new(Mutex::new(Model::default()));
    let shared = Arc::new(shared);
    let counters = Arc::new(Counters::default());
    round(&berth.url, 1, seconds, &model, &shared, &counters).await;
    verify(&berth.url, &snapshot(&model)).await;

    // Make garbage, start a collection, and SIGKILL the registry while it runs.
    {
        let victims: Vec<(String, String)> = {
            let m = model.lock().unwrap();
            m.tags.keys().take(m.tags.len() / 2).cloned().collect()
        };
        for (repo, tag) in victims {
            client
                .delete(format!("{}/v2/{repo}/manifests/{tag}", berth.url))
                .send()
                .await
                .unwrap();
            model.lock().unwrap().tags.remove(&(repo, tag));
        }
    }
    tokio::time::sleep(Duration::from_secs(GRACE_SECONDS + 1)).await;
    let url = berth.url.clone();
    let in_flight = tokio::spawn(async move { collect(&Client::new(), &url).await });
    tokio::time::sleep(Duration::from_millis(rand::rng().random_range(1..30))).await;
    berth.kill9();
    let killed = in_flight.await.unwrap();
    eprintln!(
        "collection at SIGKILL: {}",
        if killed.is_ok() {
            "had already finished"
        } else {
            "interrupted"
        }
    );

    let berth = Berth::start(&data, &flags);
    verify(&berth.url, &snapshot(&model)).await;
    round(&berth.url, 2, seconds, &model, &shared, &counters).await;

    // Quiet: after the grace period one collection must leave exactly what live tags reach.
    tokio::time::sleep(Duration::from_secs(GRACE_SECONDS + 1)).await;
    collect(&client, &berth.url).await.unwrap();
    let model = snapshot(&model);
    verify(&berth.url, &model).await;
    let stored = stored_digests(&data);
    let live = reachable(&model, &base_manifest);
    let garbage: Vec<_> = stored.difference(&live).collect();
    let missing: Vec<_> = live.difference(&stored).collect();
    assert!(
        garbage.is_empty(),
        "unreferenced blobs older than the grace period remain: {garbage:?}"
    );
    assert!(missing.is_empty(), "live blobs are missing: {missing:?}");
    let c = &counters;
    eprintln!(
        "2 rounds of {seconds}s: {} pushes, {} re-tags, {} tag deletes, {} manifest deletes, {} mounts, {} pushes retried after their layer was collected, {} collections freeing {} bytes; {} live tags verified; {} blobs stored, all reachable",
        c.pushes.load(Ordering::Relaxed),
        c.retags.load(Ordering::Relaxed),
        c.tag_deletes.load(Ordering::Relaxed),
        c.manifest_deletes.load(Ordering::Relaxed),
        c.mounts.load(Ordering::Relaxed),
        c.blob_unknown_retries.load(Ordering::Relaxed),
        c.collections.load(Ordering::Relaxed),
        c.freed.load(Ordering::Relaxed),
        model.tags.len(),
        stored.len(),
    );
    assert!(
        c.pushes.load(Ordering::Relaxed) > 100 && c.collections.load(Ordering::Relaxed) > 10,
        "the stress did too little"
    );
    drop(berth);
}
