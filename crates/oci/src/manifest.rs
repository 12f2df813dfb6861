//! Manifest parsing and validation for the registry: which media type a pushed manifest has,
//! which blobs and manifests it references, its subject and its artifact type.
//!
//! Docker schema 2 manifests and manifest lists share their shape with OCI image manifests and
//! indexes, so one set of serde types serves both families.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::media_type::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST,
};
use crate::Digest;

/// Why a manifest is rejected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The body is not JSON of the expected shape.
    #[error("manifest is not valid JSON of its media type: {0}")]
    Json(#[from] serde_json::Error),
    /// The media type is not one berth stores.
    #[error("unsupported manifest media type {0:?} (supported: OCI image manifest and index, Docker schema 2 manifest and manifest list)")]
    UnsupportedMediaType(String),
    /// Content-Type and the body's `mediaType` disagree.
    #[error("Content-Type {content_type:?} does not match the manifest's mediaType {body:?}")]
    MediaTypeMismatch {
        /// The request's Content-Type.
        content_type: String,
        /// The `mediaType` field in the body.
        body: String,
    },
    /// `schemaVersion` is not 2.
    #[error("schemaVersion must be 2, found {0}")]
    SchemaVersion(u64),
}

/// A content descriptor, as listed in manifests and in referrers responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Artifact type, for artifact manifests and referrers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Whether a manifest describes one image (or artifact) or a list of manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// Image manifest: config + layers.
    Image,
    /// Index / manifest list: child manifests.
    Index,
}

/// What the registry needs to know about a manifest it stores.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The effective media type.
    pub media_type: String,
    /// Image or index.
    pub kind: ManifestKind,
    /// Blobs that must exist in the repository: the config and layers of an image manifest.
    pub blobs: Vec<Descriptor>,
    /// Manifests that must exist in the repository: the children of an index.
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to (referrers API).
    pub subject: Option<Descriptor>,
    /// `artifactType`, or for image manifests without one the config's media type.
    pub artifact_type: Option<String>,
    /// Top-level annotations.
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    schema_version: u64,
    media_type: Option<String>,
    artifact_type: Option<String>,
    manifests: Option<serde_json::Value>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageWire {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct IndexWire {
    manifests: Vec<Descriptor>,
}

impl Manifest {
    /// Parses and validates a manifest pushed with `content_type` (parameters ignored).
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Manifest, ManifestError> {
        let wire: Wire = serde_json::from_slice(body)?;
        if wire.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(wire.schema_version));
        }
        let content_type = content_type
            .map(|ct| ct.split(';').next().unwrap_or_default().trim())
            .filter(|ct| MANIFEST_TYPES.contains(ct));
        let media_type = match (content_type, wire.media_type.as_deref()) {
            (Some(ct), Some(body)) if ct != body => {
                return Err(ManifestError::MediaTypeMismatch {
                    content_type: ct.to_owned(),
                    body: body.to_owned(),
                })
            }
            (Some(ct), _) => ct.to_owned(),
            (None, Some(body)) => body.to_owned(),
            (None, None) if wire.manifests.is_some() => OCI_INDEX.to_owned(),
            (None, None) => OCI_MANIFEST.to_owned(),
        };
        let kind = match media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => ManifestKind::Image,
            OCI_INDEX | DOCKER_MANIFEST_LIST => ManifestKind::Index,
            _ => return Err(ManifestError::UnsupportedMediaType(media_type)),
        };
        // Re-read with the fields the kind requires, so a missing `config` or `manifests`
        // is reported by serde with its path.
        let (blobs, manifests, artifact_type) = match kind {
            ManifestKind::Image => {
                let image: ImageWire = serde_json::from_slice(body)?;
                let artifact_type = wire
                    .artifact_type
                    .clone()
                    .or_else(|| Some(image.config.media_type.clone()));
                let mut blobs = vec![image.config];
                blobs.extend(image.layers);
                (blobs, Vec::new(), artifact_type)
            }
            ManifestKind::Index => {
                let index: IndexWire = serde_json::from_slice(body)?;
                (Vec::new(), index.manifests, wire.artifact_type.clone())
            }
        };
        Ok(Manifest {
            media_type,
            kind,
            blobs,
            manifests,
            subject: wire.subject,
            artifact_type,
            annotations: wire.annotations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        Digest::sha256(&[n]).to_string()
    }

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
               "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
               "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}}]{extra}}}"#,
            digest(1),
            digest(2)
        )
    }

    #[test]
    fn image_manifest_lists_config_and_layers() {
        let m = Manifest::parse(Some(OCI_MANIFEST), image("").as_bytes()).expect("valid");
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(m.blobs[1].size, 3);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert!(m.subject.is_none());
    }

    #[test]
    fn subject_and_artifact_type() {
        let extra = format!(
            r#","artifactType":"application/x.sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9}}"#,
            digest(3)
        );
        let m = Manifest::parse(Some(OCI_MANIFEST), image(&extra).as_bytes()).expect("valid");
        assert_eq!(m.artifact_type.as_deref(), Some("application/x.sig"));
        assert_eq!(m.subject.expect("subject").digest.to_string(), digest(3));
    }

    #[test]
    fn index_lists_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":5,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            digest(4)
        );
        let m = Manifest::parse(Some(DOCKER_MANIFEST_LIST), body.as_bytes()).expect("valid");
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.manifests.len(), 1);
    }

    #[test]
    fn media_type_inferred_without_content_type() {
        let body = r#"{"schemaVersion":2,"manifests":[]}"#;
        let m = Manifest::parse(Some("application/json"), body.as_bytes()).expect("valid");
        assert_eq!(m.media_type, OCI_INDEX);
    }

    #[test]
    fn rejects_invalid_manifests() {
        let cases: Vec<(Option<&str>, String)> = vec![
            (Some(OCI_MANIFEST), "not json".into()),
            (Some(OCI_MANIFEST), r#"{"schemaVersion":1}"#.into()),
            (
                Some(OCI_MANIFEST),
                r#"{"schemaVersion":2,"layers":[]}"#.into(),
            ),
            (Some(OCI_INDEX), r#"{"schemaVersion":2}"#.into()),
            (Some(OCI_INDEX), image("")),
            (
                Some(OCI_MANIFEST),
                image("").replace(&digest(2), "sha256:nothex"),
            ),
            (
                Some(OCI_MANIFEST),
                image("").replace("\"size\":3", "\"size\":-3"),
            ),
            (
                None,
                image("").replace(
                    OCI_MANIFEST,
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                ),
            ),
        ];
        for (ct, body) in cases {
            assert!(
                Manifest::parse(ct, body.as_bytes()).is_err(),
                "accepted {body}"
            );
        }
    }
}
