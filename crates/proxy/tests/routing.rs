//! Routing by host and path, balancing, weights, headers and metrics, through real TCP.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use berth_proxy::{Balance, Group, RouteError};
use support::{client, get, group, route, TestProxy, Upstream};

#[tokio::test]
async fn host_and_longest_prefix_pick_the_route() {
    let web = Upstream::start("web").await;
    let api = Upstream::start("api").await;
    let v2 = Upstream::start("v2").await;
    let proxy = TestProxy::start().await;
    proxy
        .proxy
        .set_routes(vec![
            route(
                "web.shop",
                "shop.example",
                "/",
                vec![group("r1", 1, &[&web])],
            ),
            route(
                "api.shop",
                "shop.example",
                "/api",
                vec![group("r1", 1, &[&api])],
            ),
            route(
                "v2.shop",
                "shop.example",
                "/api/v2",
                vec![group("r1", 1, &[&v2])],
            ),
        ])
        .unwrap();
    let c = client();
    assert_eq!(
        get(&c, &proxy, "shop.example", "/").await,
        (200, "web".into())
    );
    assert_eq!(
        get(&c, &proxy, "SHOP.example:8080", "/api").await,
        (200, "api".into())
    );
    assert_eq!(
        get(&c, &proxy, "shop.example", "/api/x").await,
        (200, "api".into())
    );
    assert_eq!(
        get(&c, &proxy, "shop.example", "/apix").await,
        (200, "web".into())
    );
    assert_eq!(
        get(&c, &proxy, "shop.example", "/api/v2/items?q=1").await,
        (200, "v2".into())
    );

    let (status, body) = get(&c, &proxy, "other.example", "/").await;
    assert_eq!(status, 404);
    assert_eq!(body, "no route for this host and path\n");
    assert_eq!(proxy.proxy.metrics().unrouted, 1);
}

#[tokio::test]
async fn a_route_without_upstreams_answers_503() {
    let proxy = TestProxy::start().await;
    let empty = Group {
        label: "r1".into(),
        weight: 1,
        upstreams: Vec::new(),
    };
    proxy
        .proxy
        .set_routes(vec![
            route("none.shop", "none.example", "/", Vec::new()),
            route("empty.shop", "empty.example", "/", vec![empty]),
        ])
        .unwrap();
    let c = client();
    assert_eq!(get(&c, &proxy, "none.example", "/").await.0, 503);
    assert_eq!(get(&c, &proxy, "empty.example", "/").await.0, 503);
    let metrics = proxy.proxy.metrics();
    assert_eq!(metrics.route("none.shop").unwrap().errors_5xx, 1);
    assert_eq!(metrics.route("empty.shop").unwrap().errors_5xx, 1);
    assert_eq!(metrics.group("empty.shop", "r1").unwrap().requests, 0);
}

#[tokio::test]
async fn a_bad_table_is_refused_and_the_old_one_stays() {
    let web = Upstream::start("web").await;
    let proxy = TestProxy::start().await;
    proxy
        .proxy
        .set_routes(vec![route(
            "web",
            "shop.example",
            "/",
            vec![group("r1", 1, &[&web])],
        )])
        .unwrap();
    let refused =
        proxy
            .proxy
            .set_routes(vec![route("bad", "shop.example", "no-slash", Vec::new())]);
    assert!(matches!(refused, Err(RouteError::BadPrefix { .. })));
    let live = proxy.proxy.routes();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].name, "web");
    assert_eq!(
        get(&client(), &proxy, "shop.example", "/").await,
        (200, "web".into())
    );
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c3 = Upstream::start("c").await;
    let proxy = TestProxy::start().await;
    proxy
        .proxy
        .set_routes(vec![route(
            "web",
            "*",
            "/",
            vec![group("r1", 1, &[&a, &b, &c3])],
        )])
        .unwrap();
    let c = client();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let (status, body) = get(&c, &proxy, "any.example", "/").await;
        assert_eq!(status, 200);
        *seen.entry(body).or_default() += 1;
    }
    assert_eq!(seen.get("a"), Some(&10));
    assert_eq!(seen.get("b"), Some(&10));
    assert_eq!(seen.get("c"), Some(&10));
}

#[tokio::test]
async fn least_outstanding_prefers_the_idle_upstream() {
    let busy = Upstream::start("busy").await;
    let idle = Upstream::start("idle").await;
    let proxy = TestProxy::start().await;
    let mut r = route("web", "*", "/", vec![group("r1", 1, &[&busy, &idle])]);
    r.balance = Balance::LeastOutstanding;
    proxy.proxy.set_routes(vec![r]).unwrap();
    let c = client();
    // Hold three slow requests on whichever upstream they land on, then look where the
    // quick ones go: never to an upstream with more requests in flight.
    let in_flight = || proxy.proxy.in_flight(busy.addr) + proxy.proxy.in_flight(idle.addr);
    let mut slow = Vec::new();
    for n in 1..=3 {
        let c = c.clone();
        let url = proxy.url("/slow/4000");
        slow.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status()
        }));
        while in_flight() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (busy_n, idle_n) = (
        proxy.proxy.in_flight(busy.addr),
        proxy.proxy.in_flight(idle.addr),
    );
    assert_eq!(busy_n + idle_n, 3);
    assert_ne!(busy_n, idle_n);
    let quieter = if busy_n < idle_n { "busy" } else { "idle" };
    for _ in 0..5 {
        assert_eq!(get(&c, &proxy, "x", "/").await, (200, quieter.to_owned()));
    }
    for request in slow {
        assert_eq!(request.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn weights_split_traffic_and_weight_zero_gets_none() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let off = Upstream::start("off").await;
    let proxy = TestProxy::start().await;
    proxy
        .proxy
        .set_routes(vec![route(
            "web",
            "*",
            "/",
            vec![
                group("r1", 90, &[&stable]),
                group("r2", 10, &[&canary]),
                group("r3", 0, &[&off]),
            ],
        )])
        .unwrap();
    let c = client();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        let (status, body) = get(&c, &proxy, "x", "/").await;
        assert_eq!(status, 200);
        *seen.entry(body).or_default() += 1;
    }
    println!("1000 requests at 90/10/0: {seen:?}");
    let canary_n = seen.get("canary").copied().unwrap_or(0);
    assert!(
        (80..=120).contains(&canary_n),
        "canary got {canary_n} of 1000"
    );
    assert_eq!(seen.get("off"), None);
    assert_eq!(off.hits(), 0);
    let metrics = proxy.proxy.metrics();
    assert_eq!(
        metrics.group("web", "r1").unwrap().requests + metrics.group("web", "r2").unwrap().requests,
        1000
    );
}

#[tokio::test]
async fn forwarded_headers_reach_the_upstream_and_host_is_kept() {
    let web = Upstream::start("web").await;
    let proxy = TestProxy::start().await;
    proxy
        .proxy
        .set_routes(vec![route(
            "web",
            "shop.example",
            "/",
            vec![group("r1", 1, &[&web])],
        )])
        .unwrap();
    let response = client()
        .get(proxy.url("/headers"))
        .header("host", "shop.example:8080")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-upstream"], "web");
    let seen = response.text().await.unwrap();
    assert!(seen.contains("host: shop.example:8080\n"), "{seen}");
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(
        seen.contains("x-forwarded-host: shop.example:8080\n"),
        "{seen}"
    );
    assert!(!seen.contains("x-secret"), "{seen}");
    assert!(!seen.contains("proxy-authorization"), "{seen}");
}

#[tokio::test]
async fn metrics_count_requests_and_5xx_per_group_and_window() {
    let old = Upstream::start("old").await;
    let new = Upstream::start("new").await;
    let proxy = TestProxy::start().await;
    proxy
        .proxy
        .set_routes(vec![route(
            "web.shop",
            "*",
            "/",
            vec![group("r1", 1, &[&old]), group("r2", 1, &[&new])],
        )])
        .unwrap();
    let c = client();
    for _ in 0..10 {
        get(&c, &proxy, "x", "/").await;
    }
    let baseline = proxy.proxy.metrics();
    // 20 requests alternate between the groups; each group answers 10, all 500s.
    for _ in 0..20 {
        assert_eq!(get(&c, &proxy, "x", "/status/500").await.0, 500);
    }
    let r1 = proxy.proxy.window("web.shop", "r1", &baseline).unwrap();
    let r2 = proxy.proxy.window("web.shop", "r2", &baseline).unwrap();
    assert_eq!((r1.requests, r1.errors_5xx), (10, 10));
    assert_eq!((r2.requests, r2.errors_5xx), (10, 10));
    assert!(r2.p99.is_some());
    assert_eq!(proxy.proxy.window("web.shop", "r9", &baseline), None);
    let totals = proxy.proxy.metrics();
    let route = totals.route("web.shop").unwrap();
    assert_eq!((route.requests, route.errors_5xx), (30, 20));

    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(proxy.proxy.prometheus_collector()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"berth_proxy_group_errors_5xx_total{route="web.shop",group="r2"} 10"#),
        "{text}"
    );
    assert!(
        text.contains(r#"berth_proxy_route_requests_total{route="web.shop"} 30"#),
        "{text}"
    );
    assert!(
        text.contains(r#"berth_proxy_route_latency_seconds_count{route="web.shop"} 30"#),
        "{text}"
    );
}

#[tokio::test]
async fn counters_of_groups_two_tables_old_are_forgotten() {
    let web = Upstream::start("web").await;
    let proxy = TestProxy::start().await;
    let table = |label: &str| vec![route("web", "*", "/", vec![group(label, 1, &[&web])])];
    proxy.proxy.set_routes(table("r1")).unwrap();
    get(&client(), &proxy, "x", "/").await;
    proxy.proxy.set_routes(table("r2")).unwrap();
    // r1 was in the previous table: still there to compare with.
    assert_eq!(
        proxy.proxy.metrics().group("web", "r1").unwrap().requests,
        1
    );
    proxy.proxy.set_routes(table("r3")).unwrap();
    let metrics = proxy.proxy.metrics();
    assert_eq!(metrics.group("web", "r1"), None);
    assert!(metrics.group("web", "r2").is_some() && metrics.group("web", "r3").is_some());
    assert_eq!(metrics.route("web").unwrap().requests, 1);
}
