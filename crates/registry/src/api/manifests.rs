//! Manifest push, pull and delete, by tag or by digest.

use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::{Descriptor, Digest, Hasher, Manifest, RepositoryName, Tag};

use super::{empty, header_value, parse_digest, Call, Registry, CONTENT_DIGEST, OCI_SUBJECT};
use crate::auth::Access;
use crate::error::{ApiError, ApiResult, Code};
use crate::metadata::{ManifestRecord, ManifestRejection, NewManifest, Pinned};

/// A manifest reference: a tag or a digest.
enum Reference {
    Tag(Tag),
    Digest(Digest),
}

fn parse_reference(reference: &str) -> ApiResult<Reference> {
    if reference.contains(':') {
        parse_digest(reference).map(Reference::Digest)
    } else {
        reference
            .parse::<Tag>()
            .map(Reference::Tag)
            .map_err(|e| ApiError::new(Code::ManifestInvalid, e.to_string()))
    }
}

fn manifest_unknown(repo: &RepositoryName, reference: &str) -> ApiError {
    ApiError::new(
        Code::ManifestUnknown,
        format!("manifest {reference} is not in {repo}"),
    )
}

/// A reading or deleting request names a manifest by `reference`: a tag or digest, or
/// `Err` with the MANIFEST_UNKNOWN to answer (once the caller is allowed to know) for a
/// reference that is neither, which can name nothing here. distribution answers 404 to
/// those too, and the distribution-spec conformance tests expect it.
fn existing_reference(repo: &RepositoryName, reference: &str) -> Result<Reference, ApiError> {
    parse_reference(reference).map_err(|e| {
        ApiError::new(
            Code::ManifestUnknown,
            format!(
                "manifest {reference:?} is not in {repo}: it is neither a tag nor a digest ({})",
                e.message
            ),
        )
    })
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`
pub(super) async fn get(
    registry: &Registry,
    call: &Call,
    repo: &RepositoryName,
    reference: &str,
) -> ApiResult<Response> {
    let parsed = existing_reference(repo, reference);
    registry.require(call, repo, Access::Pull)?;
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(unknown) => return Err(registry.unknown(repo, unknown).await),
    };
    let r = repo.to_string();
    let found = registry
        .blocking_meta(move |m| {
            let digest = match &parsed {
                Reference::Digest(d) => Some(d.clone()),
                Reference::Tag(t) => m.tag(&r, t.as_str())?,
            };
            let Some(digest) = digest else {
                return Ok(None);
            };
            Ok::<_, crate::metadata::MetadataError>(
                m.manifest(&r, &digest)?.map(|record| (digest, record)),
            )
        })
        .await?;
    let Some((digest, record)) = found else {
        return Err(registry
            .unknown(repo, manifest_unknown(repo, reference))
            .await);
    };
    if call.method == Method::GET && !reference.contains(':') {
        registry.note_pull(repo.as_str(), reference);
    }
    let body = if call.method == Method::HEAD {
        Body::empty()
    } else {
        let bytes = registry.store.read_all(&digest).await?.ok_or_else(|| {
            ApiError::internal(format!(
                "manifest {digest} is recorded but missing from storage"
            ))
        })?;
        Body::from(bytes)
    };
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(&record.media_type));
    h.insert(
        header::CONTENT_LENGTH,
        header_value(&record.size.to_string()),
    );
    h.insert(CONTENT_DIGEST, header_value(&digest.to_string()));
    h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
    Ok(response)
}

/// `PUT /v2/<name>/manifests/<reference>`
pub(super) async fn put(
    registry: &Registry,
    call: &Call,
    repo: &RepositoryName,
    reference: &str,
    body: Body,
) -> ApiResult<Response> {
    let parsed = parse_reference(reference)?;
    registry.require(call, repo, Access::Push)?;
    let limit = registry.limits.max_manifest_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            Code::SizeInvalid,
            format!("manifest is larger than this registry's limit of {limit} bytes"),
        )
        .status(StatusCode::PAYLOAD_TOO_LARGE)
    })?;
    let digest = {
        let algorithm = match &parsed {
            Reference::Digest(d) => d.algorithm(),
            Reference::Tag(_) => berth_oci::Algorithm::Sha256,
        };
        let mut hasher = Hasher::new(algorithm);
        hasher.update(&bytes);
        hasher.finish()
    };
    if let Reference::Digest(expected) = &parsed {
        if *expected != digest {
            return Err(ApiError::new(
                Code::DigestInvalid,
                format!("manifest content has digest {digest}, not {expected}"),
            ));
        }
    }
    let content_type = call
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let manifest = Manifest::parse(content_type, &bytes)
        .map_err(|e| ApiError::new(Code::ManifestInvalid, e.to_string()))?;
    let record = ManifestRecord {
        media_type: manifest.media_type.clone(),
        size: bytes.len() as u64,
        created: 0, // set when stored
        subject: manifest.subject.as_ref().map(|s| s.digest.clone()),
        references: manifest
            .blobs
            .iter()
            .chain(&manifest.manifests)
            .map(|d| d.digest.clone())
            .collect(),
    };
    let referrer = manifest.subject.as_ref().map(|_| Descriptor {
        media_type: manifest.media_type.clone(),
        digest: digest.clone(),
        size: bytes.len() as u64,
        artifact_type: manifest.artifact_type.clone(),
        annotations: manifest.annotations.clone(),
        urls: None,
    });
    // Only a repository with a quota pays for the lookup; a re-push adds nothing.
    let counts_against_quota = registry.quota(repo.as_str()).is_some() && {
        let (r, d) = (repo.to_string(), digest.clone());
        registry
            .blocking_meta(move |m| m.manifest(&r, &d))
            .await?
            .is_none()
    };
    if counts_against_quota {
        registry.check_quota(repo, bytes.len() as u64).await?;
    }
    let _installing = registry.blob_locks.lock(&digest).await;
    registry.store.put(&digest, bytes).await?;
    let r = repo.to_string();
    let d = digest.clone();
    let tag = match &parsed {
        Reference::Tag(t) => Some(t.to_string()),
        Reference::Digest(_) => None,
    };
    // Non-distributable layers with URLs are fetched from there, not from here: a push
    // need not include them (as distribution does), and they are recorded as references so
    // that a copy pushed here anyway is kept with the manifest.
    let required: Vec<Descriptor> = manifest.required_blobs().cloned().collect();
    let external: Vec<Descriptor> = manifest.external_layers().cloned().collect();
    let outcome = registry
        .blocking_meta({
            let children = manifest.manifests.clone();
            move |m| {
                m.put_manifest(NewManifest {
                    repo: &r,
                    digest: &d,
                    tag: tag.as_deref(),
                    record,
                    blobs: &required,
                    external: &external,
                    manifests: &children,
                    referrer,
                })
            }
        })
        .await?;
    match outcome {
        Ok(()) => {}
        Err(ManifestRejection::MissingBlob(missing)) => {
            return Err(ApiError::new(
                Code::ManifestBlobUnknown,
                format!(
                    "manifest references blob {missing}, which is not in {repo}; push it first"
                ),
            )
            .detail(serde_json::json!({"digest": missing.to_string()})))
        }
        Err(ManifestRejection::MissingManifest(missing)) => {
            return Err(ApiError::new(
                Code::ManifestBlobUnknown,
                format!(
                    "index references manifest {missing}, which is not in {repo}; push it first"
                ),
            )
            .detail(serde_json::json!({"digest": missing.to_string()})))
        }
        Err(ManifestRejection::SizeMismatch {
            digest: blob,
            declared,
            stored,
        }) => {
            return Err(ApiError::new(
                Code::ManifestInvalid,
                format!("manifest says blob {blob} has {declared} bytes, but it has {stored}"),
            ))
        }
    }
    tracing::info!(%digest, %repo, reference, "manifest pushed");
    let mut headers = vec![
        (header::LOCATION, format!("/v2/{repo}/manifests/{digest}")),
        (CONTENT_DIGEST, digest.to_string()),
    ];
    if let Some(subject) = &manifest.subject {
        headers.push((OCI_SUBJECT, subject.digest.to_string()));
    }
    Ok(empty(StatusCode::CREATED, &headers))
}

/// `DELETE /v2/<name>/manifests/<reference>`: by digest removes the manifest and its tags,
/// by tag removes only the tag.
pub(super) async fn delete(
    registry: &Registry,
    call: &Call,
    repo: &RepositoryName,
    reference: &str,
) -> ApiResult<Response> {
    let parsed = existing_reference(repo, reference);
    registry.require(call, repo, Access::Push)?;
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(unknown) => return Err(registry.unknown(repo, unknown).await),
    };
    let r = repo.to_string();
    let removed = registry
        .blocking_meta(move |m| match &parsed {
            Reference::Digest(d) => m.delete_manifest(&r, d),
            Reference::Tag(t) => m.delete_tag(&r, t.as_str()).map(Ok),
        })
        .await?
        .map_err(|Pinned(pin)| {
            ApiError::new(
                Code::Denied,
                format!(
                    "manifest {reference} is pinned ({}); unpin it before deleting it",
                    pin.reason
                ),
            )
        })?;
    if !removed {
        return Err(registry
            .unknown(repo, manifest_unknown(repo, reference))
            .await);
    }
    tracing::info!(%repo, reference, "manifest deleted");
    Ok(empty(StatusCode::ACCEPTED, &[]))
}
