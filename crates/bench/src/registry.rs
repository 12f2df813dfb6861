//! `berth-bench registry`: the same pushes and pulls against berth and against Debian's
//! docker-registry (CNCF distribution 2.8), both running at once, with the same clients and
//! the same content. Every workload runs against both registries after a warm-up, taking
//! turns at which goes first.

pub(crate) mod blobs;
mod content;
mod report;
mod skopeo;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::{StreamExt as _, TryStreamExt as _};
use reqwest::Client;
use serde::Serialize;

use self::blobs::{Blob, PushMode, Pushed};
use self::report::{median, Direction, Pair, Report, Row, Section, Summary};
use self::skopeo::Skopeo;
use crate::servers::Registry;

/// Small blobs are spread over this many repositories.
const SMALL_REPOS: usize = 8;

/// What to run: sizes, counts and where.
#[derive(clap::Args, Serialize, Debug)]
pub struct Options {
    /// berth binary to measure.
    #[arg(long, default_value = "target/release/berth")]
    berth_bin: PathBuf,
    /// Measure a second docker-registry in berth's place instead, to see the harness's own
    /// noise: every ratio should then be near 1.
    #[arg(long)]
    peer_only: bool,
    /// Where to make the temp dir that holds both registries' data (so one filesystem for
    /// both) and the content; it is removed at the end.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Small blobs pushed in each push mode (single POST, POST then PUT).
    #[arg(long, default_value_t = 2000)]
    small_blobs: usize,
    /// Smallest small blob, in KiB.
    #[arg(long, default_value_t = 4)]
    small_min_kib: usize,
    /// Largest small blob, in KiB.
    #[arg(long, default_value_t = 64)]
    small_max_kib: usize,
    /// Requests in flight at once for small blobs.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Small blobs pushed (both modes) and pulled before anything is measured.
    #[arg(long, default_value_t = 200)]
    warmup_blobs: usize,
    /// Large blobs, pushed and pulled one at a time.
    #[arg(long, default_value_t = 4)]
    large_blobs: usize,
    /// Size of each large blob, in MiB.
    #[arg(long, default_value_t = 256)]
    large_mib: usize,
    /// skopeo copies per direction and registry.
    #[arg(long, default_value_t = 5)]
    skopeo_runs: usize,
    /// Random data in the skopeo image, in MiB (on top of busybox).
    #[arg(long, default_value_t = 100)]
    image_mib: usize,
    /// Layers the random data of the skopeo image is split into.
    #[arg(long, default_value_t = 3)]
    image_layers: usize,
    /// A run of seconds with tiny sizes, for checking the benchmark itself (overrides the
    /// sizes and counts).
    #[arg(long)]
    quick: bool,
    /// Also write every figure as JSON to this file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    json: Option<PathBuf>,
}

impl Options {
    fn resolve(mut self) -> anyhow::Result<Options> {
        if self.quick {
            self.small_blobs = 200;
            self.warmup_blobs = 20;
            self.large_blobs = 1;
            self.large_mib = 16;
            self.skopeo_runs = 1;
            self.image_mib = 8;
        }
        if self.small_min_kib == 0 || self.small_min_kib > self.small_max_kib {
            bail!("--small-min-kib must be at least 1 and at most --small-max-kib");
        }
        crate::at_least_one(&[
            ("--small-blobs", self.small_blobs),
            ("--concurrency", self.concurrency),
            ("--large-blobs", self.large_blobs),
            ("--large-mib", self.large_mib),
            ("--skopeo-runs", self.skopeo_runs),
            ("--image-layers", self.image_layers),
        ])?;
        Ok(self)
    }
}

/// Runs the benchmark.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let o = options.resolve()?;
    let work = tempfile::Builder::new()
        .prefix("berth-bench-registry-")
        .tempdir_in(&o.work_dir)
        .with_context(|| format!("making a temp dir in {}", o.work_dir.display()))?;
    let servers = start(&o, work.path()).await?;
    let names = Pair {
        subject: servers.subject.name,
        peer: servers.peer.name,
    };
    eprintln!(
        "{} on {}, {} on {}, data under {}",
        names.subject,
        servers.subject.url,
        names.peer,
        servers.peer.url,
        work.path().display()
    );
    let client = Client::builder()
        .pool_max_idle_per_host(o.concurrency)
        .timeout(Duration::from_secs(600))
        .build()?;
    let mut turns = Turns::default();
    let mut sections = Vec::new();

    let section = small_blobs(&o, &client, &servers, &mut turns).await?;
    println!("{}", section.render(names));
    sections.push(section);
    let section = large_blobs(&o, work.path(), &client, &servers, &mut turns).await?;
    println!("{}", section.render(names));
    sections.push(section);
    let section = skopeo_copies(&o, work.path(), &servers, &mut turns).await?;
    println!("{}", section.render(names));
    sections.push(section);

    let summary = Summary::of(&sections);
    for line in &summary {
        println!("{}", line.render(names));
    }
    if let Some(path) = &o.json {
        let report = Report {
            names,
            parameters: &o,
            sections,
            summary,
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Starts the registry under test and the peer, data under `work`.
async fn start(o: &Options, work: &Path) -> anyhow::Result<Pair<Registry>> {
    let subject = if o.peer_only {
        Registry::distribution("distribution-2", work).await?
    } else {
        Registry::berth(&o.berth_bin, work)?
    };
    let peer = Registry::distribution("distribution", work).await?;
    Ok(Pair { subject, peer })
}

/// Runs each measurement against both registries, taking turns at which goes first, so
/// neither always meets a colder or a fuller page cache.
#[derive(Default)]
struct Turns {
    peer_first: bool,
}

impl Turns {
    async fn both<T>(
        &mut self,
        servers: &Pair<Registry>,
        mut measure: impl AsyncFnMut(&Registry) -> anyhow::Result<T>,
    ) -> anyhow::Result<Pair<T>> {
        let peer_first = self.peer_first;
        self.peer_first = !peer_first;
        let (first, second) = if peer_first {
            (&servers.peer, &servers.subject)
        } else {
            (&servers.subject, &servers.peer)
        };
        settle().await?;
        let first = measure(first).await?;
        settle().await?;
        let second = measure(second).await?;
        Ok(if peer_first {
            Pair {
                subject: second,
                peer: first,
            }
        } else {
            Pair {
                subject: first,
                peer: second,
            }
        })
    }
}

/// Writes back all dirty pages, so that one measurement's writes are not flushed on the
/// next one's time (the registries differ in what they sync themselves).
async fn settle() -> anyhow::Result<()> {
    let status = tokio::process::Command::new("sync")
        .status()
        .await
        .context("running sync")?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(())
}

/// Blobs moved in one measured batch.
#[derive(Clone, Copy)]
struct Batch {
    elapsed: Duration,
    blobs: usize,
    bytes: usize,
    /// Single POSTs the registry answered with 202, so the client PUT the content after.
    fell_back: usize,
}

impl Batch {
    fn blobs_per_second(self) -> f64 {
        self.blobs as f64 / self.elapsed.as_secs_f64()
    }

    fn megabytes_per_second(self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// Workloads 1 and 2: many small blobs pushed in each mode, `concurrency` at a time, then all
/// of them pulled.
async fn small_blobs(
    o: &Options,
    client: &Client,
    servers: &Pair<Registry>,
    turns: &mut Turns,
) -> anyhow::Result<Section> {
    let (min, max, n) = (o.small_min_kib, o.small_max_kib, o.concurrency);
    let warmup = content::small_blobs(o.warmup_blobs, min, max);
    let single = content::small_blobs(o.small_blobs, min, max);
    let post_put = content::small_blobs(o.small_blobs, min, max);
    eprintln!("small blobs: warming up");
    turns
        .both(servers, async |reg| {
            push_all(
                client,
                reg,
                "bench/warmup",
                &warmup,
                PushMode::SinglePost,
                n,
            )
            .await?;
            push_all(client, reg, "bench/warmup", &warmup, PushMode::PostPut, n).await?;
            pull_all(client, reg, &[("bench/warmup", &warmup)], n).await
        })
        .await?;
    eprintln!("small blobs: pushing with single POSTs");
    let single_push = turns
        .both(servers, async |reg| {
            push_all(
                client,
                reg,
                "bench/single",
                &single,
                PushMode::SinglePost,
                n,
            )
            .await
        })
        .await?;
    eprintln!("small blobs: pushing with POST then PUT");
    let post_put_push = turns
        .both(servers, async |reg| {
            push_all(
                client,
                reg,
                "bench/post-put",
                &post_put,
                PushMode::PostPut,
                n,
            )
            .await
        })
        .await?;
    eprintln!("small blobs: pulling");
    let sets = [
        ("bench/single", &single[..]),
        ("bench/post-put", &post_put[..]),
    ];
    let pull = turns
        .both(servers, async |reg| pull_all(client, reg, &sets, n).await)
        .await?;

    let mut section = Section::new(format!(
        "small blobs: {} per push mode, {min}-{max} KiB, {n} in flight, over {SMALL_REPOS} repos",
        o.small_blobs
    ));
    for (what, batch, direction) in [
        ("push, single POST", single_push, Direction::Push),
        ("push, POST then PUT", post_put_push, Direction::Push),
        ("pull (GET)", pull, Direction::Pull),
    ] {
        section.row(Row::throughput(
            what,
            "blobs/s",
            batch.map(Batch::blobs_per_second),
            Some(direction),
        ));
        section.row(Row::throughput(
            what,
            "MB/s",
            batch.map(Batch::megabytes_per_second),
            None,
        ));
    }
    for (name, batch) in [
        (servers.subject.name, single_push.subject),
        (servers.peer.name, single_push.peer),
    ] {
        if batch.fell_back > 0 {
            section.note(format!(
                "{name} answered {} of {} single POSTs with 202 (no single-POST uploads), \
                 so the client sent those blobs again in a PUT, as the spec says",
                batch.fell_back, batch.blobs
            ));
        }
    }
    Ok(section)
}

/// Pushes `blobs` spread over [`SMALL_REPOS`] repositories named after `repo`.
async fn push_all(
    client: &Client,
    reg: &Registry,
    repo: &str,
    blobs: &[Blob],
    mode: PushMode,
    concurrency: usize,
) -> anyhow::Result<Batch> {
    let started = Instant::now();
    let fell_back = futures::stream::iter(blobs.iter().enumerate())
        .map(|(i, blob)| async move {
            let repo = format!("{repo}-{}", i % SMALL_REPOS);
            blobs::push(client, &reg.url, &repo, blob, mode)
                .await
                .with_context(|| format!("{}: pushing {} to {repo}", reg.name, blob.digest))
        })
        .buffer_unordered(concurrency)
        .try_fold(0, |n, pushed| async move {
            Ok(n + usize::from(pushed == Pushed::FellBackToPut))
        })
        .await?;
    Ok(Batch {
        elapsed: started.elapsed(),
        blobs: blobs.len(),
        bytes: blobs.iter().map(|b| b.data.len()).sum(),
        fell_back,
    })
}

/// Pulls every blob of `sets` (pushed by [`push_all`] under each repo name) and checks its
/// length.
async fn pull_all(
    client: &Client,
    reg: &Registry,
    sets: &[(&str, &[Blob])],
    concurrency: usize,
) -> anyhow::Result<Batch> {
    let all: Vec<(String, &Blob)> = sets
        .iter()
        .flat_map(|(repo, blobs)| {
            blobs
                .iter()
                .enumerate()
                .map(move |(i, blob)| (format!("{repo}-{}", i % SMALL_REPOS), blob))
        })
        .collect();
    let started = Instant::now();
    futures::stream::iter(&all)
        .map(|(repo, blob)| async move {
            let len = blobs::pull_len(client, &reg.url, repo, &blob.digest)
                .await
                .with_context(|| format!("{}: pulling {} from {repo}", reg.name, blob.digest))?;
            if len != blob.data.len() {
                bail!(
                    "{}: {} came back with {len} bytes, not {}",
                    reg.name,
                    blob.digest,
                    blob.data.len()
                );
            }
            Ok(())
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    Ok(Batch {
        elapsed: started.elapsed(),
        blobs: all.len(),
        bytes: all.iter().map(|(_, b)| b.data.len()).sum(),
        fell_back: 0,
    })
}

/// Workload 3: a few large blobs streamed from files with POST then PUT, then pulled one at
/// a time and checked against their sha256 (after the clock stops, so the client's hashing
/// does not cap the figure). Ends with each registry's peak memory so far.
async fn large_blobs(
    o: &Options,
    work: &Path,
    client: &Client,
    servers: &Pair<Registry>,
    turns: &mut Turns,
) -> anyhow::Result<Section> {
    eprintln!(
        "large blobs: writing {} x {} MiB of random data",
        o.large_blobs, o.large_mib
    );
    let large = content::large_blobs(work, o.large_blobs, o.large_mib).await?;
    let bytes: usize = large.iter().map(|b| b.len).sum();
    let repo = "bench/large";
    eprintln!("large blobs: pushing");
    let push = turns
        .both(servers, async |reg| {
            let started = Instant::now();
            for blob in &large {
                blobs::push_file(client, &reg.url, repo, &blob.path, blob.len, &blob.digest)
                    .await
                    .with_context(|| format!("{}: pushing large blob {}", reg.name, blob.digest))?;
            }
            Ok(started.elapsed())
        })
        .await?;
    eprintln!("large blobs: pulling");
    // One buffer for both, written to before the clock starts (zeros would be mapped
    // lazily), so that neither pays for faulting its pages in.
    let mut content = vec![1u8; o.large_mib << 20];
    let pull = turns
        .both(servers, async |reg| {
            let mut elapsed = Duration::ZERO;
            for blob in &large {
                let started = Instant::now();
                blobs::pull_into(client, &reg.url, repo, &blob.digest, &mut content)
                    .await
                    .with_context(|| format!("{}: pulling large blob {}", reg.name, blob.digest))?;
                elapsed += started.elapsed();
                if berth_oci::Digest::sha256(&content) != blob.digest {
                    bail!(
                        "{}: large blob {} came back different",
                        reg.name,
                        blob.digest
                    );
                }
            }
            Ok(elapsed)
        })
        .await?;
    let peak_rss = Pair {
        subject: &servers.subject,
        peer: &servers.peer,
    }
    .map(|reg| {
        reg.peak_rss_kib()
            .map_or(f64::NAN, |kib| kib as f64 / 1024.0)
    });

    let megabytes_per_second = |elapsed: Duration| bytes as f64 / 1e6 / elapsed.as_secs_f64();
    let mut section = Section::new(format!(
        "large blobs: {} x {} MiB, one at a time, POST then PUT streamed from a file",
        o.large_blobs, o.large_mib
    ));
    section.row(Row::throughput(
        "push",
        "MB/s",
        push.map(megabytes_per_second),
        Some(Direction::Push),
    ));
    section.row(Row::throughput(
        "pull",
        "MB/s",
        pull.map(megabytes_per_second),
        Some(Direction::Pull),
    ));
    section.row(Row::cost("server peak RSS (VmHWM)", "MiB", peak_rss, None));
    section.note("every pulled blob matched its sha256 (checked outside the timed part)");
    for blob in &large {
        tokio::fs::remove_file(&blob.path).await?;
    }
    Ok(section)
}

/// Workload 4: skopeo copies of a busybox image with random layers from an OCI layout to a
/// new repository, and back into a new layout; median wall-clock time per copy.
async fn skopeo_copies(
    o: &Options,
    work: &Path,
    servers: &Pair<Registry>,
    turns: &mut Turns,
) -> anyhow::Result<Section> {
    eprintln!("skopeo: building the image");
    let layout = content::image_layout(work, o.image_mib, o.image_layers).await?;
    let source = layout.reference();
    let mut skopeo = Skopeo::new(work).await?;
    let pulled = |reg: &Registry, label: &str| work.join(format!("pulled-{}-{label}", reg.name));

    eprintln!("skopeo: warming up");
    turns
        .both(servers, async |reg| {
            skopeo.push(&source, reg, "bench/warmup", "w").await?;
            let dest = pulled(reg, "warmup");
            skopeo.pull(reg, "bench/warmup", "w", &dest).await?;
            tokio::fs::remove_dir_all(&dest).await?;
            Ok(())
        })
        .await?;
    eprintln!("skopeo: copying, {} times each way", o.skopeo_runs);
    let mut pushes = Pair {
        subject: Vec::new(),
        peer: Vec::new(),
    };
    for run in 0..o.skopeo_runs {
        let repo = format!("bench/img-{run}");
        let took = turns
            .both(servers, async |reg| {
                skopeo.push(&source, reg, &repo, &run.to_string()).await
            })
            .await?;
        pushes.subject.push(took.subject.as_secs_f64());
        pushes.peer.push(took.peer.as_secs_f64());
    }
    let mut pulls = Pair {
        subject: Vec::new(),
        peer: Vec::new(),
    };
    for run in 0..o.skopeo_runs {
        let repo = format!("bench/img-{run}");
        let took = turns
            .both(servers, async |reg| {
                let dest = pulled(reg, &run.to_string());
                let took = skopeo.pull(reg, &repo, &run.to_string(), &dest).await?;
                tokio::fs::remove_dir_all(&dest).await?;
                Ok(took)
            })
            .await?;
        pulls.subject.push(took.subject.as_secs_f64());
        pulls.peer.push(took.peer.as_secs_f64());
    }

    let mut section = Section::new(format!(
        "skopeo copy: busybox + {} MiB in {} random layers, each run a new repo, median of {}",
        o.image_mib, o.image_layers, o.skopeo_runs
    ));
    section.row(Row::cost(
        "push oci: -> docker://",
        "s",
        pushes.map(median),
        Some(Direction::Push),
    ));
    section.row(Row::cost(
        "pull docker:// -> new oci:",
        "s",
        pulls.map(median),
        Some(Direction::Pull),
    ));
    Ok(section)
}
