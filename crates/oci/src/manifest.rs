//! Manifest parsing and validation for the registry: which media type a pushed manifest has,
//! which blobs and manifests it references, its subject and its artifact type.
//!
//! Docker schema 2 manifests and manifest lists share their shape with OCI image manifests and
//! indexes, so one set of serde types serves both families.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::media_type::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, EXTERNAL_LAYER_TYPES, MANIFEST_TYPES, OCI_INDEX,
    OCI_MANIFEST,
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
    /// A descriptor's `urls` holds something clients cannot fetch.
    #[error("layer {digest} lists URL {url:?}, which is not usable: {reason} (layer URLs must be absolute http:// or https:// URLs without a fragment)")]
    LayerUrl {
        /// The layer.
        digest: Digest,
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
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
    /// Where else the content may be fetched from (non-distributable and foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

impl Descriptor {
    /// Whether this layer is one clients fetch from its `urls` rather than from the
    /// registry: a non-distributable (or Docker foreign) layer that lists where it lives.
    /// A registry need not hold such a layer; one without `urls` is an ordinary blob.
    pub fn is_external_layer(&self) -> bool {
        EXTERNAL_LAYER_TYPES.contains(&self.media_type.as_str())
            && self.urls.as_ref().is_some_and(|urls| !urls.is_empty())
    }
}

/// Why `url` cannot be a layer URL, if it cannot.
fn url_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Some("it is not an http:// or https:// URL");
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("it contains whitespace or control characters");
    }
    if url.contains('#') {
        return Some("it has a fragment");
    }
    if rest.split(['/', '?']).next().is_none_or(str::is_empty) {
        return Some("it names no host");
    }
    None
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
    /// The blobs an image manifest is made of: its config, then its layers (external ones
    /// included, see [`Manifest::external_layers`]).
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
        for blob in &blobs {
            for url in blob.urls.iter().flatten() {
                if let Some(reason) = url_problem(url) {
                    return Err(ManifestError::LayerUrl {
                        digest: blob.digest.clone(),
                        url: url.clone(),
                        reason,
                    });
                }
            }
        }
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

impl Manifest {
    /// The layers of an image manifest (none for an index).
    pub fn layers(&self) -> &[Descriptor] {
        match self.kind {
            ManifestKind::Image => self.blobs.get(1..).unwrap_or_default(),
            ManifestKind::Index => &[],
        }
    }

    /// Blobs the registry must hold for the manifest to be stored: the config and every
    /// layer but the external ones.
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        let config = match self.kind {
            ManifestKind::Image => self.blobs.first(),
            ManifestKind::Index => None,
        };
        config.into_iter().chain(
            self.layers()
                .iter()
                .filter(|layer| !layer.is_external_layer()),
        )
    }

    /// Layers clients fetch from their `urls` (non-distributable and foreign layers): a
    /// registry need not hold them, and checks them only when it does.
    pub fn external_layers(&self) -> impl Iterator<Item = &Descriptor> {
        self.layers()
            .iter()
            .filter(|layer| layer.is_external_layer())
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

    fn with_layers(layers: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
               "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
               "layers":[{layers}]}}"#,
            digest(1)
        )
    }

    fn layer(media_type: &str, n: u8, urls: &str) -> String {
        format!(
            r#"{{"mediaType":"{media_type}","digest":"{}","size":9{urls}}}"#,
            digest(n)
        )
    }

    #[test]
    fn external_layers_are_the_non_distributable_ones_with_urls() {
        let urls = r#","urls":["https://store.example.com/blobs/x"]"#;
        let layers = [
            layer(crate::media_type::OCI_NONDISTRIBUTABLE_LAYER_GZIP, 2, urls),
            layer(crate::media_type::OCI_NONDISTRIBUTABLE_LAYER, 3, urls),
            layer(crate::media_type::OCI_NONDISTRIBUTABLE_LAYER_ZSTD, 4, urls),
            layer(crate::media_type::DOCKER_FOREIGN_LAYER, 5, urls),
            // Without `urls` a non-distributable layer can only come from the registry.
            layer(crate::media_type::OCI_NONDISTRIBUTABLE_LAYER_GZIP, 6, ""),
            // `urls` on an ordinary layer do not make it optional.
            layer("application/vnd.oci.image.layer.v1.tar+gzip", 7, urls),
        ]
        .join(",");
        let m =
            Manifest::parse(Some(OCI_MANIFEST), with_layers(&layers).as_bytes()).expect("valid");
        assert_eq!(
            m.blobs.len(),
            7,
            "every layer is still one of the image's blobs"
        );
        let external: Vec<String> = m.external_layers().map(|d| d.digest.to_string()).collect();
        assert_eq!(external, [digest(2), digest(3), digest(4), digest(5)]);
        let required: Vec<String> = m.required_blobs().map(|d| d.digest.to_string()).collect();
        assert_eq!(required, [digest(1), digest(6), digest(7)]);
    }

    #[test]
    fn a_config_is_never_external() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[]}}"#,
            layer(
                crate::media_type::OCI_NONDISTRIBUTABLE_LAYER,
                1,
                r#","urls":["https://example.com/c"]"#
            )
        );
        let m = Manifest::parse(Some(OCI_MANIFEST), body.as_bytes()).expect("valid");
        assert_eq!(m.required_blobs().count(), 1);
        assert_eq!(m.external_layers().count(), 0);
    }

    #[test]
    fn layer_urls_must_be_fetchable() {
        for (url, reason) in [
            (
                "ftp://example.com/x",
                "it is not an http:// or https:// URL",
            ),
            ("/blobs/x", "it is not an http:// or https:// URL"),
            ("https://", "it names no host"),
            ("https:///x", "it names no host"),
            ("https://example.com/x#frag", "it has a fragment"),
            (
                "https://example.com/a b",
                "it contains whitespace or control characters",
            ),
        ] {
            let urls = format!(r#","urls":[{}]"#, serde_json::json!(url));
            let body = with_layers(&layer(
                crate::media_type::OCI_NONDISTRIBUTABLE_LAYER_GZIP,
                2,
                &urls,
            ));
            let err = Manifest::parse(Some(OCI_MANIFEST), body.as_bytes()).expect_err(url);
            assert_eq!(
                err.to_string(),
                format!(
                    "layer {} lists URL {url:?}, which is not usable: {reason} (layer URLs must be absolute http:// or https:// URLs without a fragment)",
                    digest(2)
                )
            );
        }
    }
}
