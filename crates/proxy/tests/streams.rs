//! Streaming bodies both ways and WebSocket upgrades through the proxy.
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{client, route, TestProxy};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Serves one request on a free port with `handle`, returning the address.
async fn one_shot_upstream<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<
            Output = Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>,
        > + Send
        + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(move |request| {
            let response = handle(request);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    addr
}

fn only(addr: SocketAddr) -> Vec<berth_proxy::Route> {
    vec![route(
        "web",
        "*",
        "/",
        vec![berth_proxy::Group {
            label: "r1".into(),
            weight: 1,
            upstreams: vec![addr],
        }],
    )]
}

#[tokio::test]
async fn a_streaming_response_arrives_chunk_by_chunk() {
    // The upstream sends its second chunk only after the client has read the first one
    // through the proxy: a proxy that buffered the body would hang here.
    let (chunks_tx, chunks_rx) = mpsc::channel::<Bytes>(1);
    let chunks_rx = std::sync::Mutex::new(Some(chunks_rx));
    let upstream = one_shot_upstream(move |_| {
        let rx = chunks_rx.lock().unwrap().take().unwrap();
        async move {
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
    })
    .await;
    let proxy = TestProxy::start().await;
    proxy.proxy.set_routes(only(upstream)).unwrap();

    let mut response = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    chunks_tx.send(Bytes::from_static(b"first")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("the first chunk was held back by the proxy")
        .unwrap()
        .unwrap();
    assert_eq!(first, "first");
    chunks_tx.send(Bytes::from_static(b"second")).await.unwrap();
    drop(chunks_tx);
    let rest = response.bytes().await.unwrap();
    assert_eq!(rest, "second");
}

#[tokio::test]
async fn a_streaming_request_body_reaches_the_upstream_before_it_ends() {
    // The upstream tells the test when it has the first chunk; only then does the client
    // send the second.
    let (got_first_tx, got_first_rx) = oneshot::channel::<Bytes>();
    let got_first_tx = std::sync::Mutex::new(Some(got_first_tx));
    let upstream = one_shot_upstream(move |request| {
        let got_first = got_first_tx.lock().unwrap().take().unwrap();
        async move {
            let mut body = request.into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            let _ = got_first.send(first.clone());
            let rest = body.collect().await.unwrap().to_bytes();
            let all = [first, rest].concat();
            Response::new(http_body_util::Full::new(Bytes::from(all)).boxed())
        }
    })
    .await;
    let proxy = TestProxy::start().await;
    proxy.proxy.set_routes(only(upstream)).unwrap();

    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(1);
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let request = tokio::spawn(client().put(proxy.url("/upload")).body(body).send());
    body_tx
        .send(Ok(Bytes::from_static(b"part1-")))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), got_first_rx)
        .await
        .expect("the proxy held the request body back")
        .unwrap();
    assert_eq!(first, "part1-");
    body_tx
        .send(Ok(Bytes::from_static(b"part2")))
        .await
        .unwrap();
    drop(body_tx);
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "part1-part2");
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        while let Some(Ok(message)) = ws.next().await {
            if message.is_text() || message.is_binary() {
                ws.send(message).await.unwrap();
            }
        }
    });
    let proxy = TestProxy::start().await;
    proxy.proxy.set_routes(only(upstream)).unwrap();

    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://chat.example/ws", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(format!("hello {i}")));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    // The upgraded connection counts as in flight until it closes.
    assert_eq!(proxy.proxy.in_flight(upstream), 1);
    ws.close(None).await.unwrap();
    drop(ws);
    let drained = proxy.proxy.drain(upstream, Duration::from_secs(10)).await;
    assert_eq!(drained, berth_proxy::DrainResult::Drained);
}
