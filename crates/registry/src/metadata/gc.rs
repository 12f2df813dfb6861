//! What garbage collection, retention, pins and quotas ask of the metadata. Every decision
//! to remove something is re-checked inside the write transaction that removes it; redb
//! serialises write transactions, so a concurrent push either commits first (and the
//! re-check sees its reference) or after (and finds the content gone, and says so).

use std::collections::{BTreeMap, HashMap, HashSet};

use berth_oci::Digest;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{
    decode, encode, key, now, under, BlobRecord, ManifestRecord, Metadata, MetadataResult,
    TagRecord, BLOBS, BLOB_REPOS, LINKS, MANIFESTS, PINS, REFS, REPOS, TAGS, TAG_PULLS,
};

/// Why content is pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// Who pinned it and why (e.g. "release shop#7").
    pub reason: String,
    /// When (unix seconds).
    pub created: u64,
    /// The program that keeps the pin (like `berth server`, for images a live or
    /// rollback-able release runs): it is not removed without `force`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// What removing a pin did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unpinned {
    /// It was removed.
    Removed,
    /// There was none.
    NotPinned,
    /// It is kept by its owner and was not removed (no `force`).
    Owned(PinRecord),
}

/// The content is pinned and was not removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned(pub PinRecord);

/// A blob garbage collection may remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobCandidate {
    /// The blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// A tag as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    /// The tag.
    pub tag: String,
    /// The manifest it points at.
    pub digest: Digest,
    /// When it was last pushed (unix seconds).
    pub pushed: u64,
    /// When it was last pulled, if ever recorded.
    pub pulled: Option<u64>,
}

/// Space used by one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepoUsage {
    /// The repository.
    pub repository: String,
    /// Bytes of every blob and manifest it holds.
    pub bytes: u64,
    /// Bytes held by no other repository.
    pub exclusive: u64,
    /// Bytes also held by other repositories.
    pub shared: u64,
    /// Number of distinct blobs and manifests.
    pub objects: u64,
}

fn has_prefix<V: redb::Value + 'static>(
    table: &impl ReadableTable<&'static str, V>,
    prefix: &str,
) -> MetadataResult<bool> {
    let (start, end) = under(prefix);
    Ok(table.range(start.as_str()..end.as_str())?.next().is_some())
}

fn suffixes<V: redb::Value + 'static>(
    table: &impl ReadableTable<&'static str, V>,
    prefix: &str,
) -> MetadataResult<Vec<String>> {
    let (start, end) = under(prefix);
    let mut out = Vec::new();
    for entry in table.range(start.as_str()..end.as_str())? {
        let (k, _) = entry?;
        out.push(k.value()[start.len()..].to_owned());
    }
    Ok(out)
}

/// Whether `digest` (with `record`) is garbage: older than `cutoff`, unreferenced, unpinned,
/// and linked into no repository after `cutoff`.
fn is_garbage(
    refs: &impl ReadableTable<&'static str, ()>,
    pins: &impl ReadableTable<&'static str, &'static [u8]>,
    links: &impl ReadableTable<&'static str, u64>,
    blob_repos: &impl ReadableTable<&'static str, ()>,
    digest: &str,
    record: &BlobRecord,
    cutoff: u64,
) -> MetadataResult<bool> {
    if record.created > cutoff || has_prefix(refs, digest)? || pins.get(digest)?.is_some() {
        return Ok(false);
    }
    for repo in suffixes(blob_repos, digest)? {
        let linked = links.get(key(&repo, digest).as_str())?.map(|v| v.value());
        if linked.is_some_and(|t| t > cutoff) {
            return Ok(false);
        }
    }
    Ok(true)
}

impl Metadata {
    pub(crate) fn pin_in(
        txn: &redb::WriteTransaction,
        digest: &Digest,
    ) -> MetadataResult<Option<PinRecord>> {
        let pins = txn.open_table(PINS)?;
        let digest = digest.to_string();
        let pin = pins.get(digest.as_str())?;
        pin.map(|p| decode(&digest, p.value())).transpose()
    }

    /// Pins `digest` so that no deletion, retention rule or garbage collection removes it
    /// (for a manifest: nor anything it references).
    pub fn pin(&self, digest: &Digest, reason: &str, owner: Option<&str>) -> MetadataResult<()> {
        let txn = self.db.begin_write()?;
        let record = PinRecord {
            reason: reason.to_owned(),
            created: now(),
            owner: owner.map(str::to_owned),
        };
        txn.open_table(PINS)?
            .insert(digest.to_string().as_str(), encode(&record).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Removes a pin, unless it has an owner and not `force`.
    pub fn unpin(&self, digest: &Digest, force: bool) -> MetadataResult<Unpinned> {
        let txn = self.db.begin_write()?;
        let key = digest.to_string();
        let outcome = {
            let mut table = txn.open_table(PINS)?;
            let existing = match table.get(key.as_str())? {
                Some(value) => Some(decode::<PinRecord>(&key, value.value())?),
                None => None,
            };
            match existing {
                None => Unpinned::NotPinned,
                Some(record) if record.owner.is_some() && !force => Unpinned::Owned(record),
                Some(_) => {
                    table.remove(key.as_str())?;
                    Unpinned::Removed
                }
            }
        };
        txn.commit()?;
        Ok(outcome)
    }

    /// Every pin.
    pub fn pins(&self) -> MetadataResult<BTreeMap<Digest, PinRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PINS)?;
        let mut out = BTreeMap::new();
        for entry in table.range::<&str>(..)? {
            let (k, v) = entry?;
            if let Ok(digest) = k.value().parse() {
                out.insert(digest, decode(k.value(), v.value())?);
            }
        }
        Ok(out)
    }

    /// Blobs that look like garbage in a snapshot (see `is_garbage`); removal re-checks.
    pub fn unreferenced_blobs(&self, cutoff: u64) -> MetadataResult<Vec<BlobCandidate>> {
        let txn = self.db.begin_read()?;
        let (blobs, refs, pins) = (
            txn.open_table(BLOBS)?,
            txn.open_table(REFS)?,
            txn.open_table(PINS)?,
        );
        let (links, blob_repos) = (txn.open_table(LINKS)?, txn.open_table(BLOB_REPOS)?);
        let mut out = Vec::new();
        for entry in blobs.range::<&str>(..)? {
            let (k, v) = entry?;
            let record: BlobRecord = decode(k.value(), v.value())?;
            if is_garbage(
                &refs,
                &pins,
                &links,
                &blob_repos,
                k.value(),
                &record,
                cutoff,
            )? {
                if let Ok(digest) = k.value().parse() {
                    out.push(BlobCandidate {
                        digest,
                        size: record.size,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Removes the records of those `candidates` that are still garbage, in one
    /// transaction; returns what was removed (its files may now be deleted).
    pub fn remove_garbage_blobs(
        &self,
        candidates: &[BlobCandidate],
        cutoff: u64,
    ) -> MetadataResult<Vec<BlobCandidate>> {
        let txn = self.db.begin_write()?;
        let mut removed = Vec::new();
        {
            let mut blobs = txn.open_table(BLOBS)?;
            let (refs, pins) = (txn.open_table(REFS)?, txn.open_table(PINS)?);
            let mut links = txn.open_table(LINKS)?;
            let mut blob_repos = txn.open_table(BLOB_REPOS)?;
            for candidate in candidates {
                let digest = candidate.digest.to_string();
                let record = match blobs.get(digest.as_str())? {
                    Some(v) => decode::<BlobRecord>(&digest, v.value())?,
                    None => continue,
                };
                if !is_garbage(&refs, &pins, &links, &blob_repos, &digest, &record, cutoff)? {
                    continue;
                }
                for repo in suffixes(&blob_repos, &digest)? {
                    links.remove(key(&repo, &digest).as_str())?;
                    blob_repos.remove(key(&digest, &repo).as_str())?;
                }
                blobs.remove(digest.as_str())?;
                removed.push(BlobCandidate {
                    digest: candidate.digest.clone(),
                    size: record.size,
                });
            }
        }
        txn.commit()?;
        Ok(removed)
    }

    /// Which of `digests` have a blob record.
    pub fn known_blobs(&self, digests: &[Digest]) -> MetadataResult<Vec<bool>> {
        let txn = self.db.begin_read()?;
        let blobs = txn.open_table(BLOBS)?;
        digests
            .iter()
            .map(|d| Ok(blobs.get(d.to_string().as_str())?.is_some()))
            .collect()
    }

    /// Every repository.
    pub fn all_repositories(&self) -> MetadataResult<Vec<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REPOS)?;
        let mut out = Vec::new();
        for entry in table.range::<&str>(..)? {
            out.push(entry?.0.value().to_owned());
        }
        Ok(out)
    }

    /// The tags of `repo` with their push and pull times.
    pub fn tag_infos(&self, repo: &str) -> MetadataResult<Vec<TagInfo>> {
        let txn = self.db.begin_read()?;
        let (tags, pulls) = (txn.open_table(TAGS)?, txn.open_table(TAG_PULLS)?);
        let (start, end) = under(repo);
        let mut out = Vec::new();
        for entry in tags.range(start.as_str()..end.as_str())? {
            let (k, v) = entry?;
            let record: TagRecord = decode(k.value(), v.value())?;
            out.push(TagInfo {
                tag: k.value()[start.len()..].to_owned(),
                digest: record.digest,
                pushed: record.updated,
                pulled: pulls.get(k.value())?.map(|p| p.value()),
            });
        }
        Ok(out)
    }

    /// Records when tags were last pulled.
    pub fn record_pulls(&self, pulls: &[(String, String, u64)]) -> MetadataResult<()> {
        if pulls.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TAG_PULLS)?;
            for (repo, tag, when) in pulls {
                table.insert(key(repo, tag).as_str(), *when)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Deletes `tag` if it still points at `digest` and that manifest is not pinned.
    pub fn delete_tag_if(&self, repo: &str, tag: &str, digest: &Digest) -> MetadataResult<bool> {
        let txn = self.db.begin_write()?;
        if Self::pin_in(&txn, digest)?.is_some() {
            return Ok(false);
        }
        let removed = {
            let mut tags = txn.open_table(TAGS)?;
            let k = key(repo, tag);
            let current = tags
                .get(k.as_str())?
                .map(|v| decode::<TagRecord>(&k, v.value()))
                .transpose()?;
            if current.is_some_and(|t| t.digest == *digest) {
                tags.remove(k.as_str())?;
                txn.open_table(TAG_PULLS)?.remove(k.as_str())?;
                true
            } else {
                false
            }
        };
        txn.commit()?;
        Ok(removed)
    }

    /// Whether manifest `digest` of `repo` may be deleted as untagged: no tag points at it,
    /// it was pushed before `cutoff`, it is not pinned, no other manifest references it (an
    /// index), and it is not a referrer of a manifest that still exists.
    fn is_removable_untagged(
        txn_tables: &UntaggedTables<'_>,
        repo: &str,
        digest: &str,
        record: &ManifestRecord,
        tagged: &HashSet<String>,
        cutoff: u64,
    ) -> MetadataResult<bool> {
        if tagged.contains(digest)
            || record.created > cutoff
            || txn_tables.pins.get(digest)?.is_some()
        {
            return Ok(false);
        }
        let self_ref = format!("{repo}\0{digest}");
        if suffixes(txn_tables.refs, digest)?
            .iter()
            .any(|r| *r != self_ref)
        {
            return Ok(false);
        }
        if let Some(subject) = &record.subject {
            if txn_tables
                .manifests
                .get(key(repo, &subject.to_string()).as_str())?
                .is_some()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Deletes the untagged manifests of `repo` pushed before `cutoff` (see
    /// `is_removable_untagged`); with `dry_run` only lists them.
    pub fn remove_untagged(
        &self,
        repo: &str,
        cutoff: u64,
        dry_run: bool,
    ) -> MetadataResult<Vec<Digest>> {
        let txn = self.db.begin_write()?;
        let mut removable = Vec::new();
        {
            let tagged: HashSet<String> = {
                let tags = txn.open_table(TAGS)?;
                let (start, end) = under(repo);
                let mut set = HashSet::new();
                for entry in tags.range(start.as_str()..end.as_str())? {
                    let (k, v) = entry?;
                    set.insert(
                        decode::<TagRecord>(k.value(), v.value())?
                            .digest
                            .to_string(),
                    );
                }
                set
            };
            let manifests = txn.open_table(MANIFESTS)?;
            let (refs, pins) = (txn.open_table(REFS)?, txn.open_table(PINS)?);
            let tables = UntaggedTables {
                manifests: &manifests,
                refs: &refs,
                pins: &pins,
            };
            let (start, end) = under(repo);
            for entry in manifests.range(start.as_str()..end.as_str())? {
                let (k, v) = entry?;
                let digest = &k.value()[start.len()..];
                let record: ManifestRecord = decode(k.value(), v.value())?;
                if Self::is_removable_untagged(&tables, repo, digest, &record, &tagged, cutoff)? {
                    if let Ok(d) = digest.parse::<Digest>() {
                        removable.push(d);
                    }
                }
            }
        }
        if dry_run {
            return Ok(removable);
        }
        for digest in &removable {
            Self::remove_manifest(&txn, repo, digest)?;
        }
        txn.commit()?;
        Ok(removable)
    }

    /// Space per repository: every blob linked into it and every manifest in it, split into
    /// bytes held only by it and bytes shared with other repositories.
    pub fn usage(&self) -> MetadataResult<Vec<RepoUsage>> {
        let txn = self.db.begin_read()?;
        let (links, manifests, blobs) = (
            txn.open_table(LINKS)?,
            txn.open_table(MANIFESTS)?,
            txn.open_table(BLOBS)?,
        );
        // digest -> (size, repositories holding it)
        let mut holders: HashMap<String, (u64, HashSet<String>)> = HashMap::new();
        for entry in links.range::<&str>(..)? {
            let (k, _) = entry?;
            let Some((repo, digest)) = k.value().split_once('\0') else {
                continue;
            };
            let size = match blobs.get(digest)? {
                Some(v) => decode::<BlobRecord>(digest, v.value())?.size,
                None => continue,
            };
            holders
                .entry(digest.to_owned())
                .or_insert_with(|| (size, HashSet::new()))
                .1
                .insert(repo.to_owned());
        }
        for entry in manifests.range::<&str>(..)? {
            let (k, v) = entry?;
            let Some((repo, digest)) = k.value().split_once('\0') else {
                continue;
            };
            let record: ManifestRecord = decode(k.value(), v.value())?;
            holders
                .entry(digest.to_owned())
                .or_insert_with(|| (record.size, HashSet::new()))
                .1
                .insert(repo.to_owned());
        }
        let mut per_repo: BTreeMap<String, RepoUsage> = BTreeMap::new();
        for (size, repos) in holders.values() {
            let shared = repos.len() > 1;
            for repo in repos {
                let usage = per_repo.entry(repo.clone()).or_insert_with(|| RepoUsage {
                    repository: repo.clone(),
                    ..RepoUsage::default()
                });
                usage.bytes += size;
                usage.objects += 1;
                if shared {
                    usage.shared += size;
                } else {
                    usage.exclusive += size;
                }
            }
        }
        let repos = txn.open_table(REPOS)?;
        for entry in repos.range::<&str>(..)? {
            let repo = entry?.0.value().to_owned();
            per_repo.entry(repo.clone()).or_insert_with(|| RepoUsage {
                repository: repo,
                ..RepoUsage::default()
            });
        }
        Ok(per_repo.into_values().collect())
    }

    /// Bytes `repo` holds (its linked blobs and its manifests, each counted once).
    pub fn repo_bytes(&self, repo: &str) -> MetadataResult<u64> {
        let txn = self.db.begin_read()?;
        let (links, manifests, blobs) = (
            txn.open_table(LINKS)?,
            txn.open_table(MANIFESTS)?,
            txn.open_table(BLOBS)?,
        );
        let (start, end) = under(repo);
        let mut seen = HashSet::new();
        let mut total = 0;
        for entry in links.range(start.as_str()..end.as_str())? {
            let (k, _) = entry?;
            let digest = &k.value()[start.len()..];
            if let Some(v) = blobs.get(digest)? {
                if seen.insert(digest.to_owned()) {
                    total += decode::<BlobRecord>(digest, v.value())?.size;
                }
            }
        }
        for entry in manifests.range(start.as_str()..end.as_str())? {
            let (k, v) = entry?;
            let digest = &k.value()[start.len()..];
            if seen.insert(digest.to_owned()) {
                total += decode::<ManifestRecord>(k.value(), v.value())?.size;
            }
        }
        Ok(total)
    }
}

struct UntaggedTables<'a> {
    manifests: &'a redb::Table<'a, &'static str, &'static [u8]>,
    refs: &'a redb::Table<'a, &'static str, ()>,
    pins: &'a redb::Table<'a, &'static str, &'static [u8]>,
}
