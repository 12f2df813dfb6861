//! `POST /v1/apps/{app}/scale`, `promote`, `pause` and `resume`: changes to an app's state
//! that the controller's planner carries out; no new release.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use berth_store::Expect;
use serde::{Deserialize, Serialize};

use super::{load_state, write_state, ApiError, ApiState, AppName};
use crate::controller::load_releases;
use crate::events::{Event, EventKind};
use crate::releases::AppState;
use crate::{now, ServerError};

/// The most replicas `berth scale` sets.
pub const MAX_REPLICAS: u32 = 1000;

/// `POST /v1/apps/{app}/scale`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The service.
    pub service: String,
    /// Its new number of instances (0 stops them all).
    pub replicas: u32,
}

/// The answer to a scale.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScaleResponse {
    /// The app.
    pub app: String,
    /// The service.
    pub service: String,
    /// The replicas before.
    pub previous: u32,
    /// The replicas now.
    pub replicas: u32,
}

/// `POST /v1/apps/{app}/promote`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The service; every service with a deploy under way when absent.
    #[serde(default)]
    pub service: Option<String>,
}

/// The answer to a promote.
#[derive(Debug, Serialize, Deserialize)]
pub struct PromoteResponse {
    /// The app.
    pub app: String,
    /// The services whose current step was promoted.
    pub promoted: Vec<String>,
}

/// The answer to a pause or a resume.
#[derive(Debug, Serialize, Deserialize)]
pub struct PauseResponse {
    /// The app.
    pub app: String,
    /// The services whose deploy was paused (or resumed).
    pub services: Vec<String>,
}

/// `DELETE /v1/apps/{app}?volumes=true`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// Remove the app's named volumes too (kept otherwise).
    #[serde(default)]
    pub volumes: bool,
}

/// The answer to `DELETE /v1/apps/{app}`: the removal is under way.
#[derive(Debug, Serialize, Deserialize)]
pub struct RemoveResponse {
    /// The app.
    pub app: String,
    /// Its named volumes go too.
    pub volumes: bool,
}

/// Starts removing an app: the controller stops its instances (drained first), removes its
/// routes, DNS and catalog entries and its pins, then deletes its releases, state and
/// events (and its named volumes when asked). Its secrets stay.
pub(super) async fn remove_app(
    State(state): State<Arc<ApiState>>,
    AppName(app): AppName,
    query: Result<axum::extract::Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(StatusCode, Json<RemoveResponse>), ApiError> {
    let axum::extract::Query(query) = query
        .map_err(|e| ApiError::bad_request(format!("the only parameter is volumes=true: {e}")))?;
    update(&state, &app, |current| {
        current.removing = Some(crate::releases::Removal {
            volumes: query.volumes,
            requested_at: now().as_millis(),
        });
        Ok(())
    })
    .await?;
    state.controller.event(Event::new(
        &app,
        EventKind::AppRemoving,
        format!(
            "removing {app}: its instances stop{}",
            if query.volumes {
                "; its named volumes go too"
            } else {
                "; its named volumes stay"
            }
        ),
    ));
    state.controller.wake();
    Ok((
        StatusCode::ACCEPTED,
        Json(RemoveResponse {
            app,
            volumes: query.volumes,
        }),
    ))
}

/// What an operator does to the deploys under way.
#[derive(Clone, Copy)]
enum DeployOp {
    Promote,
    Pause,
    Resume,
}

impl DeployOp {
    fn apply(self, state: &mut AppState, service: Option<&str>) -> Vec<String> {
        match self {
            DeployOp::Promote => state.promote(service, now()),
            DeployOp::Pause => state.pause(service, now()),
            DeployOp::Resume => state.resume(service, now()),
        }
    }

    /// What no deploy waits for, when nothing was changed.
    fn none_left(self) -> &'static str {
        match self {
            DeployOp::Promote => "waits to be promoted",
            DeployOp::Pause => "is under way and not paused",
            DeployOp::Resume => "is paused",
        }
    }

    fn event(self, service: &str) -> (EventKind, String) {
        match self {
            DeployOp::Promote => (
                EventKind::Promoted,
                format!("{service}: the current step was promoted"),
            ),
            DeployOp::Pause => (
                EventKind::Paused,
                format!("{service}: the deploy is paused: it starts and stops nothing, and its deadline stops"),
            ),
            DeployOp::Resume => (
                EventKind::Resumed,
                format!("{service}: the deploy goes on; its deadline counts from now"),
            ),
        }
    }
}

/// Changes the app state with `change` and writes it if nobody changed it meanwhile
/// (the controller records deploy progress concurrently), trying again if they did.
async fn update<R>(
    state: &ApiState,
    app: &str,
    mut change: impl FnMut(&mut AppState) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let _turn = state.writes.lock().await;
    for _ in 0..20 {
        let (mut current, entry) = load_state(&state.controller, app).await?;
        super::refuse_while_removing(app, &current)?;
        let answer = change(&mut current)?;
        match write_state(
            state.controller.store().as_ref(),
            app,
            Expect::ModRevision(entry.mod_revision),
            &current,
            None,
        )
        .await
        {
            Ok(()) => return Ok(answer),
            Err(e) if e.status == StatusCode::CONFLICT => {
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!("{app} keeps changing: try again"),
    ))
}

pub(super) async fn scale(
    State(state): State<Arc<ApiState>>,
    AppName(app): AppName,
    body: Result<Json<ScaleRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ScaleResponse>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if request.replicas > MAX_REPLICAS {
        return Err(ApiError::bad_request(format!(
            "{} replicas is more than berth runs of one service ({MAX_REPLICAS})",
            request.replicas
        )));
    }
    let releases = load_releases(state.controller.store().as_ref(), &app).await?;
    let service = request.service.clone();
    let previous = update(&state, &app, |current| {
        let spec = releases
            .get(&current.desired)
            .ok_or_else(|| ApiError::no_app(&app))?
            .app_spec()
            .map_err(|e| ServerError::Internal(format!("release {}: {e}", current.desired)))?;
        let Some(spec) = spec.services.get(&service) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "release {} of {app} has no service `{service}` (see berth status {app})",
                    current.desired
                ),
            ));
        };
        if request.replicas > 1 && spec.has_exclusive_volume() {
            return Err(ApiError::bad_request(format!(
                "`{service}` mounts a named volume exclusive to one instance: it runs 1 replica at most"
            )));
        }
        let previous = current
            .scale
            .get(&service)
            .copied()
            .unwrap_or(spec.replicas);
        current.scale.insert(service.clone(), request.replicas);
        Ok(previous)
    })
    .await?;
    state.controller.event(
        Event::new(
            &app,
            EventKind::Scaled,
            format!(
                "{service} scaled from {previous} to {} replicas",
                request.replicas
            ),
        )
        .service(&service),
    );
    state.controller.wake();
    Ok(Json(ScaleResponse {
        app,
        service,
        previous,
        replicas: request.replicas,
    }))
}

pub(super) async fn promote(
    State(state): State<Arc<ApiState>>,
    AppName(app): AppName,
    body: axum::body::Bytes,
) -> Result<Json<PromoteResponse>, ApiError> {
    let promoted = deploy_op(&state, &app, &body, DeployOp::Promote).await?;
    Ok(Json(PromoteResponse { app, promoted }))
}

pub(super) async fn pause(
    State(state): State<Arc<ApiState>>,
    AppName(app): AppName,
    body: axum::body::Bytes,
) -> Result<Json<PauseResponse>, ApiError> {
    let services = deploy_op(&state, &app, &body, DeployOp::Pause).await?;
    Ok(Json(PauseResponse { app, services }))
}

pub(super) async fn resume(
    State(state): State<Arc<ApiState>>,
    AppName(app): AppName,
    body: axum::body::Bytes,
) -> Result<Json<PauseResponse>, ApiError> {
    let services = deploy_op(&state, &app, &body, DeployOp::Resume).await?;
    Ok(Json(PauseResponse { app, services }))
}

/// Promotes, pauses or resumes the deploys under way of the service `body` names (every
/// service when the body is empty or names none); records an event for each.
async fn deploy_op(
    state: &ApiState,
    app: &str,
    body: &[u8],
    op: DeployOp,
) -> Result<Vec<String>, ApiError> {
    let request: PromoteRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PromoteRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request: {e}")))?
    };
    let changed = update(state, app, |current| {
        let changed = op.apply(current, request.service.as_deref());
        if changed.is_empty() {
            let which = request
                .service
                .as_ref()
                .map_or(String::new(), |s| format!(" of `{s}`"));
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "no deploy{which} of {app} {} (see berth status {app})",
                    op.none_left()
                ),
            ));
        }
        Ok(changed)
    })
    .await?;
    for service in &changed {
        let (kind, message) = op.event(service);
        state
            .controller
            .event(Event::new(app, kind, message).service(service));
    }
    state.controller.wake();
    Ok(changed)
}

/// `GET /v1/routes`: the proxy's routes, their releases and what each served.
pub(super) async fn routes(
    State(state): State<Arc<ApiState>>,
) -> Json<Vec<crate::traffic::RouteReport>> {
    Json(state.controller().traffic().report())
}

/// `GET /v1/metrics`: the proxy's per-route and per-release counters and latency histograms
/// in Prometheus' text format (empty without a proxy).
pub(super) async fn metrics(
    State(state): State<Arc<ApiState>>,
) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state
            .controller()
            .traffic()
            .prometheus()
            .await
            .unwrap_or_default(),
    )
}
