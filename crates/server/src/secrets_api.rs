//! `/v1/apps/{app}/secrets`: set (a new version from the raw body), list (names and versions,
//! never values) and delete an app's secrets, and pinning the versions a release uses.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use berth_agent::secrets::{files, SecretError, SecretInfo, SecretStore};
use berth_core::spec::ServiceSpec;
use berth_core::AppSpec;
use berth_runtime::secret_files::SecretFiles;
use serde::{Deserialize, Serialize};

use crate::api::{check_app_name, ApiError, ApiState};
use crate::controller::load_releases;
use crate::releases::{state_key, Release};

/// The secret routes.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/v1/apps/{app}/secrets", get(list))
        .route("/v1/apps/{app}/secrets/{name}", put(set).delete(delete))
}

/// The answer to a set.
#[derive(Debug, Serialize, Deserialize)]
pub struct SecretSet {
    /// The app.
    pub app: String,
    /// The secret.
    pub name: String,
    /// The version just made; releases deployed from now on use it.
    pub version: u64,
}

/// The answer to a delete.
#[derive(Debug, Serialize, Deserialize)]
pub struct SecretDeleted {
    /// The app.
    pub app: String,
    /// The secret.
    pub name: String,
    /// How many versions were deleted.
    pub versions: u64,
}

fn secret_error(e: SecretError) -> ApiError {
    let status = match e {
        SecretError::InvalidName { .. } | SecretError::NotEnvSafe(_) => StatusCode::BAD_REQUEST,
        SecretError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => {
            tracing::error!(error = %e, "secret request failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    ApiError::new(status, e.to_string())
}

async fn set(
    State(state): State<Arc<ApiState>>,
    Path((app, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<SecretSet>, ApiError> {
    check_app_name(&app)?;
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the value of secret {name} is empty: pipe it in, e.g. `printf %s \"$VALUE\" | berth secret set {app} {name}`"),
        ));
    }
    let version = state
        .controller()
        .secrets()
        .set(&app, &name, &body)
        .await
        .map_err(secret_error)?;
    state.controller().event(crate::events::Event::new(
        &app,
        crate::events::EventKind::SecretSet,
        format!("secret {name} set (version {version})"),
    ));
    Ok(Json(SecretSet { app, name, version }))
}

async fn list(
    State(state): State<Arc<ApiState>>,
    Path(app): Path<String>,
) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    check_app_name(&app)?;
    let secrets = state
        .controller()
        .secrets()
        .list(&app)
        .await
        .map_err(secret_error)?;
    Ok(Json(secrets))
}

async fn delete(
    State(state): State<Arc<ApiState>>,
    Path((app, name)): Path<(String, String)>,
) -> Result<Json<SecretDeleted>, ApiError> {
    check_app_name(&app)?;
    // The desired release would fail to start its next instance without it.
    if let Some(release) = desired_release_using(&state, &app, &name).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("release {release} of {app} (the desired one) uses secret {name}: deploy a spec without it first"),
        ));
    }
    let versions = state
        .controller()
        .secrets()
        .delete(&app, &name)
        .await
        .map_err(secret_error)?;
    if versions == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{app} has no secret {name} (see berth secret list {app})"),
        ));
    }
    state.controller().event(crate::events::Event::new(
        &app,
        crate::events::EventKind::SecretDeleted,
        format!("secret {name} deleted"),
    ));
    Ok(Json(SecretDeleted {
        app,
        name,
        versions,
    }))
}

async fn desired_release_using(
    state: &ApiState,
    app: &str,
    name: &str,
) -> Result<Option<u64>, ApiError> {
    let store = state.controller().store();
    let Some(entry) = store.get(&state_key(app)).await? else {
        return Ok(None);
    };
    let current: crate::releases::AppState = serde_json::from_slice(&entry.value)
        .map_err(|e| crate::ServerError::Internal(format!("app state of {app}: {e}")))?;
    let releases = load_releases(store.as_ref(), app).await?;
    Ok(releases
        .get(&current.desired)
        .filter(|release| release.secrets.contains_key(name))
        .map(|release| release.number))
}

/// The newest version of every secret `spec`'s services use: what a new release pins. A
/// secret that does not exist is a 400 naming the command that sets it.
pub async fn pin_versions(
    state: &ApiState,
    spec: &AppSpec,
) -> Result<BTreeMap<String, u64>, ApiError> {
    let existing: BTreeMap<String, u64> = state
        .controller()
        .secrets()
        .list(&spec.app)
        .await
        .map_err(secret_error)?
        .into_iter()
        .filter_map(|info| Some((info.name, *info.versions.last()?)))
        .collect();
    let mut pinned = BTreeMap::new();
    let mut missing = Vec::new();
    for (service, spec_service) in &spec.services {
        for name in spec_service.secret_names() {
            match existing.get(name) {
                Some(version) => {
                    pinned.insert(name.to_owned(), *version);
                }
                None => missing.push(format!(
                    "service `{service}` needs secret {name}, which {} does not have: set it with `berth secret set {} {name}` (the value on stdin)",
                    spec.app, spec.app
                )),
            }
        }
    }
    if missing.is_empty() {
        Ok(pinned)
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, missing.join("; ")))
    }
}

/// The files of the secrets `service` asks for as files, at the versions `release` pinned,
/// for the runtime (which writes them to a tmpfs of the container's own).
pub async fn secret_files(
    secrets: &SecretStore,
    app: &str,
    service: &ServiceSpec,
    release: &Release,
) -> Result<SecretFiles, String> {
    let mut values = Vec::new();
    for (name, path) in &service.secret_files {
        let version = release.secrets.get(name).ok_or_else(|| {
            format!(
                "release {} pins no version of secret {name}",
                release.number
            )
        })?;
        let value = secrets
            .get(app, name, *version)
            .await
            .map_err(|e| e.to_string())?;
        values.push((name.clone(), path.clone(), value));
    }
    files(&values).map_err(|e| e.to_string())
}
