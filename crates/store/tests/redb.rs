//! `RedbStore`: the compliance suite, and what only a file can do: keep state across a
//! restart and a SIGKILL.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use berth_store::compliance::Fixture;
use berth_store::{EventKind, ManualClock, Options, RedbStore, Store, StoreError};
use tempfile::TempDir;

struct Redb {
    store: Arc<RedbStore>,
    clock: Arc<ManualClock>,
    _dir: TempDir,
}

fn options(clock: &Arc<ManualClock>) -> Options {
    Options {
        clock: clock.clone(),
        // Only `advance` expires leases, so cases see expiry exactly when they ask for it.
        expiry_interval: Duration::from_secs(3600),
        ..Options::default()
    }
}

async fn redb() -> Redb {
    let dir = TempDir::new().expect("temp dir");
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let store = RedbStore::open_with(dir.path().join("state.redb"), options(&clock))
        .await
        .expect("open");
    Redb {
        store: Arc::new(store),
        clock,
        _dir: dir,
    }
}

#[async_trait]
impl Fixture for Redb {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.store.expire_leases().await.expect("expire leases");
    }
}

berth_store::compliance_tests!(redb().await);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_revisions_and_history_survive_a_restart() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("state.redb");
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let (first, last) = {
        let store = RedbStore::open_with(&path, options(&clock))
            .await
            .expect("open");
        let first = store.put("/a", b"1".to_vec(), None).await.expect("put");
        store.put("/b", b"2".to_vec(), None).await.expect("put");
        assert!(store.delete("/a").await.expect("delete"));
        (first, store.revision().await.expect("revision"))
    };
    let store = RedbStore::open_with(&path, options(&clock))
        .await
        .expect("reopen");
    assert_eq!(store.revision().await.expect("revision"), last);
    assert_eq!(store.get("/a").await.expect("get"), None);
    assert_eq!(
        store.get("/b").await.expect("get").map(|e| e.value),
        Some(b"2".to_vec())
    );
    assert!(store.put("/c", Vec::new(), None).await.expect("put") > last);

    // The change log came back too: a watch from before the restart replays it.
    let mut watch = store.watch("/", Some(first)).await.expect("watch");
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.recv())
            .await
            .expect("in time")
            .expect("open")
            .expect("event");
        kinds.push((event.kind, event.entry.key));
    }
    assert_eq!(
        kinds,
        [
            (EventKind::Put, "/b".to_owned()),
            (EventKind::Delete, "/a".to_owned()),
            (EventKind::Put, "/c".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_restart_and_expire_at_open_if_their_time_passed() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("state.redb");
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let (short, long) = {
        let store = RedbStore::open_with(&path, options(&clock))
            .await
            .expect("open");
        let short = store
            .grant_lease(Duration::from_secs(10))
            .await
            .expect("grant");
        let long = store
            .grant_lease(Duration::from_secs(60))
            .await
            .expect("grant");
        store
            .put("/short", Vec::new(), Some(short))
            .await
            .expect("put");
        store
            .put("/long", Vec::new(), Some(long))
            .await
            .expect("put");
        (short, long)
    };
    clock.advance(Duration::from_secs(30));
    let store = RedbStore::open_with(&path, options(&clock))
        .await
        .expect("reopen");
    assert_eq!(
        store.get("/short").await.expect("get"),
        None,
        "expired while closed"
    );
    assert!(matches!(
        store.keep_alive(short).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert_eq!(
        store.get("/long").await.expect("get").and_then(|e| e.lease),
        Some(long)
    );
    store
        .keep_alive(long)
        .await
        .expect("the long lease lives on");
    let granted = store
        .grant_lease(Duration::from_secs(1))
        .await
        .expect("grant");
    assert!(granted > long, "lease ids are not reused after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_log_is_bounded() {
    let dir = TempDir::new().expect("temp dir");
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let store = RedbStore::open_with(
        dir.path().join("state.redb"),
        Options {
            history: 8,
            ..options(&clock)
        },
    )
    .await
    .expect("open");
    for n in 0..20 {
        store.put("/k", vec![n], None).await.expect("put");
    }
    let mut watch = store.watch("/", Some(1)).await.expect("watch");
    assert!(matches!(
        watch.recv().await,
        Some(Err(StoreError::Compacted { oldest: 12 }))
    ));
    let mut watch = store.watch("/", Some(12)).await.expect("watch");
    let event = watch.recv().await.expect("open").expect("event");
    assert_eq!((event.revision, event.entry.value), (13, vec![12]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_task_expires_leases_on_real_time() {
    let dir = TempDir::new().expect("temp dir");
    let store = RedbStore::open_with(
        dir.path().join("state.redb"),
        Options {
            expiry_interval: Duration::from_millis(50),
            ..Options::default()
        },
    )
    .await
    .expect("open");
    let lease = store
        .grant_lease(Duration::from_millis(300))
        .await
        .expect("grant");
    store.put("/k", Vec::new(), Some(lease)).await.expect("put");
    let mut watch = store.watch("/", None).await.expect("watch");
    let event = tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .expect("the lease expires within 10s")
        .expect("open")
        .expect("event");
    assert_eq!(
        (event.kind, event.entry.key.as_str()),
        (EventKind::Delete, "/k")
    );
}

/// Set in the child process `acknowledged_writes_survive_sigkill` spawns.
const CHILD_STORE: &str = "BERTH_STORE_KILL_CHILD";

/// The child: puts keys as fast as it can, printing each acknowledged revision, until killed.
#[tokio::test]
async fn kill_child_writer() {
    let Some(path) = std::env::var_os(CHILD_STORE) else {
        return;
    };
    let store = RedbStore::open(Path::new(&path)).await.expect("open");
    let mut stdout = std::io::stdout();
    for n in 0u64.. {
        let revision = store
            .put(&format!("/k/{n:08}"), n.to_le_bytes().to_vec(), None)
            .await
            .expect("put");
        writeln!(stdout, "ack {n} {revision}").expect("stdout");
        stdout.flush().expect("stdout");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("state.redb");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "kill_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STORE, &path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the writer");
    let stdout = child.stdout.take().expect("piped");
    let mut acks = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read");
        if let Some(ack) = line.strip_prefix("ack ") {
            let (n, revision) = ack.split_once(' ').expect("n revision");
            acks.push((
                n.parse::<u64>().expect("n"),
                revision.parse::<u64>().expect("revision"),
            ));
            if acks.len() == 200 {
                // SIGKILL: no destructor, no flush, no chance to finish anything.
                child.kill().expect("kill -9");
                break;
            }
        }
    }
    child.wait().expect("reap");

    let store = RedbStore::open(&path).await.expect("reopen after SIGKILL");
    let (last_n, last_revision) = *acks.last().expect("acks");
    assert!(store.revision().await.expect("revision") >= last_revision);
    for (n, revision) in acks {
        let entry = store
            .get(&format!("/k/{n:08}"))
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("acknowledged write {n} lost"));
        assert_eq!(
            (entry.mod_revision, entry.value),
            (revision, n.to_le_bytes().to_vec())
        );
    }
    // Writes go on from where the file says.
    let next = store.put("/after", Vec::new(), None).await.expect("put");
    assert!(next > last_revision, "revision {next} after {last_n} acks");
}
