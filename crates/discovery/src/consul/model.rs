//! Consul's JSON shapes, field for field as Consul's own API client (`github.com/hashicorp/
//! consul/api`) decodes them, built from catalog [`Endpoint`]s. Every instance in berth's
//! catalog passed its health check, so every check shown here passes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::catalog::Endpoint;

/// Who and where the answering agent is; the same for every instance shown.
#[derive(Debug, Clone)]
pub struct NodeInfo<'a> {
    /// The datacenter name.
    pub datacenter: &'a str,
    /// The node metadata shown for every node.
    pub node_meta: &'a BTreeMap<String, String>,
}

/// The index fields of one instance: berth keeps one index per service, the one at which its
/// set of instances last changed, and shows it as both.
#[derive(Debug, Clone, Copy)]
pub struct Indexes {
    /// `CreateIndex`.
    pub create: u64,
    /// `ModifyIndex`.
    pub modify: u64,
}

/// An object with no fields, `{}` in JSON (Consul shows empty proxy and connect settings so).
#[derive(Debug, Serialize)]
pub struct Empty {}

/// `ServiceProxy` / `Proxy` of a plain (non-mesh) service.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Proxy {
    mesh_gateway: Empty,
    expose: Empty,
}

impl Proxy {
    fn none() -> Proxy {
        Proxy {
            mesh_gateway: Empty {},
            expose: Empty {},
        }
    }
}

/// `ServiceWeights` / `Weights`: DNS SRV weights when passing or warning.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    passing: u32,
    warning: u32,
}

/// One entry of `ServiceTaggedAddresses`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceAddress {
    address: String,
    port: u16,
}

/// An element of `GET /v1/catalog/service/<name>`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogService {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    datacenter: String,
    tagged_addresses: BTreeMap<String, String>,
    node_meta: BTreeMap<String, String>,
    service_kind: &'static str,
    #[serde(rename = "ServiceID")]
    service_id: String,
    service_name: String,
    service_tags: Vec<String>,
    service_address: String,
    service_tagged_addresses: BTreeMap<String, ServiceAddress>,
    service_weights: Weights,
    service_meta: BTreeMap<String, String>,
    service_port: u16,
    service_socket_path: &'static str,
    service_enable_tag_override: bool,
    service_proxy: Proxy,
    service_connect: Empty,
    create_index: u64,
    modify_index: u64,
}

/// `Node` of a health entry.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    datacenter: String,
    tagged_addresses: BTreeMap<String, String>,
    meta: BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
}

/// A service as the agent and the health endpoint show it (`AgentService`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    kind: &'static str,
    #[serde(rename = "ID")]
    id: String,
    service: String,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    port: u16,
    address: String,
    socket_path: &'static str,
    tagged_addresses: BTreeMap<String, ServiceAddress>,
    weights: Weights,
    enable_tag_override: bool,
    proxy: Proxy,
    connect: Empty,
    datacenter: String,
    create_index: u64,
    modify_index: u64,
}

/// A health check (`HealthCheck`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    node: String,
    #[serde(rename = "CheckID")]
    check_id: String,
    name: String,
    status: &'static str,
    notes: &'static str,
    output: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
    service_name: String,
    service_tags: Vec<String>,
    #[serde(rename = "Type")]
    check_type: &'static str,
    interval: &'static str,
    timeout: &'static str,
    exposed_port: u16,
    definition: Empty,
    create_index: u64,
    modify_index: u64,
}

/// An element of `GET /v1/health/service/<name>`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    node: Node,
    service: AgentService,
    checks: Vec<HealthCheck>,
}

/// `GET /v1/agent/self`, reduced to what clients read: the datacenter and the node name. Every
/// top-level value must stay an object: Consul's Go client (Prometheus) decodes the answer as
/// `map[string]map[string]interface{}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentSelf {
    config: AgentConfig,
    member: Member,
    meta: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct AgentConfig {
    datacenter: String,
    primary_datacenter: String,
    node_name: String,
    #[serde(rename = "NodeID")]
    node_id: String,
    server: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Member {
    name: String,
    tags: BTreeMap<String, String>,
    status: u8,
}

impl AgentSelf {
    /// The agent `node_name` of `info`.
    pub fn new(info: &NodeInfo<'_>, node_name: &str) -> AgentSelf {
        AgentSelf {
            config: AgentConfig {
                datacenter: info.datacenter.to_owned(),
                primary_datacenter: info.datacenter.to_owned(),
                node_name: node_name.to_owned(),
                node_id: node_id(node_name),
                server: true,
            },
            member: Member {
                name: node_name.to_owned(),
                tags: BTreeMap::from([
                    ("dc".to_owned(), info.datacenter.to_owned()),
                    ("role".to_owned(), "consul".to_owned()),
                ]),
                // Serf's "alive".
                status: 1,
            },
            meta: info.node_meta.clone(),
        }
    }
}

/// A stable UUID-shaped node id derived from the node name (Consul node ids are UUIDs): two
/// 64-bit FNV-1a hashes of the name with different offsets.
pub fn node_id(node: &str) -> String {
    fn fnv1a(offset: u64, bytes: &[u8]) -> u64 {
        bytes.iter().fold(offset, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
    let high = fnv1a(0xcbf2_9ce4_8422_2325, node.as_bytes());
    let low = fnv1a(0x6c62_272e_07bb_0142, node.as_bytes());
    let hex = format!("{high:016x}{low:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The tagged-address key of an address's family (`lan_ipv4` or `lan_ipv6`).
fn lan_key(address: IpAddr) -> &'static str {
    match address {
        IpAddr::V4(_) => "lan_ipv4",
        IpAddr::V6(_) => "lan_ipv6",
    }
}

/// The node's tagged addresses. berth knows the instance's address, not the node's, so the
/// instance's address stands for the node's.
fn node_tagged_addresses(endpoint: &Endpoint) -> BTreeMap<String, String> {
    let address = endpoint.address.to_string();
    BTreeMap::from([
        ("lan".to_owned(), address.clone()),
        (lan_key(endpoint.address).to_owned(), address),
    ])
}

fn service_tagged_addresses(endpoint: &Endpoint) -> BTreeMap<String, ServiceAddress> {
    BTreeMap::from([(
        lan_key(endpoint.address).to_owned(),
        ServiceAddress {
            address: endpoint.address.to_string(),
            port: endpoint.main_port(),
        },
    )])
}

/// The service metadata: the instance's own metadata from berth.toml, plus berth's keys
/// (`berth_app`, `berth_service`, `berth_release`, and `berth_port_<name>` for each named
/// port), which take precedence over same-named keys of its own.
pub fn service_meta(endpoint: &Endpoint) -> BTreeMap<String, String> {
    let mut meta = endpoint.meta.clone();
    meta.insert("berth_app".to_owned(), endpoint.app.clone());
    meta.insert("berth_service".to_owned(), endpoint.service.clone());
    meta.insert("berth_release".to_owned(), endpoint.release.to_string());
    for (name, port) in &endpoint.ports {
        meta.insert(format!("berth_port_{name}"), port.to_string());
    }
    meta
}

fn weights() -> Weights {
    Weights {
        passing: 1,
        warning: 1,
    }
}

impl CatalogService {
    /// The catalog view of `endpoint`.
    pub fn new(endpoint: &Endpoint, info: &NodeInfo<'_>, indexes: Indexes) -> CatalogService {
        CatalogService {
            id: node_id(&endpoint.node),
            node: endpoint.node.clone(),
            address: endpoint.address.to_string(),
            datacenter: info.datacenter.to_owned(),
            tagged_addresses: node_tagged_addresses(endpoint),
            node_meta: info.node_meta.clone(),
            service_kind: "",
            service_id: endpoint.id.clone(),
            service_name: endpoint.name(),
            service_tags: endpoint.tags.clone(),
            service_address: endpoint.address.to_string(),
            service_tagged_addresses: service_tagged_addresses(endpoint),
            service_weights: weights(),
            service_meta: service_meta(endpoint),
            service_port: endpoint.main_port(),
            service_socket_path: "",
            service_enable_tag_override: false,
            service_proxy: Proxy::none(),
            service_connect: Empty {},
            create_index: indexes.create,
            modify_index: indexes.modify,
        }
    }
}

impl AgentService {
    /// The agent's view of `endpoint`.
    pub fn new(endpoint: &Endpoint, info: &NodeInfo<'_>, indexes: Indexes) -> AgentService {
        AgentService {
            kind: "",
            id: endpoint.id.clone(),
            service: endpoint.name(),
            tags: endpoint.tags.clone(),
            meta: service_meta(endpoint),
            port: endpoint.main_port(),
            address: endpoint.address.to_string(),
            socket_path: "",
            tagged_addresses: service_tagged_addresses(endpoint),
            weights: weights(),
            enable_tag_override: false,
            proxy: Proxy::none(),
            connect: Empty {},
            datacenter: info.datacenter.to_owned(),
            create_index: indexes.create,
            modify_index: indexes.modify,
        }
    }
}

impl ServiceEntry {
    /// The health view of `endpoint`: its node, the service, and two passing checks, the
    /// node's (`serfHealth`, as every Consul node has) and the instance's own.
    pub fn new(endpoint: &Endpoint, info: &NodeInfo<'_>, indexes: Indexes) -> ServiceEntry {
        let node = Node {
            id: node_id(&endpoint.node),
            node: endpoint.node.clone(),
            address: endpoint.address.to_string(),
            datacenter: info.datacenter.to_owned(),
            tagged_addresses: node_tagged_addresses(endpoint),
            meta: info.node_meta.clone(),
            create_index: indexes.create,
            modify_index: indexes.modify,
        };
        let node_check = HealthCheck {
            node: endpoint.node.clone(),
            check_id: "serfHealth".to_owned(),
            name: "Serf Health Status".to_owned(),
            status: "passing",
            notes: "",
            output: "Agent alive and reachable".to_owned(),
            service_id: String::new(),
            service_name: String::new(),
            service_tags: Vec::new(),
            check_type: "",
            interval: "",
            timeout: "",
            exposed_port: 0,
            definition: Empty {},
            create_index: indexes.create,
            modify_index: indexes.modify,
        };
        let service_check = HealthCheck {
            node: endpoint.node.clone(),
            check_id: format!("service:{}", endpoint.id),
            name: format!("Service '{}' check", endpoint.name()),
            status: "passing",
            notes: "",
            output: "berth registers an instance only while its health check passes".to_owned(),
            service_id: endpoint.id.clone(),
            service_name: endpoint.name(),
            service_tags: endpoint.tags.clone(),
            check_type: "berth",
            interval: "",
            timeout: "",
            exposed_port: 0,
            definition: Empty {},
            create_index: indexes.create,
            modify_index: indexes.modify,
        };
        ServiceEntry {
            node,
            service: AgentService::new(endpoint, info, indexes),
            checks: vec![node_check, service_check],
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn node_ids_are_stable_uuid_shaped_and_differ_by_name() {
        let id = node_id("node1");
        assert_eq!(id, node_id("node1"));
        assert_ne!(id, node_id("node2"));
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, vec![8, 4, 4, 4, 12]);
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }

    #[test]
    fn berth_keys_win_over_the_instances_own_metadata() {
        let endpoint = Endpoint {
            id: "a".into(),
            app: "shop".into(),
            service: "web".into(),
            release: 3,
            address: "10.88.0.2".parse().unwrap(),
            ports: BTreeMap::from([("http".into(), 8080), ("admin".into(), 9000)]),
            tags: vec![],
            meta: BTreeMap::from([
                ("team".into(), "blue".into()),
                ("berth_app".into(), "forged".into()),
            ]),
            node: "n".into(),
        };
        let meta = service_meta(&endpoint);
        assert_eq!(meta["team"], "blue");
        assert_eq!(meta["berth_app"], "shop");
        assert_eq!(meta["berth_service"], "web");
        assert_eq!(meta["berth_release"], "3");
        assert_eq!(meta["berth_port_http"], "8080");
        assert_eq!(meta["berth_port_admin"], "9000");
    }
}
