//! Content-addressed blob storage behind the `BlobStore` trait: the filesystem now, object
//! storage later. A blob becomes visible only complete and verified: uploads are written
//! aside, fsynced, and renamed into place by `commit_upload`.

mod fs;
#[cfg(test)]
mod tests;

use std::pin::Pin;

use async_trait::async_trait;
use berth_oci::Digest;
use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

pub use fs::FsBlobStore;

/// A failure of the storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The upload session does not exist (never created, cancelled, or committed).
    #[error("upload {0} does not exist")]
    UnknownUpload(String),
}

impl StorageError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
        let what = what.into();
        move |source| StorageError::Io { what, source }
    }
}

/// Storage result.
pub type StorageResult<T> = Result<T, StorageError>;

/// A stream of blob bytes.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// Where a blob read starts and how much it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Number of bytes.
    pub len: u64,
}

/// Content-addressed storage of blobs and of in-progress uploads.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The size of a committed blob, or `None` when it is not stored.
    async fn stat(&self, digest: &Digest) -> StorageResult<Option<u64>>;

    /// Reads a committed blob, whole or a range of it; `None` when it is not stored.
    async fn read(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> StorageResult<Option<BlobReader>>;

    /// Reads a small committed blob (a manifest) into memory.
    async fn read_all(&self, digest: &Digest) -> StorageResult<Option<Bytes>>;

    /// Stores `data`, whose digest the caller has verified, durably and atomically.
    async fn put(&self, digest: &Digest, data: Bytes) -> StorageResult<()>;

    /// Creates an empty upload.
    async fn create_upload(&self, id: &str) -> StorageResult<()>;

    /// The number of bytes an upload holds; `None` when it does not exist.
    async fn upload_len(&self, id: &str) -> StorageResult<Option<u64>>;

    /// Appends every chunk received on `chunks` to an upload until the sender is dropped;
    /// returns the upload's new length.
    async fn append(&self, id: &str, chunks: mpsc::Receiver<Bytes>) -> StorageResult<u64>;

    /// Reads an upload's content so far (to re-hash it after a restart).
    async fn read_upload(&self, id: &str) -> StorageResult<BlobReader>;

    /// Makes a verified upload the blob `digest`, durably; the upload is gone afterwards.
    /// Committing content that is already stored keeps the stored copy.
    async fn commit_upload(&self, id: &str, digest: &Digest) -> StorageResult<()>;

    /// Removes an upload and its data; removing an unknown upload is not an error.
    async fn delete_upload(&self, id: &str) -> StorageResult<()>;

    /// Every upload with its age in seconds since it was last written.
    async fn list_uploads(&self) -> StorageResult<Vec<(String, u64)>>;

    /// Removes a blob; removing an absent blob is not an error.
    async fn delete(&self, digest: &Digest) -> StorageResult<()>;

    /// Removes many blobs at once (garbage collection).
    async fn delete_many(&self, digests: &[Digest]) -> StorageResult<()> {
        for digest in digests {
            self.delete(digest).await?;
        }
        Ok(())
    }

    /// Every stored blob with its size and its age in seconds since it was written.
    async fn list_blobs(&self) -> StorageResult<Vec<StoredBlob>>;
}

/// A blob as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Seconds since it was last written.
    pub age: u64,
}
