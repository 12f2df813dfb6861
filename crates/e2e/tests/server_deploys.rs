//! Deploys an operator can trust, end to end on real containers: a release restarts only the
//! services whose containers differ, and `berth deploy --dry-run` says which and why first.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use berth_e2e::berth_binary;
use berth_e2e::server::{healthy_in, push_web, text, BerthServer};
use serde_json::Value;

/// A web service and a database-like service (each a busybox httpd), each reading a secret.
fn shop(server: &BerthServer, web_tag: &str) -> String {
    format!(
        r#"app = "shop"

[services.db]
image = "{registry}/shop/db:v1"
ports = {{ sql = 5432 }}
secrets = ["DB_PASS"]
stop_grace = "1s"
health = {{ tcp = {{ port = "sql" }}, interval = "300ms" }}

[services.web]
image = "{registry}/shop/web:{web_tag}"
replicas = 2
ports = {{ http = 8080 }}
secrets = ["API_KEY"]
depends_on = {{ db = "healthy" }}
stop_grace = "1s"
health = {{ http = {{ port = "http", path = "/index.html" }}, interval = "300ms" }}
deploy = {{ min_healthy_time = "0s" }}
"#,
        registry = server.registry()
    )
}

/// `(id, started_at)` of every live container of `app`, by name.
fn containers(server: &BerthServer, app: &str) -> BTreeMap<String, (String, String)> {
    let all: Value = serde_json::from_str(&server.ok(&["ps", "-a", "--json"])).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["record"]["name"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{app}."))
        })
        .filter(|c| c["state"]["status"] == "running")
        .map(|c| {
            (
                c["record"]["name"].as_str().unwrap().to_owned(),
                (
                    c["record"]["id"].as_str().unwrap().to_owned(),
                    c["state"]["started_at"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ),
            )
        })
        .collect()
}

fn of_service(
    all: &BTreeMap<String, (String, String)>,
    service: &str,
) -> BTreeMap<String, (String, String)> {
    let prefix = format!("shop.{service}-");
    all.iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn deploy_ok(server: &BerthServer, name: &str, spec: &str) -> String {
    let out = server.deploy_text(name, spec, true);
    assert!(out.status.success(), "deploy {name}: {}", text(&out));
    text(&out)
}

fn releases(server: &BerthServer) -> usize {
    let releases: Value =
        serde_json::from_str(&server.ok(&["releases", "shop", "--json"])).unwrap();
    releases.as_array().unwrap().len()
}

#[test]
fn a_release_restarts_only_the_services_that_changed() {
    let server = BerthServer::start_logging(&berth_binary(), "info");
    let registry = server.registry_url();
    push_web(&registry, "shop/db", "v1", "db", 5432);
    push_web(&registry, "shop/web", "v1", "web v1", 8080);
    push_web(&registry, "shop/web", "v2", "web v2", 8080);
    server.set_secret("shop", "DB_PASS", "hunter2");
    server.set_secret("shop", "API_KEY", "key-1");

    deploy_ok(&server, "v1", &shop(&server, "v1"));
    let first = containers(&server, "shop");
    let db = of_service(&first, "db");
    assert_eq!(db.len(), 1, "{first:?}");
    assert_eq!(of_service(&first, "web").len(), 2, "{first:?}");

    // A dry run says what would happen and stores nothing.
    let before = releases(&server);
    std::fs::write(server.dir().join("v2.toml"), shop(&server, "v2")).unwrap();
    let dry = server.ok(&[
        "deploy",
        "--dry-run",
        "-f",
        server.dir().join("v2.toml").to_str().unwrap(),
    ]);
    assert!(
        dry.contains("dry run: release shop#2 would be made"),
        "{dry}"
    );
    assert!(
        dry.contains("web: restart: image") && dry.contains("shop/web:v2"),
        "{dry}"
    );
    assert!(
        dry.contains("db: unchanged: keeps its instances (release #1)"),
        "{dry}"
    );
    assert_eq!(releases(&server), before, "a dry run stores no release");

    // Only the web image changes: the database container stays, same id, same start.
    let out = deploy_ok(&server, "v2", &shop(&server, "v2"));
    assert!(out.contains("db: unchanged"), "{out}");
    let second = containers(&server, "shop");
    assert_eq!(of_service(&second, "db"), db, "the database was restarted");
    let web2 = of_service(&second, "web");
    assert_eq!(web2.len(), 2);
    assert!(
        web2.keys().all(|name| name.starts_with("shop.web-2-")),
        "{web2:?}"
    );

    // Rotating a secret only web reads restarts web only.
    server.set_secret("shop", "API_KEY", "key-2");
    let dry = server.ok(&[
        "deploy",
        "--dry-run",
        "-f",
        server.dir().join("v2.toml").to_str().unwrap(),
    ]);
    assert!(
        dry.contains("web: restart: secret API_KEY v1 -> v2"),
        "{dry}"
    );
    assert!(dry.contains("db: unchanged"), "{dry}");
    deploy_ok(&server, "v2-key2", &shop(&server, "v2"));
    let third = containers(&server, "shop");
    assert_eq!(of_service(&third, "db"), db, "the database was restarted");
    assert!(
        of_service(&third, "web")
            .keys()
            .all(|name| name.starts_with("shop.web-3-")),
        "{third:?}"
    );

    // A rollback to release 1 brings web v1 back and still leaves the database alone.
    server.ok(&["rollback", "shop", "1"]);
    server.wait_for(
        "shop",
        "web back on release 1",
        Duration::from_secs(60),
        || {
            let view = server.status("shop");
            let healthy = healthy_in(&view);
            healthy
                .iter()
                .filter(|(c, _, _)| c.starts_with("shop.web-1-"))
                .count()
                == 2
                && healthy
                    .iter()
                    .all(|(c, _, _)| !c.starts_with("shop.web-3-"))
        },
    );
    assert_eq!(of_service(&containers(&server, "shop"), "db"), db);
}

#[test]
fn a_deploy_paused_longer_than_its_deadline_goes_on_when_resumed() {
    let server = BerthServer::start_logging(&berth_binary(), "info");
    let registry = server.registry_url();
    push_web(&registry, "hold/web", "v1", "v1", 8080);
    push_web(&registry, "hold/web", "v2", "v2", 8080);
    let deploy = "min_healthy_time = \"3s\"\nhealthy_deadline = \"5s\"";
    let v1 = berth_e2e::server::web_spec(&server, "hold", "v1", 3, "300ms", deploy);
    let v2 = berth_e2e::server::web_spec(&server, "hold", "v2", 3, "300ms", deploy);
    let out = server.deploy_text("hold-v1", &v1, true);
    assert!(out.status.success(), "{}", text(&out));

    let out = server.deploy_text("hold-v2", &v2, false);
    assert!(out.status.success(), "{}", text(&out));
    let paused = server.ok(&["pause", "hold"]);
    assert!(paused.contains("hold/web: deploy paused"), "{paused}");
    let release_two = |view: &Value| {
        berth_e2e::server::instances_in(view)
            .iter()
            .filter(|i| i["release"] == 2)
            .count()
    };
    let at_pause = release_two(&server.status("hold"));
    // Held for twice the deadline: nothing new starts, nothing fails.
    std::thread::sleep(Duration::from_secs(10));
    let view = server.status("hold");
    assert_eq!(view["desired_release"], 2, "{view:#}");
    assert_eq!(view["desired_status"], "deploying", "{view:#}");
    assert!(
        release_two(&view) <= at_pause.max(1),
        "started instances while paused: {view:#}"
    );
    let waiting = view["services"][0]["waiting"].to_string();
    assert!(waiting.contains("paused"), "{view:#}");
    let events = server.ok(&["events", "hold"]);
    assert!(events.contains("the deploy is paused"), "{events}");

    let resumed = server.ok(&["resume", "hold"]);
    assert!(resumed.contains("hold/web: deploy resumed"), "{resumed}");
    server.wait_for("hold", "release 2 live", Duration::from_secs(90), || {
        server.status("hold")["desired_status"] == "live"
    });
    let view = server.status("hold");
    assert_eq!(view["desired_release"], 2, "it did not roll back: {view:#}");
}

#[test]
fn an_app_is_removed_with_its_instances_routes_catalog_and_pins_and_keeps_its_volumes() {
    let server = BerthServer::start_logging(&berth_binary(), "info");
    let registry = server.registry_url();
    push_web(&registry, "gone/web", "v1", "gone v1", 8080);
    push_web(&registry, "wiped/web", "v1", "wiped v1", 8080);
    let spec = |app: &str| {
        format!(
            r#"app = "{app}"

[services.web]
image = "{registry}/{app}/web:v1"
replicas = 2
ports = {{ http = 8080 }}
stop_grace = "1s"
route = {{ host = "{app}.test", port = "http" }}
volumes = {{ data = {{ path = "/data", shared = true }} }}
health = {{ http = {{ port = "http", path = "/index.html" }}, interval = "300ms" }}
deploy = {{ min_healthy_time = "0s" }}
"#,
            registry = server.registry()
        )
    };
    for app in ["gone", "wiped"] {
        deploy_ok(&server, app, &spec(app));
    }
    let volume = |app: &str| server.root().join("volumes").join(app).join("data");
    assert!(volume("gone").is_dir() && volume("wiped").is_dir());
    let routes = server.ok(&["routes", "--json"]);
    assert!(routes.contains("web.gone"), "{routes}");
    let services = |server: &BerthServer| {
        reqwest::blocking::get(format!("{}/v1/catalog/services", server.catalog_url()))
            .unwrap()
            .text()
            .unwrap()
    };
    assert!(services(&server).contains("web.gone"));

    let out = server.ok(&["app", "rm", "gone"]);
    assert!(out.contains("gone removed in"), "{out}");
    assert!(server.containers("gone").is_empty(), "containers left");
    let apps = server.ok(&["status"]);
    assert!(!apps.contains("gone "), "{apps}");
    assert!(apps.contains("wiped"), "the other app stays: {apps}");
    let routes = server.ok(&["routes", "--json"]);
    assert!(
        !routes.contains("web.gone") && routes.contains("web.wiped"),
        "{routes}"
    );
    assert!(!services(&server).contains("web.gone"));
    let pins: Value = reqwest::blocking::get(format!("{registry}/admin/pins"))
        .unwrap()
        .json()
        .unwrap();
    assert!(
        !pins.to_string().contains("app gone"),
        "the registry still pins for it: {pins}"
    );
    assert!(volume("gone").is_dir(), "its named volume stays");
    let events = server.run(&["events", "gone"]);
    assert!(
        !text(&events).contains("release_created"),
        "{}",
        text(&events)
    );

    // Deployed again, it starts from release 1; removed with --volumes, its data goes.
    let out = server.deploy_text("gone-again", &spec("gone"), true);
    assert!(text(&out).contains("release gone#1"), "{}", text(&out));
    server.ok(&["app", "rm", "wiped", "--volumes"]);
    assert!(!volume("wiped").exists(), "its volume was removed");
    assert!(server.containers("wiped").is_empty());
}

#[test]
fn the_proxy_access_log_is_rotated_and_capped() {
    let server = BerthServer::start_args(
        &berth_binary(),
        "info",
        &[
            "--proxy-access-log-max-size",
            "4KiB",
            "--proxy-access-log-max-files",
            "2",
        ],
    );
    let client = reqwest::blocking::Client::new();
    for n in 0..300 {
        // No route: 404s, each one an access log line.
        let response = client
            .get(format!("{}/nothing/{n}", server.proxy_url()))
            .header("Host", "nowhere.test")
            .send()
            .unwrap();
        assert_eq!(response.status(), 404);
    }
    let dir = server.root().join("logs");
    let current = std::fs::read_to_string(dir.join("proxy-access.log")).unwrap();
    let rotated = std::fs::read_to_string(dir.join("proxy-access.log.1")).unwrap();
    assert!(
        !dir.join("proxy-access.log.2").exists(),
        "more files than kept"
    );
    for file in [&current, &rotated] {
        assert!(
            file.len() <= 4096,
            "a file past its size: {} bytes",
            file.len()
        );
        assert!(
            file.lines()
                .all(|l| l.contains("berth_proxy::access") && l.contains("status=404")),
            "{file}"
        );
    }
    let lines = current.lines().count() + rotated.lines().count();
    assert!(lines > 10, "{lines} lines");
    assert!(
        current.contains("/nothing/299"),
        "the newest request is in the current file"
    );
    assert!(
        !server.log().contains("berth_proxy::access"),
        "the access log still goes to stderr too"
    );
}

#[test]
fn a_blue_green_deploy_returns_when_traffic_switched_unless_told_to_wait() {
    let server = BerthServer::start_logging(&berth_binary(), "info");
    let registry = server.registry_url();
    for tag in ["v1", "v2", "v3"] {
        push_web(&registry, "bg/web", tag, tag, 8080);
    }
    let spec = |tag: &str, keep_old: &str| {
        berth_e2e::server::web_spec(
            &server,
            "bg",
            tag,
            2,
            "300ms",
            &format!("strategy = \"blue_green\"\nkeep_old = \"{keep_old}\""),
        )
    };
    deploy_ok(&server, "v1", &spec("v1", "30s"));
    let out = deploy_ok(&server, "v2", &spec("v2", "30s"));
    assert!(out.contains("release bg#2 switched in"), "{out}");
    // It returned while the old set is still kept.
    let releases: Vec<u64> = berth_e2e::server::instances_in(&server.status("bg"))
        .iter()
        .map(|i| i["release"].as_u64().unwrap())
        .collect();
    assert!(
        releases.contains(&1),
        "the old set is already gone: {releases:?}"
    );

    // --wait follows to the end: the old set stopped, the release live.
    let path = server.dir().join("v3.toml");
    std::fs::write(&path, spec("v3", "2s")).unwrap();
    let out = server.ok(&["deploy", "--wait", "-f", path.to_str().unwrap()]);
    assert!(out.contains("release bg#3 live in"), "{out}");
    assert!(!out.contains("switched in"), "{out}");
    // (release 2's set is parked, kept warm; none of it runs)
    let releases: Vec<u64> = berth_e2e::server::instances_in(&server.status("bg"))
        .iter()
        .filter(|i| i["state"] != "parked")
        .map(|i| i["release"].as_u64().unwrap())
        .collect();
    assert!(releases.iter().all(|r| *r == 3), "{releases:?}");
}

#[test]
fn a_rollback_thaws_the_warm_instances_and_switches_all_traffic_at_once() {
    let server = BerthServer::start_logging(&berth_binary(), "info");
    let registry = server.registry_url();
    push_web(&registry, "warm/web", "v1", "v1", 8080);
    push_web(&registry, "warm/web", "v2", "v2", 8080);
    let spec = |tag: &str| {
        berth_e2e::server::web_spec(
            &server,
            "warm",
            tag,
            3,
            "300ms",
            "min_healthy_time = \"0s\"\nkeep_warm = \"5m\"",
        )
        .replace(
            "stop_grace = \"1s\"",
            "stop_grace = \"1s\"\nroute = { host = \"warm.test\", port = \"http\" }",
        )
    };
    deploy_ok(&server, "v1", &spec("v1"));
    let v1 = of_service(&containers(&server, "warm"), "web");
    deploy_ok(&server, "v2", &spec("v2"));

    // The replaced instances are parked: frozen, not serving, not removed.
    server.wait_for("warm", "release 1 parked", Duration::from_secs(30), || {
        let view = server.status("warm");
        berth_e2e::server::instances_in(&view)
            .iter()
            .filter(|i| i["release"] == 1)
            .all(|i| i["state"] == "parked")
    });
    let ps: Value = serde_json::from_str(&server.ok(&["ps", "-a", "--json"])).unwrap();
    let paused: Vec<&str> = ps
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"]["status"] == "paused")
        .map(|c| c["record"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(paused.len(), 3, "{ps:#}");
    let client = reqwest::blocking::Client::new();
    let answers = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                client
                    .get(format!("{}/index.html", server.proxy_url()))
                    .header("Host", "warm.test")
                    .send()
                    .and_then(|r| r.text())
                    .map(|t| t.trim().to_owned())
                    .unwrap_or_else(|e| format!("error: {e}"))
            })
            .collect()
    };
    assert!(answers(20).iter().all(|a| a == "v2"));

    // The rollback thaws them: the very same containers, and every request on v1 within a
    // second (the time is printed, not asserted; the assertion is what serves).
    let began = std::time::Instant::now();
    server.ok(&["rollback", "warm", "--no-wait"]);
    let took = loop {
        if answers(30).iter().all(|a| a == "v1") {
            break began.elapsed();
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "release 1 never took all requests: {:?}",
            answers(10)
        );
    };
    eprintln!("rollback: every request on release 1 after {took:?}");
    server.wait_for(
        "warm",
        "the rollback to finish",
        Duration::from_secs(30),
        || server.status("warm")["desired_status"] == "live",
    );
    let after = of_service(&containers(&server, "warm"), "web");
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        v1.keys().collect::<Vec<_>>(),
        "the same release 1 containers serve again"
    );
    let events = server.ok(&["events", "warm"]);
    assert!(
        events.contains("instance_parked") && events.contains("instance_unparked"),
        "{events}"
    );
}
