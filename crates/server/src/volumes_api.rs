//! `/v1/apps/{app}/volumes`: an app's named volumes, and removing one. Nothing else ever
//! removes a named volume.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::{check_app_name, ApiError, ApiState};
use crate::mounts::{is_volume_name, volume_dir};
use crate::ServerError;

/// The volume routes.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/v1/apps/{app}/volumes", get(list))
        .route("/v1/apps/{app}/volumes/{name}", delete(remove))
}

/// A named volume.
#[derive(Debug, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Its name in the spec.
    pub name: String,
    /// Its directory on the node.
    pub path: PathBuf,
    /// The containers that mount it (any state).
    pub used_by: Vec<String>,
}

fn volumes_root(state: &ApiState) -> PathBuf {
    state.controller().node().root().join("volumes")
}

async fn volumes(state: &ApiState, app: &str) -> Result<Vec<VolumeInfo>, ApiError> {
    let dir = volumes_root(state).join(app);
    let node = state.controller().node().clone();
    tokio::task::spawn_blocking(move || {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ServerError::Internal(format!("{}: {e}", dir.display()))),
        };
        let containers = node.list()?;
        let mut volumes = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let used_by = containers
                .iter()
                .filter(|c| c.record.request.volumes.iter().any(|b| b.source == path))
                .map(|c| c.record.name.clone())
                .collect();
            volumes.push(VolumeInfo {
                name: entry.file_name().to_string_lossy().into_owned(),
                path,
                used_by,
            });
        }
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    })
    .await
    .map_err(|e| ServerError::Internal(e.to_string()))?
    .map_err(ApiError::from)
}

async fn list(
    State(state): State<Arc<ApiState>>,
    Path(app): Path<String>,
) -> Result<Json<Vec<VolumeInfo>>, ApiError> {
    check_app_name(&app)?;
    Ok(Json(volumes(&state, &app).await?))
}

async fn remove(
    State(state): State<Arc<ApiState>>,
    Path((app, name)): Path<(String, String)>,
) -> Result<Json<VolumeInfo>, ApiError> {
    check_app_name(&app)?;
    if !is_volume_name(&name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{name:?} is not a volume name"),
        ));
    }
    let path = volume_dir(&volumes_root(&state), &app, &name);
    // No start may create or mount a volume between the check and the removal.
    let _volumes = state.controller().lock_volumes().await;
    let volume = volumes(&state, &app)
        .await?
        .into_iter()
        .find(|v| v.path == path)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{app} has no volume {name} (see berth volume ls {app})"),
            )
        })?;
    if !volume.used_by.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "volume {name} of {app} is mounted by {}: deploy a spec without it (or remove the containers) first",
                volume.used_by.join(", ")
            ),
        ));
    }
    let target = path.clone();
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&target))
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .map_err(|e| ServerError::Internal(format!("removing {}: {e}", path.display())))?;
    state.controller().event(crate::events::Event::new(
        &app,
        crate::events::EventKind::VolumeRemoved,
        format!("volume {name} removed"),
    ));
    Ok(Json(volume))
}
