//! `berth pull`, `berth images` and `berth image …`: the node's image store.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use berth_oci::Digest;
use berth_runtime::image::{
    default_auth_files, in_use_by_containers, Credentials, Image, ImageStore, LayerOutcome,
    PrunePolicy, PullOptions, PullProgress,
};
use berth_units::{human_bytes, ByteSize, HumanDuration};
use clap::{Args, Subcommand};

use crate::config::ImageCleanup;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Args)]
pub struct PullArgs {
    /// Registry credentials as user:password (else the auth file's entry for the registry:
    /// $REGISTRY_AUTH_FILE, then ~/.docker/config.json).
    #[arg(
        long,
        env = "BERTH_REGISTRY_CREDS",
        value_name = "USER:PASS",
        hide_env_values = true
    )]
    creds: Option<Credentials>,
    /// Use plain HTTP for a registry that is not on a loopback address.
    #[arg(long)]
    insecure: bool,
    /// No progress output; only the image id.
    #[arg(long, short)]
    quiet: bool,
    /// The image: host[:port]/repository[:tag][@digest].
    reference: String,
}

#[derive(Args)]
pub struct ImagesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Remove images no container uses: unused ones (--all), ones unused for a while
    /// (--unused-for), or least recently used ones while disk usage is above --high (down to
    /// --low). Pinned images and images containers use are always kept. Afterwards snapshots no
    /// image uses and day-old partial downloads go too.
    Prune(PruneArgs),
    /// Remove references; an image goes with its last reference (or when named by id).
    Rm(RmArgs),
    /// Keep an image whatever prune's rules say.
    Pin(PinArgs),
    /// Let prune remove an image again.
    Unpin(PinArgs),
}

#[derive(Args)]
pub struct PruneArgs {
    /// Remove every image no container uses and not pinned.
    #[arg(long)]
    all: bool,
    /// Remove images not used (nor pulled) for this long, e.g. 7d, 12h.
    #[arg(long, value_name = "DURATION")]
    unused_for: Option<HumanDuration>,
    /// When the store uses more than this (e.g. 10GiB), remove least recently used images …
    #[arg(long, value_name = "SIZE")]
    high: Option<ByteSize>,
    /// … until it uses at most this (default: --high).
    #[arg(long, value_name = "SIZE", requires = "high")]
    low: Option<ByteSize>,
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
pub struct RmArgs {
    /// References or ids (unique prefixes of at least 12 hex digits work).
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(Args)]
pub struct PinArgs {
    /// Reference or id.
    image: String,
}

fn open(root: &Path) -> anyhow::Result<ImageStore> {
    berth_runtime::private_dir(root).with_context(|| format!("creating {}", root.display()))?;
    let images = root.join("images");
    ImageStore::open(&images)
        .context("opening the image store (choose another node root with --root or BERTH_ROOT)")
}

pub fn pull(args: PullArgs, root: &Path, cleanup: &ImageCleanup) -> anyhow::Result<()> {
    let store = open(root)?;
    let image = pull_into(
        &store,
        root,
        &args.reference,
        args.creds,
        args.insecure,
        args.quiet,
    )?;
    auto_prune(&store, root, cleanup, &image.id);
    println!("{}", image.id);
    Ok(())
}

/// The configured automatic cleanup, after pulling `pulled` grew the store (that image is
/// kept: it was just asked for). A failure is reported, not fatal: the pull succeeded.
pub fn auto_prune(store: &ImageStore, root: &Path, cleanup: &ImageCleanup, pulled: &Digest) {
    let Some(policy) = cleanup.policy() else {
        return;
    };
    let mut keep = in_use_by_containers(root);
    keep.insert(pulled.clone());
    match store.prune(&policy, &keep) {
        Ok(report) => {
            for (id, references) in &report.images {
                tracing::info!(image = %id, ?references, "automatic cleanup removed an unused image");
            }
        }
        Err(e) => tracing::warn!(error = %e, "automatic image cleanup failed"),
    }
}

/// `berth run` of an image the node does not have yet: pulled with progress on stderr.
pub fn pull_for_run(
    store: &ImageStore,
    root: &Path,
    reference: &str,
    cleanup: &ImageCleanup,
) -> anyhow::Result<Image> {
    let credentials = std::env::var("BERTH_REGISTRY_CREDS")
        .ok()
        .map(|c| c.parse::<Credentials>())
        .transpose()
        .map_err(|e| anyhow::anyhow!("BERTH_REGISTRY_CREDS: {e}"))?;
    let image = pull_into(store, root, reference, credentials, false, false)?;
    auto_prune(store, root, cleanup, &image.id);
    Ok(image)
}

/// The auth files a pull on this host consults: the user's own (`$REGISTRY_AUTH_FILE`,
/// `~/.docker/config.json`), then berth server's admin credential for its registry, which
/// only root can read.
pub(crate) fn auth_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut files = default_auth_files();
    files.push(root.join(berth_server::REGISTRY_AUTH_FILE));
    files
}

fn pull_into(
    store: &ImageStore,
    root: &Path,
    reference: &str,
    credentials: Option<Credentials>,
    insecure: bool,
    quiet: bool,
) -> anyhow::Result<Image> {
    let bars = (!quiet && std::io::stderr().is_terminal()).then(|| Arc::new(Bars::default()));
    let progress: Option<Arc<dyn PullProgress>> = match &bars {
        Some(bars) => Some(bars.clone()),
        None if quiet => None,
        None => Some(Arc::new(Lines)),
    };
    let options = PullOptions {
        credentials,
        auth_files: auth_files(root),
        insecure,
        progress,
        ..PullOptions::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let image = runtime.block_on(store.pull(reference, &options));
    if bars.is_some_and(|bars| bars.drawn.load(Ordering::Relaxed)) {
        // indicatif leaves the cursor at the end of the last bar.
        eprintln!();
    }
    Ok(image?)
}

fn short(digest: &Digest) -> &str {
    &digest.hex()[..12]
}

/// Progress bars on stderr, one per layer.
#[derive(Default)]
struct Bars {
    multi: MultiProgress,
    drawn: AtomicBool,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Bars {
    fn bar(&self, digest: &Digest) -> Option<ProgressBar> {
        self.bars.lock().ok()?.get(digest).cloned()
    }
}

impl PullProgress for Bars {
    fn resolved(&self, reference: &str, id: &Digest, layers: &[(Digest, u64)]) {
        self.multi.set_draw_target(ProgressDrawTarget::stderr());
        self.drawn.store(true, Ordering::Relaxed);
        let _ = self
            .multi
            .println(format!("{reference}: image {}", short(id)));
        let style =
            ProgressStyle::with_template("{prefix} {bar:30} {bytes:>10}/{total_bytes:10} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        if let Ok(mut bars) = self.bars.lock() {
            for (digest, size) in layers {
                let bar = self.multi.add(ProgressBar::new(*size));
                bar.set_style(style.clone());
                bar.set_prefix(short(digest).to_owned());
                bar.set_message("waiting");
                bars.insert(digest.clone(), bar);
            }
        }
    }

    fn layer_started(&self, digest: &Digest, total: u64, already: u64) {
        if let Some(bar) = self.bar(digest) {
            bar.set_length(total);
            bar.set_position(already);
            bar.set_message(if already > 0 {
                "resuming"
            } else {
                "downloading"
            });
        }
    }

    fn layer_progress(&self, digest: &Digest, bytes: u64) {
        if let Some(bar) = self.bar(digest) {
            bar.inc(bytes);
        }
    }

    fn layer_done(&self, digest: &Digest, outcome: LayerOutcome) {
        if let Some(bar) = self.bar(digest) {
            let message = match outcome {
                LayerOutcome::Pulled => "done",
                LayerOutcome::AlreadyPresent => "already present",
            };
            if let Some(length) = bar.length() {
                bar.set_position(length);
            }
            bar.finish_with_message(message);
        }
    }
}

/// One line per layer, for logs.
struct Lines;

impl PullProgress for Lines {
    fn resolved(&self, reference: &str, id: &Digest, layers: &[(Digest, u64)]) {
        eprintln!("{reference}: image {}, {} layers", short(id), layers.len());
    }

    fn layer_started(&self, digest: &Digest, total: u64, already: u64) {
        if already > 0 {
            eprintln!(
                "{}: resuming at {} of {}",
                short(digest),
                human_bytes(already),
                human_bytes(total)
            );
        }
    }

    fn layer_done(&self, digest: &Digest, outcome: LayerOutcome) {
        match outcome {
            LayerOutcome::Pulled => eprintln!("{}: pulled", short(digest)),
            LayerOutcome::AlreadyPresent => eprintln!("{}: already present", short(digest)),
        }
    }
}

/// "3m ago", "2d ago", "never".
fn ago(now: u64, then: u64) -> String {
    if then == 0 {
        return "never".to_owned();
    }
    format!(
        "{} ago",
        crate::container_cmd::age(now.saturating_sub(then))
    )
}

pub fn images(args: ImagesArgs, root: &Path) -> anyhow::Result<()> {
    let store = open(root)?;
    let images = store.list()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(());
    }
    print!("{}", table(&images, berth_runtime::unix_now()));
    Ok(())
}

fn table(images: &[Image], now: u64) -> String {
    let mut rows = vec![[
        "REFERENCE".to_owned(),
        "ID".to_owned(),
        "SIZE".to_owned(),
        "LAST USED".to_owned(),
        "PINNED".to_owned(),
    ]];
    for image in images {
        let references: Vec<&str> = if image.references.is_empty() {
            vec!["<none>"]
        } else {
            image.references.iter().map(String::as_str).collect()
        };
        for reference in references {
            rows.push([
                reference.to_owned(),
                short(&image.id).to_owned(),
                human_bytes(image.size),
                ago(now, image.last_used),
                if image.pinned { "yes" } else { "" }.to_owned(),
            ]);
        }
    }
    let mut widths = [0; 5];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn run(cmd: ImageCommand, root: &Path) -> anyhow::Result<()> {
    let store = open(root)?;
    match cmd {
        ImageCommand::Prune(args) => {
            let policy = PrunePolicy {
                all_unused: args.all,
                unused_for: args.unused_for.map(|d| d.0),
                high_water: args.high.map(|s| s.0),
                low_water: args.low.map(|s| s.0),
            };
            let in_use = in_use_by_containers(root);
            let report = store.prune_with(&policy, &in_use, args.dry_run)?;
            let verb = if args.dry_run {
                "would remove"
            } else {
                "removed"
            };
            for (id, references) in &report.images {
                let name = if references.is_empty() {
                    short(id).to_owned()
                } else {
                    references.join(", ")
                };
                println!("{verb} {name} ({})", short(id));
            }
            if args.dry_run {
                println!(
                    "{} images would go; the store uses {}",
                    report.images.len(),
                    human_bytes(report.usage_before)
                );
            } else {
                println!(
                    "removed {} images, {} snapshots, {} stale downloads; {} freed, the store uses {}",
                    report.images.len(),
                    report.snapshots_removed.len(),
                    report.downloads_removed,
                    human_bytes(report.usage_before.saturating_sub(report.usage_after)),
                    human_bytes(report.usage_after)
                );
            }
        }
        ImageCommand::Rm(args) => {
            let in_use = in_use_by_containers(root);
            let mut failed = 0;
            for image in &args.images {
                match store.remove(image, &in_use) {
                    Ok(report) => {
                        for reference in &report.untagged {
                            println!("untagged {reference}");
                        }
                        for id in &report.deleted {
                            println!("deleted {id}");
                        }
                    }
                    Err(e) => {
                        eprintln!("berth: {e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} images not removed", args.images.len());
            }
        }
        ImageCommand::Pin(args) => {
            let image = store.pin(&args.image, true)?;
            println!("pinned {}", image.id);
        }
        ImageCommand::Unpin(args) => {
            let image = store.pin(&args.image, false)?;
            println!("unpinned {}", image.id);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(ago(1000, 0), "never");
        assert_eq!(ago(1000, 990), "10s ago");
        assert_eq!(ago(1000, 1000 - 180), "3m ago");
        assert_eq!(ago(100_000, 100_000 - 7200), "2h ago");
        assert_eq!(ago(1_000_000, 1_000_000 - 3 * 86_400), "3d ago");
    }

    #[test]
    fn table_has_a_row_per_reference() {
        let image: Image = serde_json::from_value(serde_json::json!({
            "id": Digest::sha256(b"x"), "references": ["localhost/a:v1", "localhost/a:latest"],
            "config_digest": Digest::sha256(b"c"), "config": berth_runtime::image::ImageConfig::default(),
            "layers": [], "layer_sizes": [], "size": 3 * 1024 * 1024, "created": 10,
            "last_used": 0, "pinned": true
        }))
        .expect("an image record");
        let mut dangling = image.clone();
        dangling.references.clear();
        dangling.pinned = false;
        dangling.last_used = 940;
        let text = table(&[image, dangling], 1000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("REFERENCE") && lines[0].ends_with("PINNED"));
        assert!(lines[1].starts_with("localhost/a:v1") && lines[1].contains("3.0 MiB"));
        assert!(
            lines[1].contains("never") && lines[1].ends_with("yes"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("<none>") && lines[3].ends_with("1m ago"),
            "{text}"
        );
    }
}
