//! The node's image store: pulling images from any OCI registry into content-addressed layer
//! snapshots that images share, and cleaning them up again.
//!
//! Layout under the store root (normally `<berth root>/images`):
//!
//! ```text
//! index.json                 every image: id, references, config, layers, sizes, times, pin
//! .lock                      flock held while index.json is rewritten
//! snapshots/<algo>-<hex>/    one unpacked layer, keyed by its (compressed) digest
//! downloads/<hex>.partial    a blob being downloaded; resumed with a Range request
//! locks/<algo>-<hex>.unpack  flock: one process downloads and unpacks a layer at a time
//! locks/<algo>-<hex>.use     flock: shared by pulls using the layer, exclusive for removal
//! ```
//!
//! A snapshot appears by a rename of a fully unpacked staging directory and disappears by a
//! rename to a hidden name before it is deleted, so a crash never leaves a half-unpacked
//! snapshot under its real name. An image is recorded only after all its snapshots exist.

mod client;
mod config;
mod credentials;
mod locks;
mod prune;
mod pull;
mod reference;
mod store;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use berth_oci::Digest;
use serde::{Deserialize, Serialize};

pub use config::{ConfigError, ImageConfig};
pub use credentials::{
    default_auth_files, lookup as lookup_credentials, read_auth_file_user, write_auth_file,
    Credentials,
};
pub use prune::{select_for_prune, PrunePolicy};
pub use reference::{Reference, ReferenceError};
pub use store::{in_use_by_containers, ImageStore, PruneReport, RemoveReport};

/// One image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The digest of the image manifest (for a multi-platform image: of the platform's
    /// manifest, not of the index).
    pub id: Digest,
    /// Every reference (`host/repo:tag`, or `host/repo@digest` when pulled by digest) that
    /// points at this image. Empty once all were moved to newer images.
    pub references: Vec<String>,
    /// The digest of the image config blob.
    pub config_digest: Digest,
    /// What the config says about running the image.
    pub config: ImageConfig,
    /// Layer digests, bottom layer first.
    pub layers: Vec<Digest>,
    /// Unpacked bytes of each layer, in the order of `layers`.
    pub layer_sizes: Vec<u64>,
    /// Total unpacked size in bytes (shared layers counted in full).
    pub size: u64,
    /// When the image was pulled into this store (unix seconds).
    pub created: u64,
    /// When a container was last created from it (unix seconds); 0 for never.
    pub last_used: u64,
    /// Pinned images are never pruned nor removed.
    pub pinned: bool,
}

impl Image {
    /// The time the image was last touched: used, or else pulled.
    pub fn last_activity(&self) -> u64 {
        self.last_used.max(self.created)
    }
}

/// Reports what a pull does, e.g. to draw progress bars. Every method has an empty default.
pub trait PullProgress: Send + Sync {
    /// The manifest was resolved: the image id and the layers to fetch.
    fn resolved(&self, _reference: &str, _id: &Digest, _layers: &[(Digest, u64)]) {}
    /// A layer download starts, `already` bytes of `total` being on disk from an earlier try.
    fn layer_started(&self, _digest: &Digest, _total: u64, _already: u64) {}
    /// `bytes` more bytes of a layer arrived.
    fn layer_progress(&self, _digest: &Digest, _bytes: u64) {}
    /// A layer is in the store.
    fn layer_done(&self, _digest: &Digest, _outcome: LayerOutcome) {}
}

/// How a layer came to be in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerOutcome {
    /// Downloaded, verified and unpacked by this pull.
    Pulled,
    /// A snapshot existed already (shared with another image or unpacked by another pull).
    AlreadyPresent,
}

/// How to pull.
#[derive(Clone)]
pub struct PullOptions {
    /// Credentials for the registry; when `None` they are looked up in `auth_files`.
    pub credentials: Option<Credentials>,
    /// Files in the `~/.docker/config.json` format whose `auths` are consulted, first match
    /// wins.
    pub auth_files: Vec<PathBuf>,
    /// Talk plain HTTP to a registry that is not on a loopback address.
    pub insecure: bool,
    /// How often an interrupted blob download is resumed within one pull.
    pub retries: u32,
    /// How many layers download at once.
    pub parallel_layers: usize,
    /// Timeout for connecting and for each response to start arriving.
    pub timeout: Duration,
    /// Receives progress events.
    pub progress: Option<std::sync::Arc<dyn PullProgress>>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            credentials: None,
            auth_files: default_auth_files(),
            insecure: false,
            retries: 2,
            parallel_layers: 3,
            timeout: Duration::from_secs(30),
            progress: None,
        }
    }
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("credentials", &self.credentials.as_ref().map(|_| "<set>"))
            .field("auth_files", &self.auth_files)
            .field("insecure", &self.insecure)
            .field("retries", &self.retries)
            .field("parallel_layers", &self.parallel_layers)
            .finish_non_exhaustive()
    }
}

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Store files cannot be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The index file is corrupt.
    #[error("image index {path} is not valid: {source}; restore it or remove it and pull again")]
    Index {
        /// The file.
        path: String,
        /// What is wrong.
        source: serde_json::Error,
    },
    /// The registry cannot be reached or the connection broke.
    #[error("cannot talk to registry {registry}: {message}")]
    Connection {
        /// host[:port].
        registry: String,
        /// What happened, with a hint.
        message: String,
    },
    /// The registry answered with an error.
    #[error("registry {registry} answered {status} for {what}: {message}")]
    Registry {
        /// host[:port].
        registry: String,
        /// The HTTP status.
        status: u16,
        /// What was requested.
        what: String,
        /// The registry's message.
        message: String,
    },
    /// The registry wants credentials we do not have or refused ours.
    #[error("registry {registry} refused access to {repository}: {message}")]
    Unauthorized {
        /// host[:port].
        registry: String,
        /// The repository.
        repository: String,
        /// What to do.
        message: String,
    },
    /// The manifest or tag does not exist.
    #[error("image {0} not found: check the repository name and tag")]
    NotFound(String),
    /// Content does not match its digest.
    #[error("{what} {expected} does not match its digest (got {actual}): the registry sent corrupt or tampered content; nothing was stored")]
    DigestMismatch {
        /// Manifest, config or layer.
        what: &'static str,
        /// The digest it should have.
        expected: Digest,
        /// The digest it has.
        actual: String,
    },
    /// A manifest is malformed or of a kind berth cannot run.
    #[error("manifest of {reference}: {message}")]
    Manifest {
        /// The reference pulled.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// An index lists no image for this host.
    #[error("{reference} has no image for linux/{architecture} (it offers: {available}); pull an image built for this host")]
    NoMatchingPlatform {
        /// The reference pulled.
        reference: String,
        /// This host's architecture.
        architecture: String,
        /// The platforms the index lists.
        available: String,
    },
    /// The image config is malformed.
    #[error("config {digest}: {source}")]
    Config {
        /// The config digest.
        digest: Digest,
        /// What is wrong.
        source: ConfigError,
    },
    /// A layer cannot be unpacked.
    #[error("layer {digest} cannot be unpacked: {source}")]
    Unpack {
        /// The layer digest.
        digest: Digest,
        /// Why.
        source: berth_oci::layer::LayerError,
    },
    /// No image matches.
    #[error("no image {0} in the store: see `berth images`")]
    UnknownImage(String),
    /// An id prefix matches several images.
    #[error("id prefix {0} matches several images: give more digits")]
    AmbiguousId(String),
    /// The image is used by containers.
    #[error("image {0} is used by a container: remove the container first")]
    InUse(String),
    /// The image is pinned.
    #[error("image {0} is pinned: run `berth image unpin` first")]
    Pinned(String),
    /// A blocking task panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ImageError {
    fn io(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }
}
