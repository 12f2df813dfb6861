#![allow(clippy::unwrap_used)]
use super::*;

fn route(name: &str, host: &str, prefix: &str) -> Route {
    Route {
        name: name.into(),
        host: host.into(),
        path_prefix: prefix.into(),
        balance: Balance::RoundRobin,
        groups: Vec::new(),
    }
}

fn live(routes: Vec<Route>) -> Table {
    let routes = validate(routes).unwrap();
    Table::new(
        routes.clone(),
        routes
            .into_iter()
            .map(|r| {
                let l = LiveRoute::new(
                    &r.name,
                    r.path_prefix,
                    r.balance,
                    Vec::new(),
                    Arc::default(),
                );
                (r.host, l)
            })
            .collect(),
    )
}

#[test]
fn hosts_lose_port_case_and_trailing_dot() {
    assert_eq!(normalize_host("Shop.Example:8080"), "shop.example");
    assert_eq!(normalize_host("shop.example."), "shop.example");
    assert_eq!(normalize_host("[::1]:443"), "[::1]");
    assert_eq!(normalize_host("[::1]"), "[::1]");
    assert_eq!(normalize_host("127.0.0.1"), "127.0.0.1");
}

#[test]
fn prefixes_match_whole_segments() {
    assert!(prefix_matches("/api", "/api"));
    assert!(prefix_matches("/api", "/api/x"));
    assert!(!prefix_matches("/api", "/apix"));
    assert!(!prefix_matches("/api", "/"));
    assert!(prefix_matches("/", "/anything"));
}

#[test]
fn the_longest_prefix_of_the_exact_host_wins() {
    let table = live(vec![
        route("root", "shop.example", "/"),
        route("api", "shop.example", "/api/"),
        route("v2", "shop.example", "/api/v2"),
        route("fallback", "*", "/"),
    ]);
    let name = |host: &str, path: &str| table.find(host, path).map(|r| r.name.to_string());
    assert_eq!(name("shop.example", "/api/v2/items").as_deref(), Some("v2"));
    assert_eq!(name("shop.example", "/api/v3").as_deref(), Some("api"));
    assert_eq!(name("shop.example", "/apix").as_deref(), Some("root"));
    assert_eq!(name("other.example", "/api").as_deref(), Some("fallback"));
}

#[test]
fn without_a_wildcard_unknown_hosts_and_paths_find_nothing() {
    let table = live(vec![route("api", "shop.example", "/api")]);
    assert!(table.find("shop.example", "/").is_none());
    assert!(table.find("blog.example", "/api").is_none());
}

#[test]
fn bad_tables_are_refused_with_the_route_named() {
    assert_eq!(
        validate(vec![route("a", "", "/")]),
        Err(RouteError::EmptyHost { route: "a".into() })
    );
    assert!(matches!(
        validate(vec![route("a", "http://x", "/")]),
        Err(RouteError::BadHost { .. })
    ));
    assert!(matches!(
        validate(vec![route("a", "x", "api")]),
        Err(RouteError::BadPrefix { .. })
    ));
    assert!(matches!(
        validate(vec![route("a", "X", "/api/"), route("b", "x:80", "/api")]),
        Err(RouteError::Duplicate { .. })
    ));
    let mut twice = route("a", "x", "/");
    let group = Group {
        label: "r1".into(),
        weight: 1,
        upstreams: Vec::new(),
    };
    twice.groups = vec![group.clone(), group];
    assert!(matches!(
        validate(vec![twice]),
        Err(RouteError::DuplicateGroup { .. })
    ));
}

#[test]
fn smooth_weights_give_exact_shares_interleaved() {
    let picker = WeightedPicker::new(&[5, 1, 1]);
    let picks: Vec<usize> = (0..7).map(|_| picker.pick().unwrap()).collect();
    assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    let picker = WeightedPicker::new(&[90, 10, 0]);
    let mut counts = [0; 3];
    for _ in 0..1000 {
        counts[picker.pick().unwrap()] += 1;
    }
    assert_eq!(counts, [900, 100, 0]);
    assert_eq!(WeightedPicker::new(&[0, 0]).pick(), None);
}

mod properties {
    use super::super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_weight_gets_its_share_of_each_cycle(weights in prop::collection::vec(0u32..20, 1..6)) {
            let total: u32 = weights.iter().sum();
            let picker = WeightedPicker::new(&weights);
            let mut counts = vec![0u32; weights.len()];
            for _ in 0..total * 3 {
                counts[picker.pick().unwrap()] += 1;
            }
            let expected: Vec<u32> = weights.iter().map(|w| w * 3).collect();
            prop_assert_eq!(counts, expected);
        }

        #[test]
        fn a_prefix_matches_itself_and_paths_below(segments in prop::collection::vec("[a-z]{1,5}", 1..4), tail in "[a-z]{1,5}") {
            let prefix = format!("/{}", segments.join("/"));
            prop_assert!(prefix_matches(&prefix, &prefix));
            let below = format!("{prefix}/{tail}");
            prop_assert!(prefix_matches(&prefix, &below));
            let glued = format!("{prefix}{tail}");
            prop_assert!(!prefix_matches(&prefix, &glued));
        }
    }
}

mod balancing {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::upstream::{InFlight, Registry};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A route over groups of `(label, weight, ports)`, least outstanding.
    fn route_of(registry: &Registry, groups: &[(&str, u32, &[u16])]) -> LiveRoute {
        let all: Vec<SocketAddr> = groups
            .iter()
            .flat_map(|(_, _, ports)| ports.iter().map(|p| addr(*p)))
            .collect();
        let resolved = registry.resolve(&all).unwrap();
        resolved.mark();
        let live = groups
            .iter()
            .map(|(label, weight, ports)| {
                let upstreams = ports
                    .iter()
                    .map(|p| resolved.live[&addr(*p)].clone())
                    .collect();
                LiveGroup::new(label, *weight, upstreams, Arc::default())
            })
            .collect();
        LiveRoute::new(
            "web.shop",
            "/".into(),
            Balance::LeastOutstanding,
            live,
            Arc::default(),
        )
    }

    /// Picks `n` times, each request staying in flight, and counts the picks per port.
    fn hold(route: &LiveRoute, n: usize, held: &mut Vec<InFlight>) -> BTreeMap<u16, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let (_, upstream) = route.pick(&[], 0).unwrap();
            *counts.entry(upstream.addr.port()).or_default() += 1;
            held.push(upstream.begin().unwrap());
        }
        counts
    }

    #[test]
    fn the_least_loaded_instance_of_any_release_gets_the_request() {
        let registry = Registry::new(Duration::from_secs(1));
        // A rolling deploy: three old instances, one new one, every instance weighs 1.
        let route = route_of(&registry, &[("1", 3, &[1, 2, 3]), ("2", 1, &[4])]);
        let mut held = Vec::new();
        // The old instances are busy (5 each); the new one is idle and takes the next 15.
        for port in [1, 2, 3] {
            for _ in 0..5 {
                held.push(registry.get(addr(port)).unwrap().begin().unwrap());
            }
        }
        let first = hold(&route, 5, &mut held);
        assert_eq!(first, BTreeMap::from([(4, 5)]), "the idle instance first");
        hold(&route, 10, &mut held);
        // Then they take turns: every instance's load is within one of the others'.
        let loads: Vec<usize> = [1, 2, 3, 4]
            .iter()
            .map(|p| registry.in_flight(addr(*p)))
            .collect();
        assert!(
            loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1,
            "{loads:?}"
        );
    }

    #[test]
    fn release_weights_hold_among_idle_instances() {
        let registry = Registry::new(Duration::from_secs(1));
        // A canary weighted 1 in 4 by its group, with one instance against three.
        let route = route_of(&registry, &[("1", 3, &[1, 2, 3]), ("2", 1, &[4])]);
        let mut held = Vec::new();
        let counts = hold(&route, 400, &mut held);
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            [100, 100, 100, 100]
        );
        // A group weighted 3 with one instance takes three times the requests of a group
        // weighted 1 with one instance.
        let registry = Registry::new(Duration::from_secs(1));
        let route = route_of(&registry, &[("1", 3, &[5]), ("2", 1, &[6])]);
        let mut held = Vec::new();
        let counts = hold(&route, 400, &mut held);
        assert_eq!(counts.get(&5), Some(&300), "{counts:?}");
        assert_eq!(counts.get(&6), Some(&100), "{counts:?}");
    }

    #[test]
    fn tried_and_failed_instances_are_skipped_while_others_remain() {
        let registry = Registry::new(Duration::from_secs(60));
        let route = route_of(&registry, &[("1", 1, &[1]), ("2", 1, &[2])]);
        let (_, first) = route.pick(&[addr(1)], 0).unwrap();
        assert_eq!(first.addr, addr(2));
        registry.mark_failed(&registry.get(addr(2)).unwrap());
        let now = registry.now_ms();
        for _ in 0..4 {
            assert_eq!(route.pick(&[], now).unwrap().1.addr, addr(1));
        }
        // Only failed ones left: one of them rather than none.
        assert_eq!(route.pick(&[addr(1)], now).unwrap().1.addr, addr(2));
        assert!(route.pick(&[addr(1), addr(2)], now).is_none());
    }
}
