//! Image references as docker writes them: `host[:port]/repository[:tag][@digest]`.
//!
//! Unlike docker there is no default registry: berth pulls from the registry the reference
//! names, so a bare `busybox` is an error rather than a silent trip to Docker Hub.

use std::fmt;
use std::str::FromStr;

use berth_oci::{Digest, RepositoryName, Tag};

/// The tag used when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// No registry host in front of the repository.
    #[error("image reference {0:?} names no registry: write it as host[:port]/repository[:tag], e.g. registry.example.com/{0}")]
    NoRegistry(String),
    /// The repository part is invalid.
    #[error("image reference {reference:?}: {message}")]
    Invalid {
        /// The reference as given.
        reference: String,
        /// What is wrong.
        message: String,
    },
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`, as written (IPv6 in brackets).
    pub registry: String,
    /// The repository inside the registry.
    pub repository: RepositoryName,
    /// The tag; `latest` when neither tag nor digest was given.
    pub tag: Option<Tag>,
    /// The manifest digest, when pinned by digest.
    pub digest: Option<Digest>,
}

impl Reference {
    /// What to ask the registry's manifest endpoint for: the digest if any, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.to_string(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// The registry host without its port.
    pub fn host(&self) -> &str {
        if let Some(rest) = self.registry.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        self.registry.split(':').next().unwrap_or(&self.registry)
    }

    /// Whether the registry is on a loopback address, where plain HTTP is used.
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host == "localhost" || host.starts_with("127.") || host == "::1"
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |message: String| ReferenceError::Invalid {
            reference: s.to_owned(),
            message,
        };
        let (name, digest) = match s.split_once('@') {
            Some((name, digest)) => (
                name,
                Some(
                    digest
                        .parse::<Digest>()
                        .map_err(|e| invalid(e.to_string()))?,
                ),
            ),
            None => (s, None),
        };
        // A tag follows the last ':' only if no '/' comes after it (else it is a port).
        let (name, tag) = match name.rfind(':') {
            Some(colon) if !name[colon..].contains('/') && !name[colon..].contains(']') => {
                let tag = name[colon + 1..]
                    .parse::<Tag>()
                    .map_err(|e| invalid(e.to_string()))?;
                (&name[..colon], Some(tag))
            }
            _ => (name, None),
        };
        let Some((registry, repository)) = name.split_once('/') else {
            return Err(ReferenceError::NoRegistry(s.to_owned()));
        };
        let looks_like_host = registry.contains('.')
            || registry.contains(':')
            || registry.starts_with('[')
            || registry == "localhost";
        if !looks_like_host {
            return Err(ReferenceError::NoRegistry(s.to_owned()));
        }
        let repository = repository
            .parse::<RepositoryName>()
            .map_err(|e| invalid(e.to_string()))?;
        let tag = match (tag, &digest) {
            (None, None) => Some(
                DEFAULT_TAG
                    .parse::<Tag>()
                    .map_err(|e| invalid(e.to_string()))?,
            ),
            (tag, _) => tag,
        };
        Ok(Reference {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }
}
