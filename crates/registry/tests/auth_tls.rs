//! Authentication with a users file, and HTTPS from certificate files.
#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use berth_oci::Digest;
use berth_registry::RegistryConfig;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::{expect_error, header, TestRegistry};

async fn with_users(anonymous_pull: bool) -> (TestRegistry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let alice = bcrypt::hash("alice-pw", 4).unwrap();
    let bob = bcrypt::hash("bob-pw", 4).unwrap();
    std::fs::write(
        &users,
        format!(
            r#"
[anonymous]
pull = ["public/*"]

[[users]]
name = "alice"
password = "{alice}"
pull = ["*"]
push = ["alice/*", "public/*"]

[[users]]
name = "bob"
password = "{bob}"
pull = ["alice/*"]
"#
        ),
    )
    .unwrap();
    let reg = TestRegistry::start_with(RegistryConfig {
        users: Some(users),
        anonymous_pull: Some(anonymous_pull),
        ..Default::default()
    })
    .await;
    (reg, dir)
}

fn upload(reg: &TestRegistry, repo: &str, data: &[u8]) -> reqwest::RequestBuilder {
    let digest = Digest::sha256(data);
    reg.req(
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
    )
    .body(data.to_vec())
}

#[tokio::test]
async fn anonymous_clients_are_challenged() {
    let (reg, _users) = with_users(false).await;
    let r = reg.req(Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(header(&r, "www-authenticate"), "Basic realm=\"berth\"");
    expect_error(r, 401, "UNAUTHORIZED").await;
    let r = upload(&reg, "alice/app", b"x").send().await.unwrap();
    assert_eq!(header(&r, "www-authenticate"), "Basic realm=\"berth\"");
    expect_error(r, 401, "UNAUTHORIZED").await;
    // Anonymous pull is allowed where the file says so.
    upload(&reg, "public/base", b"pub")
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    let r = reg
        .req(
            Method::GET,
            &format!("/v2/public/base/blobs/{}", Digest::sha256(b"pub")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = reg
        .req(Method::GET, "/v2/alice/app/tags/list")
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn users_get_exactly_their_rights() {
    let (reg, _users) = with_users(false).await;
    let r = reg
        .req(Method::GET, "/v2/")
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = upload(&reg, "alice/app", b"data")
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Wrong password, unknown user.
    for (user, pw) in [("alice", "wrong"), ("mallory", "alice-pw")] {
        let r = upload(&reg, "alice/app", b"data")
            .basic_auth(user, Some(pw))
            .send()
            .await
            .unwrap();
        expect_error(r, 401, "UNAUTHORIZED").await;
    }
    // bob may pull alice/* but not push anywhere.
    let r = reg
        .req(
            Method::GET,
            &format!("/v2/alice/app/blobs/{}", Digest::sha256(b"data")),
        )
        .basic_auth("bob", Some("bob-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = upload(&reg, "alice/app", b"evil")
        .basic_auth("bob", Some("bob-pw"))
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 403, "DENIED").await;
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("bob"));
    let r = reg
        .req(
            Method::DELETE,
            &format!("/v2/alice/app/blobs/{}", Digest::sha256(b"data")),
        )
        .basic_auth("bob", Some("bob-pw"))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "DENIED").await;
    // alice cannot push outside her globs.
    let r = upload(&reg, "bob/app", b"x")
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "DENIED").await;
    // The catalog lists only what the caller may pull.
    upload(&reg, "public/base", b"p")
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    let r = reg
        .req(Method::GET, "/v2/_catalog")
        .basic_auth("bob", Some("bob-pw"))
        .send()
        .await
        .unwrap();
    let catalog: Value = r.json().await.unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!(["alice/app"]));
}

#[tokio::test]
async fn mounts_need_pull_rights_on_the_source() {
    let (reg, _users) = with_users(false).await;
    let secret = b"alice's private layer";
    upload(&reg, "alice/private", secret)
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    // Give bob a place to push: none in the file, so use alice pushing into public/ from a
    // source she can read, and check an anonymous-pull-only client cannot mount at all.
    let digest = Digest::sha256(secret);
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/public/copy/blobs/uploads/?mount={digest}&from=alice/private"),
        )
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/public/copy2/blobs/uploads/?mount={digest}"),
        )
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn anonymous_pull_flag_opens_reads_only() {
    let (reg, _users) = with_users(true).await;
    upload(&reg, "alice/app", b"d")
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    let r = reg
        .req(
            Method::GET,
            &format!("/v2/alice/app/blobs/{}", Digest::sha256(b"d")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = upload(&reg, "alice/app", b"e").send().await.unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn serves_https_from_certificate_files() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed by scripts/install-deps.sh");
    assert!(status.success());
    let reg = TestRegistry::start_with(RegistryConfig {
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        ..Default::default()
    })
    .await;
    assert!(reg.url.starts_with("https://"));
    let url = format!("{}/v2/", reg.url);
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&cert)
        .arg(&url)
        .output()
        .await
        .expect("curl is installed by scripts/install-deps.sh");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain HTTP to the TLS port does not get an API answer.
    let plain = format!("http://{}/v2/", reg.addr);
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5"])
        .arg(&plain)
        .output()
        .await
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");
}

/// A client that keeps guessing passwords is answered 429 TOOMANYREQUESTS with a
/// Retry-After once it used up its failures; other clients log in as usual, and a client
/// whose credentials were verified before is not held back by its neighbour's guesses.
#[tokio::test]
async fn password_guessing_is_throttled_per_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let alice = bcrypt::hash("alice-pw", 4).unwrap();
    std::fs::write(
        &users,
        format!("[[users]]\nname = \"alice\"\npassword = \"{alice}\"\npull = [\"*\"]\n"),
    )
    .unwrap();
    let reg = TestRegistry::start_with(RegistryConfig {
        users: Some(users),
        max_failed_logins: Some(3),
        failed_login_window: Some("3m".parse().unwrap()),
        ..Default::default()
    })
    .await;
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    let url = format!("{}/v2/", reg.url);
    let (guesser, honest) = (from(2), from(3));
    // The honest client logged in before the guessing started.
    let r = honest
        .get(&url)
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for guess in 0..3 {
        let r = guesser
            .get(&url)
            .basic_auth("alice", Some(format!("guess{guess}")))
            .send()
            .await
            .unwrap();
        expect_error(r, 401, "UNAUTHORIZED").await;
    }
    for user in ["alice", "nobody"] {
        let r = guesser
            .get(&url)
            .basic_auth(user, Some("guess"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&r, "retry-after"),
            "60",
            "one failure a minute refills"
        );
        expect_error(r, 429, "TOOMANYREQUESTS").await;
    }
    let r = honest
        .get(&url)
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = from(4)
        .get(&url)
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
}
