//! OCI building blocks shared by berth's registry, runtime and deployer: content digests,
//! media types, repository names and tags, manifest validation, and safe layer unpacking.
//! No network I/O here.

pub mod beneath;
pub mod digest;
pub mod layer;
pub mod manifest;
pub mod media_type;
pub mod name;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use manifest::{Descriptor, Manifest, ManifestError, ManifestKind};
pub use name::{NameError, RepositoryName, Tag};
