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
