//! Unit tests: references, configs, challenges, platforms, credentials, prune selection, and
//! the store's bookkeeping on records written directly.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use berth_oci::Digest;

use super::client::{parse_challenge, Challenge};
use super::pull::select_platform;
use super::store::IndexFile;
use super::*;

fn digest(n: u8) -> Digest {
    Digest::sha256(&[n])
}

// ---- references ----

#[test]
fn references_parse_like_docker() {
    let r: Reference = "registry.example.com/library/busybox".parse().unwrap();
    assert_eq!(r.registry, "registry.example.com");
    assert_eq!(r.repository.as_str(), "library/busybox");
    assert_eq!(r.tag.as_ref().unwrap().as_str(), "latest");
    assert_eq!(r.to_string(), "registry.example.com/library/busybox:latest");

    let r: Reference = "localhost:5000/a/b:v1".parse().unwrap();
    assert_eq!(r.registry, "localhost:5000");
    assert_eq!(r.repository.as_str(), "a/b");
    assert_eq!(r.tag.as_ref().unwrap().as_str(), "v1");
    assert!(r.is_loopback());

    let d = digest(1);
    let r: Reference = format!("127.0.0.1:5000/app@{d}").parse().unwrap();
    assert_eq!(r.tag, None);
    assert_eq!(r.digest, Some(d.clone()));
    assert_eq!(r.manifest_reference(), d.to_string());
    assert_eq!(r.to_string(), format!("127.0.0.1:5000/app@{d}"));

    let r: Reference = format!("[::1]:5000/app:v2@{d}").parse().unwrap();
    assert_eq!(r.registry, "[::1]:5000");
    assert_eq!(r.host(), "::1");
    assert!(r.is_loopback());
    assert_eq!(r.tag.as_ref().unwrap().as_str(), "v2");
    assert_eq!(r.manifest_reference(), d.to_string());

    let r: Reference = "registry.example.com:443/app".parse().unwrap();
    assert!(!r.is_loopback());
    assert_eq!(r.host(), "registry.example.com");
    let r: Reference = "127.10.0.1/app".parse().unwrap();
    assert!(r.is_loopback());
}

#[test]
fn bare_names_must_name_a_registry() {
    for bare in ["busybox", "library/busybox", "busybox:1.36", "team/app:v1"] {
        let err = bare.parse::<Reference>().unwrap_err();
        assert!(matches!(err, ReferenceError::NoRegistry(_)), "{bare}");
        assert!(err.to_string().contains("names no registry"), "{err}");
    }
}

#[test]
fn malformed_references_are_rejected() {
    for bad in [
        "registry.example.com/UPPER",
        "registry.example.com/app:",
        "registry.example.com/app@sha256:abc",
        "registry.example.com/",
        "",
    ] {
        assert!(bad.parse::<Reference>().is_err(), "{bad:?}");
    }
}

// ---- configs ----

#[test]
fn config_fields_are_read_and_all_optional() {
    let blob = br#"{"architecture":"amd64","os":"linux","config":{
        "Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["PATH=/bin","A=b"],
        "WorkingDir":"/srv","User":"1000:1000","ExposedPorts":{"8080/tcp":{},"53/udp":{},"9000":{}},
        "Labels":{"org.example":"yes"},"StopSignal":"SIGQUIT"}}"#;
    let config = ImageConfig::parse(blob).unwrap();
    assert_eq!(config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(config.cmd, ["echo hi"]);
    assert_eq!(config.env, ["PATH=/bin", "A=b"]);
    assert_eq!(config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(
        config.exposed_ports,
        [
            (53, "udp".to_owned()),
            (8080, "tcp".to_owned()),
            (9000, "tcp".to_owned())
        ]
    );
    assert_eq!(config.labels["org.example"], "yes");
    assert_eq!(config.stop_signal.as_deref(), Some("SIGQUIT"));

    assert_eq!(
        ImageConfig::parse(br#"{"os":"linux"}"#).unwrap(),
        ImageConfig::default()
    );
    let nulls = br#"{"config":{"Entrypoint":null,"Cmd":null,"WorkingDir":"","User":""}}"#;
    assert_eq!(ImageConfig::parse(nulls).unwrap(), ImageConfig::default());
}

#[test]
fn bad_configs_are_errors_not_panics() {
    for bad in [
        &br#"{"config":{"ExposedPorts":{"http/tcp":{}}}}"#[..],
        br#"{"config":{"ExposedPorts":{"80/sctp":{}}}}"#,
        br#"{"config":{"ExposedPorts":{"70000/tcp":{}}}}"#,
        br#"{"config":{"Cmd":"not a list"}}"#,
        b"not json",
    ] {
        assert!(ImageConfig::parse(bad).is_err());
    }
}

// ---- auth challenges ----

#[test]
fn challenges_parse() {
    assert_eq!(
        parse_challenge(r#"Basic realm="Registry Realm""#),
        Some(Challenge::Basic)
    );
    assert_eq!(
        parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#
        ),
        Some(Challenge::Bearer {
            realm: "https://auth.example.com/token".to_owned(),
            service: Some("registry.example.com".to_owned()),
            scope: Some("repository:a/b:pull,push".to_owned()),
        })
    );
    assert_eq!(
        parse_challenge(r#"bearer realm=http://127.0.0.1:1/token"#),
        Some(Challenge::Bearer {
            realm: "http://127.0.0.1:1/token".to_owned(),
            service: None,
            scope: None,
        })
    );
    assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
    assert_eq!(parse_challenge("Negotiate"), None);
    assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
}

#[test]
fn plain_http_only_for_loopback_or_when_insecure() {
    let options = PullOptions {
        auth_files: Vec::new(),
        ..PullOptions::default()
    };
    let insecure = PullOptions {
        insecure: true,
        ..options.clone()
    };
    for (reference, opts, base) in [
        (
            "registry.example.com/a",
            &options,
            "https://registry.example.com",
        ),
        ("10.0.0.5:5000/a", &options, "https://10.0.0.5:5000"),
        ("10.0.0.5:5000/a", &insecure, "http://10.0.0.5:5000"),
        ("localhost:5000/a", &options, "http://localhost:5000"),
        ("127.0.0.1:5000/a", &options, "http://127.0.0.1:5000"),
        ("[::1]:5000/a", &options, "http://[::1]:5000"),
    ] {
        let client = super::client::RegistryClient::new(&reference.parse().unwrap(), opts).unwrap();
        assert_eq!(client.base_url(), base, "{reference}");
    }
}

// ---- platforms ----

#[test]
fn index_entry_for_the_host_is_chosen() {
    let body = format!(
        r#"{{"schemaVersion":2,"manifests":[
        {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}},
        {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":2,"platform":{{"architecture":"amd64","os":"windows"}}}},
        {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":3,"platform":{{"architecture":"amd64","os":"linux"}}}},
        {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":4,"platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#,
        digest(1),
        digest(2),
        digest(3),
        digest(4)
    );
    let chosen = select_platform(body.as_bytes(), "amd64").unwrap();
    assert_eq!(chosen.digest, digest(3));
    assert_eq!(chosen.size, 3);
    let err = select_platform(body.as_bytes(), "riscv64").unwrap_err();
    assert_eq!(
        err,
        "linux/arm/v7, windows/amd64, linux/amd64, unknown/unknown"
    );
    assert_eq!(
        select_platform(br#"{"manifests":[]}"#, "amd64").unwrap_err(),
        "no platforms"
    );
}

// ---- credentials ----

#[test]
fn credentials_come_from_auth_files() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.json");
    let second = dir.path().join("second.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:with:colons");
    std::fs::write(
        &first,
        format!(r#"{{"auths":{{"https://reg.example.com/v1/":{{"auth":"{auth}"}},"bad.example.com":{{"auth":"!!"}}}}}}"#),
    )
    .unwrap();
    std::fs::write(
        &second,
        r#"{"auths":{"127.0.0.1:5000":{"username":"bob","password":"pw"},"reg.example.com":{"auth":"eDp5"}}}"#,
    )
    .unwrap();
    let files = [dir.path().join("missing.json"), first, second];
    let alice = credentials::lookup(&files, "reg.example.com").unwrap();
    assert_eq!(alice.username, "alice");
    assert_eq!(alice.password, "s3cret:with:colons");
    let bob = credentials::lookup(&files, "127.0.0.1:5000").unwrap();
    assert_eq!(
        (bob.username.as_str(), bob.password.as_str()),
        ("bob", "pw")
    );
    assert_eq!(credentials::lookup(&files, "bad.example.com"), None);
    assert_eq!(credentials::lookup(&files, "other.example.com"), None);
    assert!(!format!("{alice:?}").contains("s3cret"));
    assert!("nocolon".parse::<Credentials>().is_err());
    assert!(":pw".parse::<Credentials>().is_err());
}

#[test]
fn a_written_auth_file_is_private_and_read_back_for_every_host() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry-auth.json");
    let admin = Credentials {
        username: "admin".into(),
        password: "p:w".into(),
    };
    // A leftover temporary file with loose permissions does not loosen the result.
    std::fs::write(path.with_extension("json.tmp"), "old").unwrap();
    std::fs::set_permissions(
        path.with_extension("json.tmp"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    write_auth_file(&path, ["127.0.0.1:5000", "localhost:5000"], &admin).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let files = [path.clone()];
    for host in ["127.0.0.1:5000", "localhost:5000"] {
        assert_eq!(credentials::lookup(&files, host), Some(admin.clone()));
    }
    assert_eq!(credentials::lookup(&files, "127.0.0.1:5001"), None);
    assert_eq!(read_auth_file_user(&path, "admin").unwrap(), Some(admin));
    assert_eq!(read_auth_file_user(&path, "other").unwrap(), None);
    assert_eq!(
        read_auth_file_user(&dir.path().join("none.json"), "admin").unwrap(),
        None
    );
}

// ---- prune selection ----

const DAY: u64 = 86_400;
const NOW: u64 = 100 * DAY;

fn image(n: u8, last_activity: u64, layers: &[(u8, u64)]) -> Image {
    Image {
        id: digest(n),
        references: vec![format!("localhost/img{n}:latest")],
        config_digest: digest(200),
        config: ImageConfig::default(),
        layers: layers.iter().map(|(l, _)| digest(*l)).collect(),
        layer_sizes: layers.iter().map(|(_, s)| *s).collect(),
        size: layers.iter().map(|(_, s)| s).sum(),
        created: last_activity,
        last_used: 0,
        pinned: false,
    }
}

fn ids(ns: &[u8]) -> Vec<Digest> {
    ns.iter().map(|n| digest(*n)).collect()
}

fn in_use(ns: &[u8]) -> HashSet<Digest> {
    ns.iter().map(|n| digest(*n)).collect()
}

#[test]
fn empty_policy_selects_nothing() {
    let images = [image(1, 0, &[(10, 5)])];
    let selected = select_for_prune(&images, &PrunePolicy::default(), &in_use(&[]), NOW, 5);
    assert!(selected.is_empty());
}

#[test]
fn all_unused_spares_pinned_and_in_use() {
    let mut pinned = image(3, 0, &[(10, 5)]);
    pinned.pinned = true;
    let images = [
        image(1, NOW - DAY, &[(10, 5)]),
        image(2, NOW - 2 * DAY, &[(11, 5)]),
        pinned,
        image(4, NOW, &[(12, 5)]),
    ];
    let policy = PrunePolicy {
        all_unused: true,
        ..PrunePolicy::default()
    };
    let selected = select_for_prune(&images, &policy, &in_use(&[4]), NOW, 20);
    assert_eq!(
        selected,
        ids(&[2, 1]),
        "oldest first, pinned and in-use kept"
    );
}

#[test]
fn unused_for_uses_last_use_or_pull_time() {
    let mut used_recently = image(1, NOW - 30 * DAY, &[(10, 5)]);
    used_recently.last_used = NOW - DAY;
    let mut pinned_old = image(4, 0, &[(10, 5)]);
    pinned_old.pinned = true;
    let images = [
        used_recently,
        image(2, NOW - 8 * DAY, &[(11, 5)]),
        image(3, NOW - 7 * DAY, &[(12, 5)]),
        pinned_old,
        image(5, NOW - 6 * DAY, &[(13, 5)]),
        image(6, 0, &[(14, 5)]),
    ];
    let policy = PrunePolicy {
        unused_for: Some(Duration::from_secs(7 * DAY)),
        ..PrunePolicy::default()
    };
    let selected = select_for_prune(&images, &policy, &in_use(&[6]), NOW, 0);
    assert_eq!(
        selected,
        ids(&[2, 3]),
        "exactly 7 days counts as unused for 7d"
    );
}

#[test]
fn water_marks_remove_lru_until_below_low() {
    let images = [
        image(1, NOW - 4 * DAY, &[(10, 100)]),
        image(2, NOW - 3 * DAY, &[(11, 100)]),
        image(3, NOW - 2 * DAY, &[(12, 100)]),
        image(4, NOW - DAY, &[(13, 100)]),
    ];
    let policy = PrunePolicy {
        high_water: Some(350),
        low_water: Some(200),
        ..PrunePolicy::default()
    };
    assert_eq!(
        select_for_prune(&images, &policy, &in_use(&[]), NOW, 400),
        ids(&[1, 2])
    );
    // At or below the high water mark nothing happens.
    assert!(select_for_prune(&images, &policy, &in_use(&[]), NOW, 350).is_empty());
    // In-use and pinned images are skipped; the next oldest go instead.
    assert_eq!(
        select_for_prune(&images, &policy, &in_use(&[1]), NOW, 400),
        ids(&[2, 3])
    );
    // Without a low water mark, down to the high one.
    let high_only = PrunePolicy {
        high_water: Some(350),
        ..PrunePolicy::default()
    };
    assert_eq!(
        select_for_prune(&images, &high_only, &in_use(&[]), NOW, 400),
        ids(&[1])
    );
    // When everything left is protected, it stops without reaching the mark.
    assert_eq!(
        select_for_prune(&images, &policy, &in_use(&[2, 3, 4]), NOW, 400),
        ids(&[1])
    );
}

#[test]
fn water_marks_count_shared_layers_once() {
    // Images 1 and 2 share the 300-byte base: removing 1 frees only its own 10 bytes.
    let images = [
        image(1, NOW - 3 * DAY, &[(10, 300), (11, 10)]),
        image(2, NOW - 2 * DAY, &[(10, 300), (12, 10)]),
        image(3, NOW - DAY, &[(13, 50)]),
    ];
    let policy = PrunePolicy {
        high_water: Some(300),
        low_water: Some(250),
        ..PrunePolicy::default()
    };
    // usage 370: dropping 1 frees 10 (360), dropping 2 frees 310 (50) <= 250.
    assert_eq!(
        select_for_prune(&images, &policy, &in_use(&[]), NOW, 370),
        ids(&[1, 2])
    );
    // With 2 in use, the base stays whatever goes: 1 (10) and 3 (50) go, still above low.
    assert_eq!(
        select_for_prune(&images, &policy, &in_use(&[2]), NOW, 370),
        ids(&[1, 3])
    );
}

#[test]
fn rules_add_up_and_age_rule_counts_towards_low_water() {
    let images = [
        image(1, NOW - 10 * DAY, &[(10, 100)]),
        image(2, NOW - 3 * DAY, &[(11, 100)]),
        image(3, NOW - 2 * DAY, &[(12, 100)]),
    ];
    let policy = PrunePolicy {
        unused_for: Some(Duration::from_secs(7 * DAY)),
        high_water: Some(250),
        low_water: Some(200),
        ..PrunePolicy::default()
    };
    // Image 1 goes for its age; that alone brings 300 to 200 = low.
    assert_eq!(
        select_for_prune(&images, &policy, &in_use(&[]), NOW, 300),
        ids(&[1])
    );
    let policy = PrunePolicy {
        low_water: Some(100),
        ..policy
    };
    assert_eq!(
        select_for_prune(&images, &policy, &in_use(&[]), NOW, 300),
        ids(&[1, 2])
    );
}

#[test]
fn selection_never_picks_protected_images_whatever_the_policy() {
    let mut images = Vec::new();
    for n in 0..12u8 {
        let mut img = image(n, u64::from(n) * DAY, &[(n % 4 + 50, 100), (n + 100, 10)]);
        img.pinned = n % 3 == 0;
        img.last_used = if n % 2 == 0 { 0 } else { NOW - u64::from(n) };
        images.push(img);
    }
    let used = in_use(&[1, 5, 7]);
    for all_unused in [false, true] {
        for unused_for in [None, Some(0), Some(DAY), Some(50 * DAY)] {
            for (high, low) in [
                (None, None),
                (Some(0), None),
                (Some(500), Some(0)),
                (Some(10), Some(5)),
            ] {
                for usage in [0, 400, 10_000] {
                    let policy = PrunePolicy {
                        all_unused,
                        unused_for: unused_for.map(Duration::from_secs),
                        high_water: high,
                        low_water: low,
                    };
                    let selected = select_for_prune(&images, &policy, &used, NOW, usage);
                    for id in &selected {
                        let image = images.iter().find(|i| &i.id == id).unwrap();
                        assert!(!image.pinned && !used.contains(id), "{policy:?}");
                    }
                    let unique: HashSet<_> = selected.iter().collect();
                    assert_eq!(unique.len(), selected.len(), "no duplicates");
                    if all_unused {
                        assert_eq!(selected.len(), 5, "every unprotected image: {policy:?}");
                    }
                }
            }
        }
    }
}

// ---- store bookkeeping ----

fn store_with(images: Vec<Image>) -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    for image in &images {
        for layer in &image.layers {
            let snapshot = store.snapshot_dir(layer);
            std::fs::create_dir_all(&snapshot).unwrap();
            std::fs::write(snapshot.join("file"), layer.hex()).unwrap();
        }
    }
    store
        .update_index(|index: &mut IndexFile| {
            index.images = images;
            Ok(())
        })
        .unwrap();
    (dir, store)
}

#[test]
fn get_by_reference_id_and_prefix() {
    let (_dir, store) = store_with(vec![image(1, 1, &[(10, 5)]), image(2, 2, &[(11, 5)])]);
    let one = digest(1);
    assert_eq!(store.get("localhost/img1:latest").unwrap().unwrap().id, one);
    assert_eq!(store.get(&one.to_string()).unwrap().unwrap().id, one);
    assert_eq!(store.get(&one.hex()[..12]).unwrap().unwrap().id, one);
    assert_eq!(
        store
            .get(&format!("sha256:{}", &one.hex()[..16]))
            .unwrap()
            .unwrap()
            .id,
        one
    );
    assert_eq!(store.get("localhost/img3:latest").unwrap(), None);
    assert_eq!(store.get(&digest(9).to_string()).unwrap(), None);
    // Too short to be an id prefix, and not a reference either.
    assert!(store.get(&one.hex()[..6]).is_err());
    assert_eq!(store.list().unwrap().len(), 2);
    assert_eq!(store.list().unwrap()[0].id, digest(2), "newest first");
}

#[test]
fn ambiguous_prefix_is_an_error() {
    let mut a = image(1, 1, &[(10, 5)]);
    let mut b = image(2, 2, &[(11, 5)]);
    a.id = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
    b.id = format!("sha256:{}{}", "ab".repeat(8), "cd".repeat(24))
        .parse()
        .unwrap();
    let (_dir, store) = store_with(vec![a, b]);
    let err = store.get(&"ab".repeat(6)).unwrap_err();
    assert!(matches!(err, ImageError::AmbiguousId(_)), "{err}");
}

#[test]
fn remove_untags_then_deletes_and_drops_unshared_snapshots() {
    let mut first = image(1, 1, &[(10, 5), (11, 5)]);
    first.references.push("localhost/alias:v1".to_owned());
    let (_dir, store) = store_with(vec![first, image(2, 2, &[(10, 5), (12, 5)])]);
    let none = HashSet::new();

    let report = store.remove("localhost/alias:v1", &none).unwrap();
    assert_eq!(report.untagged, ["localhost/alias:v1"]);
    assert!(report.deleted.is_empty());

    let err = store
        .remove("localhost/img1:latest", &in_use(&[1]))
        .unwrap_err();
    assert!(matches!(err, ImageError::InUse(_)), "{err}");
    store.pin("localhost/img1:latest", true).unwrap();
    let err = store.remove("localhost/img1:latest", &none).unwrap_err();
    assert!(matches!(err, ImageError::Pinned(_)), "{err}");
    assert!(err.to_string().contains("unpin"), "{err}");
    store.pin("localhost/img1:latest", false).unwrap();

    let report = store.remove("localhost/img1:latest", &none).unwrap();
    assert_eq!(report.deleted, ids(&[1]));
    assert_eq!(
        report.snapshots_removed,
        ids(&[11]),
        "layer 10 is shared with image 2"
    );
    assert!(store.snapshot_dir(&digest(10)).is_dir());
    assert!(!store.snapshot_dir(&digest(11)).exists());
    assert!(matches!(
        store.remove("localhost/img1:latest", &none).unwrap_err(),
        ImageError::UnknownImage(_)
    ));
}

#[test]
fn touch_sets_last_used() {
    let (_dir, store) = store_with(vec![image(1, 1, &[(10, 5)])]);
    store.touch(&digest(1)).unwrap();
    let image = store.get(&digest(1).to_string()).unwrap().unwrap();
    assert!(image.last_used >= crate::unix_now() - 5);
    assert!(store.touch(&digest(2)).is_err());
}

#[test]
fn prune_io_keeps_pinned_and_in_use_and_clears_leftovers() {
    let mut pinned = image(2, 0, &[(11, 5)]);
    pinned.pinned = true;
    let (_dir, store) = store_with(vec![
        image(1, 0, &[(10, 5), (13, 5)]),
        pinned,
        image(3, 0, &[(12, 5), (13, 5)]),
        image(4, 0, &[(14, 5)]),
    ]);
    // Leftovers: an orphan snapshot, a crashed unpack of a dead process, a stale download,
    // and a fresh download that stays.
    let orphan = store.snapshot_dir(&digest(15));
    std::fs::create_dir_all(orphan.join("ro")).unwrap();
    std::fs::set_permissions(
        orphan.join("ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    let crashed = store.root().join("snapshots/.sha256-x.unpacking-999999999");
    std::fs::create_dir_all(&crashed).unwrap();
    let stale = store.download_path(&digest(16));
    let file = std::fs::File::create(&stale).unwrap();
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * DAY))
        .unwrap();
    let fresh = store.download_path(&digest(17));
    std::fs::write(&fresh, b"partial").unwrap();

    let policy = PrunePolicy {
        all_unused: true,
        ..PrunePolicy::default()
    };
    let dry = store.prune_with(&policy, &in_use(&[3]), true).unwrap();
    assert_eq!(dry.images.len(), 2);
    assert!(
        store.snapshot_dir(&digest(10)).is_dir(),
        "dry run removes nothing"
    );

    let report = store.prune(&policy, &in_use(&[3])).unwrap();
    let gone: Vec<Digest> = report.images.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(gone.len(), 2);
    assert!(gone.contains(&digest(1)) && gone.contains(&digest(4)));
    let mut snapshots = report.snapshots_removed.clone();
    snapshots.sort();
    let mut expected = ids(&[10, 14, 15]);
    expected.sort();
    assert_eq!(snapshots, expected);
    for kept in [11, 12, 13] {
        assert!(store.snapshot_dir(&digest(kept)).is_dir(), "{kept}");
    }
    assert!(!crashed.exists());
    assert_eq!(report.downloads_removed, 1);
    assert!(!stale.exists() && fresh.exists());
    assert!(report.usage_after < report.usage_before);
    let left: Vec<Digest> = store.list().unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&digest(2)) && left.contains(&digest(3)));
}

#[test]
fn containers_in_use_are_read_from_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let containers = dir.path().join("containers");
    for (name, body) in [
        ("a", format!(r#"{{"image_id":"{}","name":"a"}}"#, digest(1))),
        ("b", format!(r#"{{"image_id":"{}"}}"#, digest(2))),
        ("c", r#"{"image_id":"not a digest"}"#.to_owned()),
        ("d", "garbage".to_owned()),
    ] {
        std::fs::create_dir_all(containers.join(name)).unwrap();
        std::fs::write(containers.join(name).join("container.json"), body).unwrap();
    }
    std::fs::create_dir_all(containers.join("e")).unwrap();
    assert_eq!(in_use_by_containers(dir.path()), in_use(&[1, 2]));
    assert!(in_use_by_containers(&dir.path().join("nowhere")).is_empty());
}

// ---- prune selection, properties ----

mod properties {
    use std::collections::{BTreeMap, HashSet};
    use std::time::Duration;

    use berth_oci::Digest;
    use proptest::prelude::*;

    use super::{image, DAY, NOW};
    use crate::image::{select_for_prune, Image, PrunePolicy};

    /// Layer `l` always has the same size, as a real snapshot would.
    fn layer_size(l: u8) -> u64 {
        (u64::from(l) + 1) * 100
    }

    /// Bytes of the distinct layers of `images`: what the snapshots take on disk.
    fn usage<'a>(images: impl IntoIterator<Item = &'a Image>) -> u64 {
        let mut layers = BTreeMap::new();
        for image in images {
            for (layer, size) in image.layers.iter().zip(&image.layer_sizes) {
                layers.insert(layer.clone(), *size);
            }
        }
        layers.values().sum()
    }

    fn images() -> impl Strategy<Value = (Vec<Image>, HashSet<Digest>)> {
        let one = (
            0..30 * DAY,
            prop::option::of(0..30 * DAY),
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(0u8..8, 1..4),
        );
        prop::collection::vec(one, 0..10).prop_map(|specs| {
            let mut in_use = HashSet::new();
            let images = specs
                .into_iter()
                .enumerate()
                .map(|(n, (age, used_ago, pinned, used, layers))| {
                    let layers: Vec<(u8, u64)> = layers
                        .into_iter()
                        .map(|l| (l + 100, layer_size(l)))
                        .collect();
                    let mut image = image(n as u8 + 1, NOW - age, &layers);
                    image.last_used = used_ago.map_or(0, |ago| NOW - ago);
                    image.pinned = pinned;
                    if used {
                        in_use.insert(image.id.clone());
                    }
                    image
                })
                .collect();
            (images, in_use)
        })
    }

    fn policy() -> impl Strategy<Value = PrunePolicy> {
        (
            any::<bool>(),
            prop::option::of(0..40 * DAY),
            prop::option::of(0u64..4000),
            prop::option::of(0u64..4000),
        )
            .prop_map(
                |(all_unused, unused_for, high_water, low_water)| PrunePolicy {
                    all_unused,
                    unused_for: unused_for.map(Duration::from_secs),
                    high_water,
                    low_water: high_water.and(low_water),
                },
            )
    }

    proptest! {
        #[test]
        fn never_protected_never_twice_oldest_first(
            (images, in_use) in images(),
            policy in policy(),
        ) {
            let selected = select_for_prune(&images, &policy, &in_use, NOW, usage(&images));
            let unique: HashSet<&Digest> = selected.iter().collect();
            prop_assert_eq!(unique.len(), selected.len());
            let mut last = 0;
            for id in &selected {
                let image = images.iter().find(|i| &i.id == id).expect("selected ids are images");
                prop_assert!(!image.pinned && !in_use.contains(id));
                prop_assert!(image.last_activity() >= last);
                last = image.last_activity();
            }
        }

        #[test]
        fn rules_select_exactly_what_they_say(
            (images, in_use) in images(),
            policy in policy(),
        ) {
            let usage_before = usage(&images);
            let selected: HashSet<Digest> =
                select_for_prune(&images, &policy, &in_use, NOW, usage_before).into_iter().collect();
            let unprotected: Vec<&Image> =
                images.iter().filter(|i| !i.pinned && !in_use.contains(&i.id)).collect();
            // Every image the age and all rules name is selected.
            for image in &unprotected {
                let stale = policy
                    .unused_for
                    .is_some_and(|d| NOW - image.last_activity() >= d.as_secs());
                if policy.all_unused || stale {
                    prop_assert!(selected.contains(&image.id));
                }
            }
            let kept = images.iter().filter(|i| !selected.contains(&i.id));
            let usage_after = usage(kept);
            match policy.high_water {
                None => {
                    // Without water marks, nothing beyond what the rules name.
                    for id in &selected {
                        let image = images.iter().find(|i| &i.id == id).expect("an image");
                        let stale = policy
                            .unused_for
                            .is_some_and(|d| NOW - image.last_activity() >= d.as_secs());
                        prop_assert!(policy.all_unused || stale);
                    }
                }
                Some(high) if usage_before > high => {
                    let low = policy.low_water.unwrap_or(high).min(high);
                    // Down to the low mark, or nothing unprotected is left to remove.
                    prop_assert!(
                        usage_after <= low || unprotected.iter().all(|i| selected.contains(&i.id)),
                        "usage {} -> {} with low {}", usage_before, usage_after, low
                    );
                    // And no further: without the last image chosen, usage was above low.
                    if !policy.all_unused && policy.unused_for.is_none() {
                        let order = select_for_prune(&images, &policy, &in_use, NOW, usage_before);
                        if let Some((_, before_last)) = order.split_last() {
                            let kept = images.iter().filter(|i| !before_last.contains(&i.id));
                            prop_assert!(usage(kept) > low);
                        }
                    }
                }
                Some(_) => {}
            }
        }
    }
}
