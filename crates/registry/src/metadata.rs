//! What the registry knows about its content, in one redb file: which repositories exist,
//! which blobs each repository may serve, manifests, tags and referrers. Every change that
//! must be all-or-nothing (a manifest with its tag and referrer entry) is one transaction,
//! so a crash leaves either the old or the new state, never a mix.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_oci::{Descriptor, Digest};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// digest -> `BlobRecord` (content stored once for all repositories).
const BLOBS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("blobs");
/// "repo\0digest" -> linked-at: the blobs a repository may serve.
const LINKS: TableDefinition<'_, &str, u64> = TableDefinition::new("links");
/// "digest\0repo" -> (): the reverse of `LINKS`, for mounts without `from`.
const BLOB_REPOS: TableDefinition<'_, &str, ()> = TableDefinition::new("blob_repos");
/// "repo\0digest" -> `ManifestRecord`.
const MANIFESTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("manifests");
/// "repo\0tag" -> `TagRecord`.
const TAGS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tags");
/// "repo\0subject\0referrer" -> referrer `Descriptor`.
const REFERRERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("referrers");
/// repo -> created-at.
const REPOS: TableDefinition<'_, &str, u64> = TableDefinition::new("repos");
/// "blob\0repo\0manifest" -> (): manifest `manifest` in `repo` references `blob` (its config,
/// a layer, an index child, or itself). A blob with no entry here is unreferenced.
const REFS: TableDefinition<'_, &str, ()> = TableDefinition::new("refs");
/// digest -> `PinRecord`: content no cleanup may remove.
const PINS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("pins");
/// "repo\0tag" -> last pulled (unix seconds), for retention windows.
const TAG_PULLS: TableDefinition<'_, &str, u64> = TableDefinition::new("tag_pulls");
/// "version" -> schema version of this file.
const SCHEMA: TableDefinition<'_, &str, u64> = TableDefinition::new("schema");

/// The schema this code writes; older files are migrated on open.
const SCHEMA_VERSION: u64 = 2;

/// A failure of the metadata database.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// redb failed.
    #[error("metadata database: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not decode (corruption or a newer format).
    #[error("metadata record {key:?} is unreadable: {source}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// Why it does not decode.
        source: serde_json::Error,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for MetadataError {
            fn from(e: $t) -> Self {
                MetadataError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Metadata result.
pub type MetadataResult<T> = Result<T, MetadataError>;

/// A stored blob.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobRecord {
    /// Size in bytes.
    pub size: u64,
    /// When it was first stored (unix seconds).
    pub created: u64,
}

/// A stored manifest in one repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestRecord {
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was pushed (unix seconds).
    pub created: u64,
    /// The manifest it refers to, if any.
    pub subject: Option<Digest>,
    /// Everything it references: config, layers, child manifests.
    pub references: Vec<Digest>,
}

/// A tag.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagRecord {
    /// The manifest it points at.
    pub digest: Digest,
    /// When it was last set (unix seconds).
    pub updated: u64,
}

/// Why a manifest cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestRejection {
    /// A referenced blob is not in the repository.
    MissingBlob(Digest),
    /// A referenced blob has another size than the descriptor says.
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// Size in the descriptor.
        declared: u64,
        /// Size stored.
        stored: u64,
    },
    /// A child manifest of an index is not in the repository.
    MissingManifest(Digest),
}

/// A manifest to store.
pub struct NewManifest<'a> {
    /// Repository.
    pub repo: &'a str,
    /// Its digest.
    pub digest: &'a Digest,
    /// Tag to point at it, if pushed by tag.
    pub tag: Option<&'a str>,
    /// Its record.
    pub record: ManifestRecord,
    /// Blobs it needs (config, layers).
    pub blobs: &'a [Descriptor],
    /// Layers clients fetch from their URLs: checked only if the repository holds them.
    pub external: &'a [Descriptor],
    /// Manifests it needs (index children).
    pub manifests: &'a [Descriptor],
    /// Its descriptor in its subject's referrers list, if it has a subject.
    pub referrer: Option<Descriptor>,
}

/// A page of names (tags or repositories) and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The names, in lexical order.
    pub names: Vec<String>,
    /// Whether names follow the last one.
    pub more: bool,
}

/// The registry's metadata database.
#[derive(Clone)]
pub struct Metadata {
    db: Arc<Database>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn key(a: &str, b: &str) -> String {
    format!("{a}\0{b}")
}

fn ref_key(blob: &str, repo: &str, manifest: &str) -> String {
    format!("{blob}\0{repo}\0{manifest}")
}

/// The key range of every "prefix\0…" key.
fn under(prefix: &str) -> (String, String) {
    (format!("{prefix}\0"), format!("{prefix}\u{1}"))
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> MetadataResult<T> {
    serde_json::from_slice(bytes).map_err(|source| MetadataError::Corrupt {
        key: key.replace('\0', "/"),
        source,
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Creates `path` empty with mode 0600 if it does not exist (redb initialises an empty file),
/// and takes group and other access away from one that does.
fn owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

impl Metadata {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> MetadataResult<Metadata> {
        owner_only(path).map_err(|e| MetadataError::Db(redb::Error::Io(e)))?;
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(BLOBS)?;
            txn.open_table(LINKS)?;
            txn.open_table(BLOB_REPOS)?;
            txn.open_table(MANIFESTS)?;
            txn.open_table(TAGS)?;
            txn.open_table(REFERRERS)?;
            txn.open_table(REPOS)?;
            txn.open_table(REFS)?;
            txn.open_table(PINS)?;
            txn.open_table(TAG_PULLS)?;
            let mut schema = txn.open_table(SCHEMA)?;
            let version = schema.get("version")?.map(|v| v.value()).unwrap_or(1);
            if version < 2 {
                Self::rebuild_refs(&txn)?;
            }
            schema.insert("version", SCHEMA_VERSION)?;
        }
        txn.commit()?;
        Ok(Metadata { db: Arc::new(db) })
    }

    /// Version 1 files have no reference index: build it from the manifest records, so
    /// garbage collection never mistakes referenced content for garbage.
    fn rebuild_refs(txn: &redb::WriteTransaction) -> MetadataResult<()> {
        let manifests = txn.open_table(MANIFESTS)?;
        let mut refs = txn.open_table(REFS)?;
        for entry in manifests.range::<&str>(..)? {
            let (k, v) = entry?;
            let Some((repo, digest)) = k.value().split_once('\0') else {
                continue;
            };
            let record: ManifestRecord = decode(k.value(), v.value())?;
            refs.insert(ref_key(digest, repo, digest).as_str(), ())?;
            for reference in &record.references {
                refs.insert(ref_key(&reference.to_string(), repo, digest).as_str(), ())?;
            }
        }
        Ok(())
    }

    /// Runs `f` on a blocking thread: redb calls wait on the disk and must stay off the
    /// async workers. `Err` only when the thread itself failed.
    pub async fn off_thread<T, E>(
        &self,
        f: impl FnOnce(&Metadata) -> Result<T, E> + Send + 'static,
    ) -> Result<Result<T, E>, tokio::task::JoinError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let meta = self.clone();
        tokio::task::spawn_blocking(move || f(&meta)).await
    }

    /// Whether the repository exists.
    pub fn repo_exists(&self, repo: &str) -> MetadataResult<bool> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(REPOS)?.get(repo)?.is_some())
    }

    /// The size of a blob if `repo` may serve it.
    pub fn linked_blob(&self, repo: &str, digest: &Digest) -> MetadataResult<Option<u64>> {
        let txn = self.db.begin_read()?;
        if txn
            .open_table(LINKS)?
            .get(key(repo, &digest.to_string()).as_str())?
            .is_none()
        {
            return Ok(None);
        }
        let digest = digest.to_string();
        let blobs = txn.open_table(BLOBS)?;
        let record = blobs.get(digest.as_str())?;
        record
            .map(|r| decode::<BlobRecord>(&digest, r.value()).map(|b| b.size))
            .transpose()
    }

    /// Records that blob `digest` of `size` bytes is stored and that `repo` may serve it.
    pub fn link_blob(&self, repo: &str, digest: &Digest, size: u64) -> MetadataResult<()> {
        let txn = self.db.begin_write()?;
        {
            let digest = digest.to_string();
            let mut blobs = txn.open_table(BLOBS)?;
            if blobs.get(digest.as_str())?.is_none() {
                let record = BlobRecord {
                    size,
                    created: now(),
                };
                blobs.insert(digest.as_str(), encode(&record).as_slice())?;
            }
            Self::link(&txn, repo, &digest)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn link(txn: &redb::WriteTransaction, repo: &str, digest: &str) -> MetadataResult<()> {
        txn.open_table(LINKS)?
            .insert(key(repo, digest).as_str(), now())?;
        txn.open_table(BLOB_REPOS)?
            .insert(key(digest, repo).as_str(), ())?;
        let mut repos = txn.open_table(REPOS)?;
        if repos.get(repo)?.is_none() {
            repos.insert(repo, now())?;
        }
        Ok(())
    }

    /// Links blob `digest` into `repo` if one of `sources` may serve it; returns its size.
    pub fn mount(
        &self,
        repo: &str,
        digest: &Digest,
        sources: &[String],
    ) -> MetadataResult<Option<u64>> {
        let txn = self.db.begin_write()?;
        let digest_str = digest.to_string();
        let size = {
            let links = txn.open_table(LINKS)?;
            let mut linked = false;
            for source in sources {
                if links.get(key(source, &digest_str).as_str())?.is_some() {
                    linked = true;
                    break;
                }
            }
            if !linked {
                return Ok(None);
            }
            let blobs = txn.open_table(BLOBS)?;
            let record = blobs.get(digest_str.as_str())?;
            match record {
                Some(r) => decode::<BlobRecord>(&digest_str, r.value())?.size,
                None => return Ok(None),
            }
        };
        Self::link(&txn, repo, &digest_str)?;
        txn.commit()?;
        Ok(Some(size))
    }

    /// The repositories that may serve blob `digest`.
    pub fn repos_with_blob(&self, digest: &Digest) -> MetadataResult<Vec<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOB_REPOS)?;
        let digest = digest.to_string();
        let (start, end) = under(&digest);
        let mut repos = Vec::new();
        for entry in table.range(start.as_str()..end.as_str())? {
            let (k, _) = entry?;
            repos.push(k.value()[start.len()..].to_owned());
        }
        Ok(repos)
    }

    /// Removes `repo`'s link to a blob; false when there was none.
    pub fn unlink_blob(&self, repo: &str, digest: &Digest) -> MetadataResult<bool> {
        let txn = self.db.begin_write()?;
        let digest = digest.to_string();
        let removed = txn
            .open_table(LINKS)?
            .remove(key(repo, &digest).as_str())?
            .is_some();
        txn.open_table(BLOB_REPOS)?
            .remove(key(&digest, repo).as_str())?;
        txn.commit()?;
        Ok(removed)
    }

    /// Stores a manifest (its content is already in the blob store) with its tag and
    /// referrer entry, after checking everything it references is in the repository.
    pub fn put_manifest(
        &self,
        new: NewManifest<'_>,
    ) -> MetadataResult<Result<(), ManifestRejection>> {
        let txn = self.db.begin_write()?;
        {
            let links = txn.open_table(LINKS)?;
            let mut blobs = txn.open_table(BLOBS)?;
            for blob in new.blobs {
                let digest = blob.digest.to_string();
                if links.get(key(new.repo, &digest).as_str())?.is_none() {
                    return Ok(Err(ManifestRejection::MissingBlob(blob.digest.clone())));
                }
                let stored = match blobs.get(digest.as_str())? {
                    Some(r) => decode::<BlobRecord>(&digest, r.value())?.size,
                    None => return Ok(Err(ManifestRejection::MissingBlob(blob.digest.clone()))),
                };
                if stored != blob.size {
                    return Ok(Err(ManifestRejection::SizeMismatch {
                        digest: blob.digest.clone(),
                        declared: blob.size,
                        stored,
                    }));
                }
            }
            for layer in new.external {
                let digest = layer.digest.to_string();
                if links.get(key(new.repo, &digest).as_str())?.is_none() {
                    continue;
                }
                if let Some(r) = blobs.get(digest.as_str())? {
                    let stored = decode::<BlobRecord>(&digest, r.value())?.size;
                    if stored != layer.size {
                        return Ok(Err(ManifestRejection::SizeMismatch {
                            digest: layer.digest.clone(),
                            declared: layer.size,
                            stored,
                        }));
                    }
                }
            }
            let mut manifests = txn.open_table(MANIFESTS)?;
            for child in new.manifests {
                let child_key = key(new.repo, &child.digest.to_string());
                if manifests.get(child_key.as_str())?.is_none() {
                    return Ok(Err(ManifestRejection::MissingManifest(
                        child.digest.clone(),
                    )));
                }
            }
            let digest = new.digest.to_string();
            if blobs.get(digest.as_str())?.is_none() {
                let record = BlobRecord {
                    size: new.record.size,
                    created: now(),
                };
                blobs.insert(digest.as_str(), encode(&record).as_slice())?;
            }
            let manifest_key = key(new.repo, &digest);
            let record = ManifestRecord {
                created: now(),
                ..new.record.clone()
            };
            manifests.insert(manifest_key.as_str(), encode(&record).as_slice())?;
            let mut refs = txn.open_table(REFS)?;
            refs.insert(ref_key(&digest, new.repo, &digest).as_str(), ())?;
            for reference in &new.record.references {
                refs.insert(
                    ref_key(&reference.to_string(), new.repo, &digest).as_str(),
                    (),
                )?;
            }
            if let Some(tag) = new.tag {
                let record = TagRecord {
                    digest: new.digest.clone(),
                    updated: now(),
                };
                txn.open_table(TAGS)?
                    .insert(key(new.repo, tag).as_str(), encode(&record).as_slice())?;
            }
            if let (Some(subject), Some(referrer)) = (&new.record.subject, &new.referrer) {
                let referrer_key = format!("{}\0{subject}\0{digest}", new.repo);
                txn.open_table(REFERRERS)?
                    .insert(referrer_key.as_str(), encode(referrer).as_slice())?;
            }
            let mut repos = txn.open_table(REPOS)?;
            if repos.get(new.repo)?.is_none() {
                repos.insert(new.repo, now())?;
            }
        }
        txn.commit()?;
        Ok(Ok(()))
    }

    /// The digest a tag points at.
    pub fn tag(&self, repo: &str, tag: &str) -> MetadataResult<Option<Digest>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TAGS)?;
        let k = key(repo, tag);
        let record = table.get(k.as_str())?;
        record
            .map(|r| decode::<TagRecord>(&k, r.value()).map(|t| t.digest))
            .transpose()
    }

    /// A manifest's record in `repo`.
    pub fn manifest(&self, repo: &str, digest: &Digest) -> MetadataResult<Option<ManifestRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MANIFESTS)?;
        let k = key(repo, &digest.to_string());
        let record = table.get(k.as_str())?;
        record.map(|r| decode(&k, r.value())).transpose()
    }

    /// Deletes a manifest, every tag pointing at it and its referrer entry; false when absent.
    /// Pinned manifests are not deleted (`Err(Pinned)`).
    pub fn delete_manifest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> MetadataResult<Result<bool, Pinned>> {
        let txn = self.db.begin_write()?;
        if let Some(pin) = Self::pin_in(&txn, digest)? {
            return Ok(Err(Pinned(pin)));
        }
        let removed = Self::remove_manifest(&txn, repo, digest)?;
        txn.commit()?;
        Ok(Ok(removed))
    }

    /// Removes a manifest record with its tags, references and referrer entry.
    pub(crate) fn remove_manifest(
        txn: &redb::WriteTransaction,
        repo: &str,
        digest: &Digest,
    ) -> MetadataResult<bool> {
        {
            let digest_str = digest.to_string();
            let removed = txn
                .open_table(MANIFESTS)?
                .remove(key(repo, &digest_str).as_str())?
                .map(|r| decode::<ManifestRecord>(&digest_str, r.value()))
                .transpose()?;
            let Some(record) = removed else {
                return Ok(false);
            };
            let mut refs = txn.open_table(REFS)?;
            refs.remove(ref_key(&digest_str, repo, &digest_str).as_str())?;
            for reference in &record.references {
                refs.remove(ref_key(&reference.to_string(), repo, &digest_str).as_str())?;
            }
            let mut tags = txn.open_table(TAGS)?;
            let (start, end) = under(repo);
            let mut pointing = Vec::new();
            for entry in tags.range(start.as_str()..end.as_str())? {
                let (k, v) = entry?;
                if decode::<TagRecord>(k.value(), v.value())?.digest == *digest {
                    pointing.push(k.value().to_owned());
                }
            }
            for k in pointing {
                tags.remove(k.as_str())?;
            }
            if let Some(subject) = record.subject {
                txn.open_table(REFERRERS)?
                    .remove(format!("{repo}\0{subject}\0{digest_str}").as_str())?;
            }
        }
        Ok(true)
    }

    /// Deletes a tag (not the manifest); false when absent.
    pub fn delete_tag(&self, repo: &str, tag: &str) -> MetadataResult<bool> {
        let txn = self.db.begin_write()?;
        let removed = txn
            .open_table(TAGS)?
            .remove(key(repo, tag).as_str())?
            .is_some();
        txn.commit()?;
        Ok(removed)
    }

    /// Up to `n` tags of `repo` after `last`, in lexical order; `None` for an unknown repo.
    pub fn tags(&self, repo: &str, last: Option<&str>, n: usize) -> MetadataResult<Option<Page>> {
        let txn = self.db.begin_read()?;
        if txn.open_table(REPOS)?.get(repo)?.is_none() {
            return Ok(None);
        }
        let table = txn.open_table(TAGS)?;
        let (start, end) = under(repo);
        let from = last.map_or(start.clone(), |l| key(repo, l));
        let mut names = Vec::new();
        let mut more = false;
        for entry in table.range(from.as_str()..end.as_str())? {
            let (k, _) = entry?;
            let name = &k.value()[start.len()..];
            if Some(name) == last {
                continue;
            }
            if names.len() == n {
                more = true;
                break;
            }
            names.push(name.to_owned());
        }
        Ok(Some(Page { names, more }))
    }

    /// Up to `n` repositories after `last` for which `visible` holds, in lexical order.
    pub fn repositories(
        &self,
        last: Option<&str>,
        n: usize,
        visible: impl Fn(&str) -> bool,
    ) -> MetadataResult<Page> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REPOS)?;
        let mut names = Vec::new();
        let mut more = false;
        let range = match last {
            Some(last) => table
                .range::<&str>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))?,
            None => table.range::<&str>(..)?,
        };
        for entry in range {
            let (k, _) = entry?;
            if !visible(k.value()) {
                continue;
            }
            if names.len() == n {
                more = true;
                break;
            }
            names.push(k.value().to_owned());
        }
        Ok(Page { names, more })
    }

    /// The referrers of `subject` in `repo`.
    pub fn referrers(&self, repo: &str, subject: &Digest) -> MetadataResult<Vec<Descriptor>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REFERRERS)?;
        let (start, end) = under(&key(repo, &subject.to_string()));
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..end.as_str())? {
            let (k, v) = entry?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
}

mod gc;
#[cfg(test)]
mod tests;

pub use gc::{BlobCandidate, PinRecord, Pinned, RepoUsage, TagInfo, Unpinned};
