//! The Consul-compatible HTTP catalog: Consul's read API over the [`Catalog`], so that tools
//! written for Consul (Prometheus' `consul_sd_configs`, consul-template, Consul client
//! libraries) find berth's instances unchanged. See `docs/discovery.md`.
//!
//! - `GET /v1/catalog/services`: `{"SERVICE.APP": [tags…]}`
//! - `GET /v1/catalog/service/<name>`: the instances as Consul `CatalogService` objects
//! - `GET /v1/health/service/<name>`: `{Node, Service, Checks}` entries, all passing
//! - `GET /v1/agent/services`: the instances by id, as Consul `AgentService` objects
//! - `GET /v1/agent/self`: the datacenter and node name
//!
//! Every read is a blocking query when it carries `index`: it answers as soon as what it
//! reads changed past that index, else after `wait`. Writes, KV, ACLs and the rest of Consul
//! are not implemented; their paths answer 404 (or 405 for a write to a read path).

mod model;
pub mod query;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::catalog::{Catalog, Endpoint, Snapshot};
use model::{AgentSelf, AgentService, CatalogService, Indexes, NodeInfo, ServiceEntry};
use query::{Query, QueryError};

/// The header carrying the index a blocking query passes back as `?index=`.
pub const INDEX_HEADER: &str = "x-consul-index";
const KNOWN_LEADER_HEADER: &str = "x-consul-knownleader";
const LAST_CONTACT_HEADER: &str = "x-consul-lastcontact";

/// Who the catalog says it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulConfig {
    /// The datacenter name in every answer (`Datacenter`, `/v1/agent/self`'s
    /// `Config.Datacenter`, Prometheus' `__meta_consul_dc`). Default `berth`.
    pub datacenter: String,
    /// The name of the answering agent (`/v1/agent/self`'s `Config.NodeName`). Default: the
    /// host name. Instances show the node they run on, from the catalog.
    pub node_name: String,
    /// The node metadata shown for every node (`NodeMeta`), matched by `?node-meta=k:v`.
    pub node_meta: BTreeMap<String, String>,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            datacenter: "berth".to_owned(),
            node_name: hostname(),
            node_meta: BTreeMap::new(),
        }
    }
}

/// This machine's host name, or `berth` when it cannot be read.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "berth".to_owned())
}

struct ConsulState {
    catalog: Catalog,
    config: ConsulConfig,
}

impl ConsulState {
    fn info(&self) -> NodeInfo<'_> {
        NodeInfo {
            datacenter: &self.config.datacenter,
            node_meta: &self.config.node_meta,
        }
    }

    /// Whether the nodes of this catalog match `?node-meta=` (every node shows the same
    /// metadata).
    fn node_meta_matches(&self, query: &Query) -> bool {
        query
            .node_meta
            .iter()
            .all(|(key, value)| self.config.node_meta.get(key) == Some(value))
    }

    /// The parsed query, refused when it names another datacenter.
    fn query(&self, raw: Option<String>) -> Result<Query, QueryError> {
        let query = Query::parse(raw.as_deref())?;
        if let Some(asked) = &query.datacenter {
            if *asked != self.config.datacenter {
                return Err(QueryError::Datacenter {
                    asked: asked.clone(),
                    served: self.config.datacenter.clone(),
                });
            }
        }
        Ok(query)
    }

    /// Consul's blocking query. `index_of` is the index of what the request reads in a
    /// snapshot. Without `?index` (or with 0) the answer is immediate. Otherwise it waits
    /// until that index differs from the client's: it passes it on a change, and is below it
    /// when the client's index is from elsewhere (a restarted or other server), which clients
    /// take as the signal to reset. After `wait` plus up to `wait/16` of jitter the unchanged
    /// snapshot is returned. Changes elsewhere in the catalog wake the loop but do not end it.
    async fn block(
        &self,
        query: &Query,
        index_of: impl Fn(&Snapshot) -> u64,
    ) -> (Arc<Snapshot>, u64) {
        let mut snapshot = self.catalog.snapshot();
        let mut current = index_of(&snapshot).max(1);
        if query.index == 0 || current != query.index {
            return (snapshot, current);
        }
        let deadline = Instant::now() + with_jitter(query.wait);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (snapshot, current);
            }
            snapshot = self.catalog.wait_past(snapshot.index, left).await;
            current = index_of(&snapshot).max(1);
            if current != query.index {
                return (snapshot, current);
            }
        }
    }
}

/// `wait` plus a random stagger of up to `wait/16`, as Consul adds, so that clients that
/// started together do not all come back at once.
fn with_jitter(wait: Duration) -> Duration {
    let stagger = wait / 16;
    if stagger.is_zero() {
        return wait;
    }
    let nanos = u64::try_from(stagger.as_nanos()).unwrap_or(u64::MAX);
    wait + Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

/// The Consul-compatible read API over `catalog`, to be served at the root of its own
/// listener (Consul clients expect `/v1/...` at the root).
pub fn router(catalog: Catalog, config: ConsulConfig) -> Router {
    let state = Arc::new(ConsulState { catalog, config });
    Router::new()
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/self", get(agent_self))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            consul_headers,
        ))
        .with_state(state)
}

/// Adds the headers Consul sends with every answer: the leader headers, and the catalog's
/// index where a handler did not set a more specific one.
async fn consul_headers(
    State(state): State<Arc<ConsulState>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if !headers.contains_key(INDEX_HEADER) {
        let index = state.catalog.snapshot().index.max(1);
        headers.insert(INDEX_HEADER, HeaderValue::from(index));
    }
    headers.insert(KNOWN_LEADER_HEADER, HeaderValue::from_static("true"));
    headers.insert(LAST_CONTACT_HEADER, HeaderValue::from_static("0"));
    response
}

async fn not_found() -> Response {
    text(
        StatusCode::NOT_FOUND,
        "no such endpoint: berth's Consul-compatible catalog serves GET /v1/catalog/services, \
         /v1/catalog/service/<name>, /v1/health/service/<name>, /v1/agent/services and \
         /v1/agent/self"
            .to_owned(),
    )
}

fn text(status: StatusCode, message: String) -> Response {
    (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        text(StatusCode::BAD_REQUEST, self.to_string())
    }
}

/// A JSON answer with its index.
fn json<T: Serialize>(body: &T, index: u64, pretty: bool) -> Response {
    let encoded = if pretty {
        serde_json::to_vec_pretty(body)
    } else {
        serde_json::to_vec(body)
    };
    match encoded {
        Ok(bytes) => (
            [
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (
                    HeaderName::from_static(INDEX_HEADER),
                    HeaderValue::from(index),
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer failed: {error}"),
        ),
    }
}

/// The index of the instances of one service; 1 for a service never registered, so that a
/// client blocking on it wakes when it first appears and not on changes to other services.
fn service_index(name: &str) -> impl Fn(&Snapshot) -> u64 + '_ {
    move |snapshot| snapshot.modified(name).unwrap_or(1)
}

/// The instances of `name` that the query selects, ordered by id.
fn selected<'a>(
    state: &ConsulState,
    snapshot: &'a Snapshot,
    name: &str,
    query: &Query,
) -> Vec<&'a Endpoint> {
    if !state.node_meta_matches(query) {
        return Vec::new();
    }
    snapshot
        .service(name)
        .into_iter()
        .filter(|endpoint| query.tags.iter().all(|tag| endpoint.tags.contains(tag)))
        .collect()
}

async fn catalog_services(
    State(state): State<Arc<ConsulState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, QueryError> {
    let query = state.query(raw)?;
    let (snapshot, index) = state.block(&query, |snapshot| snapshot.index).await;
    let services = if state.node_meta_matches(&query) {
        snapshot.services()
    } else {
        BTreeMap::new()
    };
    Ok(json(&services, index, query.pretty))
}

async fn catalog_service(
    State(state): State<Arc<ConsulState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, QueryError> {
    per_instance(&state, &name, raw, CatalogService::new).await
}

async fn health_service(
    State(state): State<Arc<ConsulState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, QueryError> {
    // `?passing` selects nothing away: every instance in the catalog passes its check.
    per_instance(&state, &name, raw, ServiceEntry::new).await
}

/// A per-service endpoint: blocks on the service's modify index, then answers one `entry` per
/// selected instance of `name`.
async fn per_instance<T: serde::Serialize>(
    state: &ConsulState,
    name: &str,
    raw: Option<String>,
    entry: fn(&Endpoint, &NodeInfo<'_>, Indexes) -> T,
) -> Result<Response, QueryError> {
    let query = state.query(raw)?;
    let (snapshot, index) = state.block(&query, service_index(name)).await;
    let indexes = Indexes {
        create: index,
        modify: index,
    };
    let info = state.info();
    let body: Vec<T> = selected(state, &snapshot, name, &query)
        .into_iter()
        .map(|endpoint| entry(endpoint, &info, indexes))
        .collect();
    Ok(json(&body, index, query.pretty))
}

/// Every instance: berth's server registers all of them, so it is the agent of all of them.
async fn agent_services(
    State(state): State<Arc<ConsulState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, QueryError> {
    let query = state.query(raw)?;
    let (snapshot, index) = state.block(&query, |snapshot| snapshot.index).await;
    let info = state.info();
    let body: BTreeMap<&str, AgentService> = snapshot
        .endpoints()
        .map(|endpoint| {
            let modified = snapshot.modified(&endpoint.name()).unwrap_or(index);
            let indexes = Indexes {
                create: modified,
                modify: modified,
            };
            (
                endpoint.id.as_str(),
                AgentService::new(endpoint, &info, indexes),
            )
        })
        .collect();
    Ok(json(&body, index, query.pretty))
}

async fn agent_self(
    State(state): State<Arc<ConsulState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, QueryError> {
    let query = state.query(raw)?;
    let index = state.catalog.snapshot().index.max(1);
    let body = AgentSelf::new(&state.info(), &state.config.node_name);
    Ok(json(&body, index, query.pretty))
}
