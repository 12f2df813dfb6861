#![allow(clippy::unwrap_used)]

use super::*;

fn state(desired: ReleaseId) -> AppState {
    AppState::default().with_desired("shop", desired)
}

/// Releases `numbers` of shop, made before revisions were kept.
fn numbered(numbers: &[ReleaseId]) -> BTreeMap<ReleaseId, Release> {
    numbers
        .iter()
        .map(|&number| {
            (
                number,
                Release {
                    app: "shop".into(),
                    number,
                    spec: String::new(),
                    file: "berth.toml".into(),
                    env: None,
                    images: BTreeMap::new(),
                    secrets: BTreeMap::new(),
                    created_at: 0,
                    by: None,
                    changes: Vec::new(),
                    revisions: BTreeMap::new(),
                    services: Vec::new(),
                },
            )
        })
        .collect()
}

#[test]
fn container_names_round_trip() {
    let name = InstanceName::container("shop-eu", "web-api-12-ab");
    assert_eq!(name, "shop-eu.web-api-12-ab");
    assert_eq!(
        InstanceName::parse(&name),
        Some(InstanceName {
            app: "shop-eu".into(),
            instance: "web-api-12-ab".into(),
            service: "web-api".into(),
            release: 12,
        })
    );
}

#[test]
fn foreign_container_names_are_not_instances() {
    for name in [
        "busybox-3f1c",
        "shop.web",
        "shop.web-x-a",
        "shop.web-7-A",
        ".web-7-a",
        "shop.-7-a",
    ] {
        assert_eq!(InstanceName::parse(name), None, "{name}");
    }
}

#[test]
fn a_failed_deploy_makes_the_previous_release_desired() {
    let mut app = state(2);
    let now = Timestamp::from_millis(1_000);
    app.apply(
        &Action::BeginDeploy {
            service: "web".into(),
            from_release: Some(1),
            to_release: 2,
            reason: String::new(),
        },
        now,
    );
    assert_eq!(
        app.status_of(2, &numbered(&[1, 2])),
        ReleaseStatus::Deploying
    );
    app.apply(
        &Action::MarkDeployFailed {
            service: "web".into(),
            release: 2,
            reason: "never healthy".into(),
        },
        now,
    );
    assert_eq!(app.desired, 1);
    assert_eq!(app.status_of(2, &numbered(&[1, 2])), ReleaseStatus::Failed);
    assert!(app.deploys["web"].failed);
    assert_eq!(app.failed[&2], "never healthy");
}

#[test]
fn a_failed_first_deploy_stays_desired() {
    let mut app = state(1);
    let now = Timestamp::from_millis(1_000);
    app.apply(
        &Action::BeginDeploy {
            service: "web".into(),
            from_release: None,
            to_release: 1,
            reason: String::new(),
        },
        now,
    );
    app.apply(
        &Action::MarkDeployFailed {
            service: "web".into(),
            release: 1,
            reason: "never healthy".into(),
        },
        now,
    );
    assert_eq!(app.desired, 1);
    assert_eq!(app.status_of(1, &numbered(&[1])), ReleaseStatus::Failed);
}

#[test]
fn a_release_is_live_once_every_deploy_to_it_finished() {
    let mut app = state(3);
    let now = Timestamp::from_millis(5);
    for service in ["db", "web"] {
        app.apply(
            &Action::BeginDeploy {
                service: service.into(),
                from_release: Some(2),
                to_release: 3,
                reason: String::new(),
            },
            now,
        );
    }
    let finish = |service: &str| Action::FinishDeploy {
        service: service.into(),
        release: 3,
        reason: String::new(),
    };
    assert!(app.apply(&finish("db"), now));
    assert_eq!(
        app.status_of(3, &numbered(&[1, 2, 3])),
        ReleaseStatus::Deploying
    );
    assert!(app.apply(&finish("web"), now));
    assert!(
        !app.apply(&finish("web"), now),
        "finishing twice changes nothing"
    );
    assert_eq!(app.status_of(3, &numbered(&[1, 2, 3])), ReleaseStatus::Live);
    assert_eq!(
        app.status_of(2, &numbered(&[1, 2, 3])),
        ReleaseStatus::Previous
    );
    assert_eq!(
        app.status_of(1, &numbered(&[1, 2, 3])),
        ReleaseStatus::Superseded
    );
}

#[test]
fn advancing_a_step_restarts_its_clock() {
    let mut app = state(2);
    app.apply(
        &Action::BeginDeploy {
            service: "web".into(),
            from_release: Some(1),
            to_release: 2,
            reason: String::new(),
        },
        Timestamp::from_millis(1),
    );
    app.deploys.get_mut("web").unwrap().promoted_at = Some(3);
    app.apply(
        &Action::AdvanceStep {
            service: "web".into(),
            release: 2,
            step: 1,
            reason: String::new(),
        },
        Timestamp::from_millis(9),
    );
    let deploy = DeployState::from(app.deploys["web"].clone());
    assert_eq!(deploy.step, 1);
    assert_eq!(deploy.step_started_at, Timestamp::from_millis(9));
    assert_eq!(deploy.promoted_at, None);
}

#[test]
fn rollback_skips_failed_releases_and_pins_what_it_needs() {
    let mut app = state(4);
    app.failed.insert(3, "broken".into());
    let releases = [1, 2, 3, 4];
    assert_eq!(app.rollback_target(&releases), Some(2));
    // The desired release and the two newest others that did not fail.
    assert_eq!(app.pinned_releases(&releases), BTreeSet::from([1, 2, 4]));
    let long: Vec<ReleaseId> = (1..=9).collect();
    assert_eq!(
        state(9).pinned_releases(&long),
        BTreeSet::from([7, 8, 9]),
        "KEEP_RELEASES = 2 besides the desired one"
    );

    // A rollback to a release that failed before deploys it afresh.
    let again = app.clone().with_desired("shop", 3);
    assert!(!again.failed.contains_key(&3));
    assert_eq!(again.desired, 3);
    assert_eq!(again.latest, 4);
    assert_eq!(again.rollback_target(&releases), Some(2));
}

#[test]
fn an_unfinished_deploy_keeps_the_release_it_replaces_pinned() {
    let mut app = state(5);
    app.apply(
        &Action::BeginDeploy {
            service: "web".into(),
            from_release: Some(1),
            to_release: 5,
            reason: String::new(),
        },
        Timestamp::from_millis(1),
    );
    assert_eq!(app.pinned_releases(&[1, 4, 5]), BTreeSet::from([1, 4, 5]));
}

#[test]
fn deploy_records_round_trip_through_json() {
    let state = DeployState::begin(Some(1), 2, Timestamp::from_millis(77));
    let json = serde_json::to_string(&DeployRecord::from(state.clone())).unwrap();
    let back: DeployRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(DeployState::from(back), state);
}

#[test]
fn after_a_rollback_the_release_rolled_back_from_stays_pinned() {
    let app = state(1).with_desired("shop", 2).with_desired("shop", 3);
    assert_eq!(app.previous, Some(2));
    let back = app.with_desired("shop", 1);
    assert_eq!(back.previous, Some(3));
    assert_eq!(back.rollback_target(&[1, 2, 3]), None);
    assert_eq!(back.pinned_releases(&[1, 2, 3]), BTreeSet::from([1, 2, 3]));
}

#[test]
fn a_failed_release_never_becomes_previous() {
    let mut app = state(1).with_desired("shop", 2);
    app.failed.insert(2, "broken".into());
    app.desired = 1;
    let next = app.with_desired("shop", 3);
    assert_eq!(next.previous, Some(1));
}

#[test]
fn a_release_parses_with_the_overlay_it_was_made_with() {
    let release = Release {
        app: "shop".into(),
        number: 1,
        spec: "app = \"shop\"\n[services.web]\nimage = \"r/web:1\"\nreplicas = 3\n[env.staging]\nservices.web.replicas = 1\n".into(),
        file: "shop.toml".into(),
        env: Some("staging".into()),
        images: BTreeMap::new(),
        secrets: BTreeMap::new(),
        created_at: 0,
        by: None,
        changes: Vec::new(),
        revisions: BTreeMap::new(),
        services: Vec::new(),
    };
    assert_eq!(release.app_spec().unwrap().services["web"].replicas, 1);
    let plain = Release {
        env: None,
        ..release
    };
    assert_eq!(plain.app_spec().unwrap().services["web"].replicas, 3);
}

#[test]
fn promote_marks_only_unfinished_unpromoted_deploys() {
    let running = |promoted_at, finished, failed| DeployRecord {
        from_release: Some(1),
        to_release: 2,
        started_at: 1,
        step: 1,
        step_started_at: 1,
        promoted_at,
        finished,
        failed,
        rollback_to: None,
        paused_at: None,
        resumed_at: None,
    };
    let mut state = AppState {
        deploys: BTreeMap::from([
            ("api".to_owned(), running(None, false, false)),
            ("web".to_owned(), running(None, false, false)),
            ("db".to_owned(), running(None, true, false)),
            ("bad".to_owned(), running(None, false, true)),
            ("old".to_owned(), running(Some(5), false, false)),
        ]),
        ..AppState::default()
    };
    let now = Timestamp::from_millis(9);
    assert_eq!(state.promote(Some("web"), now), ["web"]);
    assert_eq!(state.deploys["web"].promoted_at, Some(9));
    assert_eq!(state.deploys["api"].promoted_at, None);
    assert_eq!(state.promote(None, now), ["api"]);
    assert!(state.promote(None, now).is_empty());
    assert_eq!(state.deploys["old"].promoted_at, Some(5));
}

#[test]
fn scale_overrides_replicas_until_another_release_is_desired() {
    let spec = AppSpec::parse_file(
        "berth.toml",
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nreplicas = 2\n",
        None,
    )
    .unwrap();
    let mut state = AppState::default().with_desired("shop", 1);
    state.scale.insert("web".into(), 5);
    state.scale.insert("gone".into(), 3);
    assert_eq!(state.scaled(&spec).services["web"].replicas, 5);
    assert_eq!(state.clone().with_desired("shop", 1).scale.len(), 2);
    let next = state.with_desired("shop", 2);
    assert!(next.scale.is_empty());
    assert_eq!(next.scaled(&spec).services["web"].replicas, 2);
}

#[test]
fn changes_say_what_a_release_changed_without_env_values() {
    let release = |number, spec: &str, digest: &str, secrets: &[(&str, u64)]| Release {
        app: "shop".into(),
        number,
        spec: spec.into(),
        file: "berth.toml".into(),
        env: None,
        images: BTreeMap::from([(
            "web".to_owned(),
            ResolvedImage {
                reference: "r/web:1".into(),
                digest: digest.into(),
                pinned_reference: format!("r/web@{digest}"),
            },
        )]),
        secrets: secrets.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        created_at: 0,
        by: None,
        changes: Vec::new(),
        revisions: BTreeMap::new(),
        services: Vec::new(),
    };
    let v1 = release(
        1,
        "app = \"shop\"\n[services.web]\nimage = \"r/web:1\"\nreplicas = 2\nenv = { MODE = \"a\" }\n",
        "sha256:1111111111111111111111",
        &[("TOKEN", 1)],
    );
    assert_eq!(changes(None, &v1), ["first release"]);
    let v2 = release(
        2,
        "app = \"shop\"\n[services.web]\nimage = \"r/web:1\"\nreplicas = 3\nenv = { MODE = \"secret-b\", NEW = \"x\" }\n[services.db]\nimage = \"r/db:1\"\n",
        "sha256:2222222222222222222222",
        &[("TOKEN", 2)],
    );
    let lines = changes(Some(&v1), &v2);
    assert_eq!(
        lines,
        [
            "db: added",
            "web: image r/web:1 (sha256:111111111111) -> r/web:1 (sha256:222222222222)",
            "web: replicas 2 -> 3",
            "web: env MODE, NEW",
            "secret TOKEN: v1 -> v2",
        ]
    );
    assert!(
        lines.iter().all(|l| !l.contains("secret-b")),
        "no env values"
    );
    assert_eq!(
        changes(
            Some(&v1),
            &release(
                3,
                &v1.spec,
                "sha256:1111111111111111111111",
                &[("TOKEN", 1)]
            )
        ),
        ["no changes: the same spec, images and secrets"]
    );
}

fn release_with(
    number: ReleaseId,
    spec: &str,
    images: &[(&str, &str)],
    secrets: &[(&str, u64)],
) -> Release {
    Release {
        app: "shop".into(),
        number,
        spec: spec.into(),
        file: "berth.toml".into(),
        env: None,
        images: images
            .iter()
            .map(|(service, digest)| {
                (
                    (*service).to_owned(),
                    ResolvedImage {
                        reference: format!("r/{service}:1"),
                        digest: (*digest).into(),
                        pinned_reference: format!("r/{service}@{digest}"),
                    },
                )
            })
            .collect(),
        secrets: secrets.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        created_at: 0,
        by: None,
        changes: Vec::new(),
        revisions: BTreeMap::new(),
        services: Vec::new(),
    }
}

/// Makes `new` as the deploy API does: its changes and revisions against `old`.
fn made(old: Option<&Release>, mut new: Release) -> Release {
    let old_spec = old.map(|r| r.app_spec().unwrap());
    let spec = new.app_spec().unwrap();
    new.services = service_changes(old.zip(old_spec.as_ref()), &new, &spec);
    new.revisions = revisions(&new.services);
    new
}

const SHOP: &str = "app = \"shop\"
[services.web]
image = \"r/web:1\"
env = { MODE = \"a\" }
[services.db]
image = \"r/db:1\"
secrets = [\"PG_PASS\"]
replicas = REPLICAS
[services.worker]
image = \"r/worker:1\"
secret_files = { TOKEN = \"/run/secrets/token\" }
";

#[test]
fn a_release_restarts_only_the_services_whose_containers_differ() {
    let spec = |replicas: u32| SHOP.replace("REPLICAS", &replicas.to_string());
    let v1 = made(
        None,
        release_with(
            1,
            &spec(1),
            &[
                ("web", "sha256:aaa"),
                ("db", "sha256:ddd"),
                ("worker", "sha256:www"),
            ],
            &[("PG_PASS", 1), ("TOKEN", 1)],
        ),
    );
    assert!(v1.services.iter().all(|c| c.action == ServiceAction::Add));
    // A new web image, db scaled, TOKEN (read by worker only) rotated.
    let v2 = made(
        Some(&v1),
        release_with(
            2,
            &spec(2),
            &[
                ("web", "sha256:bbb"),
                ("db", "sha256:ddd"),
                ("worker", "sha256:www"),
            ],
            &[("PG_PASS", 1), ("TOKEN", 2)],
        ),
    );
    let by_service: BTreeMap<&str, &ServiceChange> = v2
        .services
        .iter()
        .map(|c| (c.service.as_str(), c))
        .collect();
    assert_eq!(by_service["web"].action, ServiceAction::Restart);
    assert_eq!(
        by_service["web"].reasons,
        ["image r/web:1 (sha256:aaa) -> r/web:1 (sha256:bbb)"]
    );
    assert_eq!(by_service["db"].action, ServiceAction::Keep);
    assert_eq!(by_service["db"].reasons, ["replicas 1 -> 2"]);
    assert_eq!(by_service["worker"].action, ServiceAction::Restart);
    assert_eq!(by_service["worker"].reasons, ["secret TOKEN v1 -> v2"]);
    assert_eq!(
        v2.revisions,
        BTreeMap::from([("db".into(), 1), ("web".into(), 2), ("worker".into(), 2)])
    );
    // Only db's catalog tags change in 3: every service keeps the revision it had.
    let v3 = made(
        Some(&v2),
        release_with(
            3,
            &spec(2).replace("[services.worker]", "tags = [\"x\"]\n[services.worker]"),
            &[
                ("web", "sha256:bbb"),
                ("db", "sha256:ddd"),
                ("worker", "sha256:www"),
            ],
            &[("PG_PASS", 1), ("TOKEN", 2)],
        ),
    );
    assert_eq!(
        v3.revisions,
        BTreeMap::from([("db".into(), 1), ("web".into(), 2), ("worker".into(), 2)])
    );
    assert_eq!(v3.revision("web"), 2);
    assert_eq!(v3.services[0].reasons, ["catalog tags or meta changed"]);
    // A release made before revisions runs its own instances.
    assert_eq!(numbered(&[4])[&4].revision("web"), 4);
}

#[test]
fn a_release_is_live_when_every_service_runs_its_revision() {
    let mut releases = numbered(&[1, 2, 3]);
    releases.get_mut(&3).unwrap().revisions = BTreeMap::from([("db".into(), 1), ("web".into(), 3)]);
    let mut app = state(1);
    let now = Timestamp::from_millis(5);
    app.apply(
        &Action::BeginDeploy {
            service: "db".into(),
            from_release: None,
            to_release: 1,
            reason: String::new(),
        },
        now,
    );
    app.apply(
        &Action::FinishDeploy {
            service: "db".into(),
            release: 1,
            reason: String::new(),
        },
        now,
    );
    let mut app = app.with_desired("shop", 3);
    assert_eq!(app.status_of(3, &releases), ReleaseStatus::Deploying);
    app.apply(
        &Action::BeginDeploy {
            service: "web".into(),
            from_release: Some(1),
            to_release: 3,
            reason: String::new(),
        },
        now,
    );
    app.apply(
        &Action::FinishDeploy {
            service: "web".into(),
            release: 3,
            reason: String::new(),
        },
        now,
    );
    assert_eq!(app.status_of(3, &releases), ReleaseStatus::Live);
}

#[test]
fn a_failed_revision_fails_the_releases_that_run_it_and_goes_back_before_them() {
    // Release 3 changed web; release 4 (db only) came while web's deploy ran.
    let mut app = state(2).with_desired("shop", 3);
    let now = Timestamp::from_millis(5);
    app.apply(
        &Action::BeginDeploy {
            service: "web".into(),
            from_release: Some(2),
            to_release: 3,
            reason: String::new(),
        },
        now,
    );
    let mut app = app.with_desired("shop", 4);
    assert_eq!(app.previous, Some(3));
    app.apply(
        &Action::MarkDeployFailed {
            service: "web".into(),
            release: 3,
            reason: "never healthy".into(),
        },
        now,
    );
    assert_eq!(app.desired, 2, "back to the release before web's change");
    assert_eq!(
        app.failed.keys().copied().collect::<Vec<_>>(),
        [3, 4],
        "both releases that run the failed revision"
    );
}
