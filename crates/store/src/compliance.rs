//! The behaviour every [`Store`] backend must have, as test cases any backend's tests run:
//! implement [`Fixture`] for a fresh store and invoke [`compliance_tests!`](crate::compliance_tests)
//! with it in a test file. The cases panic on a deviation, like any test.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    CasOutcome, Entry, EventKind, Expect, Op, Store, StoreError, TxnOutcome, Watch, WatchEvent,
};

/// A fresh, empty store under test and a way to let time pass for its leases.
#[async_trait]
pub trait Fixture: Send + Sync {
    /// The store.
    fn store(&self) -> Arc<dyn Store>;

    /// Lets `by` pass as far as the store's leases are concerned, and returns once leases
    /// that expired in that time are revoked (a test clock and an expiry pass, or a sleep).
    async fn advance(&self, by: Duration);
}

/// Defines one `#[tokio::test]` per compliance case, each with a fixture from `$fixture`
/// (an expression evaluated in the async test, so it may `.await`).
#[macro_export]
macro_rules! compliance_tests {
    ($fixture:expr) => {
        $crate::compliance_tests!(@cases $fixture;
            get_put_list_prefix_boundaries,
            revisions_follow_etcd,
            cas_on_each_expectation,
            txn_is_all_or_nothing,
            delete_and_delete_prefix,
            empty_keys_are_refused,
            watch_from_now,
            watch_from_an_old_revision,
            watch_after_compaction_reports_compacted,
            watch_sees_lease_expiry,
            keep_alive_extends_a_lease,
            revoke_deletes_the_lease_keys,
            a_put_without_lease_detaches_the_key,
            concurrent_cas_has_one_winner_per_revision
        );
    };
    (@cases $fixture:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture;
                $crate::compliance::$case(&fixture).await;
            }
        )*
    };
}

/// How long a case waits for an event that must come.
const PATIENCE: Duration = Duration::from_secs(10);

async fn next(watch: &mut Watch) -> WatchEvent {
    match tokio::time::timeout(PATIENCE, watch.recv()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("watch failed: {error}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {PATIENCE:?}"),
    }
}

/// Asserts that nothing arrives on `watch` for a short while.
async fn quiet(watch: &mut Watch) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), watch.recv()).await {
        panic!("unexpected watch item {item:?}");
    }
}

fn keys(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.key.as_str()).collect()
}

async fn put(store: &dyn Store, key: &str, value: &str) -> u64 {
    store
        .put(key, value.as_bytes().to_vec(), None)
        .await
        .expect("put")
}

async fn get(store: &dyn Store, key: &str) -> Option<Entry> {
    store.get(key).await.expect("get")
}

/// Gets, puts and prefix listings, including `/a` against `/ab`.
pub async fn get_put_list_prefix_boundaries(fixture: &dyn Fixture) {
    let store = fixture.store();
    let store = store.as_ref();
    assert_eq!(get(store, "/a").await, None);
    for key in ["/b", "/ab", "/a/x", "/a"] {
        put(store, key, key).await;
    }
    let last = put(store, "/a/y", "y").await;
    let entry = get(store, "/ab").await.expect("/ab exists");
    assert_eq!(entry.value, b"/ab");
    assert_eq!(entry.lease, None);

    let all = store.list("").await.expect("list");
    assert_eq!(keys(&all.entries), ["/a", "/a/x", "/a/y", "/ab", "/b"]);
    assert_eq!(all.revision, last);
    let a = store.list("/a").await.expect("list");
    assert_eq!(keys(&a.entries), ["/a", "/a/x", "/a/y", "/ab"]);
    let under_a = store.list("/a/").await.expect("list");
    assert_eq!(keys(&under_a.entries), ["/a/x", "/a/y"]);
    assert_eq!(under_a.entries[1].value, b"y");
    assert!(store.list("/c").await.expect("list").entries.is_empty());
    assert!(store.list("/a/x/").await.expect("list").entries.is_empty());
}

/// Revisions strictly increase with each change, and only with a change; `create_revision`
/// and `mod_revision` behave as in etcd.
pub async fn revisions_follow_etcd(fixture: &dyn Fixture) {
    let store = fixture.store();
    let store = store.as_ref();
    let start = store.revision().await.expect("revision");
    let first = put(store, "/k", "1").await;
    assert!(first > start);
    let second = put(store, "/k", "2").await;
    assert!(second > first);
    let entry = get(store, "/k").await.expect("/k exists");
    assert_eq!((entry.create_revision, entry.mod_revision), (first, second));

    let other = put(store, "/other", "x").await;
    assert!(other > second);
    assert_eq!(get(store, "/k").await.expect("/k").mod_revision, second);

    // Reads, refused compares and deleting nothing change nothing.
    assert!(!store.delete("/missing").await.expect("delete"));
    let refused = store
        .cas("/k", Expect::Absent, Some(b"3".to_vec()), None)
        .await
        .expect("cas");
    assert!(matches!(refused, CasOutcome::Conflict { .. }));
    assert_eq!(store.delete_prefix("/none/").await.expect("delete"), 0);
    assert_eq!(store.revision().await.expect("revision"), other);

    assert!(store.delete("/k").await.expect("delete"));
    let deleted = store.revision().await.expect("revision");
    assert!(deleted > other);
    let again = put(store, "/k", "again").await;
    assert!(again > deleted);
    let entry = get(store, "/k").await.expect("/k exists");
    assert_eq!((entry.create_revision, entry.mod_revision), (again, again));
}

/// Compare-and-swap with each expectation, succeeding and failing.
pub async fn cas_on_each_expectation(fixture: &dyn Fixture) {
    let store = fixture.store();
    let store = store.as_ref();
    let value = |v: &str| Some(v.as_bytes().to_vec());

    let created = match store.cas("/c", Expect::Absent, value("1"), None).await {
        Ok(CasOutcome::Applied { revision }) => revision,
        other => panic!("create if absent: {other:?}"),
    };
    let current = get(store, "/c").await;
    assert_eq!(current.as_ref().map(|e| e.mod_revision), Some(created));
    assert_eq!(
        store.cas("/c", Expect::Absent, value("2"), None).await.ok(),
        Some(CasOutcome::Conflict {
            current: current.clone()
        })
    );
    assert_eq!(
        store
            .cas("/c", Expect::ModRevision(created + 100), value("2"), None)
            .await
            .ok(),
        Some(CasOutcome::Conflict { current })
    );
    let updated = match store
        .cas("/c", Expect::ModRevision(created), value("2"), None)
        .await
    {
        Ok(CasOutcome::Applied { revision }) => revision,
        other => panic!("update at the current revision: {other:?}"),
    };
    assert!(updated > created);
    assert!(matches!(
        store
            .cas("/c", Expect::ModRevision(created), value("3"), None)
            .await,
        Ok(CasOutcome::Conflict { current: Some(Entry { mod_revision, .. }) }) if mod_revision == updated
    ));
    assert!(matches!(
        store.cas("/c", Expect::Any, value("4"), None).await,
        Ok(CasOutcome::Applied { .. })
    ));
    assert_eq!(get(store, "/c").await.map(|e| e.value), Some(b"4".to_vec()));

    // None deletes; ModRevision(0) means absent, as in etcd.
    let now = get(store, "/c").await.expect("/c").mod_revision;
    assert!(matches!(
        store.cas("/c", Expect::ModRevision(now), None, None).await,
        Ok(CasOutcome::Applied { .. })
    ));
    assert_eq!(get(store, "/c").await, None);
    assert!(matches!(
        store
            .cas("/c", Expect::ModRevision(0), value("5"), None)
            .await,
        Ok(CasOutcome::Applied { .. })
    ));
    assert!(matches!(
        store
            .cas("/absent", Expect::ModRevision(now), None, None)
            .await,
        Ok(CasOutcome::Conflict { current: None })
    ));
}

/// A transaction applies all its ops at one revision, or nothing when a compare fails.
pub async fn txn_is_all_or_nothing(fixture: &dyn Fixture) {
    let store = fixture.store();
    let store = store.as_ref();
    let instance = put(store, "/instances/1", "starting").await;
    put(store, "/releases/1", "v1").await;
    let put_op = |key: &str, value: &str| Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        lease: None,
    };

    let before = store.list("").await.expect("list");
    let outcome = store
        .txn(
            vec![
                ("/instances/1".to_owned(), Expect::ModRevision(instance)),
                ("/releases/1".to_owned(), Expect::Absent),
            ],
            vec![
                put_op("/instances/1", "healthy"),
                put_op("/releases/2", "v2"),
            ],
        )
        .await
        .expect("txn");
    let TxnOutcome::Conflict { current } = outcome else {
        panic!("a failing compare must refuse the transaction: {outcome:?}");
    };
    assert_eq!(
        keys(&current.iter().flatten().cloned().collect::<Vec<_>>()),
        ["/instances/1", "/releases/1"]
    );
    assert_eq!(
        store.list("").await.expect("list"),
        before,
        "nothing applied"
    );

    let outcome = store
        .txn(
            vec![
                ("/instances/1".to_owned(), Expect::ModRevision(instance)),
                ("/releases/2".to_owned(), Expect::Absent),
            ],
            vec![
                put_op("/instances/1", "healthy"),
                put_op("/releases/2", "v2"),
                Op::Delete {
                    key: "/releases/1".to_owned(),
                },
            ],
        )
        .await
        .expect("txn");
    let TxnOutcome::Applied { revision } = outcome else {
        panic!("every compare holds: {outcome:?}");
    };
    let after = store.list("").await.expect("list");
    assert_eq!(after.revision, revision);
    assert_eq!(keys(&after.entries), ["/instances/1", "/releases/2"]);
    assert!(after.entries.iter().all(|e| e.mod_revision == revision));

    // Refused outright, also applying nothing: one key twice, a lease that does not exist.
    let duplicate = store
        .txn(Vec::new(), vec![put_op("/x", "1"), put_op("/x", "2")])
        .await;
    assert!(matches!(duplicate, Err(StoreError::DuplicateKey(key)) if key == "/x"));
    let missing_lease = store
        .txn(
            Vec::new(),
            vec![
                put_op("/y", "1"),
                Op::Put {
                    key: "/z".to_owned(),
                    value: Vec::new(),
                    lease: Some(crate::LeaseId(987_654)),
                },
            ],
        )
        .await;
    assert!(matches!(missing_lease, Err(StoreError::LeaseNotFound(_))));
    assert_eq!(store.list("").await.expect("list"), after);
}

/// `delete` says whether the key existed; `delete_prefix` removes exactly the prefix, at
/// one revision.
pub async fn delete_and_delete_prefix(fixture: &dyn Fixture) {
    let store = fixture.store();
    let store = store.as_ref();
    for key in ["/a/1", "/a/2", "/a/3", "/ab", "/b"] {
        put(store, key, "v").await;
    }
    assert!(store.delete("/b").await.expect("delete"));
    assert!(!store.delete("/b").await.expect("delete"));
    let mut watch = store.watch("/", None).await.expect("watch");
    assert_eq!(store.delete_prefix("/a/").await.expect("delete"), 3);
    assert_eq!(keys(&store.list("").await.expect("list").entries), ["/ab"]);
    let revision = store.revision().await.expect("revision");
    let mut deleted = Vec::new();
    for _ in 0..3 {
        let event = next(&mut watch).await;
        assert_eq!((event.kind, event.revision), (EventKind::Delete, revision));
        assert_eq!(
            event.entry.value, b"v",
            "a delete event carries the old entry"
        );
        deleted.push(event.entry.key);
    }
    assert_eq!(deleted, ["/a/1", "/a/2", "/a/3"]);
    assert_eq!(store.delete_prefix("/a/").await.expect("delete"), 0);
}

/// An empty key is refused.
pub async fn empty_keys_are_refused(fixture: &dyn Fixture) {
    let store = fixture.store();
    assert!(matches!(
        store.put("", b"v".to_vec(), None).await,
        Err(StoreError::EmptyKey)
    ));
    assert!(matches!(
        store.cas("", Expect::Any, None, None).await,
        Err(StoreError::EmptyKey)
    ));
}

/// A watch from now sees later changes under its prefix only, in order.
pub async fn watch_from_now(fixture: &dyn Fixture) {
    let store = fixture.store();
    let store = store.as_ref();
    put(store, "/w/before", "old").await;
    let mut watch = store.watch("/w/", None).await.expect("watch");
    let one = put(store, "/w/1", "1").await;
    put(store, "/x/1", "elsewhere").await;
    put(store, "/w", "not under /w/").await;
    let two = put(store, "/w/2", "2").await;
    assert!(store.delete("/w/1").await.expect("delete"));
    let deleted = store.revision().await.expect("revision");

    let event = next(&mut watch).await;
    assert_eq!(
        (event.kind, event.entry.key.as_str(), event.revision),
        (EventKind::Put, "/w/1", one)
    );
    assert_eq!(event.entry.value, b"1");
    let event = next(&mut watch).await;
    assert_eq!(
        (event.kind, event.entry.key.as_str(), event.revision),
        (EventKind::Put, "/w/2", two)
    );
    let event = next(&mut watch).await;
    assert_eq!(
        (event.kind, event.entry.key.as_str(), event.revision),
        (EventKind::Delete, "/w/1", deleted)
    );
    quiet(&mut watch).await;
}

/// A watch from an old revision replays what came after it, then follows new changes.
pub async fn watch_from_an_old_revision(fixture: &dyn Fixture) {
    let store = fixture.store();
    let store = store.as_ref();
    let first = put(store, "/r/1", "1").await;
    let second = put(store, "/r/2", "2").await;
    let listing = store.list("/r/").await.expect("list");
    let third = put(store, "/r/1", "1b").await;

    let mut watch = store.watch("/r/", Some(first)).await.expect("watch");
    assert_eq!(next(&mut watch).await.revision, second);
    assert_eq!(next(&mut watch).await.revision, third);
    let fourth = put(store, "/r/3", "3").await;
    assert_eq!(next(&mut watch).await.revision, fourth);

    // The list-then-watch pattern misses nothing and sees nothing twice.
    let mut watch = store
        .watch("/r/", Some(listing.revision))
        .await
        .expect("watch");
    assert_eq!(next(&mut watch).await.revision, third);
    assert_eq!(next(&mut watch).await.revision, fourth);
    quiet(&mut watch).await;
}

/// A watch from before a compaction starts with `Compacted`; one from after it works.
pub async fn watch_after_compaction_reports_compacted(fixture: &dyn Fixture) {
    let store = fixture.store();
    let store = store.as_ref();
    let first = put(store, "/c/1", "1").await;
    put(store, "/c/2", "2").await;
    let third = put(store, "/c/3", "3").await;
    store.compact(third).await.expect("compact");

    let mut watch = store.watch("/c/", Some(first)).await.expect("watch");
    let oldest = match tokio::time::timeout(PATIENCE, watch.recv()).await {
        Ok(Some(Err(StoreError::Compacted { oldest }))) => oldest,
        other => panic!("expected Compacted first, got {other:?}"),
    };
    assert!(oldest > first && oldest <= third, "oldest {oldest}");
    assert!(
        tokio::time::timeout(PATIENCE, watch.recv())
            .await
            .expect("the watch ends")
            .is_none(),
        "a compacted watch ends"
    );

    let mut watch = store.watch("/c/", Some(oldest)).await.expect("watch");
    let fourth = put(store, "/c/4", "4").await;
    assert_eq!(next(&mut watch).await.revision, fourth);
}

/// A lease's end deletes its keys, with delete events.
pub async fn watch_sees_lease_expiry(fixture: &dyn Fixture) {
    let store = fixture.store();
    let store = store.as_ref();
    let lease = store
        .grant_lease(Duration::from_secs(5))
        .await
        .expect("grant");
    store
        .put("/nodes/a", b"alive".to_vec(), Some(lease))
        .await
        .expect("put");
    put(store, "/nodes/b", "no lease").await;
    assert_eq!(
        get(store, "/nodes/a").await.and_then(|e| e.lease),
        Some(lease)
    );
    let mut watch = store.watch("/nodes/", None).await.expect("watch");
    fixture.advance(Duration::from_secs(6)).await;
    let event = next(&mut watch).await;
    assert_eq!(
        (event.kind, event.entry.key.as_str(), event.entry.lease),
        (EventKind::Delete, "/nodes/a", Some(lease))
    );
    assert_eq!(get(store, "/nodes/a").await, None);
    assert!(get(store, "/nodes/b").await.is_some());
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease
    ));
}

/// Keeping a lease alive restarts its ttl.
pub async fn keep_alive_extends_a_lease(fixture: &dyn Fixture) {
    let store = fixture.store();
    let store = store.as_ref();
    let ttl = Duration::from_secs(10);
    let lease = store.grant_lease(ttl).await.expect("grant");
    store
        .put("/k", b"v".to_vec(), Some(lease))
        .await
        .expect("put");
    fixture.advance(Duration::from_secs(6)).await;
    let granted = store.keep_alive(lease).await.expect("keep alive");
    assert!(granted >= ttl, "keep_alive returned ttl {granted:?}");
    fixture.advance(Duration::from_secs(6)).await;
    assert!(
        get(store, "/k").await.is_some(),
        "12s after grant but 6s after keep-alive"
    );
    fixture.advance(Duration::from_secs(6)).await;
    assert_eq!(get(store, "/k").await, None, "12s after the keep-alive");
}

/// Revoking a lease deletes its keys at once; the lease is then gone.
pub async fn revoke_deletes_the_lease_keys(fixture: &dyn Fixture) {
    let store = fixture.store();
    let store = store.as_ref();
    let lease = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant");
    let other = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant");
    assert_ne!(lease, other);
    for key in ["/l/1", "/l/2"] {
        store
            .put(key, b"v".to_vec(), Some(lease))
            .await
            .expect("put");
    }
    store
        .put("/l/3", b"v".to_vec(), Some(other))
        .await
        .expect("put");
    let mut watch = store.watch("/l/", None).await.expect("watch");
    store.revoke(lease).await.expect("revoke");
    let first = next(&mut watch).await;
    let second = next(&mut watch).await;
    assert_eq!(
        [first.entry.key.as_str(), second.entry.key.as_str()],
        ["/l/1", "/l/2"]
    );
    assert_eq!(
        first.revision, second.revision,
        "one revision for the revoke"
    );
    assert!([first.kind, second.kind]
        .iter()
        .all(|k| *k == EventKind::Delete));
    assert_eq!(
        keys(&store.list("/l/").await.expect("list").entries),
        ["/l/3"]
    );

    assert!(matches!(
        store.revoke(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(matches!(
        store.put("/l/4", b"v".to_vec(), Some(lease)).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}

/// Putting a key again without its lease detaches it, as in etcd: the lease's end no longer
/// deletes it.
pub async fn a_put_without_lease_detaches_the_key(fixture: &dyn Fixture) {
    let store = fixture.store();
    let store = store.as_ref();
    let lease = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant");
    store
        .put("/d/kept", b"leased".to_vec(), Some(lease))
        .await
        .expect("put");
    store
        .put("/d/gone", b"leased".to_vec(), Some(lease))
        .await
        .expect("put");
    put(store, "/d/kept", "now permanent").await;
    assert_eq!(get(store, "/d/kept").await.and_then(|e| e.lease), None);
    store.revoke(lease).await.expect("revoke");
    assert_eq!(
        keys(&store.list("/d/").await.expect("list").entries),
        ["/d/kept"]
    );
}

/// 20 tasks each add 1 to a counter 50 times with a cas retry loop: the counter ends at
/// 1000 and no two increments share a revision.
pub async fn concurrent_cas_has_one_winner_per_revision(fixture: &dyn Fixture) {
    const TASKS: u64 = 20;
    const INCREMENTS: u64 = 50;
    let store = fixture.store();
    store
        .put("/counter", b"0".to_vec(), None)
        .await
        .expect("put");
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for _ in 0..INCREMENTS {
                let mut current = store.get("/counter").await.expect("get").expect("counter");
                loop {
                    let n: u64 = String::from_utf8_lossy(&current.value)
                        .parse()
                        .expect("a number");
                    let next = (n + 1).to_string().into_bytes();
                    match store
                        .cas(
                            "/counter",
                            Expect::ModRevision(current.mod_revision),
                            Some(next),
                            None,
                        )
                        .await
                        .expect("cas")
                    {
                        CasOutcome::Applied { revision } => {
                            won.push(revision);
                            break;
                        }
                        CasOutcome::Conflict { current: now } => {
                            current = now.expect("the counter is never deleted");
                        }
                    }
                }
            }
            won
        }));
    }
    let mut revisions = BTreeSet::new();
    for task in tasks {
        for revision in task.await.expect("task") {
            assert!(
                revisions.insert(revision),
                "two increments won revision {revision}"
            );
        }
    }
    assert_eq!(revisions.len() as u64, TASKS * INCREMENTS);
    let counter = store.get("/counter").await.expect("get").expect("counter");
    assert_eq!(counter.value, (TASKS * INCREMENTS).to_string().into_bytes());
    assert_eq!(revisions.last().copied(), Some(counter.mod_revision));
}
