//! Listings: tags, the catalog, and referrers.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::media_type::OCI_INDEX;
use berth_oci::RepositoryName;
use serde_json::json;

use super::{header_value, name_unknown, parse_digest, Call, Registry, FILTERS_APPLIED};
use crate::auth::Access;
use crate::error::{ApiError, ApiResult, Code};
use crate::metadata::Page;

/// Page size when the client gives no `n`.
const DEFAULT_PAGE: usize = 10_000;

/// `n` and `last` of a paginated listing.
fn pagination(call: &Call) -> ApiResult<(usize, Option<String>)> {
    let n = match call.param("n") {
        None | Some("") => DEFAULT_PAGE,
        Some(n) => n.parse().map_err(|_| {
            ApiError::new(
                Code::Unsupported,
                format!("n must be a non-negative integer, not {n:?}"),
            )
            .status(StatusCode::BAD_REQUEST)
        })?,
    };
    Ok((n, call.param("last").map(str::to_owned)))
}

fn with_next_link(mut response: Response, page: &Page, n: usize, base: &str) -> Response {
    if page.more {
        if let Some(last) = page.names.last() {
            let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
            response.headers_mut().insert(
                header::LINK,
                header_value(&format!("<{base}?n={n}&last={last}>; rel=\"next\"")),
            );
        }
    }
    response
}

/// `GET /v2/<name>/tags/list`
pub(super) async fn tags(
    registry: &Registry,
    call: &Call,
    repo: &RepositoryName,
) -> ApiResult<Response> {
    registry.require(call, repo, Access::Pull)?;
    let (n, last) = pagination(call)?;
    let r = repo.to_string();
    let page = registry
        .blocking_meta(move |m| m.tags(&r, last.as_deref(), n))
        .await?
        .ok_or_else(|| name_unknown(repo))?;
    let response = axum::Json(json!({"name": repo.as_str(), "tags": page.names})).into_response();
    Ok(with_next_link(
        response,
        &page,
        n,
        &format!("/v2/{repo}/tags/list"),
    ))
}

/// `GET /v2/_catalog`: the repositories the caller may pull.
pub(super) async fn catalog(registry: &Registry, call: &Call) -> ApiResult<Response> {
    registry.auth.require_login(&call.principal)?;
    let (n, last) = pagination(call)?;
    let auth = registry.auth.clone();
    let principal = call.principal.clone();
    let page = registry
        .blocking_meta(move |m| {
            m.repositories(last.as_deref(), n, |repo| {
                auth.allows(&principal, repo, Access::Pull)
            })
        })
        .await?;
    let response = axum::Json(json!({"repositories": page.names})).into_response();
    Ok(with_next_link(response, &page, n, "/v2/_catalog"))
}

/// `GET /v2/<name>/referrers/<digest>`: an image index of the manifests whose subject is
/// `digest`, optionally filtered by `artifactType`.
pub(super) async fn referrers(
    registry: &Registry,
    call: &Call,
    repo: &RepositoryName,
    digest: &str,
) -> ApiResult<Response> {
    let subject = parse_digest(digest)?;
    registry.require(call, repo, Access::Pull)?;
    let r = repo.to_string();
    let mut found = registry
        .blocking_meta(move |m| m.referrers(&r, &subject))
        .await?;
    let filter = call.param("artifactType").filter(|t| !t.is_empty());
    if let Some(wanted) = filter {
        found.retain(|d| d.artifact_type.as_deref() == Some(wanted));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": found,
    });
    let mut response = axum::Json(index).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(OCI_INDEX));
    if filter.is_some() {
        h.insert(FILTERS_APPLIED, header_value("artifactType"));
    }
    Ok(response)
}
