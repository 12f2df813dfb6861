#![allow(clippy::unwrap_used)]

use super::*;

const OURS: &str = "127.0.0.1:5000";

fn image(registry: &str, digest: &str, release: ReleaseId) -> WantedImage {
    WantedImage {
        digest: format!("sha256:{digest}"),
        pinned_reference: format!("{registry}/shop/web@sha256:{digest}"),
        release,
    }
}

fn wanted(entries: &[(&str, &[WantedImage])]) -> BTreeMap<String, BTreeSet<WantedImage>> {
    entries
        .iter()
        .map(|(app, images)| ((*app).to_owned(), images.iter().cloned().collect()))
        .collect()
}

fn hosts() -> BTreeSet<String> {
    registry_hosts(OURS.parse().unwrap())
}

#[test]
fn loopback_registries_answer_to_their_usual_names() {
    assert_eq!(
        hosts(),
        BTreeSet::from([
            "127.0.0.1:5000".to_owned(),
            "[::1]:5000".to_owned(),
            "localhost:5000".to_owned()
        ])
    );
    let public = registry_hosts("10.1.2.3:443".parse().unwrap());
    assert_eq!(public, BTreeSet::from(["10.1.2.3:443".to_owned()]));
    assert_eq!(
        registry_of("127.0.0.1:5000/shop/web@sha256:aa"),
        Some("127.0.0.1:5000")
    );
    assert_eq!(
        registry_of("localhost/shop/web@sha256:aa"),
        Some("localhost")
    );
    assert_eq!(
        registry_of("registry.example/web@sha256:aa"),
        Some("registry.example")
    );
    assert_eq!(registry_of("shop/web@sha256:aa"), None);
    assert_eq!(registry_of("web@sha256:aa"), None);
}

#[test]
fn the_window_is_pinned_and_what_leaves_it_unpinned() {
    let pins = BTreeMap::from([
        // Release 1 of shop left the window.
        ("sha256:01".to_owned(), pin_reason("shop")),
        // Release 2 is still in it: pinned already, nothing to do.
        ("sha256:02".to_owned(), pin_reason("shop")),
        // An administrator's pin is never touched.
        (
            "sha256:0a".to_owned(),
            "pinned through the admin API".to_owned(),
        ),
    ]);
    let wanted = wanted(&[("shop", &[image(OURS, "02", 2), image(OURS, "03", 3)])]);
    let plan = plan(&wanted, &pins, &hosts());
    assert_eq!(
        plan,
        PinPlan {
            pin: vec![("sha256:03".to_owned(), pin_reason("shop"))],
            unpin: vec!["sha256:01".to_owned()],
            foreign: Vec::new(),
        }
    );
}

#[test]
fn a_digest_stays_pinned_while_any_app_wants_it() {
    // `blog` pinned the shared image first; `shop` no longer wants it, `blog` still does.
    let pins = BTreeMap::from([("sha256:05".to_owned(), pin_reason("blog"))]);
    let blog_only = wanted(&[("blog", &[image(OURS, "05", 1)]), ("shop", &[])]);
    assert_eq!(plan(&blog_only, &pins, &hosts()), PinPlan::default());
    // Now neither does.
    let neither = wanted(&[("blog", &[]), ("shop", &[])]);
    assert_eq!(
        plan(&neither, &pins, &hosts()).unpin,
        vec!["sha256:05".to_owned()]
    );
}

#[test]
fn pins_of_apps_not_reconciled_yet_are_kept() {
    // After a restart the first pass may not have reached `blog` yet.
    let pins = BTreeMap::from([("sha256:07".to_owned(), pin_reason("blog"))]);
    let wanted = wanted(&[("shop", &[image(OURS, "02", 2)])]);
    let plan = plan(&wanted, &pins, &hosts());
    assert!(plan.unpin.is_empty(), "{plan:?}");
    assert_eq!(plan.pin.len(), 1);
}

#[test]
fn images_of_other_registries_are_reported_not_pinned() {
    let elsewhere = image("registry.example:5000", "09", 4);
    let unnamed = WantedImage {
        digest: "sha256:0b".into(),
        pinned_reference: "library/web@sha256:0b".into(),
        release: 4,
    };
    let wanted = wanted(&[("shop", &[elsewhere.clone(), unnamed.clone()])]);
    let plan = plan(&wanted, &BTreeMap::new(), &hosts());
    assert!(plan.pin.is_empty());
    assert_eq!(
        plan.foreign,
        vec![
            (
                "shop".to_owned(),
                elsewhere,
                Some("registry.example:5000".to_owned())
            ),
            ("shop".to_owned(), unnamed, None),
        ]
    );
}

/// A registry's pins in memory, with every call recorded and failures on demand.
#[derive(Default)]
struct FakeRegistry {
    pins: Mutex<BTreeMap<String, String>>,
    calls: Mutex<Vec<String>>,
    failing: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl PinStore for FakeRegistry {
    async fn pins(&self) -> Result<BTreeMap<String, String>, String> {
        Ok(self.pins.lock().unwrap().clone())
    }

    async fn pin(&self, digest: &str, reason: &str) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("pin {digest}"));
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("disk full".into());
        }
        self.pins
            .lock()
            .unwrap()
            .insert(digest.to_owned(), reason.to_owned());
        Ok(())
    }

    async fn unpin(&self, digest: &str) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("unpin {digest}"));
        self.pins.lock().unwrap().remove(digest);
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn sync_follows_the_window_retries_failures_and_reports_foreign_images_once() {
    let registry = Arc::new(FakeRegistry::default());
    let pins = RegistryPins::default();
    assert!(pins.attach(registry.clone(), hosts()));

    pins.want("shop", BTreeSet::from([image(OURS, "01", 1)]));
    assert!(pins.sync().await.is_empty());
    pins.want(
        "shop",
        BTreeSet::from([image(OURS, "01", 1), image(OURS, "02", 2)]),
    );
    pins.sync().await;
    pins.want(
        "shop",
        BTreeSet::from([image(OURS, "02", 2), image(OURS, "03", 3)]),
    );
    pins.sync().await;
    assert_eq!(
        registry
            .pins
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        ["sha256:02", "sha256:03"]
    );
    assert_eq!(
        *registry.calls.lock().unwrap(),
        [
            "pin sha256:01",
            "pin sha256:02",
            "pin sha256:03",
            "unpin sha256:01"
        ]
    );

    // Nothing changed: no call at all.
    pins.want(
        "shop",
        BTreeSet::from([image(OURS, "02", 2), image(OURS, "03", 3)]),
    );
    pins.sync().await;
    assert_eq!(registry.calls.lock().unwrap().len(), 4);

    // A failed pin is tried again at the next sync.
    registry
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    pins.want(
        "shop",
        BTreeSet::from([image(OURS, "03", 3), image(OURS, "04", 4)]),
    );
    pins.sync().await;
    assert!(!registry.pins.lock().unwrap().contains_key("sha256:04"));
    registry
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    pins.sync().await;
    assert!(registry.pins.lock().unwrap().contains_key("sha256:04"));

    // An image of another registry: one event, naming it, and no pin.
    let elsewhere = image("registry.example:5000", "09", 5);
    pins.want(
        "shop",
        BTreeSet::from([image(OURS, "04", 4), elsewhere.clone()]),
    );
    let events = pins.sync().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::ImageNotPinned);
    assert_eq!(events[0].release, Some(5));
    assert!(
        events[0].message.contains(&elsewhere.pinned_reference)
            && events[0].message.contains("registry registry.example:5000"),
        "{}",
        events[0].message
    );
    pins.want("shop", BTreeSet::from([elsewhere]));
    assert!(pins.sync().await.is_empty(), "reported once");
    assert!(!registry.pins.lock().unwrap().contains_key("sha256:09"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_pin_removed_behind_the_servers_back_comes_back_at_the_next_sync() {
    let registry = Arc::new(FakeRegistry::default());
    let pins = RegistryPins::default();
    assert!(pins.attach(registry.clone(), hosts()));
    pins.want("shop", BTreeSet::from([image(OURS, "01", 1)]));
    pins.sync().await;
    // An administrator forces it out; nothing the app wants changed.
    registry.pins.lock().unwrap().remove("sha256:01");
    pins.sync().await;
    assert_eq!(
        registry
            .pins
            .lock()
            .unwrap()
            .get("sha256:01")
            .map(String::as_str),
        Some(pin_reason("shop").as_str())
    );
    assert_eq!(
        *registry.calls.lock().unwrap(),
        ["pin sha256:01", "pin sha256:01"]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn without_a_registry_every_image_is_reported() {
    let pins = RegistryPins::default();
    pins.want("shop", BTreeSet::from([image(OURS, "01", 1)]));
    let events = pins.sync().await;
    assert_eq!(events.len(), 1);
    assert!(
        events[0].message.contains("serves no registry"),
        "{}",
        events[0].message
    );
}
