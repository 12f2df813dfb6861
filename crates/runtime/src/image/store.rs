//! The image store on disk: the index of images, snapshots, and their removal.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use berth_oci::Digest;
use serde::{Deserialize, Serialize};

use super::prune::{select_for_prune, PrunePolicy};
use super::reference::Reference;
use super::{locks, Image, ImageError, PullOptions};
use crate::unix_now;

/// Partial downloads older than this are removed by prune.
const STALE_DOWNLOAD: Duration = Duration::from_secs(24 * 3600);

/// How precisely [`ImageStore::touch`] keeps the last use, in seconds.
const TOUCH_RESOLUTION_SECS: u64 = 60;

/// The node's images, under one root directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// What `remove` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// References removed from an image that other references keep.
    pub untagged: Vec<String>,
    /// Images deleted.
    pub deleted: Vec<Digest>,
    /// Snapshots deleted because no image uses them any more.
    pub snapshots_removed: Vec<Digest>,
}

/// What `prune` did (or would do, for a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Images removed, with their references.
    pub images: Vec<(Digest, Vec<String>)>,
    /// Snapshots removed.
    pub snapshots_removed: Vec<Digest>,
    /// Stale partial downloads removed.
    pub downloads_removed: usize,
    /// Disk usage before, in bytes.
    pub usage_before: u64,
    /// Disk usage after, in bytes.
    pub usage_after: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    pub(crate) images: Vec<Image>,
}

/// The image ids used by containers: `"image_id"` of every `<root>/containers/*/container.json`.
/// Unreadable or malformed files are skipped with a warning.
pub fn in_use_by_containers(root: &Path) -> HashSet<Digest> {
    #[derive(Deserialize)]
    struct Container {
        image_id: Digest,
    }
    let mut ids = HashSet::new();
    let Ok(entries) = fs::read_dir(root.join("containers")) else {
        return ids;
    };
    for entry in entries.flatten() {
        let file = entry.path().join("container.json");
        let Ok(text) = fs::read(&file) else { continue };
        match serde_json::from_slice::<Container>(&text) {
            Ok(container) => {
                ids.insert(container.image_id);
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "container ignored for image use: no valid image_id");
            }
        }
    }
    ids
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, normally `<berth root>/images`.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for dir in ["", "snapshots", "downloads", "locks"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(ImageError::io("creating", &path))?;
        }
        Ok(ImageStore {
            root: root.to_owned(),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Pulls `reference` (`host[:port]/repo[:tag][@digest]`) and records it.
    pub async fn pull(&self, reference: &str, options: &PullOptions) -> Result<Image, ImageError> {
        super::pull::pull(self, reference, options).await
    }

    pub(crate) fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// The snapshot directory of a layer.
    pub fn snapshot_dir(&self, layer: &Digest) -> PathBuf {
        self.root
            .join("snapshots")
            .join(format!("{}-{}", layer.algorithm(), layer.hex()))
    }

    pub(crate) fn download_path(&self, blob: &Digest) -> PathBuf {
        self.root
            .join("downloads")
            .join(format!("{}.partial", blob.hex()))
    }

    pub(crate) fn lock_path(&self, layer: &Digest, kind: &str) -> PathBuf {
        self.root
            .join("locks")
            .join(format!("{}-{}.{kind}", layer.algorithm(), layer.hex()))
    }

    pub(crate) fn read_index(&self) -> Result<IndexFile, ImageError> {
        let path = self.index_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ImageError::Index {
                path: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IndexFile::default()),
            Err(e) => Err(ImageError::io("reading", &path)(e)),
        }
    }

    /// Runs `change` on the index under the store lock and writes the result atomically.
    pub(crate) fn update_index<T>(
        &self,
        change: impl FnOnce(&mut IndexFile) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let _lock = locks::exclusive(&self.root.join(".lock"))?;
        let mut index = self.read_index()?;
        let out = change(&mut index)?;
        self.write_index(&index)?;
        Ok(out)
    }

    fn write_index(&self, index: &IndexFile) -> Result<(), ImageError> {
        let path = self.index_path();
        let temp = self
            .root
            .join(format!(".index.json.tmp-{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(index)
            .map_err(|e| ImageError::Internal(format!("serialising the index: {e}")))?;
        // Root only, like every state file of the node.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(ImageError::io("creating", &temp))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(ImageError::io("writing", &temp))?;
        fs::rename(&temp, &path).map_err(ImageError::io("replacing", &path))?;
        fs::File::open(&self.root)
            .and_then(|dir| dir.sync_all())
            .map_err(ImageError::io("syncing", &self.root))?;
        Ok(())
    }

    /// Every image, most recently pulled first.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut images = self.read_index()?.images;
        images.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(images)
    }

    /// Finds an image by reference, by id (`sha256:…`), or by a unique id prefix of at least
    /// 12 hex digits (with or without `sha256:`).
    pub fn get(&self, reference_or_id: &str) -> Result<Option<Image>, ImageError> {
        let index = self.read_index()?;
        Ok(find(&index.images, reference_or_id)?.map(|i| index.images[i].clone()))
    }

    /// Like `get`, but a missing image is an error.
    fn require(images: &[Image], reference_or_id: &str) -> Result<usize, ImageError> {
        find(images, reference_or_id)?
            .ok_or_else(|| ImageError::UnknownImage(reference_or_id.to_owned()))
    }

    /// The snapshot directories of `image`, bottom layer first (overlayfs lists lowerdirs top
    /// first, so reverse them for `lowerdir=`).
    pub fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image.layers.iter().map(|l| self.snapshot_dir(l)).collect()
    }

    /// Records that a container was just created from image `id`.
    pub fn touch(&self, id: &Digest) -> Result<(), ImageError> {
        // Last use is kept to the minute: starting many containers of one image rewrites
        // (and syncs) the index once, not once per container.
        let recent = unix_now().saturating_sub(TOUCH_RESOLUTION_SECS);
        if self
            .read_index()?
            .images
            .iter()
            .any(|i| &i.id == id && i.last_used >= recent)
        {
            return Ok(());
        }
        self.update_index(|index| {
            let image = index
                .images
                .iter_mut()
                .find(|i| &i.id == id)
                .ok_or_else(|| ImageError::UnknownImage(id.to_string()))?;
            image.last_used = unix_now();
            Ok(())
        })
    }

    /// Pins or unpins an image; pinned images are never pruned or removed.
    pub fn pin(&self, reference_or_id: &str, pinned: bool) -> Result<Image, ImageError> {
        self.update_index(|index| {
            let i = Self::require(&index.images, reference_or_id)?;
            index.images[i].pinned = pinned;
            Ok(index.images[i].clone())
        })
    }

    /// Removes a reference; when it is the image's last one (or the image is named by id),
    /// deletes the image, unless a container uses it or it is pinned. Then removes snapshots
    /// no image uses.
    pub fn remove(
        &self,
        reference_or_id: &str,
        in_use: &HashSet<Digest>,
    ) -> Result<RemoveReport, ImageError> {
        let mut report = self.update_index(|index| {
            let i = Self::require(&index.images, reference_or_id)?;
            let canonical = reference_or_id
                .parse::<Reference>()
                .ok()
                .map(|r| r.to_string())
                .filter(|r| index.images[i].references.contains(r));
            let mut report = RemoveReport::default();
            let image = &mut index.images[i];
            if let Some(reference) = canonical {
                if image.references.len() > 1 {
                    image.references.retain(|r| r != &reference);
                    report.untagged.push(reference);
                    return Ok(report);
                }
            }
            if in_use.contains(&image.id) {
                return Err(ImageError::InUse(reference_or_id.to_owned()));
            }
            if image.pinned {
                return Err(ImageError::Pinned(reference_or_id.to_owned()));
            }
            report.deleted.push(image.id.clone());
            index.images.remove(i);
            Ok(report)
        })?;
        if !report.deleted.is_empty() {
            report.snapshots_removed = self.remove_unused_snapshots(None)?;
        }
        Ok(report)
    }

    /// Removes the images `policy` selects, then unused snapshots and stale downloads. With
    /// `dry_run` only reports what would go.
    pub fn prune_with(
        &self,
        policy: &PrunePolicy,
        in_use: &HashSet<Digest>,
        dry_run: bool,
    ) -> Result<PruneReport, ImageError> {
        let usage_before = self.disk_usage()?;
        let now = unix_now();
        let mut report = PruneReport {
            usage_before,
            ..PruneReport::default()
        };
        if dry_run {
            let images = self.read_index()?.images;
            let ids = select_for_prune(&images, policy, in_use, now, usage_before);
            report.images = images
                .into_iter()
                .filter(|i| ids.contains(&i.id))
                .map(|i| (i.id, i.references))
                .collect();
            report.usage_after = usage_before;
            return Ok(report);
        }
        report.images = self.update_index(|index| {
            // Selected under the lock, so a concurrent pull or touch is seen.
            let ids = select_for_prune(&index.images, policy, in_use, now, usage_before);
            let (gone, kept) = std::mem::take(&mut index.images)
                .into_iter()
                .partition::<Vec<_>, _>(|i| ids.contains(&i.id));
            index.images = kept;
            Ok(gone.into_iter().map(|i| (i.id, i.references)).collect())
        })?;
        report.snapshots_removed = self.remove_unused_snapshots(None)?;
        report.downloads_removed = self.remove_stale_downloads(now)?;
        report.usage_after = self.disk_usage()?;
        Ok(report)
    }

    /// Removes the images `policy` selects, then unused snapshots and stale downloads.
    pub fn prune(
        &self,
        policy: &PrunePolicy,
        in_use: &HashSet<Digest>,
    ) -> Result<PruneReport, ImageError> {
        self.prune_with(policy, in_use, false)
    }

    /// Bytes of regular files under the store (hard links counted once).
    pub fn disk_usage(&self) -> Result<u64, ImageError> {
        let mut seen = HashSet::new();
        tree_size(&self.root, &mut seen).map_err(ImageError::io("measuring", &self.root))
    }

    /// Removes snapshots no image in the index uses (only `only`'s, when given) and leftovers
    /// of crashed unpacks. A snapshot a pull is using (shared `use` lock) is skipped.
    pub(crate) fn remove_unused_snapshots(
        &self,
        only: Option<&[Digest]>,
    ) -> Result<Vec<Digest>, ImageError> {
        let snapshots = self.root.join("snapshots");
        let mut candidates = BTreeSet::new();
        for entry in fs::read_dir(&snapshots)
            .map_err(ImageError::io("listing", &snapshots))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                remove_crashed_leftover(&entry.path(), &name);
                continue;
            }
            let digest = name
                .split_once('-')
                .and_then(|(algo, hex)| format!("{algo}:{hex}").parse::<Digest>().ok());
            match digest {
                Some(d) if only.is_none_or(|only| only.contains(&d)) => {
                    candidates.insert(d);
                }
                Some(_) => {}
                None => {
                    tracing::warn!(path = %entry.path().display(), "unexpected entry in snapshots left alone")
                }
            }
        }
        let mut removed = Vec::new();
        for layer in candidates {
            let Some(_use_lock) = locks::try_exclusive(&self.lock_path(&layer, "use"))? else {
                continue;
            };
            // Checked under the index lock so no pull records an image using it meanwhile;
            // a pull that has not recorded yet holds the use lock.
            let _index_lock = locks::exclusive(&self.root.join(".lock"))?;
            let used = self
                .read_index()?
                .images
                .iter()
                .any(|i| i.layers.contains(&layer));
            if used {
                continue;
            }
            remove_snapshot(&self.snapshot_dir(&layer))?;
            tracing::debug!(%layer, "snapshot removed");
            removed.push(layer);
        }
        Ok(removed)
    }

    fn remove_stale_downloads(&self, now: u64) -> Result<usize, ImageError> {
        let downloads = self.root.join("downloads");
        let mut removed = 0;
        for entry in fs::read_dir(&downloads)
            .map_err(ImageError::io("listing", &downloads))?
            .flatten()
        {
            let modified = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or_default();
            if now.saturating_sub(modified) >= STALE_DOWNLOAD.as_secs()
                && fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Index of the image `reference_or_id` names.
fn find(images: &[Image], reference_or_id: &str) -> Result<Option<usize>, ImageError> {
    if let Ok(id) = reference_or_id.parse::<Digest>() {
        return Ok(images.iter().position(|i| i.id == id));
    }
    let prefix = reference_or_id
        .strip_prefix("sha256:")
        .unwrap_or(reference_or_id);
    if prefix.len() >= 12 && prefix.len() < 128 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        let matches: Vec<usize> = images
            .iter()
            .enumerate()
            .filter(|(_, i)| i.id.hex().starts_with(prefix))
            .map(|(n, _)| n)
            .collect();
        match matches.as_slice() {
            [] => {}
            [one] => return Ok(Some(*one)),
            _ => return Err(ImageError::AmbiguousId(reference_or_id.to_owned())),
        }
    }
    let reference: Reference = reference_or_id.parse()?;
    let canonical = reference.to_string();
    if let Some(i) = images
        .iter()
        .position(|i| i.references.contains(&canonical))
    {
        return Ok(Some(i));
    }
    Ok(reference
        .digest
        .and_then(|d| images.iter().position(|i| i.id == d)))
}

/// Renames a snapshot to a hidden name, then deletes it: a crash midway leaves a hidden
/// leftover, never a partial snapshot under its real name.
fn remove_snapshot(dir: &Path) -> Result<(), ImageError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let doomed = dir.with_file_name(format!(".{name}.removing-{}", std::process::id()));
    match fs::rename(dir, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io("removing", dir)(e)),
    }
    force_remove(&doomed).map_err(ImageError::io("removing", &doomed))
}

/// Removes `.X.unpacking-PID` / `.X.removing-PID` directories whose process is gone.
fn remove_crashed_leftover(path: &Path, name: &str) {
    let pid = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
    let Some(pid) = pid else { return };
    if Path::new(&format!("/proc/{pid}")).exists() {
        return;
    }
    if let Err(e) = force_remove(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover of a crashed unpack");
    }
}

/// `rm -rf` of a snapshot or a leftover of one: relative to directory handles, never
/// following a link the image left, read-only directories (layers hold 0555 ones) opened
/// up on the way.
pub(crate) fn force_remove(path: &Path) -> std::io::Result<()> {
    match berth_oci::beneath::remove_tree(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Bytes of regular files under `path`, hard links counted once.
pub(crate) fn tree_size(path: &Path, seen: &mut HashSet<(u64, u64)>) -> std::io::Result<u64> {
    let meta = match path.symlink_metadata() {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if meta.is_file() {
        if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
            return Ok(0);
        }
        return Ok(meta.len());
    }
    if !meta.is_dir() {
        return Ok(0);
    }
    let mut total = 0;
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        total += tree_size(&entry.path(), seen)?;
    }
    Ok(total)
}
