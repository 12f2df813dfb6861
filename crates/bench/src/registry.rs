//! `berth-bench registry`: the same pushes and pulls against berth and against Debian's
//! docker-registry (CNCF distribution 2.8), both running at once, each measured in turn.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use berth_oci::{Algorithm, Digest, Hasher};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use rand::RngCore;

use crate::servers::Registry;

/// What to run.
#[derive(clap::Args)]
pub struct Options {
    /// berth binary to measure.
    #[arg(long, default_value = "target/release/berth")]
    berth_bin: PathBuf,
    /// Where both registries keep their data (same filesystem for both).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Number of small blobs.
    #[arg(long, default_value_t = 3000)]
    small_blobs: usize,
    /// Largest small blob, in KiB (sizes spread from 4 KiB up to this).
    #[arg(long, default_value_t = 64)]
    small_max_kib: usize,
    /// Number of large blobs.
    #[arg(long, default_value_t = 4)]
    large_blobs: usize,
    /// Size of each large blob, in MiB.
    #[arg(long, default_value_t = 256)]
    large_mib: usize,
    /// Parallel requests for small blobs.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// skopeo copies per direction.
    #[arg(long, default_value_t = 5)]
    skopeo_runs: usize,
    /// Random data in the skopeo image's layers, in MiB.
    #[arg(long, default_value_t = 48)]
    image_mib: usize,
    /// A run of seconds, for checking the benchmark itself.
    #[arg(long)]
    quick: bool,
    /// Also write the figures as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// One measured figure for both registries.
struct Row {
    workload: String,
    unit: &'static str,
    berth: f64,
    distribution: f64,
    /// Whether a bigger value is better (throughput) or smaller (time).
    higher_is_better: bool,
    direction: &'static str,
}

impl Row {
    /// > 1 means berth is better, whichever way the unit goes.
    fn ratio(&self) -> f64 {
        if self.higher_is_better {
            self.berth / self.distribution
        } else {
            self.distribution / self.berth
        }
    }
}

fn random_bytes(len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    Bytes::from(v)
}

/// Resolves an upload `Location` (absolute, or relative as berth sends it) and adds `digest`.
fn finish_url(base: &str, location: &str, digest: &Digest) -> String {
    let absolute = if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    };
    let sep = if absolute.contains('?') { '&' } else { '?' };
    format!("{absolute}{sep}digest={digest}")
}

/// POST + PUT, the way most clients push a blob.
async fn push_blob(
    client: &reqwest::Client,
    reg: &str,
    repo: &str,
    data: Bytes,
    digest: &Digest,
) -> anyhow::Result<()> {
    let r = client
        .post(format!("{reg}/v2/{repo}/blobs/uploads/"))
        .send()
        .await?;
    if r.status() != 202 {
        bail!("POST upload: {}", r.status());
    }
    let location = r
        .headers()
        .get("location")
        .context("no Location")?
        .to_str()?
        .to_owned();
    let r = client
        .put(finish_url(reg, &location, digest))
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await?;
    if r.status() != 201 {
        bail!("PUT upload: {}", r.status());
    }
    Ok(())
}

async fn small_push(
    client: &reqwest::Client,
    reg: &Registry,
    blobs: &[(Digest, Bytes)],
    concurrency: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    futures::stream::iter(blobs.iter().enumerate())
        .map(Ok)
        .try_for_each_concurrent(concurrency, |(i, (digest, data))| async move {
            push_blob(
                client,
                &reg.url,
                &format!("bench/small{}", i % 8),
                data.clone(),
                digest,
            )
            .await
        })
        .await?;
    Ok(blobs.len() as f64 / started.elapsed().as_secs_f64())
}

async fn small_pull(
    client: &reqwest::Client,
    reg: &Registry,
    blobs: &[(Digest, Bytes)],
    concurrency: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    futures::stream::iter(blobs.iter().enumerate())
        .map(Ok)
        .try_for_each_concurrent(concurrency, |(i, (digest, data))| async move {
            let r = client
                .get(format!(
                    "{}/v2/bench/small{}/blobs/{digest}",
                    reg.url,
                    i % 8
                ))
                .send()
                .await?;
            let body = r.bytes().await?;
            if body.len() != data.len() {
                bail!(
                    "{}: blob {digest} came back with {} bytes",
                    reg.name,
                    body.len()
                );
            }
            Ok(())
        })
        .await?;
    Ok(blobs.len() as f64 / started.elapsed().as_secs_f64())
}

async fn large_push(
    client: &reqwest::Client,
    reg: &Registry,
    blobs: &[(Digest, Bytes)],
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut bytes = 0;
    for (digest, data) in blobs {
        bytes += data.len();
        push_blob(client, &reg.url, "bench/large", data.clone(), digest).await?;
    }
    Ok(bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64())
}

async fn large_pull(
    client: &reqwest::Client,
    reg: &Registry,
    blobs: &[(Digest, Bytes)],
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut bytes = 0;
    for (digest, _) in blobs {
        let r = client
            .get(format!("{}/v2/bench/large/blobs/{digest}", reg.url))
            .send()
            .await?;
        let mut stream = r.bytes_stream();
        let mut hasher = Hasher::new(Algorithm::Sha256);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            bytes += chunk.len();
            hasher.update(&chunk);
        }
        if hasher.finish() != *digest {
            bail!("{}: large blob {digest} came back different", reg.name);
        }
    }
    Ok(bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64())
}

fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// An OCI layout with busybox-static and `mib` MiB of random files over three layers.
fn build_layout(dir: &Path, mib: usize) -> anyhow::Result<PathBuf> {
    let layout = dir.join("layout");
    let image = format!("{}:img", layout.display());
    run_cmd(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    )?;
    run_cmd(Command::new("umoci").args(["new", "--image", &image]))?;
    let bundle = dir.join("bundle");
    for layer in 0..3 {
        run_cmd(
            Command::new("umoci")
                .args(["unpack", "--rootless", "--image", &image])
                .arg(&bundle),
        )?;
        let root = bundle.join("rootfs");
        if layer == 0 {
            std::fs::create_dir_all(root.join("bin"))?;
            std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
        }
        std::fs::write(
            root.join(format!("data{layer}")),
            random_bytes((mib.max(3) / 3) << 20),
        )?;
        run_cmd(
            Command::new("umoci")
                .args(["repack", "--image", &image])
                .arg(&bundle),
        )?;
        std::fs::remove_dir_all(&bundle)?;
    }
    Ok(layout)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn skopeo(policy: &Path) -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.arg("--policy").arg(policy);
    cmd
}

/// Median seconds of `runs` skopeo copies layout -> registry (a new repository each time).
fn skopeo_push(policy: &Path, layout: &Path, reg: &Registry, runs: usize) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for run in 0..runs {
        let started = Instant::now();
        run_cmd(
            skopeo(policy)
                .args(["copy", "-q", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:img", layout.display()))
                .arg(format!("docker://{}/skopeo/run{run}:1", reg.host())),
        )?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// Median seconds of `runs` skopeo copies registry -> a fresh layout.
fn skopeo_pull(policy: &Path, work: &Path, reg: &Registry, runs: usize) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for run in 0..runs {
        let dest = work.join(format!("pull-{}-{run}", reg.name));
        let started = Instant::now();
        run_cmd(
            skopeo(policy)
                .args(["copy", "-q", "--src-tls-verify=false"])
                .arg(format!("docker://{}/skopeo/run{run}:1", reg.host()))
                .arg(format!("oci:{}:img", dest.display())),
        )?;
        times.push(started.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&dest)?;
    }
    Ok(median(times))
}

/// Runs `f` against both registries, berth first when `berth_first`, and records a row.
macro_rules! measure {
    ($rows:ident, $regs:expr, $berth_first:expr, $workload:expr, $unit:expr, $higher:expr, $dir:expr, |$reg:ident| $body:expr) => {{
        let (berth, distribution) = $regs;
        let (first, second) = if $berth_first {
            (berth, distribution)
        } else {
            (distribution, berth)
        };
        let a = {
            let $reg = first;
            $body
        };
        let b = {
            let $reg = second;
            $body
        };
        let (b_val, d_val) = if $berth_first { (a, b) } else { (b, a) };
        let row = Row {
            workload: $workload.to_string(),
            unit: $unit,
            berth: b_val,
            distribution: d_val,
            higher_is_better: $higher,
            direction: $dir,
        };
        print_row(&row);
        $rows.push(row);
    }};
}

fn print_row(row: &Row) {
    let decimals = if row.higher_is_better { 1 } else { 3 };
    println!(
        "{:<44} {:>12.decimals$} {:>14.decimals$}  {:<8} {:>6.2}x",
        row.workload,
        row.berth,
        row.distribution,
        row.unit,
        row.ratio()
    );
}

fn geometric_mean(rows: &[&Row]) -> f64 {
    let product: f64 = rows.iter().map(|r| r.ratio().ln()).sum();
    (product / rows.len() as f64).exp()
}

/// Runs the benchmark.
pub async fn run(mut o: Options) -> anyhow::Result<()> {
    if o.quick {
        o.small_blobs = 300;
        o.large_blobs = 1;
        o.large_mib = 32;
        o.skopeo_runs = 1;
        o.image_mib = 6;
    }
    let work = tempfile::Builder::new()
        .prefix("berth-bench-")
        .tempdir_in(&o.work_dir)?;
    let berth = Registry::berth(&o.berth_bin, work.path())?;
    let distribution = Registry::distribution(work.path()).await?;
    let regs = (&berth, &distribution);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(o.concurrency * 2)
        .timeout(Duration::from_secs(600))
        .build()?;

    eprintln!(
        "preparing content: {} small blobs, {} x {} MiB large blobs, a {} MiB image",
        o.small_blobs, o.large_blobs, o.large_mib, o.image_mib
    );
    let small: Vec<(Digest, Bytes)> = (0..o.small_blobs)
        .map(|i| {
            let len = 4096 + (i * 7919) % (o.small_max_kib.max(5) * 1024 - 4096);
            let data = random_bytes(len);
            (Digest::sha256(&data), data)
        })
        .collect();
    let large: Vec<(Digest, Bytes)> = (0..o.large_blobs)
        .map(|_| {
            let data = random_bytes(o.large_mib << 20);
            (Digest::sha256(&data), data)
        })
        .collect();
    let layout = build_layout(work.path(), o.image_mib)?;
    let policy = work.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )?;

    println!(
        "{:<44} {:>12} {:>14}  {:<8} {:>7}",
        "workload", "berth", "distribution", "unit", "ratio"
    );
    let mut rows = Vec::new();
    let c = &client;
    let small_name = format!(
        "push {} small blobs (4-{} KiB), {} parallel",
        o.small_blobs, o.small_max_kib, o.concurrency
    );
    measure!(rows, regs, true, small_name, "blobs/s", true, "push", |r| {
        small_push(c, r, &small, o.concurrency).await?
    });
    let small_name = format!(
        "pull {} small blobs, {} parallel",
        o.small_blobs, o.concurrency
    );
    measure!(
        rows,
        regs,
        false,
        small_name,
        "blobs/s",
        true,
        "pull",
        |r| small_pull(c, r, &small, o.concurrency).await?
    );
    let large_name = format!("push {} x {} MiB blobs", o.large_blobs, o.large_mib);
    measure!(rows, regs, false, large_name, "MiB/s", true, "push", |r| {
        large_push(c, r, &large).await?
    });
    let large_name = format!(
        "pull {} x {} MiB blobs (sha256 verified)",
        o.large_blobs, o.large_mib
    );
    measure!(rows, regs, true, large_name, "MiB/s", true, "pull", |r| {
        large_pull(c, r, &large).await?
    });
    let runs = o.skopeo_runs;
    let name = format!("skopeo copy oci: -> registry, {} MiB image", o.image_mib);
    measure!(rows, regs, true, name, "s median", false, "push", |r| {
        skopeo_push(&policy, &layout, r, runs)?
    });
    let name = format!("skopeo copy registry -> oci:, {} MiB image", o.image_mib);
    measure!(rows, regs, false, name, "s median", false, "pull", |r| {
        skopeo_pull(&policy, work.path(), r, runs)?
    });

    let push: Vec<&Row> = rows.iter().filter(|r| r.direction == "push").collect();
    let pull: Vec<&Row> = rows.iter().filter(|r| r.direction == "pull").collect();
    let (push_ratio, pull_ratio) = (geometric_mean(&push), geometric_mean(&pull));
    println!();
    println!("push: berth/distribution = {push_ratio:.2}x (geometric mean of the push rows)");
    println!("pull: berth/distribution = {pull_ratio:.2}x (geometric mean of the pull rows)");
    println!(
        "peak RSS: berth {} MiB, distribution {} MiB",
        berth.peak_rss_mib(),
        distribution.peak_rss_mib()
    );
    if let Some(path) = &o.json {
        let figures: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "workload": r.workload, "unit": r.unit, "berth": r.berth,
                    "distribution": r.distribution, "ratio": r.ratio(), "direction": r.direction,
                })
            })
            .collect();
        let report = serde_json::json!({
            "rows": figures, "push_ratio": push_ratio, "pull_ratio": pull_ratio,
            "peak_rss_mib": {"berth": berth.peak_rss_mib(), "distribution": distribution.peak_rss_mib()},
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
