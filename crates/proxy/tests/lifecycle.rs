//! Route swaps under load, draining, retries and passive health, through real TCP.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_proxy::{DrainResult, ProxyConfig};
use support::{client, dead_addr, get, group, route, TestProxy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_routes_under_load_fails_no_request() {
    let blue = [Upstream::start("blue").await, Upstream::start("blue").await];
    let green = [
        Upstream::start("green").await,
        Upstream::start("green").await,
    ];
    let proxy = TestProxy::start().await;
    let table = |set: &[Upstream; 2], label: &str| {
        vec![route(
            "web",
            "*",
            "/",
            vec![group(label, 1, &[&set[0], &set[1]])],
        )]
    };
    proxy.proxy.set_routes(table(&blue, "blue")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut loaders = Vec::new();
    for _ in 0..8 {
        let c = client();
        let url = proxy.url("/");
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        loaders.push(tokio::spawn(async move {
            // Bounded: at most 5000 requests per client even if the swaps were slow.
            for _ in 0..5000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let succeeded = match c.get(&url).send().await {
                    Ok(r) => r.status() == 200 && r.text().await.is_ok(),
                    Err(_) => false,
                };
                let counter = if succeeded { &ok } else { &failed };
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for i in 0..100 {
        let (set, label) = if i % 2 == 0 {
            (&green, "green")
        } else {
            (&blue, "blue")
        };
        proxy.proxy.set_routes(table(set, label)).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for loader in loaders {
        loader.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!("100 swaps: {ok} requests succeeded, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 100, "the load loop made only {ok} requests");
    assert!(blue.iter().all(|u| u.hits() > 0) && green.iter().all(|u| u.hits() > 0));
}

#[tokio::test]
async fn drain_waits_for_the_slow_request_then_resolves() {
    let old = Upstream::start("old").await;
    let new = Upstream::start("new").await;
    let proxy = TestProxy::start().await;
    proxy
        .proxy
        .set_routes(vec![route("web", "*", "/", vec![group("r1", 1, &[&old])])])
        .unwrap();
    let c = client();
    let slow = {
        let c = c.clone();
        let url = proxy.url("/slow/3000");
        tokio::spawn(async move {
            let r = c.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    while proxy.proxy.in_flight(old.addr) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy
        .proxy
        .set_routes(vec![route("web", "*", "/", vec![group("r2", 1, &[&new])])])
        .unwrap();
    // New requests go to the new upstream while the old one drains.
    assert_eq!(get(&c, &proxy, "x", "/").await, (200, "new".into()));
    let drain = proxy.proxy.drain(old.addr, Duration::from_secs(10));
    let mut drain = tokio::spawn(drain);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !drain.is_finished(),
        "drain resolved with a request in flight"
    );
    let result = (&mut drain).await.unwrap();
    assert_eq!(result, DrainResult::Drained);
    assert_eq!(slow.await.unwrap(), (200, "old".into()));
    assert_eq!(proxy.proxy.in_flight(old.addr), 0);
    assert_eq!(old.hits(), 1);
}

#[tokio::test]
async fn drain_times_out_and_says_how_many_are_left() {
    let old = Upstream::start("old").await;
    let proxy = TestProxy::start().await;
    proxy
        .proxy
        .set_routes(vec![route("web", "*", "/", vec![group("r1", 1, &[&old])])])
        .unwrap();
    let c = client();
    let mut slow = Vec::new();
    for _ in 0..2 {
        let (c, url) = (c.clone(), proxy.url("/slow/3000"));
        slow.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status()
        }));
    }
    while proxy.proxy.in_flight(old.addr) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.proxy.set_routes(Vec::new()).unwrap();
    let result = proxy
        .proxy
        .drain(old.addr, Duration::from_millis(100))
        .await;
    assert_eq!(result, DrainResult::TimedOut { in_flight: 2 });
    for request in slow {
        assert_eq!(request.await.unwrap(), 200);
    }
    let result = proxy.proxy.drain(old.addr, Duration::from_secs(1)).await;
    assert_eq!(result, DrainResult::Drained);
}

#[tokio::test]
async fn a_streaming_response_counts_in_flight_until_its_last_chunk() {
    let old = Upstream::start("old").await;
    let proxy = TestProxy::start().await;
    proxy
        .proxy
        .set_routes(vec![route("web", "*", "/", vec![group("r1", 1, &[&old])])])
        .unwrap();
    let mut response = client().get(proxy.url("/stream")).send().await.unwrap();
    // Headers are here, the body is still coming.
    assert_eq!(proxy.proxy.in_flight(old.addr), 1);
    proxy.proxy.set_routes(Vec::new()).unwrap();
    let drain = tokio::spawn(proxy.proxy.drain(old.addr, Duration::from_secs(10)));
    let mut body = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.push_str(std::str::from_utf8(&chunk).unwrap());
        // The last chunk and the end of the body travel together; before it, the
        // response is still in flight.
        if !body.ends_with("chunk4\n") {
            assert!(!drain.is_finished(), "drained with {body:?} sent");
            assert_eq!(proxy.proxy.in_flight(old.addr), 1);
        }
    }
    assert_eq!(body, "chunk0\nchunk1\nchunk2\nchunk3\nchunk4\n");
    assert_eq!(drain.await.unwrap(), DrainResult::Drained);
}

#[tokio::test]
async fn a_get_to_a_dead_upstream_is_retried_on_another() {
    let live = Upstream::start("live").await;
    let dead = dead_addr();
    let proxy = TestProxy::start().await;
    let mut g = group("r1", 1, &[&live]);
    g.upstreams.insert(0, dead);
    proxy
        .proxy
        .set_routes(vec![route("web", "*", "/", vec![g])])
        .unwrap();
    let c = client();
    for _ in 0..6 {
        assert_eq!(get(&c, &proxy, "x", "/").await, (200, "live".into()));
    }
    assert_eq!(live.hits(), 6);
}

#[tokio::test]
async fn a_post_with_a_body_to_a_dead_upstream_is_not_retried() {
    let live = Upstream::start("live").await;
    let dead = dead_addr();
    let proxy = TestProxy::start().await;
    let mut g = group("r1", 1, &[&live]);
    g.upstreams.insert(0, dead);
    proxy
        .proxy
        .set_routes(vec![route("web", "*", "/", vec![g])])
        .unwrap();
    let response = client()
        .post(proxy.url("/echo"))
        .body("order=42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(live.hits(), 0);
    // The dead upstream is now marked failed: round robin would come back to it, but the
    // next POSTs all go to the live one.
    for order in 43..47 {
        let response = client()
            .post(proxy.url("/echo"))
            .body(format!("order={order}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), format!("order={order}"));
    }
    let metrics = proxy.proxy.metrics();
    assert_eq!(metrics.group("web", "r1").unwrap().errors_5xx, 1);
}

#[tokio::test]
async fn retries_stop_after_the_configured_number() {
    let proxy = TestProxy::start_with(ProxyConfig {
        http: vec!["127.0.0.1:0".parse().unwrap()],
        retries: 1,
        ..ProxyConfig::default()
    })
    .await;
    let live = Upstream::start("live").await;
    let mut g = group("r1", 1, &[&live]);
    g.upstreams = vec![dead_addr(), dead_addr(), live.addr];
    proxy
        .proxy
        .set_routes(vec![route("web", "*", "/", vec![g])])
        .unwrap();
    // Round robin starts at the first dead one: two dead in a row exhaust one retry.
    assert_eq!(get(&client(), &proxy, "x", "/").await.0, 502);
    assert_eq!(live.hits(), 0);
    // Both dead ones are now marked failed and skipped.
    assert_eq!(get(&client(), &proxy, "x", "/").await, (200, "live".into()));
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish() {
    let web = Upstream::start("web").await;
    let proxy = TestProxy::start().await;
    proxy
        .proxy
        .set_routes(vec![route("web", "*", "/", vec![group("r1", 1, &[&web])])])
        .unwrap();
    let slow = {
        let (c, url) = (client(), proxy.url("/slow/500"));
        tokio::spawn(async move { c.get(url).send().await.unwrap().text().await.unwrap() })
    };
    while proxy.proxy.in_flight(web.addr) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let addr = proxy.addr;
    proxy.shutdown().await;
    assert_eq!(slow.await.unwrap(), "web");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn worker_threads_share_the_port_the_table_and_the_counters() {
    let web = Upstream::start("web").await;
    let proxy = TestProxy::start_with(ProxyConfig {
        http: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        ..ProxyConfig::default()
    })
    .await;
    proxy
        .proxy
        .set_routes(vec![route("web", "*", "/", vec![group("r1", 1, &[&web])])])
        .unwrap();
    // A new connection per request, so that the kernel spreads them over both workers.
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..20 {
        assert_eq!(get(&fresh, &proxy, "x", "/").await, (200, "web".into()));
    }
    let threads = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with("berth-proxy-"))
        .count();
    assert_eq!(threads, 2);
    assert_eq!(proxy.proxy.metrics().route("web").unwrap().requests, 20);
    let slow = {
        let (c, url) = (client(), proxy.url("/slow/500"));
        tokio::spawn(async move { c.get(url).send().await.unwrap().text().await.unwrap() })
    };
    while proxy.proxy.in_flight(web.addr) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let addr = proxy.addr;
    proxy.shutdown().await;
    assert_eq!(slow.await.unwrap(), "web");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn an_upstream_that_hangs_up_after_the_request_is_not_retried() {
    // It accepts, reads the request and closes: the request did reach it, so a retry could
    // run it twice.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closer = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
        }
    });
    let live = Upstream::start("live").await;
    let proxy = TestProxy::start().await;
    let mut g = group("r1", 1, &[&live]);
    g.upstreams.insert(0, closer);
    proxy
        .proxy
        .set_routes(vec![route("web", "*", "/", vec![g])])
        .unwrap();
    let (status, body) = get(&client(), &proxy, "x", "/").await;
    assert_eq!(status, 502);
    assert_eq!(body, "the upstream failed to answer\n");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(live.hits(), 0);
}
