//! `berth-bench gc`: online garbage collection in berth vs the offline `docker-registry
//! garbage-collect` of CNCF distribution 2.8, on identical stores of many small blobs, and
//! push/pull latency in berth while its collection runs.
//!
//! berth's store is built through its API. distribution's is written straight into its
//! on-disk layout (blobs, layer links, manifest revisions, tags), which is what its own API
//! would leave there but minutes faster; `garbage-collect` reads only that layout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use berth_oci::Digest;
use futures::{StreamExt, TryStreamExt};
use rand::RngCore;

use crate::servers::Registry;

/// berth's grace period in the benchmark: short, so the deleted images are garbage soon.
const GRACE_SECONDS: u64 = 2;

/// What to run.
#[derive(clap::Args)]
pub struct Options {
    /// berth binary to measure.
    #[arg(long, default_value = "target/release/berth")]
    berth_bin: PathBuf,
    /// Where both stores live.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Repositories.
    #[arg(long, default_value_t = 100)]
    repositories: usize,
    /// Images per repository.
    #[arg(long, default_value_t = 10)]
    images: usize,
    /// Layers per image (each a distinct small blob).
    #[arg(long, default_value_t = 100)]
    layers: usize,
    /// Bytes per layer.
    #[arg(long, default_value_t = 256)]
    layer_bytes: usize,
    /// Parallel requests while building berth's store.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// A run of seconds, for checking the benchmark itself.
    #[arg(long)]
    quick: bool,
}

/// One synthetic image: its manifest and every blob it references.
struct Image {
    repo: String,
    tag: String,
    manifest: Vec<u8>,
    blobs: Vec<Vec<u8>>,
}

impl Image {
    fn digest(&self) -> Digest {
        Digest::sha256(&self.manifest)
    }
}

fn synthesize(o: &Options) -> Vec<Image> {
    let mut rng = rand::rng();
    let mut images = Vec::new();
    for r in 0..o.repositories {
        for i in 0..o.images {
            let config = format!("{{\"repo\":{r},\"image\":{i}}}").into_bytes();
            let layers: Vec<Vec<u8>> = (0..o.layers)
                .map(|_| {
                    let mut v = vec![0u8; o.layer_bytes];
                    rng.fill_bytes(&mut v);
                    v
                })
                .collect();
            let descriptor = |media: &str, data: &[u8]| {
                format!(
                    r#"{{"mediaType":"{media}","digest":"{}","size":{}}}"#,
                    Digest::sha256(data),
                    data.len()
                )
            };
            let layer_list: Vec<String> = layers
                .iter()
                .map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l))
                .collect();
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{}]}}"#,
                descriptor("application/vnd.oci.image.config.v1+json", &config),
                layer_list.join(",")
            )
            .into_bytes();
            let mut blobs = vec![config];
            blobs.extend(layers);
            images.push(Image {
                repo: format!("gcbench/r{r}"),
                tag: format!("i{i}"),
                manifest,
                blobs,
            });
        }
    }
    images
}

async fn build_berth(
    client: &reqwest::Client,
    reg: &Registry,
    images: &[Image],
    concurrency: usize,
) -> anyhow::Result<()> {
    let blobs = images
        .iter()
        .flat_map(|img| img.blobs.iter().map(move |b| (img.repo.as_str(), b)));
    futures::stream::iter(blobs)
        .map(Ok)
        .try_for_each_concurrent(concurrency, |(repo, data)| async move {
            let digest = Digest::sha256(data);
            let r = client
                .post(format!(
                    "{}/v2/{repo}/blobs/uploads/?digest={digest}",
                    reg.url
                ))
                .body(data.clone())
                .send()
                .await?;
            if r.status() != 201 {
                bail!("blob push: {}", r.status());
            }
            Ok(())
        })
        .await?;
    futures::stream::iter(images)
        .map(Ok)
        .try_for_each_concurrent(concurrency, |img| async move {
            let r = client
                .put(format!("{}/v2/{}/manifests/{}", reg.url, img.repo, img.tag))
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body(img.manifest.clone())
                .send()
                .await?;
            if r.status() != 201 {
                bail!("manifest push: {}", r.status());
            }
            Ok(())
        })
        .await
}

fn write(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// Writes `images` in distribution's filesystem layout under `root`; the deleted ones keep
/// their blobs and layer links but lose tag and revision links, as an API DELETE leaves them.
fn build_distribution(
    root: &Path,
    images: &[Image],
    deleted: impl Fn(usize) -> bool,
) -> anyhow::Result<()> {
    let v2 = root.join("docker/registry/v2");
    for (n, img) in images.iter().enumerate() {
        let repo = v2.join("repositories").join(&img.repo);
        for blob in img.blobs.iter().chain([&img.manifest]) {
            let digest = Digest::sha256(blob);
            let hex = digest.hex();
            write(
                &v2.join("blobs/sha256")
                    .join(&hex[..2])
                    .join(hex)
                    .join("data"),
                blob,
            )?;
            write(
                &repo.join("_layers/sha256").join(hex).join("link"),
                digest.to_string().as_bytes(),
            )?;
        }
        if deleted(n) {
            continue;
        }
        let digest = img.digest();
        let link = digest.to_string();
        write(
            &repo
                .join("_manifests/revisions/sha256")
                .join(digest.hex())
                .join("link"),
            link.as_bytes(),
        )?;
        let tag = repo.join("_manifests/tags").join(&img.tag);
        write(&tag.join("current/link"), link.as_bytes())?;
        write(
            &tag.join("index/sha256").join(digest.hex()).join("link"),
            link.as_bytes(),
        )?;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// How long the load runs without a collection, for the idle percentiles.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// Time between one load client's push+pull pairs: 4 clients make 200 pushes and 200 pulls
/// a second.
const LOAD_PERIOD: Duration = Duration::from_millis(20);

/// Pushes and pulls small blobs until `stop`, recording each request's latency (ms).
async fn load(
    client: reqwest::Client,
    url: String,
    stop: Arc<AtomicBool>,
    push: Arc<Mutex<Vec<f64>>>,
    pull: Arc<Mutex<Vec<f64>>>,
) -> anyhow::Result<()> {
    // Paced, not flat out: a steady load whose latency is measured, not one that takes the
    // two cores away from the collection it is measured against.
    let mut ticker = tokio::time::interval(LOAD_PERIOD);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let mut data = vec![0u8; 4096];
        rand::rng().fill_bytes(&mut data);
        let digest = Digest::sha256(&data);
        let started = Instant::now();
        let r = client
            .post(format!(
                "{url}/v2/gcbench/load/blobs/uploads/?digest={digest}"
            ))
            .body(data)
            .send()
            .await?;
        if r.status() != 201 {
            bail!("push during gc: {}", r.status());
        }
        push.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        let r = client
            .get(format!("{url}/v2/gcbench/load/blobs/{digest}"))
            .send()
            .await?;
        if r.status() != 200 || r.bytes().await?.len() != 4096 {
            bail!("pull during gc failed");
        }
        pull.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}

/// Latencies (p50, p99 of push; p50, p99 of pull) while `during` runs.
async fn latencies_during<F: std::future::Future<Output = anyhow::Result<T>>, T>(
    url: &str,
    during: F,
) -> anyhow::Result<(T, [f64; 4], usize)> {
    let stop = Arc::new(AtomicBool::new(false));
    let (push, pull) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let workers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(load(
                reqwest::Client::new(),
                url.to_owned(),
                stop.clone(),
                push.clone(),
                pull.clone(),
            ))
        })
        .collect();
    let result = during.await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await??;
    }
    let mut push = push
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut pull = pull
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    push.sort_by(f64::total_cmp);
    pull.sort_by(f64::total_cmp);
    Ok((
        result?,
        [
            percentile(&push, 0.5),
            percentile(&push, 0.99),
            percentile(&pull, 0.5),
            percentile(&pull, 0.99),
        ],
        push.len(),
    ))
}

/// Runs the benchmark.
pub async fn run(mut o: Options) -> anyhow::Result<()> {
    if o.quick {
        o.repositories = 10;
        o.images = 4;
        o.layers = 25;
    }
    let work = tempfile::Builder::new()
        .prefix("berth-bench-gc-")
        .tempdir_in(&o.work_dir)?;
    let images = synthesize(&o);
    let blobs: usize = images.iter().map(|i| i.blobs.len() + 1).sum();
    let deleted = |n: usize| n.is_multiple_of(2);
    eprintln!(
        "{} images, {blobs} blobs (manifests included); half the images deleted",
        images.len()
    );

    // berth: built through the API, half deleted through the API, collected online.
    let grace = format!("{GRACE_SECONDS}s");
    let berth = Registry::berth_with(&o.berth_bin, work.path(), &["--gc-grace", &grace])?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(o.concurrency * 2)
        .build()?;
    let started = Instant::now();
    build_berth(&client, &berth, &images, o.concurrency).await?;
    eprintln!(
        "berth store built through the API in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for (_, img) in images.iter().enumerate().filter(|(n, _)| deleted(*n)) {
        let r = client
            .delete(format!(
                "{}/v2/{}/manifests/{}",
                berth.url,
                img.repo,
                img.digest()
            ))
            .send()
            .await?;
        if r.status() != 202 {
            bail!("delete: {}", r.status());
        }
    }
    // Past the grace period the deleted images are garbage; the load's own blobs are not.
    tokio::time::sleep(Duration::from_secs(GRACE_SECONDS + 1)).await;
    let gc_url = format!("{}/admin/gc", berth.url);
    let (report, busy, busy_requests) = latencies_during(&berth.url, async {
        let r = client.post(&gc_url).send().await?;
        if r.status() != 200 {
            bail!("gc: {}", r.status());
        }
        Ok(r.json::<serde_json::Value>().await?)
    })
    .await?;
    let (_, idle, idle_requests) = latencies_during(&berth.url, async {
        tokio::time::sleep(IDLE_WINDOW).await;
        Ok(())
    })
    .await?;
    let berth_seconds = report["seconds"].as_f64().unwrap_or(f64::NAN);
    eprintln!("berth collection phases (s): {}", report["phases"]);
    let berth_freed = report["blobs"].as_u64().unwrap_or(0);

    // distribution: the same content and deletions in its layout, collected offline.
    let root = work.path().join("distribution");
    build_distribution(&root, &images, deleted)?;
    let config = work.path().join("distribution.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
            root.display()
        ),
    )?;
    let count = |root: &Path| walkdir_count(&root.join("docker/registry/v2/blobs"));
    let before = count(&root);
    let started = Instant::now();
    let out = Command::new("docker-registry")
        .args(["garbage-collect"])
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .context("running docker-registry garbage-collect")?;
    let dist_seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "garbage-collect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dist_freed = before - count(&root);

    println!(
        "{:<54} {:>12} {:>14} {:>8}",
        "", "berth", "distribution", "ratio"
    );
    println!("{:<54} {:>12} {:>14}", "blobs in the store", blobs, before);
    println!(
        "{:<54} {:>12} {:>14}",
        "blobs freed", berth_freed, dist_freed
    );
    println!(
        "{:<54} {:>11.2}s {:>13.2}s {:>7.2}x",
        "garbage collection time (berth online, distribution offline)",
        berth_seconds,
        dist_seconds,
        dist_seconds / berth_seconds
    );
    println!();
    println!("berth latency, 4 clients each pushing and pulling a 4 KiB blob every 20 ms ({idle_requests} pushes idle, {busy_requests} during GC):");
    println!(
        "{:<30} {:>10} {:>10} {:>8}",
        "", "idle", "during GC", "ratio"
    );
    for (i, name) in [
        "push p50 (ms)",
        "push p99 (ms)",
        "pull p50 (ms)",
        "pull p99 (ms)",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "{:<30} {:>10.2} {:>10.2} {:>7.2}x",
            name,
            idle[i],
            busy[i],
            busy[i] / idle[i]
        );
    }
    Ok(())
}

fn walkdir_count(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                walkdir_count(&path)
            } else {
                usize::from(path.file_name().is_some_and(|n| n == "data"))
            }
        })
        .sum()
}
