//! The reading endpoints that can stream: `GET /v1/apps/{app}/events`, `GET /v1/events` and
//! `GET /v1/apps/{app}/logs`. Without `follow` they answer a JSON array; with `follow=1` a
//! stream of newline-delimited JSON objects (`application/x-ndjson`), one per event or log
//! line, that stays open until the client goes away (logs: until the instances exit).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_runtime::logs::{self, LogQuery, LogRecord, Stream};
use berth_runtime::node::Container;
use berth_store::{EventKind as StoreEventKind, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{load_state, ApiError, ApiState, AppName};
use crate::events::{self, Event, EVENTS_PREFIX};
use crate::releases::InstanceName;
use crate::ServerError;

/// The query of the event endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a higher sequence number (of the app).
    #[serde(default)]
    pub since: u64,
    /// Keep the answer open and stream new events (`1` or `true`).
    #[serde(default)]
    pub follow: Option<String>,
}

/// The query of the logs endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Only this service's instances.
    #[serde(default)]
    pub service: Option<String>,
    /// Only lines written at or after this time (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Only the last N lines (of the merged history).
    #[serde(default)]
    pub tail: Option<usize>,
    /// Keep the answer open and stream new lines (`1` or `true`).
    #[serde(default)]
    pub follow: Option<String>,
}

/// One line of an instance's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The instance, e.g. `web-7-a`.
    pub instance: String,
    /// Its service.
    pub service: String,
    /// When it was written (RFC 3339).
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text, without the newline (invalid UTF-8 replaced).
    pub text: String,
}

fn wants_follow(value: Option<&str>) -> bool {
    matches!(value, Some("1" | "true" | "yes"))
}

/// A streaming answer fed by `receiver`.
fn ndjson(receiver: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let line = receiver.recv().await?;
        Some((Ok::<_, Infallible>(line), receiver))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn line(value: &impl Serialize) -> Bytes {
    let mut text = serde_json::to_vec(value).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}

/// Sends `backlog`, then the events stored under `prefix` after `revision`, until the
/// client goes away.
fn stream_events(
    store: Arc<dyn Store>,
    prefix: String,
    backlog: Vec<Event>,
    revision: u64,
) -> Response {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        for event in &backlog {
            if sender.send(line(event)).await.is_err() {
                return;
            }
        }
        let mut watch = match store.watch(&prefix, Some(revision)).await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!(error = %e, "watching events");
                return;
            }
        };
        loop {
            let change = tokio::select! {
                change = watch.recv() => change,
                () = sender.closed() => return,
            };
            let Some(Ok(change)) = change else { return };
            if change.kind != StoreEventKind::Put {
                continue;
            }
            let Ok(event) = serde_json::from_slice::<Event>(&change.entry.value) else {
                continue;
            };
            if sender.send(line(&event)).await.is_err() {
                return;
            }
        }
    });
    ndjson(receiver)
}

pub(super) async fn app_events(
    State(state): State<Arc<ApiState>>,
    AppName(app): AppName,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    load_state(&state.controller, &app).await?;
    let store = state.controller.store().clone();
    let (events, revision) = events::list(store.as_ref(), &app, query.since).await?;
    if wants_follow(query.follow.as_deref()) {
        return Ok(stream_events(
            store,
            events::events_prefix(&app),
            events,
            revision,
        ));
    }
    Ok(Json(events).into_response())
}

pub(super) async fn all_events(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let store = state.controller.store().clone();
    let listing = store.list(EVENTS_PREFIX).await?;
    let mut events: Vec<Event> = listing
        .entries
        .iter()
        .filter_map(|entry| serde_json::from_slice::<Event>(&entry.value).ok())
        .filter(|event| event.seq > query.since)
        .collect();
    events.sort_by(|a, b| (a.at, &a.app, a.seq).cmp(&(b.at, &b.app, b.seq)));
    if wants_follow(query.follow.as_deref()) {
        return Ok(stream_events(
            store,
            EVENTS_PREFIX.to_owned(),
            events,
            listing.revision,
        ));
    }
    Ok(Json(events).into_response())
}

fn log_line(name: &InstanceName, record: &LogRecord) -> LogLine {
    LogLine {
        instance: name.instance.clone(),
        service: name.service.clone(),
        time: record.time.clone(),
        stream: match record.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
        .to_owned(),
        text: String::from_utf8_lossy(&record.text).into_owned(),
    }
}

/// The merged history of `containers`' logs: ordered by time, the last `tail` of them.
pub fn merged_history(
    containers: &[(InstanceName, Container)],
    since: Option<time::OffsetDateTime>,
    tail: Option<usize>,
) -> std::io::Result<Vec<LogLine>> {
    let query = LogQuery { since, tail };
    let mut lines: Vec<(Option<time::OffsetDateTime>, LogLine)> = Vec::new();
    for (name, container) in containers {
        for record in logs::read(&container.log_dir(), &query)? {
            lines.push((record.timestamp(), log_line(name, &record)));
        }
    }
    lines.sort_by_key(|line| line.0);
    let skip = tail.map_or(0, |tail| lines.len().saturating_sub(tail));
    Ok(lines.into_iter().skip(skip).map(|(_, line)| line).collect())
}

pub(super) async fn app_logs(
    State(state): State<Arc<ApiState>>,
    AppName(app): AppName,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    load_state(&state.controller, &app).await?;
    let node = state.controller.node().clone();
    let listed = tokio::task::spawn_blocking(move || node.list())
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .map_err(ServerError::from)?;
    let mut containers: Vec<(InstanceName, Container)> = listed
        .into_iter()
        .filter_map(|c| Some((InstanceName::parse(&c.record.name)?, c)))
        .filter(|(name, _)| name.app == app)
        .filter(|(name, _)| query.service.as_ref().is_none_or(|s| *s == name.service))
        .collect();
    containers.sort_by(|a, b| a.0.instance.cmp(&b.0.instance));
    let tail = query.tail;
    let since = query
        .since
        .as_deref()
        .map(|since| {
            time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "since={since:?} is not an RFC 3339 time like 2026-11-29T13:00:00Z: {e}"
                    ))
                })
        })
        .transpose()?;
    let history = {
        let containers = containers.clone();
        tokio::task::spawn_blocking(move || merged_history(&containers, since, tail))
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))?
            .map_err(|e| ServerError::Internal(format!("reading logs: {e}")))?
    };
    if !wants_follow(query.follow.as_deref()) {
        return Ok(Json(history).into_response());
    }
    let (sender, receiver) = mpsc::channel(256);
    let node = state.controller.node().clone();
    tokio::spawn(async move {
        for entry in &history {
            if sender.send(line(entry)).await.is_err() {
                return;
            }
        }
        for (name, container) in containers {
            let sender = sender.clone();
            let node = node.clone();
            tokio::task::spawn_blocking(move || follow_instance(&node, &name, &container, &sender));
        }
    });
    Ok(ndjson(receiver))
}

/// Sends the lines `container` writes from now on until it exits or the client goes away.
fn follow_instance(
    node: &berth_runtime::node::Node,
    name: &InstanceName,
    container: &Container,
    sender: &mpsc::Sender<Bytes>,
) {
    let id = &container.record.id;
    let keep_going = || !sender.is_closed() && node.get(id).is_ok_and(|c| c.is_active());
    let sink = |record: &LogRecord| {
        sender
            .blocking_send(line(&log_line(name, record)))
            .map_err(|_| std::io::Error::other("client went away"))
    };
    let after_history = LogQuery {
        since: None,
        tail: Some(0),
    };
    if let Err(e) = logs::follow(&container.log_dir(), &after_history, keep_going, sink) {
        tracing::debug!(container = container.record.name, error = %e, "following logs");
    }
}
