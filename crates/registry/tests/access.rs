//! Who may reach a registry by default: a registry without users stays on loopback unless
//! told otherwise, berth server's built-in admin closes it, and anonymous `/metrics` names no
//! repository.
#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use berth_oci::Digest;
use berth_registry::{BuiltinAdmin, RegistryConfig, ServeError, Server};
use reqwest::{Method, StatusCode};
use support::{expect_error, TestRegistry};

fn settings(
    listen: &str,
    data: &std::path::Path,
    config: RegistryConfig,
) -> berth_registry::Settings {
    RegistryConfig {
        listen: Some(listen.parse().unwrap()),
        ..config
    }
    .settings(data.to_owned())
    .unwrap()
}

#[tokio::test]
async fn a_registry_without_users_serves_beyond_loopback_only_when_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let err = Server::bind(&settings(listen, &data, RegistryConfig::default()))
            .await
            .err()
            .expect("refused");
        assert!(matches!(err, ServeError::Open(_)), "{err}");
        assert_eq!(
            err.to_string(),
            format!("refusing to serve a registry without users on {listen}: anyone who can reach it could push and delete. Give a users file (--users FILE; `berth registry hash-password` makes the hashes), listen on a loopback address (--listen 127.0.0.1:5000), or pass --allow-anonymous (allow_anonymous = true in [registry]) to serve it open on purpose")
        );
    }
    for listen in ["127.0.0.1:0", "127.0.0.2:0", "[::1]:0"] {
        Server::bind(&settings(listen, &data, RegistryConfig::default()))
            .await
            .unwrap_or_else(|e| panic!("{listen}: {e}"));
    }
    let open = RegistryConfig {
        allow_anonymous: Some(true),
        ..RegistryConfig::default()
    };
    Server::bind(&settings("0.0.0.0:0", &data, open.clone()))
        .await
        .unwrap();
    // With users it would mean nothing: refused rather than ignored.
    let users = dir.path().join("users.toml");
    std::fs::write(&users, "").unwrap();
    let err = Server::bind(&settings(
        "127.0.0.1:0",
        &data,
        RegistryConfig {
            users: Some(users),
            ..open
        },
    ))
    .await
    .err()
    .expect("refused");
    assert!(matches!(err, ServeError::AnonymousWithUsers), "{err}");
}

async fn with_admin(anonymous_pull: bool) -> TestRegistry {
    TestRegistry::start_adjusted(
        RegistryConfig {
            anonymous_pull: Some(anonymous_pull),
            ..RegistryConfig::default()
        },
        |settings| {
            settings.admin = Some(BuiltinAdmin {
                name: "admin".into(),
                hash: berth_registry::auth::hash_random_secret("s3cret-made-by-berth").unwrap(),
            })
        },
    )
    .await
}

fn push(reg: &TestRegistry, repo: &str, data: &[u8]) -> reqwest::RequestBuilder {
    reg.req(
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={}", Digest::sha256(data)),
    )
    .body(data.to_vec())
}

#[tokio::test]
async fn a_builtin_admin_closes_a_registry_without_a_users_file() {
    let reg = with_admin(false).await;
    let r = reg.req(Method::GET, "/v2/").send().await.unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
    let r = push(&reg, "shop/web", b"layer").send().await.unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
    let r = push(&reg, "shop/web", b"layer")
        .basic_auth("admin", Some("wrong"))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
    let r = push(&reg, "shop/web", b"layer")
        .basic_auth("admin", Some("s3cret-made-by-berth"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let blob = format!("/v2/shop/web/blobs/{}", Digest::sha256(b"layer"));
    let r = reg.req(Method::GET, &blob).send().await.unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
    let r = reg.req(Method::DELETE, &blob).send().await.unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
    let r = reg.req(Method::POST, "/admin/gc").send().await.unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
    let r = reg
        .req(Method::POST, "/admin/gc?dry_run=true")
        .basic_auth("admin", Some("s3cret-made-by-berth"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Anonymous read-only, when asked for: pulls, never pushes or deletes.
    let reg = with_admin(true).await;
    push(&reg, "shop/web", b"layer")
        .basic_auth("admin", Some("s3cret-made-by-berth"))
        .send()
        .await
        .unwrap();
    let r = reg.req(Method::GET, &blob).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = push(&reg, "shop/web", b"other").send().await.unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
    let r = reg.req(Method::DELETE, &blob).send().await.unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn anonymous_metrics_name_no_repository() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[users]]\nname = \"ops\"\npassword = \"{}\"\nadmin = true\npush = [\"*\"]\n[[users]]\nname = \"ci\"\npassword = \"{}\"\npush = [\"*\"]\n",
            bcrypt::hash("ops-pw", 4).unwrap(),
            bcrypt::hash("ci-pw", 4).unwrap()
        ),
    )
    .unwrap();
    let reg = TestRegistry::start_with(RegistryConfig {
        users: Some(users),
        anonymous_pull: Some(true),
        ..RegistryConfig::default()
    })
    .await;
    let r = push(&reg, "secret-project/app", b"layer")
        .basic_auth("ci", Some("ci-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let metrics = |user: Option<(&str, &str)>| {
        let request = reg.req(Method::GET, "/metrics");
        match user {
            Some((name, password)) => request.basic_auth(name, Some(password)),
            None => request,
        }
    };
    for (who, user) in [
        ("anonymous", None),
        ("a user who is not an admin", Some(("ci", "ci-pw"))),
    ] {
        let r = metrics(user).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{who}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains("berth_registry_requests_total"),
            "{who}: {text}"
        );
        assert!(text.ends_with("# EOF\n"), "{who}: {text}");
        assert!(
            !text.contains("secret-project"),
            "{who} sees a repository name: {text}"
        );
        assert!(!text.contains("repository_bytes"), "{who}: {text}");
    }
    let r = metrics(Some(("ops", "ops-pw"))).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains("berth_registry_repository_bytes{repository=\"secret-project/app\"} 5"),
        "{text}"
    );
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    let r = metrics(Some(("ops", "wrong"))).send().await.unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
}
