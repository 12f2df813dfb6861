//! A registry client for pulls: manifests and blobs over the distribution API, with Basic
//! auth and the Bearer token flow a `WWW-Authenticate` challenge asks for.

use std::sync::Mutex;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use serde::Deserialize;

use super::reference::Reference;
use super::{Credentials, ImageError, PullOptions};

/// Every manifest media type a pull accepts.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Talks to one repository of one registry.
pub(crate) struct RegistryClient {
    http: reqwest::Client,
    base: String,
    registry: String,
    repository: String,
    credentials: Option<Credentials>,
    /// The Authorization header that last worked, reused for every later request.
    authorization: Mutex<Option<HeaderValue>>,
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_owned()),
            "service" => service = Some(value.to_owned()),
            "scope" => scope = Some(value.to_owned()),
            _ => {}
        }
        rest = after.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
        scope,
    })
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

impl RegistryClient {
    pub(crate) fn new(
        reference: &Reference,
        options: &PullOptions,
    ) -> Result<RegistryClient, ImageError> {
        let scheme = if reference.is_loopback() || options.insecure {
            "http"
        } else {
            "https"
        };
        let http = reqwest::Client::builder()
            .connect_timeout(options.timeout)
            .read_timeout(options.timeout)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ImageError::Internal(format!("building the HTTP client: {e}")))?;
        let credentials = options
            .credentials
            .clone()
            .or_else(|| super::credentials::lookup(&options.auth_files, &reference.registry));
        Ok(RegistryClient {
            http,
            base: format!("{scheme}://{}", reference.registry),
            registry: reference.registry.clone(),
            repository: reference.repository.to_string(),
            credentials,
            authorization: Mutex::new(None),
        })
    }

    /// `scheme://host[:port]`.
    pub(crate) fn base_url(&self) -> &str {
        &self.base
    }

    pub(crate) fn registry(&self) -> &str {
        &self.registry
    }

    fn connection_error(&self, e: &reqwest::Error) -> ImageError {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(inner) = source {
            message = format!("{message}: {inner}");
            source = inner.source();
        }
        if self.base_url().starts_with("https") {
            message.push_str(
                " (if the registry speaks plain HTTP, pass --insecure; if its certificate is \
                 not from a public CA, that is not supported yet)",
            );
        }
        ImageError::Connection {
            registry: self.registry.clone(),
            message,
        }
    }

    fn current_authorization(&self) -> Option<HeaderValue> {
        self.authorization
            .lock()
            .map(|guard| guard.clone())
            .unwrap_or_default()
    }

    /// GETs `path` (below `/v2/<repository>/`), answering one auth challenge if needed.
    pub(crate) async fn get(&self, path: &str, headers: HeaderMap) -> Result<Response, ImageError> {
        let url = format!("{}/v2/{}/{path}", self.base, self.repository);
        let send = |authorization: Option<HeaderValue>| {
            let mut request = self.http.get(&url).headers(headers.clone());
            if let Some(authorization) = authorization {
                request = request.header(AUTHORIZATION, authorization);
            }
            request.send()
        };
        let sent_with = self.current_authorization();
        let response = send(sent_with.clone())
            .await
            .map_err(|e| self.connection_error(&e))?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(parse_challenge);
        let authorization = match challenge {
            Some(Challenge::Basic) => self.basic()?,
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => self.token(&realm, service, scope).await?,
            None => {
                return Err(self.unauthorized(
                    "it answered 401 without a Basic or Bearer challenge berth understands",
                ))
            }
        };
        if sent_with.as_ref() == Some(&authorization) {
            return Err(self.refused());
        }
        let response = send(Some(authorization.clone()))
            .await
            .map_err(|e| self.connection_error(&e))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(self.refused());
        }
        if let Ok(mut guard) = self.authorization.lock() {
            *guard = Some(authorization);
        }
        Ok(response)
    }

    fn unauthorized(&self, message: &str) -> ImageError {
        ImageError::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            message: message.to_owned(),
        }
    }

    fn refused(&self) -> ImageError {
        if self.credentials.is_some() {
            self.unauthorized("the credentials were not accepted; check --creds, BERTH_REGISTRY_CREDS or the auth file")
        } else {
            self.unauthorized("it needs credentials: pass --creds user:password, set BERTH_REGISTRY_CREDS, or log in with podman/skopeo/docker")
        }
    }

    fn basic(&self) -> Result<HeaderValue, ImageError> {
        use base64::Engine as _;
        let Some(credentials) = &self.credentials else {
            return Err(self.refused());
        };
        let pair = format!("{}:{}", credentials.username, credentials.password);
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| {
            self.unauthorized("the credentials contain characters not allowed in an HTTP header")
        })
    }

    async fn token(
        &self,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
    ) -> Result<HeaderValue, ImageError> {
        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut query = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm).query(&query);
        if let Some(credentials) = &self.credentials {
            request = request.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.connection_error(&e))?;
        if response.status() == StatusCode::UNAUTHORIZED
            || response.status() == StatusCode::FORBIDDEN
        {
            return Err(self.refused());
        }
        if !response.status().is_success() {
            return Err(ImageError::Registry {
                registry: self.registry.clone(),
                status: response.status().as_u16(),
                what: format!("a token from {realm}"),
                message: error_message(response).await,
            });
        }
        let body: TokenResponse = response.json().await.map_err(|e| ImageError::Registry {
            registry: self.registry.clone(),
            status: 200,
            what: format!("a token from {realm}"),
            message: format!("the answer is not a token: {e}"),
        })?;
        let token = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.unauthorized("its token service answered without a token"))?;
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            self.unauthorized("its token service sent a token that is not a valid header")
        })
    }

    /// GETs a manifest by tag or digest.
    pub(crate) async fn manifest(&self, reference: &str) -> Result<Response, ImageError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        self.get(&format!("manifests/{reference}"), headers).await
    }

    /// GETs a blob, from byte `offset` on when it is not 0.
    pub(crate) async fn blob(&self, digest: &str, offset: u64) -> Result<Response, ImageError> {
        let mut headers = HeaderMap::new();
        if offset > 0 {
            if let Ok(range) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                headers.insert(RANGE, range);
            }
        }
        self.get(&format!("blobs/{digest}"), headers).await
    }

    /// The error for an unexpected answer to a request for `what`.
    pub(crate) async fn unexpected(&self, response: Response, what: String) -> ImageError {
        ImageError::Registry {
            registry: self.registry.clone(),
            status: response.status().as_u16(),
            what,
            message: error_message(response).await,
        }
    }

    pub(crate) fn connection(&self, e: &reqwest::Error) -> ImageError {
        self.connection_error(e)
    }
}

/// The first message of a distribution error body, or the body itself, shortened.
async fn error_message(response: Response) -> String {
    #[derive(Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    let text = response.text().await.unwrap_or_default();
    if let Ok(body) = serde_json::from_str::<Body>(&text) {
        if let Some(entry) = body.errors.into_iter().next() {
            return format!(
                "{} {}",
                entry.code.unwrap_or_default(),
                entry.message.unwrap_or_default()
            )
            .trim()
            .to_owned();
        }
    }
    let text = text.trim();
    if text.is_empty() {
        "no details".to_owned()
    } else {
        text.chars().take(200).collect()
    }
}
