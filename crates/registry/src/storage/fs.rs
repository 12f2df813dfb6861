//! The filesystem `BlobStore`: `blobs/<alg>/<hex[..2]>/<hex>` for content, `uploads/<id>` for
//! uploads in progress, `tmp/` for staging. Everything lives on one filesystem so that a
//! commit is a rename.

use std::io::{BufWriter, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use berth_oci::Digest;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::{BlobReader, BlobStore, ByteRange, StorageError, StorageResult, StoredBlob};

/// Bytes buffered before an upload write reaches the file.
const WRITE_BUFFER: usize = 1 << 20;

/// Creates `dir` (and its parents) with the directory itself 0700, or takes group and other
/// access away from one that exists: the registry's data (metadata, private images) is for
/// the registry process only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let metadata = std::fs::metadata(dir)?;
    if metadata.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Blob storage in a directory.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> StorageResult<FsBlobStore> {
        let root = root.into();
        private_dir(&root).map_err(StorageError::io(format!("creating {}", root.display())))?;
        for dir in ["blobs", "uploads", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(StorageError::io(format!("creating {}", path.display())))?;
        }
        Ok(FsBlobStore { root })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn upload_path(&self, id: &str) -> StorageResult<PathBuf> {
        let safe = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if safe {
            Ok(self.root.join("uploads").join(id))
        } else {
            Err(StorageError::UnknownUpload(id.to_owned()))
        }
    }

    /// Makes `path` durable under its final name by syncing its directory.
    fn sync_dir(path: &Path) -> StorageResult<()> {
        let dir = path.parent().unwrap_or(path);
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StorageError::io(format!("syncing {}", dir.display())))
    }

    /// Renames `from` (fsynced) to the blob path of `digest` unless the blob is already there.
    fn install(&self, from: &Path, digest: &Digest) -> StorageResult<()> {
        let target = self.blob_path(digest);
        if target.exists() {
            std::fs::remove_file(from).map_err(StorageError::io(format!(
                "removing duplicate upload {}",
                from.display()
            )))?;
            return Ok(());
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(StorageError::io(format!("creating {}", parent.display())))?;
        }
        std::fs::rename(from, &target)
            .map_err(StorageError::io(format!("installing blob {digest}")))?;
        Self::sync_dir(&target)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Io {
            what: "storage worker".into(),
            source: std::io::Error::other(e),
        })?
}

fn not_found_is_none<T>(r: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn stat(&self, digest: &Digest) -> StorageResult<Option<u64>> {
        let meta = not_found_is_none(tokio::fs::metadata(self.blob_path(digest)).await)
            .map_err(StorageError::io(format!("stat of blob {digest}")))?;
        Ok(meta.map(|m| m.len()))
    }

    async fn read(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> StorageResult<Option<BlobReader>> {
        let file = not_found_is_none(tokio::fs::File::open(self.blob_path(digest)).await)
            .map_err(StorageError::io(format!("opening blob {digest}")))?;
        let Some(mut file) = file else {
            return Ok(None);
        };
        Ok(Some(match range {
            None => Box::pin(file),
            Some(range) => {
                file.seek(SeekFrom::Start(range.start))
                    .await
                    .map_err(StorageError::io(format!("seeking in blob {digest}")))?;
                Box::pin(file.take(range.len))
            }
        }))
    }

    async fn read_all(&self, digest: &Digest) -> StorageResult<Option<Bytes>> {
        let data = not_found_is_none(tokio::fs::read(self.blob_path(digest)).await)
            .map_err(StorageError::io(format!("reading blob {digest}")))?;
        Ok(data.map(Bytes::from))
    }

    async fn put(&self, digest: &Digest, data: Bytes) -> StorageResult<()> {
        let store = self.clone();
        let digest = digest.clone();
        blocking(move || {
            if store.blob_path(&digest).exists() {
                return Ok(());
            }
            let staged = store
                .root
                .join("tmp")
                .join(uuid::Uuid::new_v4().to_string());
            let mut file = std::fs::File::create(&staged)
                .map_err(StorageError::io(format!("creating {}", staged.display())))?;
            file.write_all(&data)
                .and_then(|()| file.sync_all())
                .map_err(StorageError::io(format!("writing blob {digest}")))?;
            store.install(&staged, &digest)
        })
        .await
    }

    async fn create_upload(&self, id: &str) -> StorageResult<()> {
        let path = self.upload_path(id)?;
        tokio::fs::File::create(&path)
            .await
            .map_err(StorageError::io(format!("creating upload {id}")))?;
        Ok(())
    }

    async fn upload_len(&self, id: &str) -> StorageResult<Option<u64>> {
        let path = self.upload_path(id)?;
        let meta = not_found_is_none(tokio::fs::metadata(&path).await)
            .map_err(StorageError::io(format!("stat of upload {id}")))?;
        Ok(meta.map(|m| m.len()))
    }

    async fn append(&self, id: &str, mut chunks: mpsc::Receiver<Bytes>) -> StorageResult<u64> {
        let path = self.upload_path(id)?;
        let id = id.to_owned();
        blocking(move || {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => StorageError::UnknownUpload(id.clone()),
                    _ => StorageError::Io {
                        what: format!("opening upload {id}"),
                        source: e,
                    },
                })?;
            let mut writer = BufWriter::with_capacity(WRITE_BUFFER, file);
            let write_err = StorageError::io(format!("writing upload {id}"));
            let result = (|| {
                while let Some(chunk) = chunks.blocking_recv() {
                    writer.write_all(&chunk)?;
                }
                writer.flush()?;
                writer.get_ref().metadata().map(|m| m.len())
            })();
            result.map_err(write_err)
        })
        .await
    }

    async fn read_upload(&self, id: &str) -> StorageResult<BlobReader> {
        let path = self.upload_path(id)?;
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Box::pin(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::UnknownUpload(id.to_owned()))
            }
            Err(e) => Err(StorageError::Io {
                what: format!("opening upload {id}"),
                source: e,
            }),
        }
    }

    async fn commit_upload(&self, id: &str, digest: &Digest) -> StorageResult<()> {
        let path = self.upload_path(id)?;
        let store = self.clone();
        let digest = digest.clone();
        let id = id.to_owned();
        blocking(move || {
            let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => StorageError::UnknownUpload(id.clone()),
                _ => StorageError::Io {
                    what: format!("opening upload {id}"),
                    source: e,
                },
            })?;
            file.sync_all()
                .map_err(StorageError::io(format!("syncing upload {id}")))?;
            store.install(&path, &digest)
        })
        .await
    }

    async fn delete_upload(&self, id: &str) -> StorageResult<()> {
        let path = self.upload_path(id)?;
        not_found_is_none(tokio::fs::remove_file(&path).await)
            .map_err(StorageError::io(format!("removing upload {id}")))?;
        Ok(())
    }

    async fn list_uploads(&self) -> StorageResult<Vec<(String, u64)>> {
        let dir = self.root.join("uploads");
        blocking(move || {
            let now = SystemTime::now();
            let mut uploads = Vec::new();
            let entries = std::fs::read_dir(&dir)
                .map_err(StorageError::io(format!("listing {}", dir.display())))?;
            for entry in entries {
                let entry =
                    entry.map_err(StorageError::io(format!("listing {}", dir.display())))?;
                let Some(meta) = not_found_is_none(entry.metadata())
                    .map_err(StorageError::io("stat of an upload"))?
                else {
                    continue;
                };
                let age = age_seconds(&meta, now);
                uploads.push((entry.file_name().to_string_lossy().into_owned(), age));
            }
            Ok(uploads)
        })
        .await
    }

    async fn delete(&self, digest: &Digest) -> StorageResult<()> {
        not_found_is_none(tokio::fs::remove_file(self.blob_path(digest)).await)
            .map_err(StorageError::io(format!("removing blob {digest}")))?;
        Ok(())
    }

    async fn delete_many(&self, digests: &[Digest]) -> StorageResult<()> {
        let paths: Vec<(Digest, PathBuf)> = digests
            .iter()
            .map(|d| (d.clone(), self.blob_path(d)))
            .collect();
        blocking(move || {
            for (digest, path) in paths {
                not_found_is_none(std::fs::remove_file(&path))
                    .map_err(StorageError::io(format!("removing blob {digest}")))?;
            }
            Ok(())
        })
        .await
    }

    async fn list_blobs(&self) -> StorageResult<Vec<StoredBlob>> {
        let root = self.root.join("blobs");
        blocking(move || {
            let now = SystemTime::now();
            let mut out = Vec::new();
            for algorithm in read_dir_names(&root)? {
                for prefix in read_dir_names(&root.join(&algorithm))? {
                    let dir = root.join(&algorithm).join(&prefix);
                    for name in read_dir_names(&dir)? {
                        let Ok(digest) = format!("{algorithm}:{name}").parse::<Digest>() else {
                            continue;
                        };
                        let Some(meta) = not_found_is_none(std::fs::metadata(dir.join(&name)))
                            .map_err(StorageError::io(format!("stat of blob {digest}")))?
                        else {
                            continue;
                        };
                        out.push(StoredBlob {
                            digest,
                            size: meta.len(),
                            age: age_seconds(&meta, now),
                        });
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

/// Seconds since a file was last written (0 if the clock went backwards).
fn age_seconds(meta: &std::fs::Metadata, now: SystemTime) -> u64 {
    meta.modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .map_or(0, |d| d.as_secs())
}

fn read_dir_names(dir: &Path) -> StorageResult<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(StorageError::Io {
                what: format!("listing {}", dir.display()),
                source: e,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(StorageError::io(format!("listing {}", dir.display())))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}
