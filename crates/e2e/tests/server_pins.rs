//! `berth server` pins the manifests of the releases a rollback may need in its own registry
//! and unpins those that leave the window, so the registry's garbage collection keeps an
//! old-but-rollback-able image even after its tag is deleted.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::time::Duration;

use berth_e2e::api::{show, Client, OCI_MANIFEST};
use berth_e2e::berth_binary;
use berth_e2e::server::{push_web, text, BerthServer};
use reqwest::blocking::Response;
use reqwest::Method;
use serde_json::Value;

fn spec(registry: &str, tag: &str) -> String {
    format!(
        r#"app = "shop"

[services.web]
image = "{registry}/shop/web:{tag}"
stop_grace = "1s"
deploy = {{ min_healthy_time = "0s", healthy_deadline = "20s" }}
"#
    )
}

/// The registry's pins: digest -> reason.
fn pins(registry: &Client) -> Vec<(String, String)> {
    let answer = registry.get("/admin/pins");
    assert!(answer.status().is_success(), "{}", show(answer));
    let body: Value = answer.json().unwrap();
    body["pins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["digest"].as_str().unwrap().to_owned(),
                p["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[track_caller]
fn ok(response: Response, what: &str) -> Response {
    assert!(response.status().is_success(), "{what}: {}", show(response));
    response
}

fn manifest_status(registry: &Client, digest: &str) -> u16 {
    registry
        .request(Method::GET, &format!("/v2/shop/web/manifests/{digest}"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn the_rollback_window_is_pinned_in_the_registry_and_survives_gc() {
    // Untagged manifests may go at once, so that only a pin can keep one.
    let server = BerthServer::start_configured(
        &berth_binary(),
        "info,berth_server=debug",
        "[registry]\ngc_grace = \"0s\"\n",
    );
    let base = server.registry_url();
    let registry = Client::new(&base);
    let digests: Vec<String> = ["v1", "v2", "v3", "v4"]
        .iter()
        .map(|tag| push_web(&base, "shop/web", tag, tag, 8080))
        .collect();

    for tag in ["v1", "v2", "v3", "v4"] {
        let out = server.deploy_text(tag, &spec(&server.registry(), tag), true);
        assert!(out.status.success(), "deploy {tag}: {}", text(&out));
    }

    // Release 4 runs; 3 and 2 are the newest others (KEEP_RELEASES = 2): exactly their
    // manifests are pinned, by the server (the reason names the app); 1 was unpinned.
    let window: BTreeSet<String> = digests[1..].iter().cloned().collect();
    server.wait_for("shop", "the window's pins", Duration::from_secs(10), || {
        pins(&registry)
            .iter()
            .map(|(digest, _)| digest.clone())
            .collect::<BTreeSet<_>>()
            == window
    });
    for (digest, reason) in pins(&registry) {
        assert!(reason.contains("app shop"), "{digest}: {reason}");
    }

    // A pin the server owns is not removed without force; removed by force, it is back at
    // the server's next pass.
    let path = format!("/admin/pins/{}", digests[2]);
    let refused = registry.request(Method::DELETE, &path).send().unwrap();
    assert_eq!(refused.status(), 409, "{}", show(refused));
    let forced = format!("{path}?force=true");
    ok(
        registry.request(Method::DELETE, &forced).send().unwrap(),
        &forced,
    );
    assert!(!pins(&registry).iter().any(|(d, _)| *d == digests[2]));
    server.wait_for("shop", "the pin restored", Duration::from_secs(10), || {
        pins(&registry).iter().any(|(d, _)| *d == digests[2])
    });

    // The tags of release 3 (in the window) and release 1 (out of it) are deleted; a
    // collection of untagged manifests takes release 1's and keeps release 3's.
    for tag in ["v1", "v3"] {
        let path = format!("/v2/shop/web/manifests/{tag}");
        ok(
            registry.request(Method::DELETE, &path).send().unwrap(),
            &path,
        );
    }
    let report: Value = ok(
        registry
            .request(Method::POST, "/admin/gc?delete_untagged=true")
            .send()
            .unwrap(),
        "POST /admin/gc",
    )
    .json()
    .unwrap();
    let deleted: Vec<&str> = report["untagged_manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(deleted, [digests[0].as_str()], "{report}");
    assert_eq!(manifest_status(&registry, &digests[2]), 200);
    assert_eq!(manifest_status(&registry, &digests[0]), 404);

    // After a rollback to release 3, release 4 (where it came from) and 2 (where the next
    // rollback goes) stay pinned.
    let out = server.run(&["rollback", "shop"]);
    assert!(out.status.success(), "rollback: {}", text(&out));
    let window: BTreeSet<String> = digests[1..].iter().cloned().collect();
    server.wait_for(
        "shop",
        "the pins after the rollback",
        Duration::from_secs(10),
        || {
            pins(&registry)
                .into_iter()
                .map(|(digest, _)| digest)
                .collect::<BTreeSet<_>>()
                == window
        },
    );
}
