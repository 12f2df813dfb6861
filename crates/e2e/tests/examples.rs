//! Every example under `examples/` works as shipped: its own push.sh builds and pushes its
//! images to a `berth server`, its berth.toml deploys and answers through the proxy, its
//! berth-v2.toml updates it, a rollback takes it back, and `berth app rm` removes it. The
//! shop's database keeps its data through all of it.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use berth_e2e::berth_binary;
use berth_e2e::server::{text, BerthServer};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Runs `examples/NAME/push.sh` against the server's registry.
fn push(server: &BerthServer, name: &str) {
    let out = Command::new(examples().join(name).join("push.sh"))
        .arg(server.registry())
        .envs(server.registry_env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{name}/push.sh: {}", text(&out));
}

/// Deploys `examples/NAME/FILE` with the registry address of this server; the CLI's output.
fn deploy(server: &BerthServer, name: &str, file: &str, wait: bool) -> String {
    let spec = std::fs::read_to_string(examples().join(name).join(file))
        .unwrap()
        .replace("127.0.0.1:5000", &server.registry());
    let out = server.deploy_text(&format!("{name}-{file}"), &spec, wait);
    assert!(out.status.success(), "deploy {name}/{file}: {}", text(&out));
    text(&out)
}

/// `GET path` through the proxy with `Host: host`: the body, or the error.
fn get(server: &BerthServer, host: &str, path: &str) -> String {
    reqwest::blocking::Client::new()
        .get(format!("{}{path}", server.proxy_url()))
        .header("Host", host)
        .timeout(Duration::from_secs(5))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .map(|t| t.trim().to_owned())
        .unwrap_or_else(|e| format!("error: {e}"))
}

/// Waits until every one of 10 requests answers `wanted`.
#[track_caller]
fn serves(server: &BerthServer, app: &str, host: &str, path: &str, wanted: &str) {
    server.wait_for(
        app,
        &format!("{host}{path} to answer {wanted:?}"),
        Duration::from_secs(60),
        || (0..10).all(|_| get(server, host, path).contains(wanted)),
    );
}

fn remove(server: &BerthServer, app: &str) {
    let out = server.ok(&["app", "rm", app]);
    assert!(out.contains(&format!("{app} removed")), "{out}");
    assert!(server.containers(app).is_empty(), "{app} left containers");
}

#[test]
fn hello_deploys_updates_rolls_back_and_goes() {
    let server = BerthServer::start_logging(&berth_binary(), "info");
    for tag in ["v1", "v2"] {
        let out = Command::new(examples().join("hello/push.sh"))
            .args([tag, &server.registry()])
            .envs(server.registry_env())
            .output()
            .unwrap();
        assert!(out.status.success(), "hello/push.sh {tag}: {}", text(&out));
    }
    deploy(&server, "hello", "berth.toml", true);
    serves(
        &server,
        "hello",
        "hello.localhost",
        "/",
        "hello from berth, v1",
    );
    deploy(&server, "hello", "berth-v2.toml", true);
    serves(
        &server,
        "hello",
        "hello.localhost",
        "/",
        "hello from berth, v2",
    );
    server.ok(&["rollback", "hello"]);
    serves(
        &server,
        "hello",
        "hello.localhost",
        "/",
        "hello from berth, v1",
    );
    remove(&server, "hello");
}

#[test]
fn shop_keeps_its_database_through_web_deploys_and_a_rollback() {
    let server = BerthServer::start_logging(&berth_binary(), "info");
    push(&server, "shop");
    deploy(&server, "shop", "berth.toml", true);
    serves(&server, "shop", "shop.localhost", "/", "shop v1");
    let visit = || get(&server, "shop.localhost", "/cgi-bin/visit");
    let first = visit();
    assert!(first.starts_with("shop v1: visit "), "{first}");
    let count = |answer: &str| -> u64 {
        answer
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {answer:?}"))
    };
    let before = count(&first);
    let db = server
        .containers("shop")
        .into_iter()
        .filter(|c| c.starts_with("shop.db-"))
        .collect::<Vec<_>>();
    assert_eq!(db.len(), 1, "{db:?}");

    // The web's update: the database is not touched, its count goes on.
    let out = deploy(&server, "shop", "berth-v2.toml", true);
    assert!(out.contains("db: unchanged"), "{out}");
    serves(&server, "shop", "shop.localhost", "/", "shop v2");
    let after = visit();
    assert!(after.starts_with("shop v2: visit "), "{after}");
    assert!(count(&after) > before, "{first} then {after}");
    server.ok(&["rollback", "shop"]);
    serves(&server, "shop", "shop.localhost", "/", "shop v1");
    let back = visit();
    assert!(count(&back) > count(&after), "{after} then {back}");
    let db_now: Vec<String> = server
        .containers("shop")
        .into_iter()
        .filter(|c| c.starts_with("shop.db-"))
        .collect();
    assert_eq!(db_now, db, "the database was restarted");
    remove(&server, "shop");
}

#[test]
fn blog_switches_blue_green_with_its_secret_file_and_goes() {
    let server = BerthServer::start_logging(&berth_binary(), "info");
    push(&server, "blog");
    server.set_secret("blog", "SESSION_KEY", "correct horse battery staple");
    deploy(&server, "blog", "berth.toml", true);
    serves(&server, "blog", "blog.localhost", "/", "blog v1");
    let session = get(&server, "blog.localhost", "/cgi-bin/session");
    assert!(session.starts_with("session key: 28 bytes"), "{session}");
    assert!(!session.contains("horse"), "the secret is shown: {session}");
    let out = deploy(&server, "blog", "berth-v2.toml", true);
    assert!(out.contains("switched"), "{out}");
    serves(&server, "blog", "blog.localhost", "/", "blog v2");
    server.ok(&["rollback", "blog"]);
    serves(&server, "blog", "blog.localhost", "/", "blog v1");
    remove(&server, "blog");
}
