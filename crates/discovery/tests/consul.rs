//! The Consul-compatible catalog over a real loopback listener: JSON shapes and field names as
//! Consul's clients read them, filters, blocking queries, headers and bad input.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use berth_discovery::Catalog;
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use support::{config, endpoint, ConsulServer};

/// A client whose requests fail instead of hanging when a blocking query never returns.
fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn index_of(response: &Response) -> u64 {
    response.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn get(url: &str) -> (StatusCode, u64, Value) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status();
    let index = index_of(&response);
    let body = response.json().await.unwrap();
    (status, index, body)
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

/// A catalog with two instances of `web.shop` and one of `db.shop`.
fn shop() -> Catalog {
    let catalog = Catalog::new();
    catalog.register(endpoint("web-1", "web", "10.88.0.2", 8080, &["v1", "blue"]));
    catalog.register(endpoint(
        "web-2",
        "web",
        "10.88.0.3",
        8080,
        &["v1", "green"],
    ));
    catalog.register(endpoint("db-1", "db", "10.88.0.4", 5432, &[]));
    catalog
}

#[tokio::test]
async fn catalog_services_lists_names_with_their_tags_and_consul_headers() {
    let catalog = shop();
    let server = ConsulServer::start(catalog.clone(), config()).await;
    let response = client()
        .get(format!("{}/v1/catalog/services", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-consul-knownleader"], "true");
    assert_eq!(headers["x-consul-lastcontact"], "0");
    assert_eq!(index_of(&response), catalog.snapshot().index);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"db.shop": [], "web.shop": ["v1", "blue", "green"]})
    );
}

#[tokio::test]
async fn catalog_service_has_consuls_catalog_service_fields() {
    let catalog = shop();
    let server = ConsulServer::start(catalog.clone(), config()).await;
    let (status, index, body) = get(&format!("{}/v1/catalog/service/web.shop", server.url)).await;
    assert_eq!(status, StatusCode::OK);
    let web_index = catalog.snapshot().modified("web.shop").unwrap();
    assert_eq!(index, web_index, "a service's own index, not the catalog's");
    assert_ne!(web_index, catalog.snapshot().index);

    let entries = body.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let first = &entries[0];
    let expected_fields: BTreeSet<&str> = [
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "NodeMeta",
        "ServiceKind",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "ServiceAddress",
        "ServiceTaggedAddresses",
        "ServiceWeights",
        "ServiceMeta",
        "ServicePort",
        "ServiceSocketPath",
        "ServiceEnableTagOverride",
        "ServiceProxy",
        "ServiceConnect",
        "CreateIndex",
        "ModifyIndex",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys(first), expected_fields);
    assert_eq!(first["Node"], "node1");
    assert_eq!(first["Address"], "10.88.0.2");
    assert_eq!(first["Datacenter"], "dc-test");
    assert_eq!(
        first["TaggedAddresses"],
        json!({"lan": "10.88.0.2", "lan_ipv4": "10.88.0.2"})
    );
    assert_eq!(first["NodeMeta"], json!({"rack": "r1"}));
    assert_eq!(first["ServiceKind"], "");
    assert_eq!(first["ServiceID"], "web-1");
    assert_eq!(first["ServiceName"], "web.shop");
    assert_eq!(first["ServiceTags"], json!(["v1", "blue"]));
    assert_eq!(first["ServiceAddress"], "10.88.0.2");
    assert_eq!(
        first["ServiceTaggedAddresses"],
        json!({"lan_ipv4": {"Address": "10.88.0.2", "Port": 8080}})
    );
    assert_eq!(first["ServiceWeights"], json!({"Passing": 1, "Warning": 1}));
    assert_eq!(
        first["ServiceMeta"],
        json!({
            "team": "blue",
            "berth_app": "shop",
            "berth_service": "web",
            "berth_release": "7",
            "berth_port_http": "8080"
        })
    );
    assert_eq!(first["ServicePort"], 8080);
    assert_eq!(first["ServiceEnableTagOverride"], false);
    assert_eq!(first["CreateIndex"], web_index);
    assert_eq!(first["ModifyIndex"], web_index);
    // The node id is UUID-shaped and the same for instances on the same node.
    assert_eq!(first["ID"].as_str().unwrap().len(), 36);
    assert_eq!(first["ID"], entries[1]["ID"]);
    assert_eq!(entries[1]["ServiceID"], "web-2");
}

#[tokio::test]
async fn health_service_has_entries_with_passing_checks_and_filters_by_tag() {
    let catalog = shop();
    let server = ConsulServer::start(catalog.clone(), config()).await;
    let url = format!("{}/v1/health/service/web.shop", server.url);

    let (status, index, body) = get(&url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(index, catalog.snapshot().modified("web.shop").unwrap());
    let entries = body.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let entry = &entries[0];
    assert_eq!(keys(entry), BTreeSet::from(["Node", "Service", "Checks"]));

    let node = &entry["Node"];
    assert_eq!(node["Node"], "node1");
    assert_eq!(node["Address"], "10.88.0.2");
    assert_eq!(node["Datacenter"], "dc-test");
    assert_eq!(node["Meta"], json!({"rack": "r1"}));

    let service = &entry["Service"];
    assert_eq!(service["ID"], "web-1");
    assert_eq!(service["Service"], "web.shop");
    assert_eq!(service["Tags"], json!(["v1", "blue"]));
    assert_eq!(service["Address"], "10.88.0.2");
    assert_eq!(service["Port"], 8080);
    assert_eq!(service["Meta"]["team"], "blue");
    assert_eq!(service["Datacenter"], "dc-test");

    let checks = entry["Checks"].as_array().unwrap();
    let serf = checks
        .iter()
        .find(|check| check["CheckID"] == "serfHealth")
        .expect("a node check like Consul's serfHealth");
    assert_eq!(serf["Node"], "node1");
    assert_eq!(serf["ServiceID"], "");
    let own = checks
        .iter()
        .find(|check| check["ServiceID"] == "web-1")
        .expect("the instance's own check");
    assert_eq!(own["CheckID"], "service:web-1");
    assert_eq!(own["ServiceName"], "web.shop");
    assert!(checks.iter().all(|check| check["Status"] == "passing"));

    // Every instance in the catalog passes, so ?passing keeps them all, in each spelling.
    for passing in ["passing", "passing=true", "passing=1", "passing=false"] {
        let (status, _, body) = get(&format!("{url}?{passing}")).await;
        assert_eq!(status, StatusCode::OK, "{passing}");
        assert_eq!(body.as_array().unwrap().len(), 2, "{passing}");
    }

    // Tags: an instance must carry every tag asked for.
    let ids = |body: &Value| -> Vec<String> {
        body.as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["Service"]["ID"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, _, body) = get(&format!("{url}?tag=blue")).await;
    assert_eq!(ids(&body), vec!["web-1"]);
    let (_, _, body) = get(&format!("{url}?tag=v1&tag=green&passing")).await;
    assert_eq!(ids(&body), vec!["web-2"]);
    let (_, _, body) = get(&format!("{url}?tag=v1")).await;
    assert_eq!(ids(&body), vec!["web-1", "web-2"]);
    let (_, _, body) = get(&format!("{url}?tag=blue&tag=green")).await;
    assert_eq!(ids(&body), Vec::<String>::new());

    // The catalog endpoint filters by tag the same way.
    let (_, _, body) = get(&format!(
        "{}/v1/catalog/service/web.shop?tag=green",
        server.url
    ))
    .await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["ServiceID"], "web-2");
}

#[tokio::test]
async fn node_meta_and_datacenter_select_as_in_consul() {
    let server = ConsulServer::start(shop(), config()).await;
    let (_, _, body) = get(&format!(
        "{}/v1/health/service/web.shop?node-meta=rack:r1&dc=dc-test",
        server.url
    ))
    .await;
    assert_eq!(body.as_array().unwrap().len(), 2);
    let (_, _, body) = get(&format!(
        "{}/v1/health/service/web.shop?node-meta=rack:r2",
        server.url
    ))
    .await;
    assert_eq!(body, json!([]));
    let (_, _, body) = get(&format!(
        "{}/v1/catalog/services?node-meta=rack:r2",
        server.url
    ))
    .await;
    assert_eq!(body, json!({}));
}

#[tokio::test]
async fn unknown_and_emptied_services_answer_an_empty_list() {
    let catalog = shop();
    let server = ConsulServer::start(catalog.clone(), config()).await;
    for path in ["catalog/service", "health/service"] {
        let (status, index, body) = get(&format!("{}/v1/{path}/nope.shop", server.url)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!([]));
        assert_eq!(index, 1, "an unknown service's index is 1, never 0");
    }

    let emptied = catalog.deregister("db-1");
    let (status, index, body) = get(&format!("{}/v1/health/service/db.shop", server.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!([]));
    assert_eq!(index, emptied);
    let (_, _, body) = get(&format!("{}/v1/catalog/services", server.url)).await;
    assert_eq!(body, json!({"web.shop": ["v1", "blue", "green"]}));
}

#[tokio::test]
async fn agent_endpoints_show_services_by_id_and_the_agents_identity() {
    let catalog = shop();
    let server = ConsulServer::start(catalog.clone(), config()).await;
    let (status, index, body) = get(&format!("{}/v1/agent/services", server.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(index, catalog.snapshot().index);
    assert_eq!(keys(&body), BTreeSet::from(["db-1", "web-1", "web-2"]));
    let db = &body["db-1"];
    assert_eq!(db["ID"], "db-1");
    assert_eq!(db["Service"], "db.shop");
    assert_eq!(db["Port"], 5432);
    assert_eq!(db["Address"], "10.88.0.4");
    assert_eq!(db["Tags"], json!([]));
    assert_eq!(db["Datacenter"], "dc-test");

    let (status, _, body) = get(&format!("{}/v1/agent/self", server.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["Config"]["Datacenter"], "dc-test");
    assert_eq!(body["Config"]["NodeName"], "agent-node");
    assert_eq!(body["Member"]["Name"], "agent-node");
    assert_eq!(body["Meta"], json!({"rack": "r1"}));
}

#[tokio::test]
async fn pretty_prints_when_asked() {
    let server = ConsulServer::start(shop(), config()).await;
    let text = client()
        .get(format!("{}/v1/catalog/services?pretty", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\n  \"db.shop\""), "{text}");
}

#[tokio::test]
async fn a_blocking_query_returns_when_its_service_changes() {
    let catalog = shop();
    let server = ConsulServer::start(catalog.clone(), config()).await;
    let url = format!("{}/v1/health/service/web.shop", server.url);
    let (_, index, _) = get(&url).await;

    let writer = catalog.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer.register(endpoint("web-3", "web", "10.88.0.5", 8080, &["v2"]));
    });
    // The answer can only hold web-3 if the query waited for the change: it was asked
    // before web-3 existed, and the wait (30 s) has not passed when it answers.
    let (status, new_index, body) = get(&format!("{url}?index={index}&wait=30s")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(new_index > index);
    assert_eq!(new_index, catalog.snapshot().modified("web.shop").unwrap());
    assert_eq!(body.as_array().unwrap().len(), 3);
    assert_eq!(body[2]["Service"]["ID"], "web-3");
}

#[tokio::test]
async fn the_service_list_blocks_on_any_change() {
    let catalog = shop();
    let server = ConsulServer::start(catalog.clone(), config()).await;
    let url = format!("{}/v1/catalog/services", server.url);
    let (_, index, _) = get(&url).await;
    let writer = catalog.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer.register(endpoint("cache-1", "cache", "10.88.0.9", 6379, &[]));
    });
    let (_, new_index, body) = get(&format!("{url}?index={index}&wait=30s")).await;
    assert_eq!(new_index, catalog.snapshot().index);
    assert!(new_index > index);
    assert!(body.get("cache.shop").is_some(), "{body}");
}

#[tokio::test]
async fn a_blocking_query_times_out_with_the_same_index_when_nothing_changes() {
    let catalog = shop();
    let server = ConsulServer::start(catalog.clone(), config()).await;
    let url = format!("{}/v1/catalog/service/web.shop", server.url);
    let (_, index, before) = get(&url).await;
    let wait = Duration::from_secs(1);
    let started = Instant::now();
    let (status, new_index, after) = get(&format!("{url}?index={index}&wait=1000ms")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= wait, "answered before the wait ended");
    assert_eq!(new_index, index);
    assert_eq!(after, before);
}

#[tokio::test]
async fn a_change_to_another_service_does_not_wake_a_service_query() {
    let catalog = shop();
    let server = ConsulServer::start(catalog.clone(), config()).await;
    let url = format!("{}/v1/health/service/web.shop", server.url);
    let (_, index, _) = get(&url).await;

    // Only other services change: the query keeps waiting and ends with its wait.
    let writer = catalog.clone();
    let others = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer.register(endpoint("db-2", "db", "10.88.0.6", 5432, &[]));
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer.deregister("db-1");
    });
    let wait = Duration::from_secs(2);
    let started = Instant::now();
    let (_, new_index, body) = get(&format!("{url}?index={index}&wait=2s")).await;
    assert!(
        started.elapsed() >= wait,
        "woken by another service's change"
    );
    assert_eq!(new_index, index);
    assert_eq!(body.as_array().unwrap().len(), 2);
    others.await.unwrap();
    assert!(
        catalog.snapshot().index > index + 1,
        "the other changes happened"
    );

    // Other services change, then this one: the answer is this one's change.
    let (_, index, _) = get(&url).await;
    let writer = catalog.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer.register(endpoint("db-3", "db", "10.88.0.7", 5432, &[]));
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer.deregister("web-2");
    });
    let (_, new_index, body) = get(&format!("{url}?index={index}&wait=30s")).await;
    assert_eq!(new_index, catalog.snapshot().modified("web.shop").unwrap());
    assert_eq!(new_index, catalog.snapshot().index);
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
}

#[tokio::test]
async fn an_index_from_the_future_resets_at_once() {
    let catalog = shop();
    let server = ConsulServer::start(catalog.clone(), config()).await;
    let current = catalog.snapshot().modified("web.shop").unwrap();
    // With the default wait of 5 minutes the client's 60-second timeout would fail this
    // test if the server blocked.
    let (status, index, body) = get(&format!(
        "{}/v1/health/service/web.shop?index={}",
        server.url,
        current + 1000
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(index, current);
    assert_eq!(body.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_query_values_are_400_with_a_plain_text_reason() {
    let server = ConsulServer::start(shop(), config()).await;
    let cases = [
        ("/v1/catalog/services?wait=abc", "invalid wait time \"abc\""),
        ("/v1/catalog/services?index=1&wait=10", "invalid wait time"),
        (
            "/v1/health/service/web.shop?index=-1",
            "invalid index \"-1\"",
        ),
        ("/v1/catalog/service/web.shop?index=x1", "invalid index"),
        ("/v1/health/service/web.shop?passing=maybe", "?passing"),
        ("/v1/health/service/web.shop?node-meta=rack", "node-meta"),
        ("/v1/agent/services?filter=Port%20%3D%3D%2080", "?filter"),
        ("/v1/catalog/services?dc=dc2", "unknown datacenter \"dc2\""),
    ];
    for (path, reason) in cases {
        let response = client()
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        assert_eq!(response.headers()["x-consul-knownleader"], "true");
        let text = response.text().await.unwrap();
        assert!(text.contains(reason), "{path}: {text}");
    }
}

#[tokio::test]
async fn writes_and_unknown_endpoints_are_refused() {
    let server = ConsulServer::start(shop(), config()).await;
    let response = client()
        .put(format!("{}/v1/agent/service/register", server.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("/v1/health/service"));

    let response = client()
        .get(format!("{}/v1/kv/some/key", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let response = client()
        .put(format!("{}/v1/catalog/services", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// The requests Prometheus' consul SD sends through Consul's Go client (`stale` with no value,
/// `wait` in milliseconds, `index` only from the second request on, one `tag` per tag) and
/// the fields it turns into targets. Debian's Prometheus is built without consul SD, so this
/// replays its requests; tests/victoria_metrics.rs and tests/python_consul.rs run real clients.
#[tokio::test]
async fn the_requests_of_prometheus_consul_sd_are_understood() {
    let catalog = shop();
    let server = ConsulServer::start(catalog.clone(), config()).await;

    let (_, _, body) = get(&format!("{}/v1/agent/self", server.url)).await;
    assert_eq!(body["Config"]["Datacenter"].as_str(), Some("dc-test"));

    let (_, index, body) = get(&format!(
        "{}/v1/catalog/services?stale=&wait=120000ms",
        server.url
    ))
    .await;
    assert_eq!(index, catalog.snapshot().index);
    assert!(body["web.shop"].is_array());

    let url = format!("{}/v1/health/service/web.shop", server.url);
    let (status, index, body) = get(&format!("{url}?stale=&tag=v1&wait=120000ms")).await;
    assert_eq!(status, StatusCode::OK);
    // What Prometheus reads from each entry to make a target.
    let targets: Vec<(String, String, String)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let service = &entry["Service"];
            let address = match service["Address"].as_str().unwrap() {
                "" => entry["Node"]["Address"].as_str().unwrap(),
                address => address,
            };
            let health = if entry["Checks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|check| check["Status"] == "passing")
            {
                "passing"
            } else {
                "critical"
            };
            (
                format!("{address}:{}", service["Port"].as_u64().unwrap()),
                service["ID"].as_str().unwrap().to_owned(),
                health.to_owned(),
            )
        })
        .collect();
    assert_eq!(
        targets,
        vec![
            ("10.88.0.2:8080".into(), "web-1".into(), "passing".into()),
            ("10.88.0.3:8080".into(), "web-2".into(), "passing".into()),
        ]
    );

    let writer = catalog.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer.deregister("web-1");
    });
    let (_, new_index, body) =
        get(&format!("{url}?index={index}&stale=&tag=v1&wait=120000ms")).await;
    assert!(new_index > index);
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["Service"]["ID"], "web-2");
}
