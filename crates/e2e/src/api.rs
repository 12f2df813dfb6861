//! The distribution API spoken directly, for what the real clients here cannot do: pushing an
//! artifact with a `subject` (Debian has no `oras`) and reading the referrers API.

use std::time::Duration;

use reqwest::blocking::{Client as HttpClient, RequestBuilder, Response};
use reqwest::header::{CONTENT_TYPE, LOCATION};
use reqwest::Method;
use sha2::{Digest as _, Sha256};

/// `application/vnd.oci.image.manifest.v1+json`.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `application/vnd.oci.image.index.v1+json`.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The empty descriptor's media type; its content is `{}`.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `HOST:PORT` of a registry base URL (`http://[USER:PASSWORD@]HOST:PORT`), as image
/// references name it.
pub fn registry_host(base: &str) -> &str {
    let rest = base.split_once("://").map_or(base, |(_, rest)| rest);
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    host.trim_end_matches('/')
}

/// A blocking distribution-API client for one registry.
pub struct Client {
    http: HttpClient,
    base: String,
    credentials: Option<(String, String)>,
}

impl Client {
    /// A client for the registry at `base` (`http://127.0.0.1:PORT`): anonymous, or with the
    /// HTTP Basic credentials of `http://USER:PASSWORD@127.0.0.1:PORT`.
    pub fn new(base: &str) -> Client {
        let http = HttpClient::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("building an HTTP client");
        let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
        let (credentials, host) = match rest.split_once('@') {
            Some((userinfo, host)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((user.to_owned(), password.to_owned())), host)
            }
            None => (None, rest),
        };
        Client {
            http,
            base: format!("{scheme}://{}", host.trim_end_matches('/')),
            credentials,
        }
    }

    /// The same client, sending HTTP Basic credentials.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Client {
        self.credentials = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// A request to `path` (starting with `/v2/`), or to an absolute URL.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let request = self.http.request(method, url);
        match &self.credentials {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    /// Sends `GET path`; panics on transport errors only.
    #[track_caller]
    pub fn get(&self, path: &str) -> Response {
        send(self.request(Method::GET, path), path)
    }

    /// Uploads `content` to `repo` (POST then PUT, as the spec's two-step monolithic upload)
    /// and returns its digest. Panics unless the registry answers 202 then 201.
    #[track_caller]
    pub fn push_blob(&self, repo: &str, content: &[u8]) -> String {
        let digest = sha256_digest(content);
        let start_path = format!("/v2/{repo}/blobs/uploads/");
        let started = send(self.request(Method::POST, &start_path), &start_path);
        assert_eq!(
            started.status().as_u16(),
            202,
            "POST {start_path}: {}",
            show(started)
        );
        let location = started
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .expect("the upload's Location header")
            .to_owned();
        let separator = if location.contains('?') { '&' } else { '?' };
        let put_path = format!("{location}{separator}digest={digest}");
        let done = send(
            self.request(Method::PUT, &put_path)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(content.to_vec()),
            &put_path,
        );
        assert_eq!(
            done.status().as_u16(),
            201,
            "PUT {put_path}: {}",
            show(done)
        );
        digest
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with `body` as `media_type`; returns the
    /// response, whatever its status.
    #[track_caller]
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        let path = format!("/v2/{repo}/manifests/{reference}");
        send(
            self.request(Method::PUT, &path)
                .header(CONTENT_TYPE, media_type)
                .body(body.to_vec()),
            &path,
        )
    }
}

#[track_caller]
fn send(request: RequestBuilder, what: &str) -> Response {
    request
        .send()
        .unwrap_or_else(|e| panic!("request to {what} failed: {e}"))
}

/// Status, headers and body of a response, for assertion messages.
pub fn show(response: Response) -> String {
    let status = response.status();
    let headers = format!("{:?}", response.headers());
    let body = response.text().unwrap_or_default();
    format!("{status} {headers}\n{body}")
}
