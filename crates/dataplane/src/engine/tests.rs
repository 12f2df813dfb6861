#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use berth_discovery::{Catalog, Endpoint};
use berth_proxy::{Balance, Group, Proxy, ProxyConfig, Route};

use super::*;
use crate::admin::{self, Admin, StopSignal};
use crate::client::AdminClient;

fn endpoint(id: &str, address: &str) -> Endpoint {
    Endpoint {
        id: id.into(),
        app: "shop".into(),
        service: "web".into(),
        release: 1,
        address: address.parse().unwrap(),
        ports: [("http".to_owned(), 8080)].into(),
        tags: Vec::new(),
        meta: Default::default(),
        node: "n".into(),
    }
}

fn route(upstreams: &[&str]) -> Route {
    Route {
        name: "web.shop".into(),
        host: "shop.test".into(),
        path_prefix: "/".into(),
        balance: Balance::LeastOutstanding,
        groups: vec![Group {
            label: "r1".into(),
            weight: 1,
            upstreams: upstreams.iter().map(|u| u.parse().unwrap()).collect(),
        }],
    }
}

async fn proxy() -> Arc<Proxy> {
    Arc::new(
        Proxy::bind(ProxyConfig {
            http: vec!["127.0.0.1:0".parse().unwrap()],
            ..Default::default()
        })
        .await
        .unwrap(),
    )
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "current_thread")]
async fn a_push_is_applied_kept_on_disk_and_served_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.json");
    let engine = Engine::new(Some(proxy().await), Catalog::new(), file.clone()).unwrap();
    assert_eq!(engine.version(), 0);
    let pushed = PushedState {
        version: 7,
        routes: vec![route(&["10.0.0.2:8080"])],
        endpoints: vec![endpoint("a", "10.0.0.2"), endpoint("b", "10.0.0.3")],
    };
    engine.apply(pushed.clone()).unwrap();
    assert_eq!(engine.version(), 7);
    assert_eq!(engine.catalog().snapshot().endpoints().count(), 2);
    assert_eq!(mode(&file), 0o600, "routes name every address: root only");

    // A new process: the state on disk is served before any push.
    let proxy = proxy().await;
    let restarted = Engine::new(Some(proxy.clone()), Catalog::new(), file).unwrap();
    assert_eq!(restarted.catalog().snapshot().endpoints().count(), 2);
    assert_eq!(proxy.routes(), pushed.routes);

    // A push replaces everything: what it lacks goes.
    restarted
        .apply(PushedState {
            version: 1,
            routes: Vec::new(),
            endpoints: vec![endpoint("b", "10.0.0.3")],
        })
        .unwrap();
    let ids: Vec<String> = restarted
        .catalog()
        .snapshot()
        .endpoints()
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(ids, ["b"]);
    assert!(proxy.routes().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn a_bad_push_keeps_the_routes_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy().await;
    let engine = Engine::new(
        Some(proxy.clone()),
        Catalog::new(),
        dir.path().join("s.json"),
    )
    .unwrap();
    engine
        .apply(PushedState {
            version: 1,
            routes: vec![route(&["10.0.0.2:8080"])],
            endpoints: Vec::new(),
        })
        .unwrap();
    let mut twice = route(&["10.0.0.2:8080"]);
    twice.groups.push(twice.groups[0].clone());
    let err = engine
        .apply(PushedState {
            version: 2,
            routes: vec![twice],
            endpoints: Vec::new(),
        })
        .unwrap_err();
    assert!(matches!(err, EngineError::Routes(_)), "{err}");
    assert_eq!(proxy.routes(), vec![route(&["10.0.0.2:8080"])]);
}

#[tokio::test(flavor = "current_thread")]
async fn the_admin_socket_takes_pushes_drains_and_answers_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(
        Engine::new(
            Some(proxy().await),
            Catalog::new(),
            dir.path().join("state.json"),
        )
        .unwrap(),
    );
    let socket = admin::socket_path(dir.path());
    let listener = admin::bind(&socket).unwrap();
    assert_eq!(mode(&socket), 0o600);
    let stop = StopSignal::default();
    let served = tokio::spawn(admin::serve(
        listener,
        Arc::new(Admin {
            engine: engine.clone(),
            binary: "test".into(),
            listeners: "--proxy-listen 127.0.0.1:0".into(),
            stop: stop.clone(),
        }),
    ));
    let client = AdminClient::new(&socket, Duration::from_secs(5));
    let health = client.health().await.unwrap();
    assert_eq!((health.pid, health.version), (std::process::id(), 0));
    client
        .push(&PushedState {
            version: 3,
            routes: vec![route(&["10.0.0.9:8080"])],
            endpoints: vec![endpoint("a", "10.0.0.9")],
        })
        .await
        .unwrap();
    assert_eq!(client.health().await.unwrap().version, 3);
    // Nothing in flight: drained at once.
    let left = client
        .drain(&DrainRequest {
            address: "10.0.0.9".parse::<IpAddr>().unwrap(),
            timeout_ms: 1000,
            after_version: 3,
        })
        .await
        .unwrap();
    assert_eq!(left, 0);
    let metrics = client.metrics().await.unwrap();
    assert!(metrics.routes.contains_key("web.shop"), "{metrics:?}");
    // A push the proxy refuses changes nothing.
    let refused = client
        .push(&PushedState {
            version: 4,
            routes: vec![Route {
                host: String::new(),
                ..route(&[])
            }],
            endpoints: Vec::new(),
        })
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("422"), "{refused}");
    assert_eq!(client.health().await.unwrap().version, 3);
    client.stop().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .unwrap()
        .unwrap();
    let gone = AdminClient::new(&socket, Duration::from_secs(1))
        .health()
        .await;
    assert!(
        matches!(gone, Err(crate::ClientError::Unreachable { .. })),
        "{gone:?}"
    );
}
