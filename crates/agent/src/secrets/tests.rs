use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use berth_store::{MemoryStore, RedbStore, Store};

use super::*;

const PLAINTEXT: &[u8] = b"correct-horse-battery-staple-4711";

fn key() -> SecretKey {
    SecretKey::generate().expect("random key")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_secret_never_prints_its_value() {
    let secret = Secret::new(PLAINTEXT);
    assert_eq!(format!("{secret:?}"), "<redacted>");
    assert_eq!(format!("{secret}"), "<redacted>");
    assert_eq!(
        format!("{:?}", Some(vec![secret.clone()])),
        "Some([<redacted>])"
    );
    assert_eq!(
        serde_json::to_string(&secret).expect("json"),
        "\"<redacted>\""
    );
    assert_eq!(secret.expose(), PLAINTEXT);
    assert_eq!(secret.expose_str(), std::str::from_utf8(PLAINTEXT).ok());
}

#[test]
fn the_key_never_prints_its_bytes() {
    let key = key();
    let debug = format!("{key:?}");
    assert_eq!(debug, format!("SecretKey {{ id: {:?} }}", key.id()));
    assert!(!debug.contains(key.to_base64().as_str()));
    assert_eq!(key.id().len(), 16);
}

#[test]
fn the_key_file_is_created_0600_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node/secret.key");
    let (created, source) = SecretKey::load_or_create(&path).expect("create");
    assert_eq!(source, KeySource::Created(path.clone()));
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let (loaded, source) = SecretKey::load_or_create(&path).expect("load");
    assert_eq!(source, KeySource::File(path.clone()));
    assert_eq!(loaded.id(), created.id());
    assert_eq!(loaded.to_base64(), created.to_base64());
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("secret.key");
    SecretKey::load_or_create(&path).expect("create");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = SecretKey::load_or_create(&path).expect_err("mode 0644");
    assert!(
        matches!(err, SecretError::KeyFileMode { mode: 0o644, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn a_malformed_key_is_refused_without_echoing_it() {
    let err = SecretKey::from_base64("c2hvcnQ=", "$BERTH_SECRET_KEY").expect_err("short");
    assert_eq!(
        err.to_string(),
        "the secret key from $BERTH_SECRET_KEY is invalid: it is 5 bytes long; it must be 32 random bytes in base64"
    );
    let err = SecretKey::from_base64("not base64 at all!", "key file k").expect_err("garbage");
    assert!(!err.to_string().contains("not base64 at all"), "{err}");
    let key = key();
    let again = SecretKey::from_base64(&format!("  {}\n", key.to_base64().as_str()), "x")
        .expect("round trip");
    assert_eq!(again.id(), key.id());
}

#[test]
fn seal_and_open_round_trip_with_fresh_nonces() {
    let key = key();
    let sealed = seal(&key, "shop", "DB_PASSWORD", 3, PLAINTEXT).expect("seal");
    assert_eq!((sealed.version, sealed.key_id.as_str()), (3, key.id()));
    assert_eq!(sealed.nonce.len(), 24);
    assert!(!contains(&sealed.ciphertext, PLAINTEXT));
    let opened = open(&key, "shop", "DB_PASSWORD", 3, &sealed).expect("open");
    assert_eq!(opened.expose(), PLAINTEXT);
    let again = seal(&key, "shop", "DB_PASSWORD", 3, PLAINTEXT).expect("seal");
    assert_ne!(again.nonce, sealed.nonce);
    assert_ne!(again.ciphertext, sealed.ciphertext);
}

#[test]
fn a_wrong_key_fails_clearly() {
    let sealed = seal(&key(), "shop", "DB_PASSWORD", 1, PLAINTEXT).expect("seal");
    let err = open(&key(), "shop", "DB_PASSWORD", 1, &sealed).expect_err("wrong key");
    assert!(matches!(err, SecretError::KeyMismatch { .. }));
    assert!(
        err.to_string()
            .starts_with("the secret key does not match the one the secrets were sealed with: "),
        "{err}"
    );
}

#[test]
fn a_ciphertext_is_bound_to_its_app_name_and_version() {
    let key = key();
    let sealed = seal(&key, "shop", "DB_PASSWORD", 1, PLAINTEXT).expect("seal");
    for (app, name, version) in [
        ("blog", "DB_PASSWORD", 1),
        ("shop", "API_KEY", 1),
        ("shop", "DB_PASSWORD", 2),
    ] {
        let mut moved = sealed.clone();
        moved.version = version;
        let err = open(&key, app, name, version, &moved).expect_err("moved");
        assert!(matches!(err, SecretError::Tampered { .. }), "{err}");
    }
}

#[test]
fn tampering_fails() {
    let key = key();
    let sealed = seal(&key, "shop", "DB_PASSWORD", 1, PLAINTEXT).expect("seal");
    for i in [0, sealed.ciphertext.len() / 2, sealed.ciphertext.len() - 1] {
        let mut altered = sealed.clone();
        altered.ciphertext[i] ^= 0x01;
        let err = open(&key, "shop", "DB_PASSWORD", 1, &altered).expect_err("altered");
        assert!(matches!(err, SecretError::Tampered { .. }), "{err}");
    }
    let mut altered = sealed.clone();
    altered.nonce[0] ^= 0x80;
    assert!(matches!(
        open(&key, "shop", "DB_PASSWORD", 1, &altered),
        Err(SecretError::Tampered { .. })
    ));
    let mut short = sealed;
    short.nonce.truncate(12);
    assert!(matches!(
        open(&key, "shop", "DB_PASSWORD", 1, &short),
        Err(SecretError::Tampered { .. })
    ));
}

/// The same behaviour from every store backend.
async fn secret_store_behaviour(store: Arc<dyn Store>) {
    let key = key();
    let secrets = SecretStore::new(store.clone(), key.clone());
    assert_eq!(
        secrets
            .set("shop", "DB_PASSWORD", b"first-value-1")
            .await
            .expect("set"),
        1
    );
    assert_eq!(
        secrets
            .set("shop", "DB_PASSWORD", PLAINTEXT)
            .await
            .expect("set"),
        2
    );
    assert_eq!(
        secrets
            .set("shop", "API_KEY", b"api-key-value-9")
            .await
            .expect("set"),
        1
    );
    assert_eq!(
        secrets
            .set("blog", "DB_PASSWORD", b"blog-password-7")
            .await
            .expect("set"),
        1
    );

    let v1 = secrets.get("shop", "DB_PASSWORD", 1).await.expect("v1");
    assert_eq!(v1.expose(), b"first-value-1");
    let (version, latest) = secrets.latest("shop", "DB_PASSWORD").await.expect("latest");
    assert_eq!((version, latest.expose()), (2, PLAINTEXT));
    assert!(matches!(
        secrets.get("shop", "DB_PASSWORD", 3).await,
        Err(SecretError::NotFound(what)) if what == "shop/DB_PASSWORD@3"
    ));
    assert_eq!(
        secrets.list("shop").await.expect("list"),
        [
            SecretInfo {
                name: "API_KEY".into(),
                versions: vec![1]
            },
            SecretInfo {
                name: "DB_PASSWORD".into(),
                versions: vec![1, 2]
            },
        ]
    );

    // Nothing in the store holds a value.
    for entry in store.list("").await.expect("list").entries {
        for value in [
            &b"first-value-1"[..],
            PLAINTEXT,
            b"api-key-value-9",
            b"blog-password-7",
        ] {
            assert!(
                !contains(&entry.value, value),
                "{} holds a plaintext",
                entry.key
            );
            assert!(!contains(entry.key.as_bytes(), value));
        }
    }

    // Another key reads nothing, and says why.
    let other = SecretStore::new(store.clone(), self::key());
    let err = other
        .get("shop", "DB_PASSWORD", 2)
        .await
        .expect_err("wrong key");
    assert!(matches!(err, SecretError::KeyMismatch { .. }), "{err}");

    // A record copied to another secret, or altered in place, fails authentication.
    let record = store
        .get("/secrets/shop/DB_PASSWORD/2")
        .await
        .expect("get")
        .expect("entry");
    store
        .put("/secrets/shop/API_KEY/2", record.value.clone(), None)
        .await
        .expect("put");
    let err = secrets.get("shop", "API_KEY", 2).await.expect_err("moved");
    assert!(matches!(err, SecretError::Tampered { .. }), "{err}");
    let mut sealed = SealedSecret::from_bytes(&record.value).expect("decode");
    sealed.ciphertext[0] ^= 0x01;
    store
        .put("/secrets/shop/DB_PASSWORD/2", sealed.to_bytes(), None)
        .await
        .expect("put");
    let err = secrets
        .get("shop", "DB_PASSWORD", 2)
        .await
        .expect_err("altered");
    assert!(matches!(err, SecretError::Tampered { .. }), "{err}");
    store
        .put("/secrets/shop/DB_PASSWORD/2", b"{".to_vec(), None)
        .await
        .expect("put");
    let err = secrets
        .get("shop", "DB_PASSWORD", 2)
        .await
        .expect_err("garbage");
    assert!(matches!(err, SecretError::Corrupt { .. }), "{err}");

    assert_eq!(
        secrets.delete("shop", "DB_PASSWORD").await.expect("delete"),
        2
    );
    assert_eq!(
        secrets.delete("shop", "DB_PASSWORD").await.expect("delete"),
        0
    );
    assert!(matches!(
        secrets.latest("shop", "DB_PASSWORD").await,
        Err(SecretError::NotFound(_))
    ));
    let names: Vec<_> = secrets
        .list("shop")
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["API_KEY"]);
    assert_eq!(
        secrets
            .get("blog", "DB_PASSWORD", 1)
            .await
            .expect("other app")
            .expose(),
        b"blog-password-7"
    );

    let err = secrets.set("Shop!", "X", b"v").await.expect_err("bad app");
    assert!(
        matches!(
            err,
            SecretError::InvalidName {
                what: "app name",
                ..
            }
        ),
        "{err}"
    );
    let err = secrets
        .set("shop", "../etc", b"v")
        .await
        .expect_err("bad name");
    assert!(
        matches!(
            err,
            SecretError::InvalidName {
                what: "secret name",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn secret_store_on_memory() {
    secret_store_behaviour(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn secret_store_on_redb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(dir.path().join("state.redb"))
        .await
        .expect("open");
    secret_store_behaviour(Arc::new(store)).await;
}

#[tokio::test]
async fn the_redb_file_on_disk_never_holds_a_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).await.expect("open"));
        let secrets = SecretStore::new(store, key());
        for _ in 0..3 {
            secrets
                .set("shop", "DB_PASSWORD", PLAINTEXT)
                .await
                .expect("set");
        }
    }
    let bytes = std::fs::read(&path).expect("read the redb file");
    // The grep can see plain text in the file: the keys are there.
    assert!(contains(&bytes, b"/secrets/shop/DB_PASSWORD/3"));
    assert!(!contains(&bytes, PLAINTEXT));
}

#[tokio::test]
async fn concurrent_sets_get_distinct_versions() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let secrets = Arc::new(SecretStore::new(store, key()));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let secrets = secrets.clone();
            tokio::spawn(async move {
                secrets
                    .set("shop", "TOKEN", format!("t{i}").as_bytes())
                    .await
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.expect("join").expect("set"));
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<u64>>());
}

#[test]
fn env_vars_are_name_equals_value_and_stay_redacted() {
    let secrets = vec![
        ("DB_PASSWORD".to_string(), Secret::new(PLAINTEXT)),
        ("EMPTY".to_string(), Secret::new("")),
    ];
    let env = env_vars(&secrets).expect("env");
    assert_eq!(format!("{env:?}"), "[<redacted>, <redacted>]");
    let exposed: Vec<_> = env.iter().filter_map(Secret::expose_str).collect();
    assert_eq!(
        exposed,
        ["DB_PASSWORD=correct-horse-battery-staple-4711", "EMPTY="]
    );

    let binary = vec![("CERT".to_string(), Secret::new(vec![0xff, 0x00]))];
    let err = env_vars(&binary).expect_err("binary");
    assert!(matches!(err, SecretError::NotEnvSafe(name) if name == "CERT"));
    let nul = vec![("X".to_string(), Secret::new("a\0b"))];
    assert!(env_vars(&nul).is_err());
}

#[test]
fn files_carry_name_path_and_value_and_refuse_names_that_are_paths() {
    let secrets = vec![(
        "DB_PASSWORD".to_string(),
        "/run/secrets/db".to_string(),
        Secret::new(PLAINTEXT),
    )];
    let files = files(&secrets).expect("files");
    assert_eq!(files.0.len(), 1);
    assert_eq!(files.0[0].name, "DB_PASSWORD");
    assert_eq!(files.0[0].destination, "/run/secrets/db");
    assert_eq!(files.0[0].value.as_slice(), PLAINTEXT);
    assert!(!format!("{files:?}").contains("correct-horse"));

    let bad = vec![("../escape".to_string(), "/x".to_string(), Secret::new("x"))];
    let err = super::files(&bad).expect_err("path name");
    assert!(matches!(err, SecretError::InvalidName { .. }), "{err}");
}
