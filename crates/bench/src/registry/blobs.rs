//! The registry blob API as a client drives it: pushes (a single POST, or POST then PUT) and
//! pulls, with every answer checked.

use std::path::Path;

use anyhow::{bail, Context as _};
use berth_oci::Digest;
use bytes::Bytes;
use futures::StreamExt as _;
use reqwest::{Body, Client, Response, StatusCode};

/// Content in memory with its digest.
pub struct Blob {
    /// sha256 of `data`.
    pub digest: Digest,
    /// The content.
    pub data: Bytes,
}

/// How a blob goes up.
#[derive(Clone, Copy)]
pub enum PushMode {
    /// `POST /v2/<repo>/blobs/uploads/?digest=` with the content; if the registry answers
    /// 202 instead of 201 (it does not do single-POST uploads), the client PUTs the content
    /// to the Location it got, as the distribution spec says.
    SinglePost,
    /// `POST /v2/<repo>/blobs/uploads/`, then `PUT <Location>&digest=` with the content: what
    /// most clients do for small blobs.
    PostPut,
}

/// How a push went.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Done in the requests the mode asks for.
    AsAsked,
    /// The registry answered a single POST with 202, so the content went up again in a PUT.
    FellBackToPut,
}

/// Pushes `blob` to `repo` on the registry at `base`.
pub async fn push(
    client: &Client,
    base: &str,
    repo: &str,
    blob: &Blob,
    mode: PushMode,
) -> anyhow::Result<Pushed> {
    let uploads = format!("{base}/v2/{repo}/blobs/uploads/");
    match mode {
        PushMode::SinglePost => {
            let r = client
                .post(format!("{uploads}?digest={}", blob.digest))
                .header("content-type", "application/octet-stream")
                .body(blob.data.clone())
                .send()
                .await?;
            if r.status() == StatusCode::CREATED {
                return Ok(Pushed::AsAsked);
            }
            let location = upload_location(r, "single-POST upload").await?;
            let body = Body::from(blob.data.clone());
            put_upload(client, base, &location, &blob.digest, body, blob.data.len()).await?;
            Ok(Pushed::FellBackToPut)
        }
        PushMode::PostPut => {
            let location = start_upload(client, &uploads).await?;
            let body = Body::from(blob.data.clone());
            put_upload(client, base, &location, &blob.digest, body, blob.data.len()).await?;
            Ok(Pushed::AsAsked)
        }
    }
}

/// Pushes the `len` bytes of the file at `path` with POST then PUT, streaming the file as
/// the request body.
pub async fn push_file(
    client: &Client,
    base: &str,
    repo: &str,
    path: &Path,
    len: usize,
    digest: &Digest,
) -> anyhow::Result<()> {
    let location = start_upload(client, &format!("{base}/v2/{repo}/blobs/uploads/")).await?;
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let body = Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    put_upload(client, base, &location, digest, body, len).await
}

/// GETs a blob and returns its length, dropping the content as it arrives.
pub async fn pull_len(
    client: &Client,
    base: &str,
    repo: &str,
    digest: &Digest,
) -> anyhow::Result<usize> {
    let r = get_blob(client, base, repo, digest).await?;
    let mut body = r.bytes_stream();
    let mut len = 0;
    while let Some(chunk) = body.next().await {
        len += chunk?.len();
    }
    Ok(len)
}

/// GETs a blob into `buf`, replacing what was there; the caller checks the content after
/// the clock stops.
pub async fn pull_into(
    client: &Client,
    base: &str,
    repo: &str,
    digest: &Digest,
    buf: &mut Vec<u8>,
) -> anyhow::Result<()> {
    buf.clear();
    let r = get_blob(client, base, repo, digest).await?;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(())
}

/// `POST` for a new upload session; returns its Location.
async fn start_upload(client: &Client, uploads: &str) -> anyhow::Result<String> {
    let r = client.post(uploads).send().await?;
    upload_location(r, "upload POST").await
}

/// The Location of a 202 answer to an upload POST.
async fn upload_location(r: Response, what: &str) -> anyhow::Result<String> {
    let r = expect(r, StatusCode::ACCEPTED, what).await?;
    Ok(r.headers()
        .get("location")
        .with_context(|| format!("{what}: 202 without a Location header"))?
        .to_str()?
        .to_owned())
}

/// `PUT <location>&digest=` with the whole content, closing the upload.
async fn put_upload(
    client: &Client,
    base: &str,
    location: &str,
    digest: &Digest,
    body: Body,
    len: usize,
) -> anyhow::Result<()> {
    let r = client
        .put(close_upload_url(base, location, digest))
        .header("content-type", "application/octet-stream")
        .header("content-length", len)
        .body(body)
        .send()
        .await?;
    expect(r, StatusCode::CREATED, "upload PUT").await?;
    Ok(())
}

/// The URL that closes an upload: `location` (absolute, or relative to `base`) with the
/// digest added to its query.
fn close_upload_url(base: &str, location: &str, digest: &Digest) -> String {
    let absolute = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    };
    let separator = if absolute.contains('?') { '&' } else { '?' };
    format!("{absolute}{separator}digest={digest}")
}

/// `r` if it has status `want`, else an error with the status and the registry's error body.
async fn expect(r: Response, want: StatusCode, what: &str) -> anyhow::Result<Response> {
    if r.status() == want {
        return Ok(r);
    }
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    bail!("{what}: expected {want}, got {status}: {}", body.trim())
}

/// GETs a blob and checks it answered 200.
async fn get_blob(
    client: &Client,
    base: &str,
    repo: &str,
    digest: &Digest,
) -> anyhow::Result<reqwest::Response> {
    expect(
        client
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await?,
        StatusCode::OK,
        "blob GET",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_relative_and_absolute_locations() {
        let digest = Digest::sha256(b"x");
        assert_eq!(
            close_upload_url("http://h:1", "/v2/r/blobs/uploads/u", &digest),
            format!("http://h:1/v2/r/blobs/uploads/u?digest={digest}")
        );
        assert_eq!(
            close_upload_url(
                "http://h:1",
                "http://h:1/v2/r/blobs/uploads/u?_state=s",
                &digest
            ),
            format!("http://h:1/v2/r/blobs/uploads/u?_state=s&digest={digest}")
        );
    }
}
