//! Streaming: pushing and pulling a 1 GiB blob keeps the registry's memory flat.
#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use berth_oci::{Algorithm, Hasher};
use futures::StreamExt;
use support::Berth;

const GIB: u64 = 1 << 30;
const CHUNK: usize = 1 << 20;
/// Peak resident memory the registry may reach while moving 1 GiB.
const RSS_LIMIT_KIB: u64 = 200 * 1024;

/// Deterministic content: chunk `i` is one of a few patterns, each with its index stamped in.
fn chunk(i: u64) -> bytes::Bytes {
    let mut v = vec![(i % 7) as u8; CHUNK];
    v[..8].copy_from_slice(&i.to_le_bytes());
    bytes::Bytes::from(v)
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_blob_streams_with_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), &[]);
    let url = berth.url.clone();
    let pid = berth.pid();

    let mut hasher = Hasher::new(Algorithm::Sha256);
    for i in 0..GIB / CHUNK as u64 {
        hasher.update(&chunk(i));
    }
    let digest = hasher.finish();
    let baseline = peak_rss_kib(pid);

    let client = reqwest::Client::new();
    let body =
        futures::stream::iter(0..GIB / CHUNK as u64).map(|i| Ok::<_, std::io::Error>(chunk(i)));
    let r = client
        .post(format!("{url}/v2/big/blob/blobs/uploads/?digest={digest}"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let after_push = peak_rss_kib(pid);

    let r = client
        .get(format!("{url}/v2/big/blob/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.content_length(), Some(GIB));
    let mut stream = r.bytes_stream();
    let mut pulled = Hasher::new(Algorithm::Sha256);
    let mut n = 0u64;
    while let Some(part) = stream.next().await {
        let part = part.unwrap();
        n += part.len() as u64;
        pulled.update(&part);
    }
    assert_eq!(n, GIB);
    assert_eq!(pulled.finish(), digest);
    let after_pull = peak_rss_kib(pid);
    berth.kill9();

    eprintln!(
        "registry peak RSS: {} MiB at start, {} MiB after a 1 GiB push, {} MiB after a 1 GiB pull",
        baseline / 1024,
        after_push / 1024,
        after_pull / 1024
    );
    assert!(
        after_pull < RSS_LIMIT_KIB,
        "peak RSS {after_pull} KiB: memory is not flat"
    );
}
