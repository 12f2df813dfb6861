//! The access log: one `berth_proxy::access` event per request with its fields.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use support::{client, get, group, route, TestProxy, Upstream};

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_request_is_logged_with_method_host_path_status_and_upstream() {
    let captured = Captured::default();
    let writer = captured.clone();
    // The only test in this binary: the global subscriber sees every task's events.
    tracing_subscriber::fmt()
        .with_env_filter("berth_proxy::access=info")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let web = Upstream::start("web").await;
    let proxy = TestProxy::start().await;
    proxy
        .proxy
        .set_routes(vec![route(
            "web.shop",
            "shop.example",
            "/",
            vec![group("r1", 1, &[&web])],
        )])
        .unwrap();
    let c = client();
    assert_eq!(get(&c, &proxy, "shop.example", "/cart?id=1").await.0, 200);
    assert_eq!(get(&c, &proxy, "nowhere.example", "/x").await.0, 404);

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    let served = lines[0];
    assert!(served.contains("berth_proxy::access"), "{served}");
    for field in [
        "method=GET",
        "host=\"shop.example\"",
        "path=\"/cart\"",
        "status=200",
        &format!("upstream={}", web.addr),
        "duration_us=",
    ] {
        assert!(served.contains(field), "{field} missing in {served}");
    }
    assert!(
        lines[1].contains("status=404") && !lines[1].contains("upstream="),
        "{}",
        lines[1]
    );
}
