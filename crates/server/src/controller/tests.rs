#![allow(clippy::unwrap_used)]

use super::*;

fn seen(container: &str, id: &str, status: Status) -> Seen {
    Seen {
        container: container.into(),
        id: id.into(),
        name: InstanceName::parse(container).unwrap(),
        status,
        started_at: Some(Timestamp::from_millis(1_000)),
        finished_at: Some(Timestamp::from_millis(2_000)),
        exit_code: (status == Status::Exited).then_some(137),
        restarts: 0,
        address: Some("10.0.0.2".into()),
        paused_at: (status == Status::Paused).then_some(Timestamp::from_millis(3_000)),
    }
}

fn checked(service: &str, release: ReleaseId) -> BTreeSet<(String, ReleaseId)> {
    BTreeSet::from([(service.to_owned(), release)])
}

#[test]
fn running_instances_take_their_health_from_the_checker() {
    let containers = [
        seen("shop.web-1-a", "aaa", Status::Running),
        seen("shop.web-1-b", "bbb", Status::Running),
        seen("shop.web-1-c", "ccc", Status::Running),
        seen("other.web-1-a", "ddd", Status::Running),
    ];
    let health = HashMap::from([
        (
            "aaa".to_owned(),
            SeenHealth {
                healthy: Some(true),
                since: Some(Timestamp::from_millis(1_500)),
            },
        ),
        (
            "bbb".to_owned(),
            SeenHealth {
                healthy: Some(false),
                since: None,
            },
        ),
    ]);
    let instances = observe(
        "shop",
        &containers,
        &HashMap::new(),
        &health,
        &checked("web", 1),
        Timestamp::default(),
    );
    let states: Vec<(&str, InstanceState, Option<Timestamp>)> = instances
        .iter()
        .map(|i| (i.id.as_str(), i.state, i.healthy_since))
        .collect();
    let since = Timestamp::from_millis(1_000);
    assert_eq!(
        states,
        [
            (
                "web-1-a",
                InstanceState::Running {
                    healthy: Some(true),
                    since
                },
                Some(Timestamp::from_millis(1_500))
            ),
            (
                "web-1-b",
                InstanceState::Running {
                    healthy: Some(false),
                    since
                },
                None
            ),
            (
                "web-1-c",
                InstanceState::Running {
                    healthy: None,
                    since
                },
                None
            ),
        ]
    );
}

#[test]
fn without_a_health_check_running_is_healthy() {
    let containers = [seen("shop.worker-2-a", "aaa", Status::Running)];
    let instances = observe(
        "shop",
        &containers,
        &HashMap::new(),
        &HashMap::new(),
        &BTreeSet::new(),
        Timestamp::default(),
    );
    assert!(instances[0].is_ready());
    assert_eq!(
        instances[0].healthy_since,
        Some(Timestamp::from_millis(1_000))
    );
}

#[test]
fn work_in_progress_is_observed() {
    let containers = [
        seen("shop.web-1-a", "aaa", Status::Running),
        seen("shop.web-1-b", "bbb", Status::Exited),
    ];
    let work = HashMap::from([
        ("shop.web-1-a".to_owned(), Work::Stopping),
        (
            "shop.web-2-a".to_owned(),
            Work::Starting {
                app: "shop".into(),
                instance: "web-2-a".into(),
                service: "web".into(),
                release: 2,
            },
        ),
        (
            "shop.web-2-b".to_owned(),
            Work::Failed {
                app: "shop".into(),
                instance: "web-2-b".into(),
                service: "web".into(),
                release: 2,
                at: Timestamp::from_millis(3),
                error: "no such image".into(),
            },
        ),
        (
            "other.web-2-a".to_owned(),
            Work::Starting {
                app: "other".into(),
                instance: "web-2-a".into(),
                service: "web".into(),
                release: 2,
            },
        ),
    ]);
    let instances = observe(
        "shop",
        &containers,
        &work,
        &HashMap::new(),
        &checked("web", 1),
        Timestamp::default(),
    );
    let states: Vec<(&str, InstanceState)> =
        instances.iter().map(|i| (i.id.as_str(), i.state)).collect();
    assert_eq!(
        states,
        [
            ("web-1-a", InstanceState::Stopping),
            (
                "web-1-b",
                InstanceState::Exited {
                    code: 137,
                    at: Timestamp::from_millis(2_000)
                }
            ),
            ("web-2-a", InstanceState::Pending),
            ("web-2-b", InstanceState::Failed),
        ]
    );
}

#[test]
fn a_started_container_is_not_also_pending() {
    let containers = [seen("shop.web-2-a", "aaa", Status::Created)];
    let work = HashMap::from([(
        "shop.web-2-a".to_owned(),
        Work::Starting {
            app: "shop".into(),
            instance: "web-2-a".into(),
            service: "web".into(),
            release: 2,
        },
    )]);
    let instances = observe(
        "shop",
        &containers,
        &work,
        &HashMap::new(),
        &checked("web", 2),
        Timestamp::default(),
    );
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].state, InstanceState::Starting);
}

#[test]
fn a_created_container_nobody_is_starting_is_dead() {
    // A server SIGKILLed between creating and starting it left it behind.
    let containers = [seen("shop.web-2-a", "aaa", Status::Created)];
    let instances = observe(
        "shop",
        &containers,
        &HashMap::new(),
        &HashMap::new(),
        &checked("web", 2),
        Timestamp::default(),
    );
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].state, InstanceState::Stopping, "being removed");
}

#[test]
fn requests_carry_the_spec_and_no_restart_policy() {
    let text = r#"
app = "shop"
[services.web]
image = "127.0.0.1:5000/shop/web:1"
command = ["httpd", "-f"]
env = { MODE = "prod" }
stop_grace = "3s"
resources = { memory = "64Mi", pids = 32 }
"#;
    let spec = AppSpec::parse(text, None).unwrap();
    let release = Release {
        app: "shop".into(),
        number: 4,
        spec: text.into(),
        file: "berth.toml".into(),
        env: None,
        images: BTreeMap::new(),
        secrets: BTreeMap::new(),
        created_at: 0,
        by: None,
        changes: Vec::new(),
        revisions: BTreeMap::new(),
        services: Vec::new(),
    };
    let request = container_request(
        "shop",
        "web-4-a",
        "web",
        &spec.services["web"],
        &release,
        "sha256:abc",
    );
    assert_eq!(request.name.as_deref(), Some("shop.web-4-a"));
    assert_eq!(request.image, "sha256:abc");
    assert_eq!(request.command, ["httpd", "-f"]);
    assert_eq!(request.restart, RestartPolicy::No);
    assert_eq!(request.stop_timeout, 3);
    assert_eq!(request.resources.memory, Some(64 << 20));
    assert_eq!(request.resources.pids, Some(32));
    assert!(request.env.contains(&"MODE=prod".to_owned()));
    assert!(request.env.contains(&"BERTH_RELEASE=4".to_owned()));
}

/// berth.toml and the node runtime agree on every limit: what the spec accepts, a node
/// runs; what a node would refuse, the spec refuses first, with its file position.
#[test]
fn the_spec_accepts_exactly_the_limits_the_node_runs() {
    let values: [(&str, &[&str]); 3] = [
        ("cpus", &["-1", "0", "0.001", "0.0099", "0.01", "0.5", "64"]),
        (
            "memory",
            &["\"0\"", "\"1\"", "\"6291455\"", "\"6Mi\"", "\"1Gi\""],
        ),
        ("pids", &["-1", "0", "3", "4", "4096", "4194304", "4194305"]),
    ];
    for (key, values) in values {
        for value in values {
            let text = format!(
                "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nresources = {{ {key} = {value} }}\n"
            );
            let parsed = AppSpec::parse(&text, None);
            let runtime = match key {
                "cpus" => berth_runtime::spec::Resources {
                    cpus: value.parse().ok(),
                    ..Default::default()
                },
                "memory" => berth_runtime::spec::Resources {
                    memory: berth_units::parse_size(value.trim_matches('"')).ok(),
                    ..Default::default()
                },
                _ => berth_runtime::spec::Resources {
                    pids: value.parse().ok(),
                    ..Default::default()
                },
            };
            assert_eq!(
                parsed.is_ok(),
                runtime.check().is_ok(),
                "{key} = {value}: spec {:?}, node {:?}",
                parsed.as_ref().err().map(ToString::to_string),
                runtime.check()
            );
            if let Ok(spec) = parsed {
                let release = Release {
                    app: "shop".into(),
                    number: 1,
                    spec: text.clone(),
                    file: "berth.toml".into(),
                    env: None,
                    images: BTreeMap::new(),
                    secrets: BTreeMap::new(),
                    created_at: 0,
                    by: None,
                    changes: Vec::new(),
                    revisions: BTreeMap::new(),
                    services: Vec::new(),
                };
                let request = container_request(
                    "shop",
                    "web-1-a",
                    "web",
                    &spec.services["web"],
                    &release,
                    "sha256:abc",
                );
                assert_eq!(request.check(), Ok(()), "{key} = {value}");
            }
        }
    }
}

#[test]
fn instances_running_before_the_controller_started_have_unknown_health_until_checked() {
    // Started at 1s; the controller started at 5s (a restarted server).
    let containers = [
        seen("shop.web-1-a", "aaa", Status::Running),
        seen("shop.web-1-b", "bbb", Status::Running),
        seen("shop.db-1-a", "ccc", Status::Running),
    ];
    let health = HashMap::from([(
        "bbb".to_owned(),
        SeenHealth {
            healthy: Some(true),
            since: Some(Timestamp::from_millis(6_000)),
        },
    )]);
    let restarted = Timestamp::from_millis(5_000);
    let instances = observe(
        "shop",
        &containers,
        &HashMap::new(),
        &health,
        &checked("web", 1),
        restarted,
    );
    let states: Vec<(&str, InstanceState)> =
        instances.iter().map(|i| (i.id.as_str(), i.state)).collect();
    let since = Timestamp::from_millis(1_000);
    assert_eq!(
        states,
        vec![
            ("web-1-a", InstanceState::Unknown { since }),
            (
                "web-1-b",
                InstanceState::Running {
                    healthy: Some(true),
                    since
                }
            ),
            // No health check: healthy as soon as it runs.
            (
                "db-1-a",
                InstanceState::Running {
                    healthy: Some(true),
                    since
                }
            ),
        ]
    );
    // Started after the controller: simply still starting.
    let fresh = observe(
        "shop",
        &containers[..1],
        &HashMap::new(),
        &HashMap::new(),
        &checked("web", 1),
        Timestamp::from_millis(500),
    );
    assert_eq!(
        fresh[0].state,
        InstanceState::Running {
            healthy: None,
            since
        }
    );
}

#[test]
fn paused_containers_are_parked_and_parking_ones_stopping() {
    let seen = [
        seen("shop.web-1-a", "a", Status::Paused),
        seen("shop.web-1-b", "b", Status::Running),
    ];
    let work = HashMap::from([("shop.web-1-b".to_owned(), Work::Parking)]);
    let observed = observe(
        "shop",
        &seen,
        &work,
        &HashMap::new(),
        &BTreeSet::new(),
        Timestamp::from_millis(0),
    );
    assert_eq!(
        observed[0].state,
        InstanceState::Parked {
            since: Timestamp::from_millis(3_000)
        }
    );
    assert!(
        !observed[0].is_live(),
        "a parked instance counts against no limit"
    );
    assert_eq!(
        observed[1].state,
        InstanceState::Stopping,
        "draining before the freeze"
    );
}
