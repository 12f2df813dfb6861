//! The Consul-compatible catalog served on a free loopback port, and instances to register.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use berth_discovery::{consul, Catalog, ConsulConfig, Endpoint};

/// The router of `catalog` served on 127.0.0.1; stops when dropped.
pub struct ConsulServer {
    pub url: String,
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl ConsulServer {
    pub async fn start(catalog: Catalog, config: ConsulConfig) -> ConsulServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = consul::router(catalog, config);
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        ConsulServer {
            url: format!("http://127.0.0.1:{port}"),
            port,
            task,
        }
    }
}

impl Drop for ConsulServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The configuration the tests use: a datacenter and node name of their own.
pub fn config() -> ConsulConfig {
    ConsulConfig {
        datacenter: "dc-test".to_owned(),
        node_name: "agent-node".to_owned(),
        node_meta: BTreeMap::from([("rack".to_owned(), "r1".to_owned())]),
    }
}

/// Instance `id` of service `service` of app `shop`, at `address:port` (port named `http`).
pub fn endpoint(id: &str, service: &str, address: &str, port: u16, tags: &[&str]) -> Endpoint {
    Endpoint {
        id: id.to_owned(),
        app: "shop".to_owned(),
        service: service.to_owned(),
        release: 7,
        address: address.parse::<IpAddr>().unwrap(),
        ports: BTreeMap::from([("http".to_owned(), port)]),
        tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
        meta: BTreeMap::from([("team".to_owned(), "blue".to_owned())]),
        node: "node1".to_owned(),
    }
}
