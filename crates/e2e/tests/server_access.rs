//! Safe defaults of `berth server`: its registry is closed to anonymous clients and has an
//! admin credential made on the first start (mode 0600, never printed) that the server's own
//! pulls, `berth` on the host and podman, skopeo and buildah (`--authfile`) use; anonymous
//! read-only access is an explicit option; and after a real run every state file and every
//! directory holding secrets is root's alone.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_e2e::api::Client;
use berth_e2e::process::{run, run_failing};
use berth_e2e::server::{healthy_in, push_web, text, BerthServer};
use berth_e2e::{berth_binary, Podman};
use reqwest::Method;
use serde_json::Value;

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn stdout_log(server: &BerthServer) -> String {
    fs::read_to_string(server.dir().join("stdout.log")).unwrap()
}

#[test]
fn the_servers_registry_is_closed_and_its_admin_credential_serves_this_host() {
    let mut server = BerthServer::start();
    let host = server.registry();
    let auth = server.root().join("registry-auth.json");
    let (user, password) = server
        .registry_admin()
        .expect("the server made an admin credential");
    assert_eq!(user, "admin");
    assert_eq!(password.len(), 64, "32 random bytes, hex");
    let first_start = stdout_log(&server);
    assert!(
        first_start.contains(&format!(
            "berth registry admin credential created for user admin (kept in {}, mode 0600)",
            auth.display()
        )),
        "{first_start}"
    );
    assert!(
        !first_start.contains(&password),
        "the password stays out of the log: {first_start}"
    );
    assert!(
        first_start.contains(&format!(
            "(anonymous access off; admin credential in {0}: podman, skopeo and buildah take --authfile {0}, berth on this host uses it by itself)",
            auth.display()
        )),
        "{first_start}"
    );
    assert_eq!(mode(&auth), 0o600);
    let file: Value = serde_json::from_slice(&fs::read(&auth).unwrap()).unwrap();
    let port = host.rsplit_once(':').unwrap().1;
    let names: BTreeSet<&str> = file["auths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            host.as_str(),
            &format!("localhost:{port}"),
            &format!("[::1]:{port}"),
        ])
    );

    // Anonymous clients may do nothing: not list, push, pull, delete or see names in /metrics.
    let digest = push_web(&server.registry_url(), "shop/web", "v1", "hello", 8080);
    let anonymous = Client::new(&format!("http://{host}"));
    let manifest = format!("/v2/shop/web/manifests/{digest}");
    for (method, path) in [
        (Method::GET, "/v2/"),
        (Method::GET, "/v2/_catalog"),
        (Method::POST, "/v2/shop/web/blobs/uploads/"),
        (Method::GET, manifest.as_str()),
        (Method::DELETE, manifest.as_str()),
        (Method::POST, "/admin/gc"),
    ] {
        let r = anonymous.request(method.clone(), path).send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "anonymous {method} {path}");
    }
    let metrics = anonymous.get("/metrics").text().unwrap();
    assert!(
        metrics.contains("berth_registry_requests_total"),
        "{metrics}"
    );
    assert!(!metrics.contains("shop/web"), "{metrics}");

    // podman, skopeo and buildah push with the credential file; without it they are refused.
    let podman = Podman::new();
    let local = "localhost/e2e/busybox:v1";
    podman.build_busybox_image(local);
    let authfile = auth.to_str().unwrap();
    let refused = run_failing(
        podman.podman().args([
            "push",
            "--tls-verify=false",
            local,
            &format!("{host}/shop/podman:v1"),
        ]),
        None,
    );
    assert!(
        refused.contains("authentication required") || refused.contains("unauthorized"),
        "{refused}"
    );
    run(podman.podman().args([
        "push",
        "--tls-verify=false",
        "--authfile",
        authfile,
        local,
        &format!("{host}/shop/podman:v1"),
    ]));
    run(podman.buildah().args([
        "push",
        "--tls-verify=false",
        "--authfile",
        authfile,
        local,
        &format!("docker://{host}/shop/buildah:v1"),
    ]));
    run(podman.skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        "--dest-authfile",
        authfile,
        &format!("containers-storage:{local}"),
        &format!("docker://{host}/shop/skopeo:v1"),
    ]));
    let tags = podman.run_skopeo(&[
        "list-tags",
        "--tls-verify=false",
        "--authfile",
        authfile,
        &format!("docker://{host}/shop/skopeo"),
    ]);
    assert!(tags.contains("\"v1\""), "{tags}");

    // berth on this host finds the credential by itself: pulls and the admin API.
    server.ok(&["pull", "--quiet", &format!("{host}/shop/podman:v1")]);
    let du = server.ok(&["registry", "du", "--url", &format!("http://{host}")]);
    for repo in ["shop/web", "shop/podman", "shop/buildah", "shop/skopeo"] {
        assert!(du.contains(repo), "{du}");
    }
    // And the server's own pulls use it: a deploy from the closed registry.
    let spec = berth_e2e::server::web_spec(&server, "shop", "v1", 1, "300ms", "");
    let out = server.deploy_text("shop", &spec, true);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(healthy_in(&server.status("shop")).len(), 1);

    // A restart keeps the credential and does not show it again.
    server.kill9();
    server.spawn();
    let second_start = stdout_log(&server);
    assert!(!second_start.contains(&password), "{second_start}");
    assert!(
        second_start.contains(&format!("admin credential in {}", auth.display())),
        "{second_start}"
    );
    assert_eq!(server.registry_admin(), Some((user, password)));
    server.ok(&["pull", "--quiet", &format!("{host}/shop/buildah:v1")]);
}

#[test]
fn anonymous_read_only_access_is_an_explicit_option() {
    let server = BerthServer::start_configured(
        &berth_binary(),
        "info",
        "[registry]\nanonymous_pull = true\n",
    );
    assert!(
        stdout_log(&server).contains("(anonymous access read-only;"),
        "{}",
        stdout_log(&server)
    );
    let digest = push_web(&server.registry_url(), "shop/web", "v1", "hello", 8080);
    let anonymous = Client::new(&format!("http://{}", server.registry()));
    let manifest = format!("/v2/shop/web/manifests/{digest}");
    assert_eq!(anonymous.get(&manifest).status().as_u16(), 200);
    for (method, path) in [
        (Method::POST, "/v2/shop/web/blobs/uploads/"),
        (Method::DELETE, manifest.as_str()),
        (Method::POST, "/admin/gc"),
    ] {
        let r = anonymous.request(method.clone(), path).send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "anonymous {method} {path}");
    }
    assert!(!anonymous
        .get("/metrics")
        .text()
        .unwrap()
        .contains("shop/web"));

    // Fully open is not an option for the server's registry: it says what to use instead.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    fs::write(
        &config,
        "[node]\nruntime = \"runc\"\n[registry]\nallow_anonymous = true\n",
    )
    .unwrap();
    let out = Command::new(berth_binary())
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--config")
        .arg(&config)
        .args(["server", "--listen", "127.0.0.1:0"])
        .args(["--registry-listen", "127.0.0.1:0"])
        .env("BERTH_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("berth: allow_anonymous opens a registry without users to everyone, but this one has users (a users file, or berth server's own admin): give anonymous clients rights in the users file's [anonymous] table, or set anonymous_pull = true, instead"),
        "{}",
        text(&out)
    );
}

/// Every file under `dir`, directories included, without following links or descending into
/// mounts' contents that are not berth's (snapshots and container root filesystems hold the
/// images' own files, with the images' own modes).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        out.push(path.clone());
        let kind = entry.file_type().unwrap();
        let image_files = path.ends_with("snapshots") || path.ends_with("rootfs");
        if kind.is_dir() && !image_files {
            walk(&path, out);
        }
    }
}

/// Whether a path is of one kind of state file.
type Matcher = fn(&Path) -> bool;

#[test]
fn state_files_and_secret_directories_are_private_after_a_real_run() {
    let server = BerthServer::start();
    push_web(&server.registry_url(), "shop/web", "v1", "hello", 8080);
    let mut child = server
        .berth()
        .args(["secret", "set", "shop", "TOKEN"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hunter2").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let spec = berth_e2e::server::web_spec(&server, "shop", "v1", 1, "300ms", "")
        .replace("stop_grace", "secrets = [\"TOKEN\"]\nstop_grace");
    let out = server.deploy_text("shop", &spec, true);
    assert!(out.status.success(), "{}", text(&out));
    server.wait_for(
        "shop",
        "a healthy instance",
        Duration::from_secs(20),
        || healthy_in(&server.status("shop")).len() == 1,
    );
    // A container of the node's own beside the server's, as a user that is not root.
    server.ok(&[
        "run",
        "-d",
        "--name",
        "plain",
        "--user",
        "1000:1000",
        &format!("{}/shop/web:v1", server.registry()),
        "sleep",
        "1000",
    ]);

    let root = server.root();
    let mut all = Vec::new();
    walk(&root, &mut all);
    // The state files, by kind: each must exist (so the walk checked something) and be 0600.
    let kinds: [(&str, Matcher); 10] = [
        ("the state store", |p| p.ends_with("server.redb")),
        ("the API token", |p| p.ends_with("server.token")),
        ("the secret key", |p| p.ends_with("secret.key")),
        ("the registry's admin credential", |p| {
            p.ends_with("registry-auth.json")
        }),
        ("the registry's metadata", |p| {
            p.ends_with("registry/metadata.redb")
        }),
        ("the image store's index", |p| {
            p.ends_with("images/index.json")
        }),
        ("container records", |p| p.ends_with("container.json")),
        ("container states", |p| p.ends_with("state.json")),
        ("bundles (with the secret environment)", |p| {
            p.ends_with("bundle/config.json")
        }),
        ("container logs", |p| {
            p.parent().is_some_and(|d| d.ends_with("logs")) || p.ends_with("monitor.log")
        }),
    ];
    let mut loose = Vec::new();
    for (kind, matches) in kinds {
        let files: Vec<&PathBuf> = all.iter().filter(|p| matches(p)).collect();
        if files.is_empty() {
            loose.push(format!("no {kind} found under {}", root.display()));
        }
        for file in files {
            if mode(file) & 0o077 != 0 {
                loose.push(format!("{kind}: {} is {:o}", file.display(), mode(file)));
            }
        }
    }
    // Directories that hold secrets or credentials: nobody else may even list them.
    for dir in [root.clone(), root.join("registry")] {
        if mode(&dir) != 0o700 {
            loose.push(format!("{} is {:o}", dir.display(), mode(&dir)));
        }
    }
    assert!(
        loose.is_empty(),
        "missing, or readable by others:\n{}",
        loose.join("\n")
    );
    // And a container's user that is not root still reads its image's files and its
    // /etc/hosts: the 0700 root is no obstacle to what is mounted from inside it.
    let hosts = server.ok(&["exec", "plain", "cat", "/etc/hosts", "/www/index.html"]);
    assert!(
        hosts.contains("plain") && hosts.contains("hello"),
        "{hosts}"
    );
    let id = server.ok(&["exec", "plain", "id", "-u"]);
    assert_eq!(id.trim(), "1000");
}
