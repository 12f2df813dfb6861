//! Blob uploads: monolithic (POST with digest), POST then PUT, chunked PATCHes with in-order
//! enforcement, cancel, and cross-repository mounts.
//!
//! A session's byte count and running hash live in memory; its bytes live in the blob
//! store. After a restart a session is rebuilt from the store (length from the data, hash
//! recomputed at commit), so clients can resume.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use berth_oci::{Algorithm, Digest, Hasher, RepositoryName};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{empty, parse_digest, Call, Registry, CONTENT_DIGEST, UPLOAD_UUID};
use crate::auth::Access;
use crate::error::{ApiError, ApiResult, Code};
use crate::storage::StorageError;

/// An upload in progress.
struct Session {
    repo: String,
    /// Bytes received so far.
    len: u64,
    /// sha256 of those bytes; `None` when it must be recomputed from the stored data.
    hasher: Option<Hasher>,
}

type SessionRef = Arc<tokio::sync::Mutex<Session>>;

/// The upload sessions of this process.
#[derive(Default)]
pub(crate) struct Uploads {
    sessions: Mutex<HashMap<String, SessionRef>>,
}

impl Uploads {
    fn insert(&self, id: &str, session: Session) -> SessionRef {
        let session = Arc::new(tokio::sync::Mutex::new(session));
        if let Ok(mut map) = self.sessions.lock() {
            map.insert(id.to_owned(), session.clone());
        }
        session
    }

    /// Drops a session from memory.
    pub(crate) fn remove(&self, id: &str) {
        if let Ok(mut map) = self.sessions.lock() {
            map.remove(id);
        }
    }

    /// Number of sessions in memory.
    pub(crate) fn len(&self) -> usize {
        self.sessions.lock().map_or(0, |m| m.len())
    }
}

fn unknown_upload(id: &str) -> ApiError {
    ApiError::new(
        Code::BlobUploadUnknown,
        format!("upload {id} is not known (cancelled, finished, or never started)"),
    )
}

fn storage_error(id: &str) -> impl FnOnce(StorageError) -> ApiError + '_ {
    move |e| match e {
        StorageError::UnknownUpload(_) => unknown_upload(id),
        other => ApiError::internal(other),
    }
}

/// Finds the session `id` for `repo`, rebuilding it from the store after a restart.
async fn session(registry: &Registry, repo: &RepositoryName, id: &str) -> ApiResult<SessionRef> {
    let existing = registry
        .uploads
        .sessions
        .lock()
        .ok()
        .and_then(|m| m.get(id).cloned());
    if let Some(session) = existing {
        if session.lock().await.repo != repo.as_str() {
            return Err(unknown_upload(id));
        }
        return Ok(session);
    }
    let len = registry
        .store
        .upload_len(id)
        .await
        .map_err(storage_error(id))?
        .ok_or_else(|| unknown_upload(id))?;
    Ok(registry.uploads.insert(
        id,
        Session {
            repo: repo.to_string(),
            len,
            hasher: None,
        },
    ))
}

fn location(repo: &RepositoryName, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// `Range` of an upload holding `len` bytes, as clients expect it (`0-0` when empty).
fn range(len: u64) -> String {
    format!("0-{}", len.saturating_sub(1))
}

fn progress(status: StatusCode, repo: &RepositoryName, id: &str, len: u64) -> Response {
    empty(
        status,
        &[
            (header::LOCATION, location(repo, id)),
            (header::RANGE, range(len)),
            (UPLOAD_UUID, id.to_owned()),
        ],
    )
}

fn created(repo: &RepositoryName, digest: &Digest) -> Response {
    empty(
        StatusCode::CREATED,
        &[
            (header::LOCATION, format!("/v2/{repo}/blobs/{digest}")),
            (CONTENT_DIGEST, digest.to_string()),
        ],
    )
}

/// `Content-Range: <start>-<end>` of a chunk (a `bytes ` prefix and `/total` are tolerated).
fn content_range(call: &Call) -> ApiResult<Option<(u64, u64)>> {
    let Some(value) = call.headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            Code::BlobUploadInvalid,
            "Content-Range must be <start>-<end> (inclusive byte offsets)",
        )
        .status(StatusCode::RANGE_NOT_SATISFIABLE)
    };
    let text = value.to_str().map_err(|_| bad())?;
    let text = text.trim().trim_start_matches("bytes").trim();
    let text = text.split('/').next().unwrap_or_default();
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

fn content_length(call: &Call) -> Option<u64> {
    call.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Streams `body` into the upload behind `session`, hashing as it goes.
async fn receive(
    registry: &Registry,
    id: &str,
    session: &mut Session,
    body: Body,
) -> ApiResult<u64> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let writer = registry.store.append(id, rx);
    let mut hasher = session.hasher.take();
    let reader = async {
        let mut stream = body.into_data_stream();
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(
                    Code::BlobUploadInvalid,
                    format!("reading request body: {e}"),
                )
            })?;
            received += chunk.len() as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
        drop(tx);
        Ok::<u64, ApiError>(received)
    };
    let (written, received) = tokio::join!(writer, reader);
    let new_len = written.map_err(storage_error(id));
    match (&new_len, &received) {
        (Ok(len), Ok(n)) if *len == session.len + n => session.hasher = hasher,
        // Something went wrong mid-stream: keep what is stored, re-hash it at commit.
        _ => session.hasher = None,
    }
    if let Ok(len) = new_len {
        registry.metrics.bytes_received(len - session.len.min(len));
        session.len = len;
    } else if let Ok(Some(len)) = registry.store.upload_len(id).await {
        session.len = len;
    }
    let received = received?;
    new_len?;
    Ok(received)
}

/// Verifies the upload against `digest` and makes it a blob of `repo`.
async fn commit(
    registry: &Registry,
    repo: &RepositoryName,
    id: &str,
    session: &mut Session,
    digest: &Digest,
) -> ApiResult<Response> {
    let actual = match session.hasher.take() {
        Some(h) if digest.algorithm() == Algorithm::Sha256 => h.finish(),
        _ => rehash(registry, id, digest.algorithm()).await?,
    };
    if actual != *digest {
        registry.uploads.remove(id);
        registry.store.delete_upload(id).await?;
        return Err(ApiError::new(
            Code::DigestInvalid,
            format!("uploaded content has digest {actual}, not {digest}; the upload was discarded"),
        )
        .detail(
            serde_json::json!({"expected": digest.to_string(), "actual": actual.to_string()}),
        ));
    }
    let size = session.len;
    // Only a repository with a quota pays for the lookup; content it already holds is free.
    let counts_against_quota = registry.quota(repo.as_str()).is_some() && {
        let (r, d) = (repo.to_string(), digest.clone());
        registry
            .blocking_meta(move |m| m.linked_blob(&r, &d))
            .await?
            .is_none()
    };
    if counts_against_quota {
        if let Err(e) = registry.check_quota(repo, size).await {
            registry.uploads.remove(id);
            registry.store.delete_upload(id).await?;
            return Err(e);
        }
    }
    let _installing = registry.blob_locks.lock(digest).await;
    registry
        .store
        .commit_upload(id, digest)
        .await
        .map_err(storage_error(id))?;
    registry.uploads.remove(id);
    let (repo_name, d) = (repo.to_string(), digest.clone());
    registry
        .blocking_meta(move |m| m.link_blob(&repo_name, &d, size))
        .await?;
    tracing::debug!(%digest, %repo, size, "blob committed");
    Ok(created(repo, digest))
}

async fn rehash(registry: &Registry, id: &str, algorithm: Algorithm) -> ApiResult<Digest> {
    let mut reader = registry
        .store
        .read_upload(id)
        .await
        .map_err(storage_error(id))?;
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).await.map_err(ApiError::internal)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

async fn new_session(
    registry: &Registry,
    repo: &RepositoryName,
) -> ApiResult<(String, SessionRef)> {
    let id = uuid::Uuid::new_v4().to_string();
    registry.store.create_upload(&id).await?;
    let session = registry.uploads.insert(
        &id,
        Session {
            repo: repo.to_string(),
            len: 0,
            hasher: Some(Hasher::new(Algorithm::Sha256)),
        },
    );
    Ok((id, session))
}

/// Tries a cross-repository mount: from `from` if given, else from any repository holding
/// the blob that the caller may pull.
async fn mount(
    registry: &Registry,
    call: &Call,
    repo: &RepositoryName,
    digest: &Digest,
) -> ApiResult<bool> {
    let sources: Vec<String> = match call.param("from") {
        Some(from) => {
            let from: RepositoryName = from.parse().map_err(|e: berth_oci::NameError| {
                ApiError::new(Code::NameInvalid, e.to_string())
            })?;
            vec![from.to_string()]
        }
        None => {
            registry
                .blocking_meta({
                    let digest = digest.clone();
                    move |m| m.repos_with_blob(&digest)
                })
                .await?
        }
    };
    let sources: Vec<String> = sources
        .into_iter()
        .filter(|s| registry.auth.allows(&call.principal, s, Access::Pull))
        .collect();
    if sources.is_empty() {
        return Ok(false);
    }
    let (to, d) = (repo.to_string(), digest.clone());
    let mounted = registry
        .blocking_meta(move |m| m.mount(&to, &d, &sources))
        .await?;
    if mounted.is_some() {
        if let Err(e) = registry.check_quota(repo, 0).await {
            let (r, d) = (repo.to_string(), digest.clone());
            registry
                .blocking_meta(move |m| m.unlink_blob(&r, &d))
                .await?;
            return Err(e);
        }
    }
    Ok(mounted.is_some())
}

/// `POST /v2/<name>/blobs/uploads/`
pub(super) async fn start(
    registry: &Registry,
    call: &Call,
    repo: &RepositoryName,
    body: Body,
) -> ApiResult<Response> {
    registry.require(call, repo, Access::Push)?;
    registry.check_quota(repo, 0).await?;
    if let Some(mount_digest) = call.param("mount") {
        let digest = parse_digest(mount_digest)?;
        if mount(registry, call, repo, &digest).await? {
            tracing::debug!(%digest, %repo, "blob mounted");
            return Ok(created(repo, &digest));
        }
    }
    let (id, session) = new_session(registry, repo).await?;
    let mut session = session.lock().await;
    match call.param("digest") {
        Some(digest) => {
            let digest = match parse_digest(digest) {
                Ok(d) => d,
                Err(e) => {
                    registry.uploads.remove(&id);
                    registry.store.delete_upload(&id).await?;
                    return Err(e);
                }
            };
            let outcome = async {
                receive(registry, &id, &mut session, body).await?;
                commit(registry, repo, &id, &mut session, &digest).await
            }
            .await;
            if outcome.is_err() {
                registry.uploads.remove(&id);
                registry.store.delete_upload(&id).await?;
            }
            outcome
        }
        None => Ok(progress(StatusCode::ACCEPTED, repo, &id, 0)),
    }
}

/// `GET /v2/<name>/blobs/uploads/<id>`
pub(super) async fn status(
    registry: &Registry,
    call: &Call,
    repo: &RepositoryName,
    id: &str,
) -> ApiResult<Response> {
    registry.require(call, repo, Access::Push)?;
    let session = session(registry, repo, id).await?;
    let len = session.lock().await.len;
    Ok(progress(StatusCode::NO_CONTENT, repo, id, len))
}

/// Checks a chunk's `Content-Range` against the session: chunks must arrive in order.
fn check_chunk(call: &Call, session: &Session) -> ApiResult<Option<u64>> {
    let Some((start, end)) = content_range(call)? else {
        return Ok(None);
    };
    if start != session.len {
        return Err(ApiError::new(
            Code::BlobUploadInvalid,
            format!(
                "chunk starts at byte {start} but the upload holds {} bytes; send the chunk that starts there",
                session.len
            ),
        )
        .status(StatusCode::RANGE_NOT_SATISFIABLE)
        .header(header::RANGE, super::header_value(&range(session.len))));
    }
    let expected = end - start + 1;
    if let Some(len) = content_length(call) {
        if len != expected {
            return Err(ApiError::new(
                Code::SizeInvalid,
                format!("Content-Range covers {expected} bytes but Content-Length is {len}"),
            )
            .status(StatusCode::RANGE_NOT_SATISFIABLE));
        }
    }
    Ok(Some(expected))
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`
pub(super) async fn patch(
    registry: &Registry,
    call: &Call,
    repo: &RepositoryName,
    id: &str,
    body: Body,
) -> ApiResult<Response> {
    registry.require(call, repo, Access::Push)?;
    let session = session(registry, repo, id).await?;
    let mut session = session.lock().await;
    let expected = check_chunk(call, &session)?;
    let received = receive(registry, id, &mut session, body).await?;
    if let Some(expected) = expected {
        if received != expected {
            return Err(ApiError::new(
                Code::SizeInvalid,
                format!("chunk declared {expected} bytes but carried {received}"),
            ));
        }
    }
    Ok(progress(StatusCode::ACCEPTED, repo, id, session.len))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=`
pub(super) async fn finish(
    registry: &Registry,
    call: &Call,
    repo: &RepositoryName,
    id: &str,
    body: Body,
) -> ApiResult<Response> {
    registry.require(call, repo, Access::Push)?;
    let digest = call.param("digest").ok_or_else(|| {
        ApiError::new(
            Code::DigestInvalid,
            "the digest query parameter is required to finish an upload",
        )
    })?;
    let digest = parse_digest(digest)?;
    let session = session(registry, repo, id).await?;
    let mut session = session.lock().await;
    check_chunk(call, &session)?;
    receive(registry, id, &mut session, body).await?;
    commit(registry, repo, id, &mut session, &digest).await
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`
pub(super) async fn cancel(
    registry: &Registry,
    call: &Call,
    repo: &RepositoryName,
    id: &str,
) -> ApiResult<Response> {
    registry.require(call, repo, Access::Push)?;
    let session = session(registry, repo, id).await?;
    let _held = session.lock().await;
    registry.uploads.remove(id);
    registry.store.delete_upload(id).await?;
    Ok(empty(StatusCode::NO_CONTENT, &[]))
}
