#![allow(clippy::unwrap_used)]

use std::path::Path;

use axum::body::Body;
use axum::http::Request as HttpRequest;
use berth_runtime::network::NetworkConfig;
use berth_runtime::node::{Node, NodeConfig};
use berth_store::{MemoryStore, Store};
use tower::ServiceExt;

use super::*;

const TOKEN: &str = "s3cret";

struct Api {
    _dir: tempfile::TempDir,
    store: Arc<MemoryStore>,
    router: Router,
}

fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let node = Node::open(NodeConfig {
        root: root.to_owned(),
        runtime: None,
        network: NetworkConfig {
            ipam_data_dir: root.join("ipam"),
            ..NetworkConfig::default()
        },
        monitor: Vec::new(),
        namespace_helper: Vec::new(),
    })
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let pull = berth_runtime::image::PullOptions {
        timeout: std::time::Duration::from_secs(2),
        retries: 0,
        ..Default::default()
    };
    let key = berth_agent::secrets::SecretKey::generate().unwrap();
    let controller = Controller::new(store.clone(), Arc::new(node), pull, key);
    Api {
        _dir: dir,
        store,
        router: router(ApiState::new(controller, TOKEN.into())),
    }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = HttpRequest::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Body::from(body.unwrap_or_default().to_owned()))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call("GET", path, None, Some(TOKEN)).await
    }

    async fn post(&self, path: &str, body: &str) -> (StatusCode, Value) {
        self.call("POST", path, Some(body), Some(TOKEN)).await
    }

    /// Releases 1..=count of `shop` with `desired` desired and `failed` failed.
    async fn seed(&self, count: ReleaseId, desired: ReleaseId, failed: &[ReleaseId]) {
        let mut state = AppState::default();
        for number in 1..=count {
            let release = Release {
                app: "shop".into(),
                number,
                spec: SPEC.into(),
                file: "berth.toml".into(),
                env: None,
                images: BTreeMap::new(),
                secrets: BTreeMap::new(),
                created_at: number,
                by: None,
                changes: Vec::new(),
                revisions: BTreeMap::new(),
                services: Vec::new(),
            };
            self.store
                .put(
                    &release_key("shop", number),
                    serde_json::to_vec(&release).unwrap(),
                    None,
                )
                .await
                .unwrap();
            state = state.with_desired("shop", number);
        }
        state.desired = desired;
        for number in failed {
            state
                .failed
                .insert(*number, format!("release {number} never became healthy"));
        }
        self.store
            .put(
                &state_key("shop"),
                serde_json::to_vec(&state).unwrap(),
                None,
            )
            .await
            .unwrap();
    }
}

use serde_json::Value;

const SPEC: &str = "app = \"shop\"\n[services.web]\nimage = \"127.0.0.1:1/shop/web:1\"\n";

fn deploy_body(spec: &str) -> String {
    serde_json::json!({ "spec": spec }).to_string()
}

#[tokio::test(flavor = "current_thread")]
async fn every_request_needs_the_token() {
    let api = api();
    for token in [None, Some("wrong"), Some("s3cre")] {
        let (status, body) = api.call("GET", "/v1/apps", None, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert!(body["error"].as_str().unwrap().contains("server.token"));
    }
    let (status, body) = api.get("/v1/apps").await;
    assert_eq!((status, body), (StatusCode::OK, serde_json::json!([])));
}

#[tokio::test(flavor = "current_thread")]
async fn spec_errors_point_at_the_line() {
    let api = api();
    let spec = "app = \"shop\"\n[services.web]\nimage = \"x:1\"\nreplicas = \"three\"\n";
    let (status, body) = api.post("/v1/apps/shop/deploy", &deploy_body(spec)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("berth.toml:4:"), "{error}");
}

#[tokio::test(flavor = "current_thread")]
async fn client_mistakes_are_4xx() {
    let api = api();
    let (status, body) = api.post("/v1/apps/other/deploy", &deploy_body(SPEC)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("is for app \"shop\""),
        "{body}"
    );

    let with_secret = format!("{SPEC}secrets = [\"TOKEN\"]\n");
    let (status, body) = api
        .post("/v1/apps/shop/deploy", &deploy_body(&with_secret))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("berth secret set shop TOKEN"),
        "{body}"
    );

    let (status, _) = api.post("/v1/apps/shop/deploy", "{\"spec\": 3}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api
        .post("/v1/apps/shop/deploy", "{\"spec\": \"\", \"extra\": 1}")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    for path in ["/v1/apps/nope", "/v1/apps/nope/releases"] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            body["error"].as_str().unwrap().contains("berth deploy"),
            "{body}"
        );
    }
    let (status, _) = api.post("/v1/apps/nope/rollback", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for path in ["/v1/apps/Shop", "/v1/apps/a%2Fb/releases", "/v1/apps/-x"] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            body["error"].as_str().unwrap().contains("not an app name"),
            "{body}"
        );
    }
    let (status, _) = api.get("/v2/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "current_thread")]
async fn an_unreachable_registry_is_a_bad_gateway_and_creates_no_release() {
    let api = api();
    let (status, body) = api.post("/v1/apps/shop/deploy", &deploy_body(SPEC)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("service `web`"),
        "{body}"
    );
    assert!(api.store.list("apps/").await.unwrap().entries.is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn rollback_goes_to_the_newest_good_release() {
    let api = api();
    api.seed(3, 2, &[3]).await;
    let (status, releases) = api.get("/v1/apps/shop/releases").await;
    assert_eq!(status, StatusCode::OK);
    let statuses: Vec<(u64, &str)> = releases
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["number"].as_u64().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, [(3, "failed"), (2, "deploying"), (1, "previous")]);
    assert_eq!(releases[0]["failure"], "release 3 never became healthy");

    let (status, body) = api.post("/v1/apps/shop/rollback", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["from"].as_u64(), body["to"].as_u64()),
        (Some(2), Some(1))
    );

    let (status, body) = api.post("/v1/apps/shop/rollback", "{}").await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing older than 1: {body}");
    let (status, _) = api.post("/v1/apps/shop/rollback", "{\"release\": 1}").await;
    assert_eq!(status, StatusCode::CONFLICT, "already desired");
    let (status, _) = api.post("/v1/apps/shop/rollback", "{\"release\": 9}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Going forward to the failed release deploys it afresh.
    let (status, body) = api.post("/v1/apps/shop/rollback", "{\"release\": 3}").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, apps) = api.get("/v1/apps").await;
    assert_eq!(apps[0]["desired_release"], 3);
    assert_eq!(apps[0]["status"], "deploying");
    assert_eq!(apps[0]["latest_release"], 3);
    let (status, view) = api.get("/v1/apps/shop").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["desired_release"], 3);
}

#[test]
fn the_token_file_is_private_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let token = crate::load_or_create_token(dir.path()).unwrap();
    assert_eq!(token.len(), 64);
    let mode = std::fs::metadata(dir.path().join(crate::TOKEN_FILE)).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    assert_eq!(
        crate::load_or_create_token(Path::new(dir.path())).unwrap(),
        token
    );
}

#[tokio::test(flavor = "current_thread")]
async fn secrets_are_set_listed_and_deleted_without_their_values() {
    let api = api();
    for expected in [1, 2] {
        let (status, body) = api
            .call(
                "PUT",
                "/v1/apps/shop/secrets/TOKEN",
                Some("hunter2"),
                Some(TOKEN),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["version"], expected);
    }
    let (status, body) = api.get("/v1/apps/shop/secrets").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!([{"name": "TOKEN", "versions": [1, 2]}])
    );
    let stored = api.store.list("/secrets/").await.unwrap();
    assert!(stored
        .entries
        .iter()
        .all(|e| !String::from_utf8_lossy(&e.value).contains("hunter2")));

    let (status, _) = api
        .call("PUT", "/v1/apps/shop/secrets/1BAD", Some("x"), Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api
        .call("PUT", "/v1/apps/shop/secrets/EMPTY", Some(""), Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api
        .call("DELETE", "/v1/apps/shop/secrets/TOKEN", None, Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call("DELETE", "/v1/apps/shop/secrets/TOKEN", None, Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.call("GET", "/v1/apps/shop/secrets", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
mod openapi;
mod ops_and_events;
