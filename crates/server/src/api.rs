//! The `/v1` HTTP API. Handlers check the request, write releases and desired state to the
//! store and read what the controller published; they never start or stop anything
//! themselves. Every error is JSON `{"error": "..."}`; client mistakes are 4xx.

mod ops;
mod streams;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_core::plan::ReleaseId;
use berth_core::spec::ImageRef;
use berth_core::AppSpec;
use berth_runtime::image::ImageError;
use berth_store::{Expect, Op, TxnOutcome};
use serde::{Deserialize, Serialize};

use crate::controller::{load_releases, AppView, Controller};
use crate::events::{Event, EventKind};
use crate::releases::{
    release_key, revisions, service_changes, state_key, AppState, Release, ReleaseStatus,
    ResolvedImage, ServiceChange, APPS_PREFIX,
};
use crate::{now, ServerError};

pub use ops::{PauseResponse, PromoteRequest, PromoteResponse, ScaleRequest, ScaleResponse};
pub use streams::LogLine;

/// What the handlers share.
pub struct ApiState {
    controller: Arc<Controller>,
    token: String,
    /// Deploys and rollbacks of one server take turns: release numbers stay dense.
    writes: tokio::sync::Mutex<()>,
}

impl ApiState {
    /// The API of `controller`, accepting `token` as bearer token.
    pub fn new(controller: Arc<Controller>, token: String) -> Arc<ApiState> {
        Arc::new(ApiState {
            controller,
            token,
            writes: tokio::sync::Mutex::new(()),
        })
    }

    /// The controller.
    pub(crate) fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }
}

/// The routes, behind the bearer-token check.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{app}", get(app_status).delete(ops::remove_app))
        .route("/v1/apps/{app}/deploy", post(deploy))
        .route("/v1/apps/{app}/releases", get(releases))
        .route("/v1/apps/{app}/rollback", post(rollback))
        .merge(crate::secrets_api::routes())
        .merge(crate::volumes_api::routes())
        .route("/v1/apps/{app}/scale", post(ops::scale))
        .route("/v1/apps/{app}/promote", post(ops::promote))
        .route("/v1/apps/{app}/pause", post(ops::pause))
        .route("/v1/apps/{app}/resume", post(ops::resume))
        .route("/v1/apps/{app}/events", get(streams::app_events))
        .route("/v1/apps/{app}/logs", get(streams::app_logs))
        .route("/v1/events", get(streams::all_events))
        .route("/v1/routes", get(ops::routes))
        .route("/v1/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn no_app(app: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no app named {app:?}: deploy it with berth deploy"),
        )
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> ApiError {
        tracing::error!(error = %e, "request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<berth_store::StoreError> for ApiError {
    fn from(e: berth_store::StoreError) -> ApiError {
        ServerError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// The `{app}` of a path, checked to be an app name (a DNS label, as in `berth.toml`).
pub struct AppName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AppName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(app) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        check_app_name(&app)?;
        Ok(AppName(app))
    }
}

/// 400 unless `app` is an app name (a DNS label, as in `berth.toml`).
pub(crate) fn check_app_name(app: &str) -> Result<(), ApiError> {
    let valid = app.len() <= 63
        && app.starts_with(|c: char| c.is_ascii_lowercase())
        && !app.ends_with('-')
        && app
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(ApiError::bad_request(format!(
            "{app:?} is not an app name: lowercase letters, digits and '-', starting with a letter"
        )));
    }
    Ok(())
}

async fn authorize(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), state.token.as_bytes()) => {
            next.run(request).await
        }
        _ => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: use the token in <root>/server.token (or BERTH_TOKEN)",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /v1/apps/{app}/deploy`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The `berth.toml` text.
    pub spec: String,
    /// The `[env.<name>]` overlay to apply.
    #[serde(default)]
    pub env: Option<String>,
    /// The file name, for error messages (`berth.toml` by default).
    #[serde(default)]
    pub file: Option<String>,
    /// Who deploys (`user@host`), recorded with the release.
    #[serde(default)]
    pub by: Option<String>,
    /// Only say what the release would do (which services restart and why); store nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to a deploy.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeployResponse {
    /// The app.
    pub app: String,
    /// The new release.
    pub release: ReleaseId,
    /// The release it replaces, if any.
    pub previous: Option<ReleaseId>,
    /// Each service's image, pinned by digest.
    pub images: BTreeMap<String, ResolvedImage>,
    /// What the release does to each service: restart (and why), keep, add, remove.
    #[serde(default)]
    pub services: Vec<ServiceChange>,
    /// Nothing was stored: the answer says what a deploy would do.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /v1/apps/{app}/rollback`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release to go back to; the previous good one when absent.
    #[serde(default)]
    pub release: Option<ReleaseId>,
}

/// The answer to a rollback.
#[derive(Debug, Serialize, Deserialize)]
pub struct RollbackResponse {
    /// The app.
    pub app: String,
    /// The release that was desired.
    pub from: ReleaseId,
    /// The release now desired.
    pub to: ReleaseId,
}

/// One app in `GET /v1/apps`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AppSummary {
    /// The app.
    pub app: String,
    /// The release its services should run.
    pub desired_release: ReleaseId,
    /// Where that release stands.
    pub status: ReleaseStatus,
    /// The newest release.
    pub latest_release: ReleaseId,
}

/// One release in `GET /v1/apps/{app}/releases`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReleaseSummary {
    /// Its number.
    pub number: ReleaseId,
    /// Where it stands.
    pub status: ReleaseStatus,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    /// The overlay applied.
    pub env: Option<String>,
    /// Each service's image.
    pub images: BTreeMap<String, ResolvedImage>,
    /// Why its deploy failed.
    pub failure: Option<String>,
    /// Who asked for it.
    #[serde(default)]
    pub by: Option<String>,
    /// What it changed compared with the release it replaced.
    #[serde(default)]
    pub changes: Vec<String>,
    /// What it did to each service.
    #[serde(default)]
    pub services: Vec<ServiceChange>,
}

async fn deploy(
    State(state): State<Arc<ApiState>>,
    AppName(app): AppName,
    body: Result<Json<DeployRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<DeployResponse>), ApiError> {
    let Json(request) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let file = request.file.unwrap_or_else(|| "berth.toml".to_owned());
    let spec = AppSpec::parse_file(&file, &request.spec, request.env.as_deref())
        .map_err(|errors| ApiError::bad_request(errors.to_string()))?;
    if spec.app != app {
        return Err(ApiError::bad_request(format!(
            "{file} is for app {:?}, but the request deploys {app:?}",
            spec.app
        )));
    }
    let secrets = crate::secrets_api::pin_versions(&state, &spec).await?;
    let mut images = BTreeMap::new();
    for (name, service) in &spec.services {
        images.insert(
            name.clone(),
            resolve(&state.controller, name, &service.image).await?,
        );
    }

    let _turn = state.writes.lock().await;
    let store = state.controller.store();
    let mut attempts = 0;
    let (number, previous, services) = loop {
        let entry = store.get(&state_key(&app)).await?;
        let current: AppState = match &entry {
            Some(entry) => serde_json::from_slice(&entry.value)
                .map_err(|e| ServerError::Internal(format!("app state of {app}: {e}")))?,
            None => AppState::default(),
        };
        refuse_while_removing(&app, &current)?;
        let previous = entry.as_ref().map(|_| current.desired);
        let number = current.latest + 1;
        let mut release = Release {
            app: app.clone(),
            number,
            spec: request.spec.clone(),
            file: file.clone(),
            env: request.env.clone(),
            images: images.clone(),
            secrets: secrets.clone(),
            created_at: now().as_millis(),
            by: request.by.clone(),
            changes: Vec::new(),
            revisions: BTreeMap::new(),
            services: Vec::new(),
        };
        let replaced = match previous {
            Some(previous) => store
                .get(&crate::releases::release_key(&app, previous))
                .await?
                .and_then(|entry| serde_json::from_slice::<Release>(&entry.value).ok()),
            None => None,
        };
        let replaced_spec = replaced.as_ref().and_then(|r| r.app_spec().ok());
        release.services = service_changes(
            replaced.as_ref().zip(replaced_spec.as_ref()),
            &release,
            &spec,
        );
        release.revisions = revisions(&release.services);
        release.changes = crate::releases::changes(replaced.as_ref(), &release);
        if request.dry_run {
            break (number, previous, release.services);
        }
        let services = release.services.clone();
        let next = current.with_desired(&app, number);
        let compare = match &entry {
            Some(entry) => Expect::ModRevision(entry.mod_revision),
            None => Expect::Absent,
        };
        let release = Some((release_key(&app, number), encode(&release)?));
        match write_state(store.as_ref(), &app, compare, &next, release).await {
            Ok(()) => break (number, previous, services),
            // The controller recorded deploy progress in between: read again.
            Err(e) if e.status == StatusCode::CONFLICT && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            Err(e) => return Err(e),
        }
    };
    if request.dry_run {
        return Ok((
            StatusCode::OK,
            Json(DeployResponse {
                app,
                release: number,
                previous,
                images,
                services,
                dry_run: true,
            }),
        ));
    }
    state.controller.event(
        Event::new(
            &app,
            EventKind::ReleaseCreated,
            format!(
                "release {number} created{}",
                previous.map_or(String::new(), |p| format!(" (replaces release {p})"))
            ),
        )
        .release(number),
    );
    state.controller.wake();
    Ok((
        StatusCode::CREATED,
        Json(DeployResponse {
            app,
            release: number,
            previous,
            images,
            services,
            dry_run: false,
        }),
    ))
}

/// Pulls a service's image and pins it by digest.
async fn resolve(
    controller: &Controller,
    service: &str,
    image: &ImageRef,
) -> Result<ResolvedImage, ApiError> {
    let repository = match &image.registry {
        Some(registry) => format!("{registry}/{}", image.repository),
        None => image.repository.to_string(),
    };
    let reference = match (&image.digest, &image.tag) {
        (Some(digest), _) => format!("{repository}@{digest}"),
        (None, Some(tag)) => format!("{repository}:{tag}"),
        (None, None) => format!("{repository}:latest"),
    };
    let pulled = controller
        .node()
        .images()
        .pull(&reference, controller.pull_options())
        .await
        .map_err(|e| {
            let status = match e {
                ImageError::Connection { .. } | ImageError::Registry { .. } => {
                    StatusCode::BAD_GATEWAY
                }
                ImageError::Io { .. } | ImageError::Index { .. } => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError::new(
                status,
                format!("image {reference} of service `{service}`: {e}"),
            )
        })?;
    Ok(ResolvedImage {
        reference,
        digest: pulled.id.to_string(),
        pinned_reference: format!("{repository}@{}", pulled.id),
    })
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ServerError::Internal(format!("encoding: {e}")).into())
}

/// Writes the app state (and a new release) if the state is still as read.
async fn write_state(
    store: &dyn berth_store::Store,
    app: &str,
    compare: Expect,
    state: &AppState,
    release: Option<(String, Vec<u8>)>,
) -> Result<(), ApiError> {
    let mut compares = vec![(state_key(app), compare)];
    let mut ops = vec![Op::Put {
        key: state_key(app),
        value: encode(state)?,
        lease: None,
    }];
    if let Some((key, value)) = release {
        compares.push((key.clone(), Expect::Absent));
        ops.push(Op::Put {
            key,
            value,
            lease: None,
        });
    }
    match store.txn(compares, ops).await? {
        TxnOutcome::Applied { .. } => Ok(()),
        TxnOutcome::Conflict { .. } => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{app} changed while this request was handled (the controller just recorded deploy progress): try again"),
        )),
    }
}

/// A 409 while `berth app rm` removes `app`: nothing may change it meanwhile.
pub(crate) fn refuse_while_removing(app: &str, state: &AppState) -> Result<(), ApiError> {
    match state.removing {
        Some(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{app} is being removed (berth app rm): wait until it is gone, then deploy it anew"
            ),
        )),
        None => Ok(()),
    }
}

async fn load_state(
    controller: &Controller,
    app: &str,
) -> Result<(AppState, berth_store::Entry), ApiError> {
    let entry = controller
        .store()
        .get(&state_key(app))
        .await?
        .ok_or_else(|| ApiError::no_app(app))?;
    let state = serde_json::from_slice(&entry.value)
        .map_err(|e| ServerError::Internal(format!("app state of {app}: {e}")))?;
    Ok((state, entry))
}

async fn rollback(
    State(state): State<Arc<ApiState>>,
    AppName(app): AppName,
    body: axum::body::Bytes,
) -> Result<Json<RollbackResponse>, ApiError> {
    // The body is optional: an empty one asks for the previous good release.
    let request: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("rollback request: {e}")))?
    };
    let _turn = state.writes.lock().await;
    // The controller may record deploy progress between our read and write: retry then.
    for _ in 0..20 {
        let (current, entry) = load_state(&state.controller, &app).await?;
        refuse_while_removing(&app, &current)?;
        let releases = load_releases(state.controller.store().as_ref(), &app).await?;
        let numbers: Vec<ReleaseId> = releases.keys().copied().collect();
        let to = match request.release {
            Some(number) if releases.contains_key(&number) => number,
            Some(number) => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("{app} has no release {number} (see berth releases {app})"),
                ))
            }
            None => current.rollback_target(&numbers).ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "{app} has no earlier good release than {}: name one with berth rollback {app} RELEASE",
                        current.desired
                    ),
                )
            })?,
        };
        let from = current.desired;
        if to == from {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("release {to} of {app} is already the desired release"),
            ));
        }
        let next = current.with_desired(&app, to);
        match write_state(
            state.controller.store().as_ref(),
            &app,
            Expect::ModRevision(entry.mod_revision),
            &next,
            None,
        )
        .await
        {
            Ok(()) => {
                state.controller.event(
                    Event::new(
                        &app,
                        EventKind::RollbackRequested,
                        format!("rollback: release {from} -> release {to}"),
                    )
                    .release(to),
                );
                state.controller.wake();
                return Ok(Json(RollbackResponse { app, from, to }));
            }
            Err(e) if e.status == StatusCode::CONFLICT => {
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!("{app} keeps changing: try the rollback again"),
    ))
}

async fn list_apps(State(state): State<Arc<ApiState>>) -> Result<Json<Vec<AppSummary>>, ApiError> {
    let store = state.controller.store();
    let listing = store.list(APPS_PREFIX).await?;
    let mut apps = Vec::new();
    for entry in listing.entries.iter().filter(|e| e.key.ends_with("/state")) {
        let app_state: AppState = serde_json::from_slice(&entry.value)
            .map_err(|e| ServerError::Internal(format!("{}: {e}", entry.key)))?;
        let releases = load_releases(store.as_ref(), &app_state.app).await?;
        apps.push(AppSummary {
            app: app_state.app.clone(),
            desired_release: app_state.desired,
            status: app_state.status_of(app_state.desired, &releases),
            latest_release: app_state.latest,
        });
    }
    Ok(Json(apps))
}

async fn app_status(
    State(state): State<Arc<ApiState>>,
    AppName(app): AppName,
) -> Result<Json<AppView>, ApiError> {
    let (current, _) = load_state(&state.controller, &app).await?;
    let releases = load_releases(state.controller.store().as_ref(), &app).await?;
    let mut view = state.controller.view(&app).unwrap_or_else(|| AppView {
        app: app.clone(),
        ..AppView::default()
    });
    // The store is ahead of the controller's last pass right after a deploy or rollback.
    view.desired_release = current.desired;
    view.desired_status = Some(current.status_of(current.desired, &releases));
    Ok(Json(view))
}

async fn releases(
    State(state): State<Arc<ApiState>>,
    AppName(app): AppName,
) -> Result<Json<Vec<ReleaseSummary>>, ApiError> {
    let (current, _) = load_state(&state.controller, &app).await?;
    let releases = load_releases(state.controller.store().as_ref(), &app).await?;
    let statuses: BTreeMap<ReleaseId, ReleaseStatus> = releases
        .keys()
        .map(|number| (*number, current.status_of(*number, &releases)))
        .collect();
    Ok(Json(
        releases
            .into_values()
            .rev()
            .map(|release| ReleaseSummary {
                number: release.number,
                status: statuses[&release.number],
                created_at: release.created_at,
                env: release.env,
                images: release.images,
                failure: current.failed.get(&release.number).cloned(),
                by: release.by,
                changes: release.changes,
                services: release.services,
            })
            .collect(),
    ))
}
