//! `berth-bench runtime`: berth's node against the tools it stands in for, on this host, in
//! one run. Container start latency against bare runc on an equivalent bundle (berth's own
//! `config.json`) and against podman (runc too), and pull + unpack throughput against
//! `skopeo copy` + `umoci unpack`, all from one berth registry on loopback.

mod berth;
mod image;
mod podman;
mod process;
mod runc;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::Command;

use self::berth::{BerthNode, Network};
use self::podman::Podman;
use self::runc::RuncBundle;
use crate::servers::Registry;

/// What to run: counts, sizes and where.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// berth binary to measure (the registry is served by it too).
    #[arg(long, default_value = "target/release/berth")]
    berth_bin: PathBuf,
    /// Where to make the temp dir that holds the registry, the node roots, podman's storage
    /// and the pulled images; it is removed at the end.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Timed container starts per command (after one warm-up each).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Pause after each container is removed, so that what its removal set off in the
    /// background is not timed as the next start.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pause_ms: u64,
    /// Timed pulls per tool (after one warm-up each).
    #[arg(long, default_value_t = 5)]
    pull_runs: usize,
    /// Text files in the pull image, in MiB (on top of busybox).
    #[arg(long, default_value_t = 160)]
    image_mib: usize,
    /// gzip layers the text files of the pull image are split into.
    #[arg(long, default_value_t = 4)]
    image_layers: usize,
    /// A run of seconds with tiny counts, for checking the benchmark itself.
    #[arg(long)]
    quick: bool,
}

impl Options {
    fn resolve(mut self) -> anyhow::Result<Options> {
        if self.quick {
            self.runs = 3;
            self.pull_runs = 1;
            self.image_mib = 16;
        }
        crate::at_least_one(&[
            ("--runs", self.runs),
            ("--pull-runs", self.pull_runs),
            ("--image-mib", self.image_mib),
            ("--image-layers", self.image_layers),
        ])?;
        Ok(self)
    }
}

/// Runs the benchmark.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let o = options.resolve()?;
    if !is_root() {
        bail!("berth-bench runtime starts containers and mounts: run it as root");
    }
    let work = tempfile::Builder::new()
        .prefix("berth-bench-runtime-")
        .tempdir_in(&o.work_dir)
        .with_context(|| format!("making a temp dir in {}", o.work_dir.display()))?;
    let registry = Registry::berth(&o.berth_bin, work.path())?;
    eprintln!(
        "berth registry on {}, everything under {}",
        registry.url,
        work.path().display()
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let busybox = image::push(
        &client,
        &registry.url,
        "bench/busybox",
        "v1",
        &[image::busybox_layer()?],
    )
    .await?;
    println!(
        "{}",
        start_latency(&o, work.path(), &busybox.reference).await?
    );

    eprintln!(
        "pull: generating busybox + {} MiB in {} layers",
        o.image_mib, o.image_layers
    );
    let (mib, count) = (o.image_mib, o.image_layers);
    let layers = tokio::task::spawn_blocking(move || {
        let mut layers = vec![image::busybox_layer()?];
        for i in 0..count {
            let share = mib / count + usize::from(i < mib % count);
            layers.push(image::text_layer(i + 1, share.max(1))?);
        }
        anyhow::Ok(layers)
    })
    .await??;
    let big = image::push(&client, &registry.url, "bench/big", "v1", &layers).await?;
    drop(layers);
    println!("{}", pull_throughput(&o, work.path(), &big).await?);
    Ok(())
}

pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The commands whose start is timed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Starter {
    Runc,
    Berth,
    BerthRunc,
    Podman,
    BerthBridge,
}

impl Starter {
    const ALL: [Starter; 5] = [
        Starter::Runc,
        Starter::Berth,
        Starter::BerthRunc,
        Starter::Podman,
        Starter::BerthBridge,
    ];

    fn label(self) -> &'static str {
        match self {
            Starter::Runc => "runc run -d (berth's config.json, plain rootfs dir)",
            Starter::Berth => "berth run -d --network none (runtime: berth's choice)",
            Starter::BerthRunc => "berth run -d --network none, runtime = \"runc\"",
            Starter::Podman => "podman run -d --network none (runc)",
            Starter::BerthBridge => "berth run -d --network bridge (NOT equivalent: +veth/IPAM)",
        }
    }
}

/// What the starts run against.
struct Starters {
    node: BerthNode,
    podman: Podman,
    runc: RuncBundle,
    reference: String,
    scratch: PathBuf,
}

impl Starters {
    /// Starts one container with `which`, timed, and removes it, untimed.
    async fn start(&mut self, which: Starter) -> anyhow::Result<Duration> {
        let reference = self.reference.as_str();
        let elapsed = match which {
            Starter::Runc => self.runc.start().await?,
            Starter::Berth | Starter::BerthRunc | Starter::BerthBridge => {
                let network = match which {
                    Starter::BerthRunc => Network::NoneRunc,
                    Starter::BerthBridge => Network::Bridge,
                    _ => Network::None,
                };
                let timed = process::timed(
                    self.node
                        .command(network)
                        .args(BerthNode::run_args(network, reference)),
                    &self.scratch,
                    "berth run -d",
                )
                .await?;
                self.node.remove(network, last_line(&timed.stdout)).await?;
                timed.elapsed
            }
            Starter::Podman => {
                let timed = process::timed(
                    self.podman.command().args([
                        "run",
                        "-d",
                        "--network",
                        "none",
                        reference,
                        "sleep",
                        "1000",
                    ]),
                    &self.scratch,
                    "podman run -d",
                )
                .await?;
                self.podman.remove(last_line(&timed.stdout)).await?;
                timed.elapsed
            }
        };
        Ok(elapsed)
    }
}

fn last_line(stdout: &str) -> &str {
    stdout.lines().last().unwrap_or_default().trim()
}

/// Workload 1: container start latency.
async fn start_latency(o: &Options, work: &Path, reference: &str) -> anyhow::Result<String> {
    let scratch = work.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    let node = BerthNode::new(&o.berth_bin, work)?;
    let podman = Podman::new(work)?;
    eprintln!("start: pulling {reference} into berth and podman");
    process::output(
        node.command(Network::None)
            .args(["pull", "--quiet", reference]),
        "berth pull",
    )
    .await?;
    podman.pull(reference).await?;

    eprintln!("start: preparing runc's bundle from a berth container");
    let timed = process::timed(
        node.command(Network::None)
            .args(BerthNode::run_args(Network::None, reference)),
        &scratch,
        "berth run -d",
    )
    .await?;
    let id = last_line(&timed.stdout).to_owned();
    let runc = RuncBundle::prepare(&node.container_dir(&id).await?, work.join("runc")).await;
    node.remove(Network::None, &id).await?;
    let mut starters = Starters {
        node,
        podman,
        runc: runc?,
        reference: reference.to_owned(),
        scratch,
    };
    let pause = Duration::from_millis(o.pause_ms);
    eprintln!("start: warming up");
    for which in Starter::ALL {
        starters.start(which).await?;
        tokio::time::sleep(pause).await;
    }
    eprintln!("start: {} runs each", o.runs);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(o.runs); Starter::ALL.len()];
    for round in 0..o.runs {
        // Taking turns at going first, so that none always follows the same one.
        for k in 0..Starter::ALL.len() {
            let i = (round + k) % Starter::ALL.len();
            samples[i].push(starters.start(Starter::ALL[i]).await?);
            tokio::time::sleep(pause).await;
        }
    }

    let spreads: Vec<Spread> = samples.iter().map(|s| Spread::of(s)).collect();
    let runc = spreads[0].median;
    let mut out = format!(
        "== container start: from launching the command until it returns with `sleep 1000` \
         running; {} runs each after a warm-up, taking turns ==\n",
        o.runs
    );
    let width = Starter::ALL
        .iter()
        .map(|s| s.label().len())
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "{:<width$}  {:>9}  {:>9}  {:>9}  {:>8}",
        "command", "median", "p90", "min", "vs runc"
    );
    for (which, spread) in Starter::ALL.iter().zip(&spreads) {
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>9}  {:>9}  {:>7.2}x",
            which.label(),
            millis(spread.median),
            millis(spread.p90),
            millis(spread.min),
            spread.median / runc,
        );
    }
    let index = |which: Starter| {
        Starter::ALL
            .iter()
            .position(|s| *s == which)
            .map_or(f64::NAN, |i| spreads[i].median)
    };
    let berth = index(Starter::Berth);
    let berth_runc = index(Starter::BerthRunc);
    let podman = index(Starter::Podman);
    let _ = writeln!(
        out,
        "note: \"vs runc\" is median time / runc's median time; > 1 is slower than bare runc"
    );
    let _ = writeln!(
        out,
        "note: issue #4 targets: berth <= 1.20x bare runc: {} ({:.2}x); berth faster than \
         podman: {} ({:.2}x podman's time)",
        if berth / runc <= 1.2 { "met" } else { "MISSED" },
        berth / runc,
        if berth < podman { "met" } else { "MISSED" },
        berth / podman,
    );
    let _ = writeln!(
        out,
        "note: berth's choice here is the runtime `berth info` names (crun in a private mount \
         namespace on hybrid cgroup hosts); with runc configured berth takes {:.2}x bare runc, \
         its own overhead being {} per start",
        berth_runc / runc,
        millis(berth_runc - runc),
    );
    let _ = writeln!(
        out,
        "note: the bridge row also creates a netns, a veth pair and an address lease (bridge {}); \
         runc's and podman's rows have no network at all",
        starters.node.bridge()
    );
    Ok(out)
}

/// Workload 2: pull + unpack of `image` into a fresh store each time.
async fn pull_throughput(
    o: &Options,
    work: &Path,
    image: &image::Pushed,
) -> anyhow::Result<String> {
    let scratch = work.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    let policy = work.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )?;
    let reference = &image.reference;
    let berth_pull = async |run: &str| -> anyhow::Result<Duration> {
        let root = work.join(format!("pull-berth-{run}"));
        settle().await?;
        let timed = process::timed(
            Command::new(&o.berth_bin)
                .arg("--root")
                .arg(&root)
                .args(["pull", "--quiet", reference]),
            &scratch,
            "berth pull",
        )
        .await?;
        remove_tree(&root).await?;
        Ok(timed.elapsed)
    };
    let peer_pull = async |run: &str| -> anyhow::Result<(Duration, Duration)> {
        let layout = work.join(format!("pull-oci-{run}"));
        let bundle = work.join(format!("pull-bundle-{run}"));
        settle().await?;
        let copy = process::timed(
            Command::new("skopeo")
                .arg("--policy")
                .arg(&policy)
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{reference}"))
                .arg(format!("oci:{}:v1", layout.display())),
            &scratch,
            "skopeo copy",
        )
        .await?;
        let unpack = process::timed(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:v1", layout.display()))
                .arg(&bundle),
            &scratch,
            "umoci unpack",
        )
        .await?;
        remove_tree(&layout).await?;
        remove_tree(&bundle).await?;
        Ok((copy.elapsed, unpack.elapsed))
    };

    eprintln!("pull: warming up");
    berth_pull("warmup").await?;
    peer_pull("warmup").await?;
    eprintln!("pull: {} runs each", o.pull_runs);
    let (mut berth, mut copies, mut unpacks, mut peer) = (vec![], vec![], vec![], vec![]);
    for run in 0..o.pull_runs {
        let name = run.to_string();
        let (b, (c, u)) = if run % 2 == 0 {
            let b = berth_pull(&name).await?;
            (b, peer_pull(&name).await?)
        } else {
            let p = peer_pull(&name).await?;
            (berth_pull(&name).await?, p)
        };
        berth.push(b);
        copies.push(c);
        unpacks.push(u);
        peer.push(c + u);
    }

    let mib = image.unpacked_bytes as f64 / f64::from(1 << 20);
    let berth = Spread::of(&berth).median;
    let peer = Spread::of(&peer).median;
    let mut out = format!(
        "== pull + unpack: busybox + {} MiB of text in {} gzip layers ({mib:.1} MiB of tar \
         unpacked, {:.1} MiB compressed), a fresh store each time, median of {} ==\n",
        o.image_mib,
        image.layers,
        image.compressed_bytes as f64 / f64::from(1 << 20),
        o.pull_runs
    );
    let rows = [
        ("berth pull --quiet", berth, Some(mib / berth)),
        ("skopeo copy + umoci unpack", peer, Some(mib / peer)),
        (
            "  of which skopeo copy docker:// -> oci:",
            Spread::of(&copies).median,
            None,
        ),
        ("  of which umoci unpack", Spread::of(&unpacks).median, None),
    ];
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "{:<width$}  {:>8}  {:>8}  {:>9}",
        "command", "median", "MiB/s", "vs skopeo"
    );
    for (label, seconds, rate) in rows {
        let rate_text = rate.map_or(String::new(), |r| format!("{r:.1}"));
        let ratio = rate.map_or(String::new(), |r| format!("{:.2}x", r / (mib / peer)));
        let _ = writeln!(
            out,
            "{label:<width$}  {:>8}  {rate_text:>8}  {ratio:>9}",
            format!("{seconds:.3} s")
        );
    }
    let _ = writeln!(
        out,
        "note: MiB/s is unpacked tar bytes / median time; \"vs skopeo\" > 1 means berth is faster"
    );
    Ok(out)
}

/// Writes back dirty pages, so that one pull's writes are not flushed on the next one's time.
async fn settle() -> anyhow::Result<()> {
    process::output(&mut Command::new("sync"), "sync").await?;
    Ok(())
}

async fn remove_tree(path: &Path) -> anyhow::Result<()> {
    tokio::fs::remove_dir_all(path)
        .await
        .with_context(|| format!("removing {}", path.display()))
}

/// Median, 90th percentile and minimum of some timings, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spread {
    median: f64,
    p90: f64,
    min: f64,
}

impl Spread {
    fn of(samples: &[Duration]) -> Spread {
        let mut sorted: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
        sorted.sort_by(f64::total_cmp);
        Spread {
            median: percentile(&sorted, 0.5),
            p90: percentile(&sorted, 0.9),
            min: sorted.first().copied().unwrap_or(f64::NAN),
        }
    }
}

/// The `p` quantile of sorted values, interpolating between the two nearest.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted {
        [] => f64::NAN,
        [only] => *only,
        _ => {
            let rank = (sorted.len() - 1) as f64 * p;
            let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
        }
    }
}

fn millis(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_interpolate_between_samples() {
        let ms =
            |v: &[u64]| -> Vec<Duration> { v.iter().map(|&m| Duration::from_millis(m)).collect() };
        let s = Spread::of(&ms(&[40, 10, 30, 20]));
        assert!((s.median - 0.025).abs() < 1e-9);
        assert!((s.min - 0.010).abs() < 1e-9);
        assert!((s.p90 - 0.037).abs() < 1e-9);
        let one = Spread::of(&ms(&[7]));
        assert_eq!((one.median, one.p90, one.min), (0.007, 0.007, 0.007));
        assert!(Spread::of(&[]).median.is_nan());
    }

    #[test]
    fn the_last_line_is_the_id() {
        assert_eq!(last_line("warning: x\nabc123\n"), "abc123");
        assert_eq!(last_line(""), "");
    }
}
