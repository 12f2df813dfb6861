//! Online garbage collection: retention, untagged manifests, unreferenced blobs, orphaned
//! files and abandoned uploads, while pushes and pulls go on.
//!
//! berth counts references instead of marking: every manifest record adds a `refs` entry
//! for each blob and manifest it references (and itself) in the same transaction that
//! stores it, so "unreferenced" is a lookup, not a walk over every manifest. A blob goes
//! when it has no reference, no pin, and no record or repository link younger than the
//! grace period; the decision is re-checked inside the transaction that removes the
//! record, and redb serialises that with every push. Files go afterwards, each only if it
//! still has no record, checked under its digest's lock (`locks.rs`), which a push holds
//! while it installs a file and records it: so a push never records content whose file is
//! being deleted. A crash between a record's removal and its file's leaves an orphaned file,
//! which the next collection removes the same way.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_oci::Digest;

use serde::{Deserialize, Serialize};

use crate::api::Registry;
use crate::locks::stripe;
use crate::metadata::{BlobCandidate, MetadataError};
use crate::retention::Expiry;
use crate::storage::StorageError;

/// Blob records removed per transaction: large enough to amortise a commit over many
/// removals, small enough that a push's transaction waits only milliseconds behind one.
const SWEEP_BATCH: usize = 256;

/// Pause between file groups while pushes are committing content.
const GROUP_PAUSE: Duration = Duration::from_millis(1);

/// Files checked and deleted under one hold of their stripes' locks.
const FILE_GROUP: usize = 16;

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Another collection is running.
    #[error("a garbage collection is already running")]
    Busy,
    /// Metadata failed.
    #[error("{0}")]
    Metadata(#[from] MetadataError),
    /// Storage failed.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// A worker thread failed.
    #[error("garbage collection worker: {0}")]
    Worker(String),
}

/// What to collect.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// Report what would go, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Also delete manifests that have had no tag for the grace period.
    #[serde(default)]
    pub delete_untagged: bool,
}

/// An untagged manifest that was (or would be) deleted.
#[derive(Debug, Clone, Serialize)]
pub struct UntaggedManifest {
    /// Its repository.
    pub repository: String,
    /// Its digest.
    pub digest: String,
    /// Which setting let it go.
    pub reason: String,
}

/// What a collection did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Content younger than this many seconds was kept.
    pub grace_seconds: u64,
    /// Tags retention let go.
    pub expired_tags: Vec<Expiry>,
    /// Untagged manifests deleted.
    pub untagged_manifests: Vec<UntaggedManifest>,
    /// Unreferenced blobs removed.
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Files with no record (left by crashes or refused pushes) removed.
    pub orphan_files: u64,
    /// Their bytes.
    pub orphan_bytes: u64,
    /// Abandoned upload sessions removed.
    pub uploads: u64,
    /// Pinned digests, all kept.
    pub pinned: u64,
    /// How long the collection took.
    pub seconds: f64,
    /// Seconds spent in each phase: tags, scan, sweep, orphans, uploads.
    pub phases: BTreeMap<&'static str, f64>,
}

impl GcReport {
    /// Bytes freed (or that would be).
    pub fn bytes(&self) -> u64 {
        self.blob_bytes + self.orphan_bytes
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn meta<T: Send + 'static>(
    registry: &Registry,
    f: impl FnOnce(&crate::metadata::Metadata) -> Result<T, MetadataError> + Send + 'static,
) -> Result<T, GcError> {
    registry
        .meta
        .off_thread(f)
        .await
        .map_err(|e| GcError::Worker(e.to_string()))?
        .map_err(GcError::from)
}

/// Runs one collection.
pub async fn collect(registry: &Registry, request: GcRequest) -> Result<GcReport, GcError> {
    let _running = registry.gc_running.try_lock().map_err(|_| GcError::Busy)?;
    let started = Instant::now();
    let policy = &registry.policy;
    let grace = policy.gc.grace;
    let cutoff = now().saturating_sub(grace.as_secs());
    let mut report = GcReport {
        dry_run: request.dry_run,
        grace_seconds: grace.as_secs(),
        ..GcReport::default()
    };
    registry.flush_pulls().await;
    report.pinned = meta(registry, |m| m.pins()).await?.len() as u64;

    // 1. Retention rules and untagged manifests, repository by repository.
    for repo in meta(registry, |m| m.all_repositories()).await? {
        let rule = policy
            .retention
            .iter()
            .find(|r| r.applies_to(&repo))
            .cloned();
        if let Some(rule) = &rule {
            let r = repo.clone();
            let tags = meta(registry, move |m| m.tag_infos(&r)).await?;
            for expiry in rule.expired(&repo, &tags, now()) {
                let gone = request.dry_run || {
                    let (r, t) = (repo.clone(), expiry.tag.clone());
                    let d = expiry
                        .digest
                        .parse()
                        .map_err(|e| GcError::Worker(format!("{e}")))?;
                    meta(registry, move |m| m.delete_tag_if(&r, &t, &d)).await?
                };
                if gone {
                    tracing::info!(
                        repo,
                        tag = expiry.tag,
                        reason = expiry.reason,
                        "tag expired"
                    );
                    report.expired_tags.push(expiry);
                }
            }
        }
        let untagged_after = match (
            rule.and_then(|r| r.delete_untagged_after),
            request.delete_untagged,
        ) {
            (Some(age), true) => Some((age.min(grace), "untagged (delete_untagged)")),
            (Some(age), false) => Some((age, "untagged longer than the retention rule allows")),
            (None, true) => Some((grace, "untagged (delete_untagged)")),
            (None, false) => None,
        };
        if let Some((age, reason)) = untagged_after {
            let untagged_cutoff = now().saturating_sub(age.as_secs());
            let (r, dry) = (repo.clone(), request.dry_run);
            let removed = meta(registry, move |m| {
                m.remove_untagged(&r, untagged_cutoff, dry)
            })
            .await?;
            for digest in removed {
                tracing::info!(repo, %digest, reason, "untagged manifest deleted");
                report.untagged_manifests.push(UntaggedManifest {
                    repository: repo.clone(),
                    digest: digest.to_string(),
                    reason: reason.to_owned(),
                });
            }
        }
    }

    let mut phase = Instant::now();
    let mut lap = |report: &mut GcReport, name: &'static str| {
        report.phases.insert(name, phase.elapsed().as_secs_f64());
        phase = Instant::now();
    };
    lap(&mut report, "tags");

    // 2. Unreferenced blobs.
    let candidates = meta(registry, move |m| m.unreferenced_blobs(cutoff)).await?;
    lap(&mut report, "scan");
    if request.dry_run {
        report.blobs = candidates.len() as u64;
        report.blob_bytes = candidates.iter().map(|c| c.size).sum();
    } else {
        for batch in candidates.chunks(SWEEP_BATCH) {
            let removed = sweep(registry, batch.to_vec(), cutoff).await?;
            report.blobs += removed.len() as u64;
            report.blob_bytes += removed.iter().map(|c| c.size).sum::<u64>();
        }
    }

    lap(&mut report, "sweep");

    // 3. Files with no record, older than the grace period.
    let stored = registry.store.list_blobs().await?;
    let old: Vec<_> = stored
        .into_iter()
        .filter(|b| b.age >= grace.as_secs())
        .collect();
    for batch in old.chunks(1024) {
        let digests: Vec<_> = batch.iter().map(|b| b.digest.clone()).collect();
        let known = meta(registry, move |m| m.known_blobs(&digests)).await?;
        let orphans: Vec<_> = batch
            .iter()
            .zip(known)
            .filter(|(_, known)| !known)
            .map(|(b, _)| b.clone())
            .collect();
        if orphans.is_empty() {
            continue;
        }
        if request.dry_run {
            report.orphan_files += orphans.len() as u64;
            report.orphan_bytes += orphans.iter().map(|b| b.size).sum::<u64>();
            continue;
        }
        let removed = delete_unrecorded(
            registry,
            &orphans.iter().map(|b| b.digest.clone()).collect::<Vec<_>>(),
        )
        .await?;
        for orphan in orphans.iter().filter(|o| removed.contains(&o.digest)) {
            report.orphan_files += 1;
            report.orphan_bytes += orphan.size;
        }
    }

    lap(&mut report, "orphans");

    // 4. Abandoned uploads.
    let max_age = policy.gc.upload_max_age.as_secs();
    for (id, age) in registry.store.list_uploads().await? {
        if age < max_age {
            continue;
        }
        if !request.dry_run {
            registry.uploads.remove(&id);
            registry.store.delete_upload(&id).await?;
        }
        report.uploads += 1;
    }

    lap(&mut report, "uploads");
    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        dry_run = report.dry_run,
        blobs = report.blobs,
        bytes = report.bytes(),
        tags = report.expired_tags.len(),
        manifests = report.untagged_manifests.len(),
        orphans = report.orphan_files,
        uploads = report.uploads,
        seconds = report.seconds,
        "garbage collection finished"
    );
    registry.metrics.gc_finished(&report);
    Ok(report)
}

/// Removes the records of still-garbage blobs, then their files.
async fn sweep(
    registry: &Registry,
    batch: Vec<BlobCandidate>,
    cutoff: u64,
) -> Result<Vec<BlobCandidate>, GcError> {
    let removed = meta(registry, move |m| m.remove_garbage_blobs(&batch, cutoff)).await?;
    let digests: Vec<_> = removed.iter().map(|b| b.digest.clone()).collect();
    delete_unrecorded(registry, &digests).await?;
    Ok(removed)
}

/// Deletes the files of those `digests` that have no blob record, checked while holding
/// their stripes' locks; returns the digests whose files were deleted. Works in groups of
/// `FILE_GROUP` so that a push waits for at most one group's check and unlinks.
async fn delete_unrecorded(
    registry: &Registry,
    digests: &[Digest],
) -> Result<HashSet<Digest>, GcError> {
    let mut sorted: Vec<Digest> = digests.to_vec();
    sorted.sort_by_key(stripe);
    let mut deleted = HashSet::new();
    for group in sorted.chunks(FILE_GROUP) {
        // Locks are taken in stripe order; pushes hold one at a time: no deadlock.
        let mut stripes: Vec<usize> = group.iter().map(stripe).collect();
        stripes.dedup();
        let mut held = Vec::with_capacity(stripes.len());
        for index in stripes {
            held.push(registry.blob_locks.lock_stripe(index).await);
        }
        let check = group.to_vec();
        let known = meta(registry, move |m| m.known_blobs(&check)).await?;
        let unrecorded: Vec<Digest> = group
            .iter()
            .zip(known)
            .filter(|(_, known)| !known)
            .map(|(d, _)| d.clone())
            .collect();
        registry.store.delete_many(&unrecorded).await?;
        drop(held);
        deleted.extend(unrecorded);
        // Unlinks fill the filesystem journal that every push's fsync must flush: while
        // pushes are committing, give them room between groups.
        if registry.blob_locks.pushes_active() {
            tokio::time::sleep(GROUP_PAUSE).await;
        }
    }
    Ok(deleted)
}

/// Runs a collection every `interval` until the process ends.
pub async fn schedule(registry: std::sync::Arc<Registry>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let request = GcRequest {
            dry_run: false,
            delete_untagged: registry.policy.gc.delete_untagged,
        };
        if let Err(e) = collect(&registry, request).await {
            tracing::warn!(error = %e, "scheduled garbage collection failed");
        }
    }
}
