#![allow(clippy::unwrap_used)]

use berth_core::plan::Timestamp;
use berth_runtime::container::Status;

use super::*;
use crate::releases::InstanceName;

fn spec(strategy: &str) -> AppSpec {
    AppSpec::parse(
        &format!(
            r#"app = "shop"
[services.web]
image = "web:1"
ports = {{ http = 8080, admin = 9000 }}
tags = ["public"]
meta = {{ team = "store" }}
route = {{ host = "shop.test", path = "/", port = "http" }}
deploy = {{ strategy = "{strategy}" }}
[services.worker]
image = "worker:1"
"#
        ),
        None,
    )
    .unwrap()
}

fn instance(id: &str, state: InstanceState) -> Instance {
    let name = InstanceName::parse(&format!("shop.{id}")).unwrap();
    Instance {
        id: id.to_owned(),
        service: name.service,
        release: name.release,
        state,
        started_at: None,
        healthy_since: None,
        restarts: 0,
    }
}

fn seen(id: &str, address: &str) -> Seen {
    let container = format!("shop.{id}");
    Seen {
        id: format!("id-{id}"),
        name: InstanceName::parse(&container).unwrap(),
        container,
        status: Status::Running,
        started_at: None,
        finished_at: None,
        exit_code: None,
        restarts: 0,
        address: Some(address.to_owned()),
        paused_at: None,
    }
}

const HEALTHY: InstanceState = InstanceState::Running {
    healthy: Some(true),
    since: Timestamp::from_millis(0),
};

fn ids(endpoints: &[Endpoint]) -> Vec<&str> {
    endpoints.iter().map(|e| e.id.as_str()).collect()
}

#[test]
fn healthy_and_unknown_instances_are_listed_unless_stopping() {
    let specs = BTreeMap::from([(1, spec("rolling")), (2, spec("rolling"))]);
    let instances = [
        instance("web-1-a", HEALTHY),
        instance(
            "web-1-b",
            InstanceState::Running {
                healthy: Some(false),
                since: Timestamp::from_millis(0),
            },
        ),
        instance(
            "web-2-a",
            InstanceState::Running {
                healthy: None,
                since: Timestamp::from_millis(0),
            },
        ),
        instance(
            "web-2-b",
            InstanceState::Unknown {
                since: Timestamp::from_millis(0),
            },
        ),
        instance("web-2-c", HEALTHY),
        instance("worker-2-a", HEALTHY),
    ];
    let seen: Vec<Seen> = instances
        .iter()
        .enumerate()
        .map(|(n, i)| seen(&i.id, &format!("10.0.0.{}", n + 2)))
        .collect();
    let stopping = BTreeSet::from(["web-2-c".to_owned()]);
    let listed = listed(
        "shop",
        "node1",
        &specs[&2],
        &specs,
        &BTreeMap::new(),
        &instances,
        &seen,
        &stopping,
    );
    assert_eq!(ids(&listed), ["id-web-1-a", "id-web-2-b", "id-worker-2-a"]);
    let web = &listed[0];
    assert_eq!(web.name(), "web.shop");
    assert_eq!(web.address.to_string(), "10.0.0.2");
    assert_eq!(web.ports["admin"], 9000);
    assert_eq!(web.tags, ["public"]);
    assert_eq!(web.meta["team"], "store");
    assert_eq!(web.node, "node1");
    assert_eq!(web.release, 1);
}

#[test]
fn blue_green_lists_the_old_set_until_the_switch_then_only_the_new_one() {
    let specs = BTreeMap::from([(1, spec("blue_green")), (2, spec("blue_green"))]);
    // `worker` deploys by rolling in the same app: both of its sets stay listed.
    let instances = [
        instance("web-1-a", HEALTHY),
        instance("web-2-a", HEALTHY),
        instance("worker-1-a", HEALTHY),
        instance("worker-2-a", HEALTHY),
    ];
    let seen = [
        seen("web-1-a", "10.0.0.2"),
        seen("web-2-a", "10.0.0.3"),
        seen("worker-1-a", "10.0.0.4"),
        seen("worker-2-a", "10.0.0.5"),
    ];
    let mut deploy = DeployState::begin(Some(1), 2, Timestamp::from_millis(0));
    let listed_at = |deploy: &DeployState| {
        let deploys = BTreeMap::from([
            ("web".to_owned(), deploy.clone()),
            ("worker".to_owned(), deploy.clone()),
        ]);
        let endpoints = listed(
            "shop",
            "n",
            &specs[&2],
            &specs,
            &deploys,
            &instances,
            &seen,
            &BTreeSet::new(),
        );
        ids(&endpoints)
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed_at(&deploy),
        ["id-web-1-a", "id-worker-1-a", "id-worker-2-a"]
    );
    deploy.step = 1;
    assert_eq!(
        listed_at(&deploy),
        ["id-web-2-a", "id-worker-1-a", "id-worker-2-a"]
    );
    deploy.finished = true;
    assert_eq!(
        listed_at(&deploy),
        ["id-web-1-a", "id-web-2-a", "id-worker-1-a", "id-worker-2-a"]
    );

    // A rolling deploy lists both sets while it runs.
    let rolling = BTreeMap::from([(1, spec("rolling")), (2, spec("rolling"))]);
    let deploys = BTreeMap::from([(
        "web".to_owned(),
        DeployState::begin(Some(1), 2, Timestamp::from_millis(0)),
    )]);
    let endpoints = listed(
        "shop",
        "n",
        &rolling[&2],
        &rolling,
        &deploys,
        &instances,
        &seen,
        &BTreeSet::new(),
    );
    assert_eq!(
        ids(&endpoints),
        ["id-web-1-a", "id-web-2-a", "id-worker-1-a", "id-worker-2-a"]
    );
}

#[test]
fn routes_group_upstreams_by_release_weighted_by_instances() {
    let specs = BTreeMap::from([(1, spec("canary")), (2, spec("canary"))]);
    let instances = [
        instance("web-1-a", HEALTHY),
        instance("web-1-b", HEALTHY),
        instance("web-1-c", HEALTHY),
        instance("web-2-a", HEALTHY),
        instance("worker-2-a", HEALTHY),
    ];
    let seen: Vec<Seen> = instances
        .iter()
        .enumerate()
        .map(|(n, i)| seen(&i.id, &format!("10.0.0.{}", n + 2)))
        .collect();
    let endpoints = listed(
        "shop",
        "n",
        &specs[&2],
        &specs,
        &BTreeMap::new(),
        &instances,
        &seen,
        &BTreeSet::new(),
    );
    let routes = routes("shop", &specs[&2], &endpoints);
    assert_eq!(routes.len(), 1, "only web has a route");
    let route = &routes[0];
    assert_eq!(
        (route.host.as_str(), route.path.as_str()),
        ("shop.test", "/")
    );
    assert_eq!(route.groups.len(), 2);
    assert_eq!((route.groups[0].release, route.groups[0].weight), (1, 3));
    assert_eq!((route.groups[1].release, route.groups[1].weight), (2, 1));
    assert_eq!(
        route.groups[1].upstreams,
        ["10.0.0.5:8080".parse::<SocketAddr>().unwrap()]
    );
}

#[test]
fn the_catalog_is_synced_in_one_step_per_app() {
    let catalog = Catalog::new();
    let endpoint = |id: &str, app: &str| Endpoint {
        id: id.to_owned(),
        app: app.to_owned(),
        service: "web".to_owned(),
        release: 1,
        address: "10.0.0.2".parse().unwrap(),
        ports: BTreeMap::new(),
        tags: Vec::new(),
        meta: BTreeMap::new(),
        node: "n".to_owned(),
    };
    catalog.register(endpoint("other", "blog"));
    assert!(sync_catalog(
        &catalog,
        "shop",
        &[endpoint("a", "shop"), endpoint("b", "shop")]
    ));
    let index = catalog.snapshot().index;
    assert!(!sync_catalog(
        &catalog,
        "shop",
        &[endpoint("a", "shop"), endpoint("b", "shop")]
    ));
    assert!(sync_catalog(
        &catalog,
        "shop",
        &[endpoint("b", "shop"), endpoint("c", "shop")]
    ));
    let snapshot = catalog.snapshot();
    assert_eq!(snapshot.index, index + 1, "one step");
    let all: Vec<&str> = snapshot.endpoints().map(|e| e.id.as_str()).collect();
    assert_eq!(all, ["b", "c", "other"], "other apps are untouched");
}

#[test]
fn a_release_is_rolled_back_for_its_traffic_only_past_a_limit_and_worse_than_before() {
    let limits = AutoRollback {
        error_rate: Some(0.02),
        p99: Some(std::time::Duration::from_millis(500)),
        watch: std::time::Duration::from_secs(60),
        window: std::time::Duration::from_secs(30),
        min_requests: 20,
    };
    let stats = |requests, errors, p99_ms: u64| ReleaseStats {
        requests,
        errors,
        p99: Some(std::time::Duration::from_millis(p99_ms)),
    };
    // Too few requests to judge.
    assert_eq!(traffic_verdict(&limits, &stats(10, 10, 10), None), None);
    // Within the limits.
    assert_eq!(traffic_verdict(&limits, &stats(100, 2, 100), None), None);
    let verdict = traffic_verdict(&limits, &stats(100, 30, 100), Some(&stats(1000, 1, 50)));
    assert_eq!(
        verdict.as_deref(),
        Some("5xx rate 30.0% (30 of the last 100 requests, within 30s) is over the limit of 2.0%; the previous release had 0.1%")
    );
    // Over the limit, but no worse than the release before: the new one is not to blame.
    assert_eq!(
        traffic_verdict(&limits, &stats(100, 30, 100), Some(&stats(100, 40, 100))),
        None
    );
    let slow = traffic_verdict(&limits, &stats(100, 0, 900), Some(&stats(100, 0, 80)));
    assert_eq!(
        slow.as_deref(),
        Some("p99 latency 900 ms over the last 30s is over the limit of 500 ms; the previous release had 80 ms")
    );
    assert_eq!(
        traffic_verdict(&limits, &stats(100, 0, 900), Some(&stats(100, 0, 950))),
        None
    );
}
