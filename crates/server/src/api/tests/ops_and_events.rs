use std::time::Duration;

use futures::StreamExt;

use super::*;
use crate::releases::DeployRecord;

async fn stored_state(api: &Api) -> AppState {
    let entry = api.store.get(&state_key("shop")).await.unwrap().unwrap();
    serde_json::from_slice(&entry.value).unwrap()
}

/// The app's events once there are `count`.
async fn events(api: &Api, path: &str, count: usize) -> Vec<Value> {
    for _ in 0..200 {
        let (status, body) = api.get(path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let events = body.as_array().unwrap().clone();
        if events.len() >= count {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{path} never had {count} events");
}

#[tokio::test(flavor = "current_thread")]
async fn scale_overrides_the_replicas_until_the_next_release() {
    let api = api();
    api.seed(2, 2, &[]).await;
    let (status, body) = api
        .post(
            "/v1/apps/shop/scale",
            r#"{"service": "web", "replicas": 3}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["previous"].as_u64(), body["replicas"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(stored_state(&api).await.scale.get("web"), Some(&3));

    let (status, body) = api
        .post("/v1/apps/shop/scale", r#"{"service": "db", "replicas": 3}"#)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = api
        .post(
            "/v1/apps/shop/scale",
            r#"{"service": "web", "replicas": 100000}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api
        .post(
            "/v1/apps/nope/scale",
            r#"{"service": "web", "replicas": 1}"#,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A rollback makes another release desired: it runs its spec's replicas.
    let (status, _) = api.post("/v1/apps/shop/rollback", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(stored_state(&api).await.scale.is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn promote_marks_the_paused_step() {
    let api = api();
    api.seed(2, 2, &[]).await;
    let (status, body) = api.post("/v1/apps/shop/promote", "").await;
    assert_eq!(status, StatusCode::CONFLICT, "no deploy under way: {body}");

    let mut state = stored_state(&api).await;
    state.deploys.insert(
        "web".into(),
        DeployRecord {
            from_release: Some(1),
            to_release: 2,
            started_at: 1,
            step: 1,
            step_started_at: 1,
            promoted_at: None,
            finished: false,
            failed: false,
            rollback_to: None,
            paused_at: None,
            resumed_at: None,
        },
    );
    api.store
        .put(
            &state_key("shop"),
            serde_json::to_vec(&state).unwrap(),
            None,
        )
        .await
        .unwrap();
    let (status, body) = api
        .post("/v1/apps/shop/promote", r#"{"service": "api"}"#)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = api
        .post("/v1/apps/shop/promote", r#"{"service": "web"}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["promoted"], serde_json::json!(["web"]));
    assert!(stored_state(&api).await.deploys["web"]
        .promoted_at
        .is_some());
    let (status, _) = api.post("/v1/apps/shop/promote", "").await;
    assert_eq!(status, StatusCode::CONFLICT, "already promoted");
}

#[tokio::test(flavor = "current_thread")]
async fn events_are_listed_since_a_sequence_number_and_streamed() {
    let api = api();
    api.seed(2, 2, &[]).await;
    api.post("/v1/apps/shop/rollback", "").await;
    api.post(
        "/v1/apps/shop/scale",
        r#"{"service": "web", "replicas": 2}"#,
    )
    .await;
    let listed = events(&api, "/v1/apps/shop/events", 2).await;
    assert_eq!(listed[0]["seq"], 1);
    assert_eq!(listed[0]["kind"], "rollback_requested");
    assert_eq!(listed[0]["release"], 1);
    assert_eq!(listed[1]["kind"], "scaled");
    assert_eq!(listed[1]["service"], "web");
    for field in ["seq", "at", "app", "kind", "message"] {
        assert!(!listed[1][field].is_null(), "{field} in {}", listed[1]);
    }
    let since = events(&api, "/v1/apps/shop/events?since=1", 1).await;
    assert_eq!(since.len(), 1);
    assert_eq!(since[0]["seq"], 2);
    assert_eq!(events(&api, "/v1/events", 2).await.len(), 2);
    let (status, _) = api.get("/v1/apps/nope/events").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.get("/v1/apps/shop/events?since=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The stream starts with the stored events after `since`, then new ones.
    let request = HttpRequest::builder()
        .uri("/v1/events?follow=1&since=1")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let response = api.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/x-ndjson"
    );
    let mut body = response.into_body().into_data_stream();
    assert_eq!(next_line(&mut body).await["kind"], "scaled");
    api.post(
        "/v1/apps/shop/scale",
        r#"{"service": "web", "replicas": 4}"#,
    )
    .await;
    let streamed = next_line(&mut body).await;
    assert_eq!(streamed["seq"], 3);
    assert_eq!(streamed["message"], "web scaled from 2 to 4 replicas");
}

#[tokio::test(flavor = "current_thread")]
async fn logs_of_an_app_without_instances_are_empty() {
    let api = api();
    api.seed(1, 1, &[]).await;
    let (status, body) = api.get("/v1/apps/shop/logs?tail=10&service=web").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, serde_json::json!([]));
    let (status, _) = api.get("/v1/apps/nope/logs").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn next_line(body: &mut axum::body::BodyDataStream) -> Value {
    let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("an event within 5s")
        .unwrap()
        .unwrap();
    serde_json::from_slice(&chunk).unwrap()
}
