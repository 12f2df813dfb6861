//! The distribution API: one entry point (`dispatch`) that parses the path into a `Route`,
//! authenticates, and hands the request to the endpoint's handler.

mod blobs;
mod listing;
mod manifests;
mod uploads;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::{Digest, RepositoryName};

use crate::auth::{Access, Authorizer, Principal};
use crate::config::{GcSettings, Quota};
use crate::error::{ApiError, ApiResult, Code};
use crate::metadata::Metadata;
use crate::metrics::Metrics;
use crate::retention::RetentionRule;
use crate::route::Route;
use crate::storage::BlobStore;
use berth_units::human_bytes;

pub(crate) use uploads::Uploads;

/// `Docker-Content-Digest`
pub(crate) const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
/// `Docker-Upload-UUID`
pub(crate) const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
/// `OCI-Subject`
pub(crate) const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
/// `OCI-Filters-Applied`
pub(crate) const FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// Everything a request handler needs.
pub struct Registry {
    pub(crate) store: Arc<dyn BlobStore>,
    pub(crate) meta: Metadata,
    pub(crate) auth: Arc<Authorizer>,
    pub(crate) uploads: Uploads,
    pub(crate) metrics: Metrics,
    pub(crate) limits: Limits,
    pub(crate) policy: Policy,
    /// Held while content is installed and recorded, or found unrecorded and deleted.
    pub(crate) blob_locks: crate::locks::BlobLocks,
    /// Held by the one collection that may run at a time.
    pub(crate) gc_running: tokio::sync::Mutex<()>,
    /// Tag pulls not yet written to the metadata: (repo, tag) -> when.
    pub(crate) pulls: std::sync::Mutex<HashMap<(String, String), u64>>,
}

/// Garbage collection, retention and quota settings.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Garbage collection.
    pub gc: GcSettings,
    /// Retention rules, first match wins.
    pub retention: Vec<RetentionRule>,
    /// Quotas, first match wins.
    pub quotas: Vec<Quota>,
}

/// Request size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: usize,
    /// Whether DELETE is allowed on manifests, tags and blobs.
    pub deletes: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_manifest_bytes: 4 << 20,
            deletes: true,
        }
    }
}

/// One request, parsed: who asks, for what, with which query parameters.
pub(crate) struct Call {
    pub principal: Principal,
    pub method: Method,
    pub headers: HeaderMap,
    pub query: HashMap<String, String>,
}

impl Call {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

impl Registry {
    pub(crate) fn require(
        &self,
        call: &Call,
        repo: &RepositoryName,
        access: Access,
    ) -> ApiResult<()> {
        self.auth.require(&call.principal, repo.as_str(), access)
    }

    /// NAME_UNKNOWN for a repository that does not exist, else `otherwise`.
    pub(crate) async fn unknown(&self, repo: &RepositoryName, otherwise: ApiError) -> ApiError {
        let name = repo.to_string();
        match self.blocking_meta(move |m| m.repo_exists(&name)).await {
            Ok(false) => name_unknown(repo),
            Ok(true) => otherwise,
            Err(e) => e,
        }
    }

    /// Remembers that `tag` of `repo` was pulled now (for retention windows).
    pub(crate) fn note_pull(&self, repo: &str, tag: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Ok(mut pulls) = self.pulls.lock() {
            pulls.insert((repo.to_owned(), tag.to_owned()), now);
        }
    }

    /// Writes remembered pulls to the metadata.
    pub(crate) async fn flush_pulls(&self) {
        let pulls: Vec<(String, String, u64)> = match self.pulls.lock() {
            Ok(mut map) => map.drain().map(|((r, t), w)| (r, t, w)).collect(),
            Err(_) => return,
        };
        if let Err(e) = self.blocking_meta(move |m| m.record_pulls(&pulls)).await {
            tracing::warn!(error = e.message, "could not record tag pulls");
        }
    }

    /// The quota governing `repo`, if any (the first matching rule).
    pub(crate) fn quota(&self, repo: &str) -> Option<&Quota> {
        self.policy.quotas.iter().find(|q| q.applies_to(repo))
    }

    /// DENIED when adding `extra` bytes to `repo` would exceed its quota.
    pub(crate) async fn check_quota(&self, repo: &RepositoryName, extra: u64) -> ApiResult<()> {
        let Some(quota) = self.quota(repo.as_str()) else {
            return Ok(());
        };
        let name = repo.to_string();
        let usage = self.blocking_meta(move |m| m.repo_bytes(&name)).await?;
        if usage.saturating_add(extra) > quota.max_bytes {
            return Err(ApiError::new(
                Code::Denied,
                format!(
                    "quota exceeded: {repo} may hold {} ({} bytes, rule {:?}) and holds {} ({usage} bytes); this push needs {} more. Delete tags or images and run garbage collection, or raise the quota",
                    human_bytes(quota.max_bytes),
                    quota.max_bytes,
                    quota.pattern,
                    human_bytes(usage),
                    human_bytes(extra),
                ),
            )
            .detail(serde_json::json!({"quota": quota.max_bytes, "usage": usage, "requested": extra})));
        }
        Ok(())
    }

    /// Runs a metadata call off the async threads.
    pub(crate) async fn blocking_meta<T, E>(
        &self,
        f: impl FnOnce(&Metadata) -> Result<T, E> + Send + 'static,
    ) -> ApiResult<T>
    where
        T: Send + 'static,
        E: Into<ApiError> + Send + 'static,
    {
        self.meta
            .off_thread(f)
            .await
            .map_err(ApiError::internal)?
            .map_err(Into::into)
    }
}

/// NAME_UNKNOWN for `repo`.
pub(crate) fn name_unknown(repo: &RepositoryName) -> ApiError {
    ApiError::new(Code::NameUnknown, format!("repository {repo} is not known"))
}

/// Parses a digest from a path or query, answering DIGEST_INVALID when it is not one.
pub(crate) fn parse_digest(s: &str) -> ApiResult<Digest> {
    s.parse::<Digest>()
        .map_err(|e| ApiError::new(Code::DigestInvalid, e.to_string()))
}

pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// An empty response with `status` and `headers`.
pub(crate) fn empty(status: StatusCode, headers: &[(HeaderName, String)]) -> Response {
    let mut response = (status, Body::empty()).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    for (name, value) in headers {
        h.insert(name.clone(), header_value(value));
    }
    response
}

/// The axum fallback: every `/v2/` request comes through here.
pub async fn dispatch(State(registry): State<Arc<Registry>>, request: Request<Body>) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let route = match Route::parse(&path) {
        Some(route) => route,
        None => {
            return ApiError::new(Code::Unsupported, format!("no API endpoint at {path}"))
                .status(StatusCode::NOT_FOUND)
                .into_response()
        }
    };
    let kind = route.as_ref().map_or("invalid", Route::kind);
    let method = parts.method.clone();
    let mut response = match route {
        Err(e) => e.into_response(),
        Ok(route) => {
            let query = parts
                .uri
                .query()
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default();
            let client = parts
                .extensions
                .get::<berth_listen::http::ClientAddr>()
                .map(|c| c.0.ip());
            match registry.auth.authenticate(&parts.headers, client).await {
                Err(e) => e.into_response(),
                Ok(principal) => {
                    let call = Call {
                        principal,
                        method: parts.method,
                        headers: parts.headers,
                        query,
                    };
                    handle(&registry, route, call, body)
                        .await
                        .unwrap_or_else(IntoResponse::into_response)
                }
            }
        }
    };
    response
        .headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    registry
        .metrics
        .observe_request(kind, method.as_str(), status, elapsed);
    tracing::debug!(%method, path, route = kind, status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "request");
    response
}

async fn handle(registry: &Registry, route: Route, call: Call, body: Body) -> ApiResult<Response> {
    let unsupported = |what: &str| {
        Err(ApiError::new(
            Code::Unsupported,
            format!("{} is not supported on {what}", call.method),
        ))
    };
    let is_read = call.method == Method::GET || call.method == Method::HEAD;
    if call.method == Method::DELETE && !registry.limits.deletes {
        return Err(ApiError::new(
            Code::Unsupported,
            "deletes are disabled on this registry",
        ));
    }
    match route {
        Route::Base if is_read => {
            registry.auth.require_login(&call.principal)?;
            Ok((StatusCode::OK, axum::Json(serde_json::json!({}))).into_response())
        }
        Route::Base => unsupported("/v2/"),
        Route::Catalog if is_read => listing::catalog(registry, &call).await,
        Route::Catalog => unsupported("the catalog"),
        Route::Tags(repo) if is_read => listing::tags(registry, &call, &repo).await,
        Route::Tags(_) => unsupported("tags"),
        Route::Referrers(repo, digest) if is_read => {
            listing::referrers(registry, &call, &repo, &digest).await
        }
        Route::Referrers(..) => unsupported("referrers"),
        Route::Manifest(repo, reference) => match call.method {
            Method::GET | Method::HEAD => manifests::get(registry, &call, &repo, &reference).await,
            Method::PUT => manifests::put(registry, &call, &repo, &reference, body).await,
            Method::DELETE => manifests::delete(registry, &call, &repo, &reference).await,
            _ => unsupported("manifests"),
        },
        Route::Blob(repo, digest) => match call.method {
            Method::GET | Method::HEAD => blobs::get(registry, &call, &repo, &digest).await,
            Method::DELETE => blobs::delete(registry, &call, &repo, &digest).await,
            _ => unsupported("blobs"),
        },
        Route::UploadStart(repo) if call.method == Method::POST => {
            uploads::start(registry, &call, &repo, body).await
        }
        Route::UploadStart(_) => unsupported("the upload endpoint"),
        Route::Upload(repo, id) => match call.method {
            Method::GET => uploads::status(registry, &call, &repo, &id).await,
            Method::PATCH => uploads::patch(registry, &call, &repo, &id, body).await,
            Method::PUT => uploads::finish(registry, &call, &repo, &id, body).await,
            Method::DELETE => uploads::cancel(registry, &call, &repo, &id).await,
            _ => unsupported("upload sessions"),
        },
    }
}
