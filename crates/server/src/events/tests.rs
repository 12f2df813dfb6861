#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_store::MemoryStore;

use super::*;

#[test]
fn nothing_is_trimmed_below_the_bound() {
    let stored: VecDeque<u64> = (1..=999).collect();
    assert!(to_trim(&stored, 1, 1000).is_empty());
    assert!(to_trim(&VecDeque::new(), 1, 1000).is_empty());
}

#[test]
fn the_oldest_go_first() {
    let stored: VecDeque<u64> = (1..=1000).collect();
    assert_eq!(to_trim(&stored, 1, 1000), vec![1]);
    assert_eq!(to_trim(&stored, 3, 1000), vec![1, 2, 3]);
    let stored: VecDeque<u64> = (5..=1010).collect();
    assert_eq!(to_trim(&stored, 1, 1000), (5..=11).collect::<Vec<_>>());
}

async fn wait_for(store: &dyn Store, app: &str, count: usize) -> Vec<Event> {
    for _ in 0..200 {
        let (events, _) = list(store, app, 0).await.unwrap();
        if events.len() >= count && events.last().map(|e| e.message.as_str()) == Some("last") {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("events of {app} were not stored");
}

#[tokio::test(flavor = "current_thread")]
async fn the_store_keeps_the_newest_events_per_app() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let log = EventLog::new(store.clone(), 5);
    for i in 0..12 {
        log.record(Event::new("shop", EventKind::Scaled, format!("event {i}")));
    }
    log.record(Event::new("shop", EventKind::Scaled, "last"));
    log.record(Event::new("blog", EventKind::ReleaseCreated, "last").release(1));
    let shop = wait_for(store.as_ref(), "shop", 5).await;
    assert_eq!(
        shop.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![9, 10, 11, 12, 13]
    );
    assert_eq!(shop[0].message, "event 8");
    let blog = wait_for(store.as_ref(), "blog", 1).await;
    assert_eq!(blog.len(), 1);
    assert_eq!(blog[0].seq, 1);
    assert_eq!(blog[0].release, Some(1));

    let (since, _) = list(store.as_ref(), "shop", 11).await.unwrap();
    assert_eq!(
        since.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![12, 13]
    );

    // A new writer (a restarted server) continues the numbering.
    let log = EventLog::new(store.clone(), 5);
    log.record(Event::new("shop", EventKind::Promoted, "last"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let shop = wait_for(store.as_ref(), "shop", 5).await;
    assert_eq!(shop.last().unwrap().seq, 14);
    assert_eq!(shop.len(), 5);
    assert_eq!(shop[0].seq, 10);
}
