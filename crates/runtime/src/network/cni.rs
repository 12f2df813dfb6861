//! The CNI 1.0.0 protocol as a runtime speaks it: run a plugin binary with the `CNI_*`
//! environment and its config on stdin, read a result or an error back as JSON.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::{json, Value};

use super::{Attachment, NetworkConfig, NetworkError, PortMapping};

/// The CNI spec version berth speaks (plugins 1.1.1 support 0.1.0 to 1.0.0).
pub(super) const CNI_VERSION: &str = "1.0.0";

/// The interface name inside the container.
pub(super) const CONTAINER_IFNAME: &str = "eth0";

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Add,
    Del,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Add => "ADD",
            Op::Del => "DEL",
        }
    }
}

/// One plugin run: which binary, for which container, in which namespace, on which interface.
#[derive(Debug, Clone, Copy)]
pub(super) struct Call<'a> {
    pub(super) op: Op,
    pub(super) bin_dir: &'a Path,
    pub(super) container_id: &'a str,
    /// `None` for a DEL whose namespace is gone (the spec allows an empty `CNI_NETNS` then).
    pub(super) netns: Option<&'a Path>,
    pub(super) ifname: &'a str,
}

/// The error object a plugin prints on failure.
#[derive(Debug, Deserialize)]
struct PluginError {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// Runs the plugin named by `conf["type"]` and returns its result (`None` when it printed
/// nothing, as DEL does).
pub(super) fn invoke(call: Call<'_>, conf: &Value) -> Result<Option<Value>, NetworkError> {
    let plugin = conf["type"].as_str().unwrap_or_default().to_owned();
    let binary = call.bin_dir.join(&plugin);
    if !binary.is_file() {
        return Err(NetworkError::PluginMissing {
            plugin,
            dir: call.bin_dir.to_owned(),
        });
    }
    let stdin = serde_json::to_vec(conf).map_err(|err| NetworkError::PluginResult {
        plugin: plugin.clone(),
        detail: format!("could not encode its config: {err}"),
    })?;
    let mut child = Command::new(&binary)
        // Plugins find iptables and the IPAM plugin through these; stray CNI_ARGS from the
        // caller's environment must not leak in.
        .env_remove("CNI_ARGS")
        .env("CNI_COMMAND", call.op.as_str())
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns.unwrap_or(Path::new("")))
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", call.bin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetworkError::PluginSpawn {
            plugin: plugin.clone(),
            source,
        })?;
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin that exits early closes stdin; its exit status tells why.
        let _ = pipe.write_all(&stdin);
    }
    let output = child
        .wait_with_output()
        .map_err(|source| NetworkError::PluginSpawn {
            plugin: plugin.clone(),
            source,
        })?;
    tracing::debug!(
        plugin,
        op = call.op.as_str(),
        container_id = call.container_id,
        status = %output.status,
        "cni plugin ran"
    );
    if !output.status.success() {
        return Err(plugin_failure(
            &plugin,
            call.op,
            &output.stdout,
            &output.stderr,
            &output.status.to_string(),
        ));
    }
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&output.stdout)
        .map(Some)
        .map_err(|err| NetworkError::PluginResult {
            plugin,
            detail: format!("its output is not JSON: {err}"),
        })
}

/// The error for a failed plugin: its CNI error object if it printed one, else its stderr.
pub(super) fn plugin_failure(
    plugin: &str,
    op: Op,
    stdout: &[u8],
    stderr: &[u8],
    status: &str,
) -> NetworkError {
    match serde_json::from_slice::<PluginError>(stdout) {
        Ok(error) => NetworkError::Plugin {
            plugin: plugin.to_owned(),
            op: op.as_str(),
            code: error.code,
            msg: error.msg,
            details: error.details,
        },
        Err(_) => NetworkError::PluginCrashed {
            plugin: plugin.to_owned(),
            op: op.as_str(),
            status: status.to_owned(),
            output: String::from_utf8_lossy(if stderr.is_empty() { stdout } else { stderr })
                .trim()
                .to_owned(),
        },
    }
}

/// A plugin's config as a runtime hands it over: the network's name and version added, and
/// the previous plugin's result when there is one.
pub(super) fn plugin_conf(network: &str, mut conf: Value, prev_result: Option<&Value>) -> Value {
    conf["cniVersion"] = json!(CNI_VERSION);
    conf["name"] = json!(network);
    if let Some(prev) = prev_result {
        conf["prevResult"] = prev.clone();
    }
    conf
}

/// Brings `lo` up inside the namespace.
pub(super) fn loopback_conf() -> Value {
    json!({ "type": "loopback" })
}

/// A veth from the namespace to the bridge, with an address from berth's own host-local
/// store and a default route through the bridge.
pub(super) fn bridge_conf(config: &NetworkConfig) -> Value {
    let mut range = json!({ "subnet": config.subnet.to_string() });
    if let Some(gateway) = config.gateway {
        range["gateway"] = json!(gateway);
    }
    json!({
        "type": "bridge",
        "bridge": config.bridge,
        "isGateway": true,
        "ipMasq": config.masquerade,
        // Lets a container reach itself through its own published port.
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "dataDir": config.ipam_data_dir,
            "ranges": [[range]],
            "routes": [{ "dst": "0.0.0.0/0" }],
        },
    })
}

/// DNAT from host ports to the container. `snat` makes the plugin masquerade connections
/// from the host's loopback and set `route_localnet` on the bridge, without which
/// `127.0.0.1:HOSTPORT` cannot reach the container (the kernel drops 127/8 sources that
/// leave the loopback device).
pub(super) fn portmap_conf(ports: &[PortMapping]) -> Value {
    let mappings: Vec<Value> = ports
        .iter()
        .map(|port| {
            let mut mapping = json!({
                "hostPort": port.host_port,
                "containerPort": port.container_port,
                "protocol": port.protocol.as_str(),
            });
            if let Some(ip) = port.host_ip {
                mapping["hostIP"] = json!(ip);
            }
            mapping
        })
        .collect();
    json!({
        "type": "portmap",
        "capabilities": { "portMappings": true },
        "snat": true,
        "runtimeConfig": { "portMappings": mappings },
    })
}

/// The container's address, gateway and interface from a CNI result.
pub(super) fn attachment_from_result(result: Value) -> Result<Attachment, NetworkError> {
    #[derive(Deserialize)]
    struct Interface {
        name: String,
        #[serde(default)]
        mac: Option<String>,
        #[serde(default)]
        sandbox: Option<String>,
    }
    #[derive(Deserialize)]
    struct IpConfig {
        #[serde(default)]
        interface: Option<usize>,
        address: String,
        #[serde(default)]
        gateway: Option<String>,
    }
    #[derive(Deserialize)]
    struct CniResult {
        #[serde(default)]
        interfaces: Vec<Interface>,
        #[serde(default)]
        ips: Vec<IpConfig>,
    }
    let bad = |detail: String| NetworkError::PluginResult {
        plugin: "bridge".into(),
        detail,
    };
    let parsed = CniResult::deserialize(&result).map_err(|err| bad(err.to_string()))?;
    let in_container = |ip: &IpConfig| {
        ip.interface
            .and_then(|i| parsed.interfaces.get(i))
            .is_none_or(|iface| iface.sandbox.is_some())
    };
    let (ip_config, ip, prefix_len) = parsed
        .ips
        .iter()
        .filter(|ip| in_container(ip))
        .find_map(|ip| {
            let (addr, prefix) = ip.address.split_once('/')?;
            Some((
                ip,
                addr.parse::<Ipv4Addr>().ok()?,
                prefix.parse::<u8>().ok()?,
            ))
        })
        .ok_or_else(|| bad("it has no IPv4 address for the container".into()))?;
    let gateway = ip_config
        .gateway
        .as_deref()
        .and_then(|gw| gw.parse().ok())
        .ok_or_else(|| bad(format!("it has no IPv4 gateway for {ip}")))?;
    let iface = ip_config.interface.and_then(|i| parsed.interfaces.get(i));
    Ok(Attachment {
        ip,
        prefix_len,
        gateway,
        mac: iface.and_then(|iface| iface.mac.clone()),
        interface: iface.map_or_else(|| CONTAINER_IFNAME.to_owned(), |iface| iface.name.clone()),
        result,
    })
}
