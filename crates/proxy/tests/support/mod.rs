//! Upstreams, a proxy and clients for the proxy's tests, all on 127.0.0.1 with free ports.
#![allow(clippy::unwrap_used, dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_proxy::{Balance, Group, Proxy, ProxyConfig, Route};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A small HTTP server that says its name. Paths:
/// `/slow/MS` answers after MS milliseconds; `/stream` sends 5 chunks 200 ms apart;
/// `/headers` lists the request's headers as `name: value` lines; `/status/N` answers N;
/// `/echo` returns the request body; anything else answers the name.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    pub async fn start_on(addr: SocketAddr, name: &str) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, name.to_owned(), Arc::clone(&hits), stop_rx));
        Upstream {
            addr,
            name: name.to_owned(),
            hits,
            stop,
            task,
        }
    }

    /// Stops accepting and closes its connections once their requests are answered.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    name: String,
    hits: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = Vec::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let hits = Arc::clone(&hits);
        let mut stop = stop.clone();
        connections.push(tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                hits.fetch_add(1, Ordering::SeqCst);
                answer(name.clone(), request)
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.wait_for(|s| *s) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }));
    }
    drop(listener);
    for connection in connections {
        let _ = connection.await;
    }
}

async fn answer(name: String, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let full = |text: String| Full::new(Bytes::from(text)).boxed();
    let mut response = if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Response::new(full(name.clone()))
    } else if path == "/stream" {
        let chunks = futures::stream::iter(0..5).then(|i| async move {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk{i}\n"))))
        });
        Response::new(BodyExt::boxed(StreamBody::new(chunks)))
    } else if path == "/headers" {
        let mut lines = String::new();
        for (key, value) in request.headers() {
            lines.push_str(&format!("{key}: {}\n", value.to_str().unwrap_or("?")));
        }
        Response::new(full(lines))
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut response = Response::new(full(name.clone()));
        *response.status_mut() = hyper::StatusCode::from_u16(code.parse().unwrap()).unwrap();
        response
    } else if path == "/echo" {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        Response::new(Full::new(body).boxed())
    } else {
        Response::new(full(name.clone()))
    };
    response
        .headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    Ok(response)
}

/// A proxy on a free port serving until dropped.
pub struct TestProxy {
    pub proxy: Proxy,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestProxy {
    pub async fn start() -> TestProxy {
        Self::start_with(ProxyConfig {
            http: vec!["127.0.0.1:0".parse().unwrap()],
            ..ProxyConfig::default()
        })
        .await
    }

    pub async fn start_with(config: ProxyConfig) -> TestProxy {
        let proxy = Proxy::bind(config).await.unwrap();
        let addr = proxy
            .http_addrs()
            .first()
            .copied()
            .unwrap_or_else(|| proxy.https_addrs()[0]);
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let serving = proxy.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
        TestProxy {
            proxy,
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Asks the proxy to stop and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap();
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn group(label: &str, weight: u32, upstreams: &[&Upstream]) -> Group {
    Group {
        label: label.into(),
        weight,
        upstreams: upstreams.iter().map(|u| u.addr).collect(),
    }
}

pub fn route(name: &str, host: &str, prefix: &str, groups: Vec<Group>) -> Route {
    Route {
        name: name.into(),
        host: host.into(),
        path_prefix: prefix.into(),
        balance: Balance::RoundRobin,
        groups,
    }
}

/// GET `path` with Host `host`; the status and the body.
pub async fn get(
    client: &reqwest::Client,
    proxy: &TestProxy,
    host: &str,
    path: &str,
) -> (u16, String) {
    let response = client
        .get(proxy.url(path))
        .header("host", host)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A free port on 127.0.0.1 with nothing listening (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}
