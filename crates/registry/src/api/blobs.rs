//! Blob reads (whole or by `Range`) and deletes.

use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::{Digest, RepositoryName};
use tokio_util::io::ReaderStream;

use super::{header_value, parse_digest, Call, Registry, CONTENT_DIGEST};
use crate::auth::Access;
use crate::error::{ApiError, ApiResult, Code};
use crate::storage::ByteRange;

/// Read buffer per response stream.
const STREAM_CHUNK: usize = 256 << 10;

/// Parses `Range: bytes=…` against a blob of `size` bytes.
///
/// `Ok(None)`: no usable single range (serve the whole blob, as RFC 9110 allows for syntax
/// the server does not support); `Err`: a well-formed range that cannot be satisfied.
pub(crate) fn parse_range(value: &str, size: u64) -> Result<Option<ByteRange>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // Suffix range: the last N bytes.
        let Ok(n) = last.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(());
        }
        let n = n.min(size);
        ByteRange {
            start: size - n,
            len: n,
        }
    } else {
        let Ok(start) = first.parse::<u64>() else {
            return Ok(None);
        };
        let end = if last.is_empty() {
            size.saturating_sub(1)
        } else {
            match last.parse::<u64>() {
                Ok(end) if end >= start => end.min(size.saturating_sub(1)),
                Ok(_) => return Err(()),
                Err(_) => return Ok(None),
            }
        };
        if start >= size {
            return Err(());
        }
        ByteRange {
            start,
            len: end - start + 1,
        }
    };
    Ok(Some(range))
}

async fn linked_size(
    registry: &Registry,
    repo: &RepositoryName,
    digest: &Digest,
) -> ApiResult<u64> {
    let (r, d) = (repo.to_string(), digest.clone());
    let size = registry
        .blocking_meta(move |m| m.linked_blob(&r, &d))
        .await?;
    match size {
        Some(size) => Ok(size),
        None => Err(registry
            .unknown(
                repo,
                ApiError::new(Code::BlobUnknown, format!("blob {digest} is not in {repo}")),
            )
            .await),
    }
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`
pub(super) async fn get(
    registry: &Registry,
    call: &Call,
    repo: &RepositoryName,
    digest: &str,
) -> ApiResult<Response> {
    let digest = parse_digest(digest)?;
    registry.require(call, repo, Access::Pull)?;
    let size = linked_size(registry, repo, &digest).await?;
    let range = match call
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
    {
        None => None,
        Some(value) => parse_range(value, size).map_err(|()| {
            ApiError::new(
                Code::RangeInvalid,
                format!("range {value:?} is outside the blob's {size} bytes"),
            )
            .header(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{size}")),
            )
        })?,
    };
    let (status, len) = match range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.len),
        None => (StatusCode::OK, size),
    };
    let body = if call.method == Method::HEAD {
        Body::empty()
    } else {
        let reader = registry.store.read(&digest, range).await?.ok_or_else(|| {
            ApiError::internal(format!(
                "blob {digest} is recorded but missing from storage"
            ))
        })?;
        registry.metrics.bytes_sent(len);
        Body::from_stream(ReaderStream::with_capacity(reader, STREAM_CHUNK))
    };
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, header_value(&len.to_string()));
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_DIGEST, header_value(&digest.to_string()));
    h.insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
    if let Some(r) = range {
        h.insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {}-{}/{size}", r.start, r.start + r.len - 1)),
        );
    }
    Ok(response)
}

/// `DELETE /v2/<name>/blobs/<digest>`: the repository stops serving the blob; its space is
/// reclaimed by garbage collection once nothing else uses it.
pub(super) async fn delete(
    registry: &Registry,
    call: &Call,
    repo: &RepositoryName,
    digest: &str,
) -> ApiResult<Response> {
    let digest = parse_digest(digest)?;
    registry.require(call, repo, Access::Push)?;
    let (r, d) = (repo.to_string(), digest.clone());
    let removed = registry
        .blocking_meta(move |m| m.unlink_blob(&r, &d))
        .await?;
    if !removed {
        return Err(registry
            .unknown(
                repo,
                ApiError::new(Code::BlobUnknown, format!("blob {digest} is not in {repo}")),
            )
            .await);
    }
    tracing::info!(%digest, %repo, "blob deleted");
    Ok(super::empty(StatusCode::ACCEPTED, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |start, len| Ok(Some(ByteRange { start, len }));
        assert_eq!(parse_range("bytes=0-9", 100), r(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), r(90, 10));
        assert_eq!(parse_range("bytes=90-200", 100), r(90, 10));
        assert_eq!(parse_range("bytes=-10", 100), r(90, 10));
        assert_eq!(parse_range("bytes=-200", 100), r(0, 100));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=5-4", 100), Err(()));
        assert_eq!(parse_range("bytes=-0", 100), Err(()));
        assert_eq!(parse_range("bytes=0-0", 0), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=x-1", 100), Ok(None));
    }
}
