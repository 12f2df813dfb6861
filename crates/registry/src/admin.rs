//! The admin API under `/admin/`: garbage collection, usage, pins. With a users file only
//! users marked `admin = true` may call it; without one it is as open as the registry.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use berth_listen::http::ClientAddr;
use berth_oci::Digest;
use serde::{Deserialize, Serialize};

use crate::api::{parse_digest, Registry};
use crate::error::{ApiError, ApiResult, Code};
use crate::gc::{collect, GcError, GcRequest};
use crate::metadata::{PinRecord, RepoUsage, Unpinned};

/// The admin routes.
pub fn routes() -> Router<Arc<Registry>> {
    Router::new()
        .route("/admin/gc", post(gc))
        .route("/admin/usage", get(usage))
        .route("/admin/pins", get(pins))
        .route("/admin/pins/{digest}", put(pin).delete(unpin))
}

impl Registry {
    /// Every pin, as `GET /admin/pins` lists them: for a process that serves the registry
    /// itself (`berth server --registry-listen`) and pins without going over HTTP.
    pub async fn pins(&self) -> ApiResult<std::collections::BTreeMap<Digest, PinRecord>> {
        self.blocking_meta(|m| m.pins()).await
    }

    /// Pins `digest` with `reason`, kept by `owner` if given, as `PUT /admin/pins/{digest}`
    /// does.
    pub async fn pin(&self, digest: &Digest, reason: &str, owner: Option<&str>) -> ApiResult<()> {
        let (d, reason, owner) = (digest.clone(), reason.to_owned(), owner.map(str::to_owned));
        self.blocking_meta(move |m| m.pin(&d, &reason, owner.as_deref()))
            .await?;
        tracing::info!(%digest, "pinned");
        Ok(())
    }

    /// Removes the pin of `digest`, as `DELETE /admin/pins/{digest}` does; a pin with an
    /// owner only with `force`.
    pub async fn unpin(&self, digest: &Digest, force: bool) -> ApiResult<Unpinned> {
        let d = digest.clone();
        let outcome = self.blocking_meta(move |m| m.unpin(&d, force)).await?;
        if outcome == Unpinned::Removed {
            tracing::info!(%digest, force, "unpinned");
        }
        Ok(outcome)
    }
}

async fn require_admin(
    registry: &Registry,
    headers: &HeaderMap,
    client: Option<Extension<ClientAddr>>,
) -> ApiResult<()> {
    let client = client.map(|Extension(ClientAddr(addr))| addr.ip());
    let principal = registry.auth.authenticate(headers, client).await?;
    registry.auth.require_admin(&principal)
}

async fn gc(
    State(registry): State<Arc<Registry>>,
    headers: HeaderMap,
    client: Option<Extension<ClientAddr>>,
    Query(request): Query<GcRequest>,
) -> ApiResult<Response> {
    require_admin(&registry, &headers, client).await?;
    match collect(&registry, request).await {
        Ok(report) => Ok(Json(report).into_response()),
        Err(GcError::Busy) => Err(ApiError::new(
            Code::TooManyRequests,
            "a garbage collection is already running; try again when it has finished",
        )
        .status(StatusCode::CONFLICT)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// One repository's usage and quota.
#[derive(Serialize)]
pub struct UsageEntry {
    /// Usage.
    #[serde(flatten)]
    pub usage: RepoUsage,
    /// Quota in bytes, if one applies.
    pub quota: Option<u64>,
}

/// The answer of `GET /admin/usage`.
#[derive(Serialize)]
pub struct UsageReport {
    /// Per repository.
    pub repositories: Vec<UsageEntry>,
    /// Bytes stored, each blob counted once however many repositories hold it.
    pub stored_bytes: u64,
}

/// Usage of every repository, with its quota: metadata only, cheap enough for `/metrics`.
pub(crate) async fn repository_usage(registry: &Registry) -> ApiResult<Vec<UsageEntry>> {
    let usage = registry.blocking_meta(|m| m.usage()).await?;
    Ok(usage
        .into_iter()
        .map(|usage| {
            let quota = registry.quota(&usage.repository).map(|q| q.max_bytes);
            UsageEntry { usage, quota }
        })
        .collect())
}

/// Usage of every repository plus the bytes on disk (which lists every stored file).
async fn usage_report(registry: &Registry) -> ApiResult<UsageReport> {
    let repositories = repository_usage(registry).await?;
    let stored_bytes = registry
        .store
        .list_blobs()
        .await?
        .iter()
        .map(|b| b.size)
        .sum();
    Ok(UsageReport {
        repositories,
        stored_bytes,
    })
}

async fn usage(
    State(registry): State<Arc<Registry>>,
    headers: HeaderMap,
    client: Option<Extension<ClientAddr>>,
) -> ApiResult<Response> {
    require_admin(&registry, &headers, client).await?;
    Ok(Json(usage_report(&registry).await?).into_response())
}

/// A pin as the API lists it.
#[derive(Serialize)]
struct PinEntry {
    digest: Digest,
    #[serde(flatten)]
    record: PinRecord,
}

async fn pins(
    State(registry): State<Arc<Registry>>,
    headers: HeaderMap,
    client: Option<Extension<ClientAddr>>,
) -> ApiResult<Response> {
    require_admin(&registry, &headers, client).await?;
    let pins = registry.pins().await?;
    let list: Vec<PinEntry> = pins
        .into_iter()
        .map(|(digest, record)| PinEntry { digest, record })
        .collect();
    Ok(Json(serde_json::json!({ "pins": list })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinBody {
    reason: String,
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnpinQuery {
    #[serde(default)]
    force: bool,
}

async fn pin(
    State(registry): State<Arc<Registry>>,
    headers: HeaderMap,
    client: Option<Extension<ClientAddr>>,
    Path(digest): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    require_admin(&registry, &headers, client).await?;
    let digest = parse_digest(&digest)?;
    let body = if body.is_empty() {
        PinBody {
            reason: "pinned through the admin API".to_owned(),
            owner: None,
        }
    } else {
        serde_json::from_slice::<PinBody>(&body).map_err(|e| {
            ApiError::new(
                Code::Unsupported,
                format!("body must be {{\"reason\": \"...\", \"owner\": \"...\" (optional)}}: {e}"),
            )
            .status(StatusCode::BAD_REQUEST)
        })?
    };
    registry
        .pin(&digest, &body.reason, body.owner.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn unpin(
    State(registry): State<Arc<Registry>>,
    headers: HeaderMap,
    client: Option<Extension<ClientAddr>>,
    Path(digest): Path<String>,
    query: Result<Query<UnpinQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    require_admin(&registry, &headers, client).await?;
    let digest = parse_digest(&digest)?;
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            Code::Unsupported,
            format!("the only query parameter is force=true: {e}"),
        )
        .status(StatusCode::BAD_REQUEST)
    })?;
    match registry.unpin(&digest, query.force).await? {
        Unpinned::Removed => Ok(StatusCode::NO_CONTENT.into_response()),
        Unpinned::NotPinned => Err(ApiError::new(
            Code::ManifestUnknown,
            format!("{digest} is not pinned"),
        )
        .status(StatusCode::NOT_FOUND)),
        Unpinned::Owned(record) => Err(ApiError::new(
            Code::Denied,
            format!(
                "{digest} is pinned by {} ({}): it protects an image a live or rollback-able release needs; add ?force=true (berth registry unpin --force) to remove it anyway, and its owner may pin it again",
                record.owner.as_deref().unwrap_or("its owner"),
                record.reason
            ),
        )
        .status(StatusCode::CONFLICT)),
    }
}
