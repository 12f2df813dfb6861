//! The `BlobStore` compliance suite: every backend must pass `compliance`.

use berth_oci::Digest;
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{BlobStore, ByteRange, FsBlobStore, StorageError};

async fn read_to_vec(store: &dyn BlobStore, digest: &Digest, range: Option<ByteRange>) -> Vec<u8> {
    let mut reader = store
        .read(digest, range)
        .await
        .expect("read")
        .expect("blob present");
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.expect("read body");
    out
}

async fn append(store: &dyn BlobStore, id: &str, parts: &[&[u8]]) -> u64 {
    let (tx, rx) = mpsc::channel(4);
    let parts: Vec<Bytes> = parts.iter().map(|p| Bytes::copy_from_slice(p)).collect();
    let feeder = tokio::spawn(async move {
        for part in parts {
            tx.send(part).await.expect("send");
        }
    });
    let len = store.append(id, rx).await.expect("append");
    feeder.await.expect("feeder");
    len
}

/// Runs every behaviour a `BlobStore` must have against `store`.
async fn compliance(store: &dyn BlobStore) {
    let data = b"hello, berth".to_vec();
    let digest = Digest::sha256(&data);

    assert_eq!(store.stat(&digest).await.expect("stat"), None);
    assert!(store.read(&digest, None).await.expect("read").is_none());

    // An upload is invisible until committed.
    store.create_upload("u1").await.expect("create");
    assert_eq!(store.upload_len("u1").await.expect("len"), Some(0));
    assert_eq!(append(store, "u1", &[b"hello, ", b"be"]).await, 9);
    assert_eq!(append(store, "u1", &[b"rth"]).await, 12);
    assert_eq!(store.stat(&digest).await.expect("stat"), None);
    let mut partial = Vec::new();
    store
        .read_upload("u1")
        .await
        .expect("read upload")
        .read_to_end(&mut partial)
        .await
        .expect("read upload body");
    assert_eq!(partial, data);
    assert!(store
        .list_uploads()
        .await
        .expect("list")
        .iter()
        .any(|(id, _)| id == "u1"));

    store.commit_upload("u1", &digest).await.expect("commit");
    assert_eq!(store.upload_len("u1").await.expect("len"), None);
    assert_eq!(store.stat(&digest).await.expect("stat"), Some(12));
    assert_eq!(read_to_vec(store, &digest, None).await, data);
    assert_eq!(
        read_to_vec(store, &digest, Some(ByteRange { start: 7, len: 5 })).await,
        b"berth"
    );

    // Committing the same content again keeps one copy and removes the upload.
    store.create_upload("u2").await.expect("create");
    append(store, "u2", &[&data]).await;
    store
        .commit_upload("u2", &digest)
        .await
        .expect("commit dup");
    assert_eq!(store.upload_len("u2").await.expect("len"), None);
    assert_eq!(read_to_vec(store, &digest, None).await, data);

    // put/read_all for small content.
    let manifest = Bytes::from_static(b"{\"schemaVersion\":2}");
    let mdigest = Digest::sha256(&manifest);
    store.put(&mdigest, manifest.clone()).await.expect("put");
    store
        .put(&mdigest, manifest.clone())
        .await
        .expect("put twice");
    assert_eq!(
        store.read_all(&mdigest).await.expect("read_all"),
        Some(manifest)
    );

    // Unknown uploads are reported as such, and hostile ids never touch the filesystem.
    for id in ["nope", "../../etc/passwd", ""] {
        assert!(matches!(
            store.commit_upload(id, &digest).await,
            Err(StorageError::UnknownUpload(_))
        ));
        assert!(store.read_upload(id).await.is_err());
    }
    store
        .delete_upload("u3")
        .await
        .expect("delete unknown upload");

    store.create_upload("u4").await.expect("create");
    store.delete_upload("u4").await.expect("cancel");
    assert_eq!(store.upload_len("u4").await.expect("len"), None);

    let listed = store.list_blobs().await.expect("list blobs");
    let mut listed: Vec<_> = listed.into_iter().map(|b| (b.digest, b.size)).collect();
    listed.sort();
    let mut expected = vec![(digest.clone(), 12), (mdigest.clone(), 19)];
    expected.sort();
    assert_eq!(listed, expected);

    store.delete(&digest).await.expect("delete");
    assert_eq!(store.stat(&digest).await.expect("stat"), None);
    store.delete(&digest).await.expect("delete absent");
}

#[tokio::test(flavor = "current_thread")]
async fn fs_store_complies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsBlobStore::open(dir.path()).expect("open");
    compliance(&store).await;
}
