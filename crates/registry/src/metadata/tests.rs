use berth_oci::{Descriptor, Digest};

use super::*;

fn db() -> (tempfile::TempDir, Metadata) {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = Metadata::open(&dir.path().join("m.redb")).expect("open");
    (dir, meta)
}

fn d(n: u8) -> Digest {
    Digest::sha256(&[n])
}

fn desc(digest: &Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: "application/octet-stream".into(),
        digest: digest.clone(),
        size,
        artifact_type: None,
        annotations: None,
        urls: None,
    }
}

fn record(refs: &[Digest], subject: Option<Digest>) -> ManifestRecord {
    ManifestRecord {
        media_type: berth_oci::media_type::OCI_MANIFEST.into(),
        size: 10,
        created: 0,
        subject,
        references: refs.to_vec(),
    }
}

fn put(
    meta: &Metadata,
    repo: &str,
    digest: &Digest,
    tag: Option<&str>,
    blobs: &[Descriptor],
) -> Result<(), ManifestRejection> {
    meta.put_manifest(NewManifest {
        repo,
        digest,
        tag,
        record: record(
            &blobs.iter().map(|b| b.digest.clone()).collect::<Vec<_>>(),
            None,
        ),
        blobs,
        external: &[],
        manifests: &[],
        referrer: None,
    })
    .expect("db")
}

#[test]
fn links_are_per_repository_and_mounts_copy_them() {
    let (_dir, meta) = db();
    meta.link_blob("a", &d(1), 5).expect("link");
    assert_eq!(meta.linked_blob("a", &d(1)).expect("get"), Some(5));
    assert_eq!(meta.linked_blob("b", &d(1)).expect("get"), None);
    assert!(meta.repo_exists("a").expect("exists"));
    assert!(!meta.repo_exists("b").expect("exists"));
    assert_eq!(meta.repos_with_blob(&d(1)).expect("repos"), vec!["a"]);
    assert_eq!(meta.mount("b", &d(1), &["c".into()]).expect("mount"), None);
    assert_eq!(
        meta.mount("b", &d(1), &["a".into()]).expect("mount"),
        Some(5)
    );
    assert_eq!(meta.linked_blob("b", &d(1)).expect("get"), Some(5));
    assert!(meta.unlink_blob("a", &d(1)).expect("unlink"));
    assert!(!meta.unlink_blob("a", &d(1)).expect("unlink again"));
    assert_eq!(meta.repos_with_blob(&d(1)).expect("repos"), vec!["b"]);
}

#[test]
fn manifests_need_their_blobs_with_the_right_size() {
    let (_dir, meta) = db();
    let m = d(100);
    assert_eq!(
        put(&meta, "r", &m, Some("v1"), &[desc(&d(1), 5)]),
        Err(ManifestRejection::MissingBlob(d(1)))
    );
    meta.link_blob("r", &d(1), 5).expect("link");
    assert_eq!(
        put(&meta, "r", &m, Some("v1"), &[desc(&d(1), 6)]),
        Err(ManifestRejection::SizeMismatch {
            digest: d(1),
            declared: 6,
            stored: 5
        })
    );
    assert_eq!(put(&meta, "r", &m, Some("v1"), &[desc(&d(1), 5)]), Ok(()));
    assert_eq!(meta.tag("r", "v1").expect("tag"), Some(m.clone()));
    assert!(meta.manifest("r", &m).expect("manifest").is_some());
    // A blob linked in another repository does not count.
    assert_eq!(
        put(&meta, "other", &m, None, &[desc(&d(1), 5)]),
        Err(ManifestRejection::MissingBlob(d(1)))
    );
}

#[test]
fn deleting_by_digest_removes_tags_and_by_tag_only_the_tag() {
    let (_dir, meta) = db();
    let (m1, m2) = (d(101), d(102));
    put(&meta, "r", &m1, Some("a"), &[]).expect("put");
    put(&meta, "r", &m1, Some("b"), &[]).expect("put");
    put(&meta, "r", &m2, Some("c"), &[]).expect("put");
    assert!(meta.delete_tag("r", "c").expect("delete tag"));
    assert!(meta.manifest("r", &m2).expect("get").is_some());
    assert!(!meta.delete_tag("r", "c").expect("delete tag again"));
    assert_eq!(meta.delete_manifest("r", &m1).expect("delete"), Ok(true));
    assert_eq!(meta.tag("r", "a").expect("tag"), None);
    assert_eq!(meta.tag("r", "b").expect("tag"), None);
    assert_eq!(
        meta.delete_manifest("r", &m1).expect("delete again"),
        Ok(false)
    );
}

#[test]
fn tags_and_repositories_paginate_in_lexical_order() {
    let (_dir, meta) = db();
    for t in ["b", "a", "d", "c"] {
        put(&meta, "r", &d(1), Some(t), &[]).expect("put");
    }
    put(&meta, "r/sub", &d(1), Some("zz"), &[]).expect("put");
    let page = meta.tags("r", None, 2).expect("tags").expect("known");
    assert_eq!(
        page,
        Page {
            names: vec!["a".into(), "b".into()],
            more: true
        }
    );
    let page = meta.tags("r", Some("b"), 2).expect("tags").expect("known");
    assert_eq!(
        page,
        Page {
            names: vec!["c".into(), "d".into()],
            more: false
        }
    );
    assert_eq!(
        meta.tags("r", Some("d"), 2)
            .expect("tags")
            .expect("known")
            .names
            .len(),
        0
    );
    assert_eq!(
        meta.tags("r", None, 0)
            .expect("tags")
            .expect("known")
            .names
            .len(),
        0
    );
    assert!(meta.tags("nope", None, 2).expect("tags").is_none());
    let repos = meta.repositories(None, 10, |_| true).expect("repos");
    assert_eq!(repos.names, vec!["r", "r/sub"]);
    let repos = meta.repositories(Some("r"), 10, |_| true).expect("repos");
    assert_eq!(repos.names, vec!["r/sub"]);
    let repos = meta.repositories(None, 10, |r| r != "r").expect("repos");
    assert_eq!(repos.names, vec!["r/sub"]);
}

#[test]
fn referrers_follow_their_manifests() {
    let (_dir, meta) = db();
    let subject = d(1);
    let referrer = d(2);
    let mut descriptor = desc(&referrer, 10);
    descriptor.artifact_type = Some("application/x.sig".into());
    meta.put_manifest(NewManifest {
        repo: "r",
        digest: &referrer,
        tag: None,
        record: record(&[], Some(subject.clone())),
        blobs: &[],
        external: &[],
        manifests: &[],
        referrer: Some(descriptor.clone()),
    })
    .expect("db")
    .expect("stored");
    assert_eq!(
        meta.referrers("r", &subject).expect("referrers"),
        vec![descriptor]
    );
    assert!(meta
        .referrers("other", &subject)
        .expect("referrers")
        .is_empty());
    meta.delete_manifest("r", &referrer)
        .expect("delete")
        .expect("not pinned");
    assert!(meta.referrers("r", &subject).expect("referrers").is_empty());
}

#[test]
fn state_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.redb");
    {
        let meta = Metadata::open(&path).expect("open");
        meta.link_blob("r", &d(1), 5).expect("link");
        put(&meta, "r", &d(9), Some("v"), &[desc(&d(1), 5)]).expect("put");
    }
    let meta = Metadata::open(&path).expect("reopen");
    assert_eq!(meta.linked_blob("r", &d(1)).expect("get"), Some(5));
    assert_eq!(meta.tag("r", "v").expect("tag"), Some(d(9)));
}

#[test]
fn version_1_files_get_their_reference_index_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.redb");
    {
        let meta = Metadata::open(&path).expect("open");
        meta.link_blob("r", &d(1), 5).expect("link");
        put(&meta, "r", &d(9), Some("v"), &[desc(&d(1), 5)]).expect("put");
        // Make it look like a file written before the index existed.
        let txn = meta.db.begin_write().expect("txn");
        {
            let mut refs = txn.open_table(REFS).expect("refs");
            let keys: Vec<String> = refs
                .range::<&str>(..)
                .expect("range")
                .map(|e| e.expect("entry").0.value().to_owned())
                .collect();
            for k in keys {
                refs.remove(k.as_str()).expect("remove");
            }
            txn.open_table(SCHEMA)
                .expect("schema")
                .insert("version", 1)
                .expect("v1");
        }
        txn.commit().expect("commit");
        assert_eq!(
            meta.unreferenced_blobs(u64::MAX).expect("scan").len(),
            2,
            "without the index everything looks unreferenced"
        );
    }
    let meta = Metadata::open(&path).expect("reopen");
    assert!(meta.unreferenced_blobs(u64::MAX).expect("scan").is_empty());
}
