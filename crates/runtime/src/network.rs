//! Container networking through the standard CNI plugins, which berth runs itself.
//!
//! Each container gets a persistent network namespace ([`Netns`]) and, on [`Network::attach`]:
//! `loopback` (brings `lo` up), then `bridge` (a veth to the host bridge, an address from
//! `host-local` in berth's own IPAM directory, a default route via the bridge, optional
//! masquerade), then `portmap` when ports are published. [`Network::detach`] runs DEL in
//! reverse order and is safe to repeat, also after the namespace is gone.
//!
//! The `firewall` plugin is not used: it only adds FORWARD accept rules, which matter when
//! the FORWARD policy is DROP; berth's own traffic (host to container, container to
//! container on one bridge) never crosses FORWARD.

mod cni;
mod files;
mod netns;
mod ports;
mod subnet;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

pub use files::{host_nameservers, write_hostname, write_hosts, write_resolv_conf};
pub use netns::Netns;
pub use ports::{PortMapping, PortMappingError, Protocol};
pub use subnet::Ipv4Subnet;

use cni::{Call, Op, CONTAINER_IFNAME};

/// How containers on this node are networked (the `[network]` config section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// The CNI network name; it names host-local's state and the plugins' iptables chains.
    pub name: String,
    /// The host bridge (at most 15 characters); the bridge plugin creates it on first use.
    pub bridge: String,
    /// The IPv4 network containers get addresses from.
    pub subnet: Ipv4Subnet,
    /// The bridge's address; the first host address of `subnet` when unset.
    pub gateway: Option<Ipv4Addr>,
    /// Where the CNI plugin binaries are.
    pub cni_bin_dir: PathBuf,
    /// host-local's lease directory. berth's own, so it never mixes with other CNI users'
    /// state in /var/lib/cni.
    pub ipam_data_dir: PathBuf,
    /// Whether containers' traffic to other networks is masqueraded behind the host.
    pub masquerade: bool,
    /// Nameservers for containers; when empty, the host's non-loopback ones.
    pub dns: Vec<IpAddr>,
}

impl NetworkConfig {
    /// The bridge's address: `gateway`, or the first host address of `subnet`.
    pub fn gateway_address(&self) -> Ipv4Addr {
        self.gateway.unwrap_or_else(|| self.subnet.first_host())
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            name: "berth".into(),
            bridge: "berth0".into(),
            subnet: subnet::DEFAULT_SUBNET,
            gateway: None,
            cni_bin_dir: "/usr/lib/cni".into(),
            ipam_data_dir: "/var/lib/berth/cni/ipam".into(),
            masquerade: true,
            dns: Vec::new(),
        }
    }
}

/// What a container got from [`Network::attach`]. Persist it (it is JSON-serializable) and
/// hand it back to [`Network::detach`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The container's address.
    pub ip: Ipv4Addr,
    /// The prefix length of the container's network.
    pub prefix_len: u8,
    /// The default gateway (the bridge).
    pub gateway: Ipv4Addr,
    /// The MAC address of the container's interface.
    pub mac: Option<String>,
    /// The interface inside the container (`eth0`).
    pub interface: String,
    /// The final CNI result, passed to the plugins as `prevResult` on DEL.
    pub result: serde_json::Value,
}

/// What went wrong while networking a container.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A config value is unusable.
    #[error("invalid network config {field}: {reason}")]
    InvalidConfig {
        /// The config key.
        field: &'static str,
        /// What was wrong and what to write instead.
        reason: String,
    },
    /// A container id CNI would reject.
    #[error("invalid container id {id:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit")]
    InvalidContainerId {
        /// The id.
        id: String,
    },
    /// A host name that cannot go into /etc/hosts or /etc/hostname.
    #[error("invalid host name {name:?}: {reason}")]
    InvalidHostname {
        /// The name.
        name: String,
        /// What is allowed.
        reason: &'static str,
    },
    /// A port mapping this network cannot set up.
    #[error("cannot publish port {mapping}: {reason}")]
    UnsupportedPort {
        /// The mapping, as `-p` would spell it.
        mapping: String,
        /// Why, and what to do.
        reason: &'static str,
    },
    /// attach was given a path with no network namespace mounted on it.
    #[error("no network namespace is mounted at {path}: create it with Netns::create first")]
    NetnsMissing {
        /// The path.
        path: PathBuf,
    },
    /// Netns::create found a namespace already mounted at the path.
    #[error(
        "a network namespace is already mounted at {path}: remove it before creating a new one"
    )]
    NetnsExists {
        /// The path.
        path: PathBuf,
    },
    /// A plugin binary is not where the config says.
    #[error("cni plugin {plugin} not found in {dir}: install the CNI plugins (Debian: containernetworking-plugins) or set cni_bin_dir")]
    PluginMissing {
        /// The plugin type.
        plugin: String,
        /// The directory searched.
        dir: PathBuf,
    },
    /// A plugin could not be started.
    #[error("could not run cni plugin {plugin}: {source}")]
    PluginSpawn {
        /// The plugin type.
        plugin: String,
        /// The OS error.
        source: io::Error,
    },
    /// A plugin reported a CNI error.
    #[error("cni plugin {plugin} {op} failed with code {code}: {msg}{}", details_suffix(.details))]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// ADD or DEL.
        op: &'static str,
        /// The CNI error code (1-99 are the spec's, e.g. 7 is an invalid network config).
        code: u32,
        /// The plugin's message.
        msg: String,
        /// The plugin's details, if any.
        details: String,
    },
    /// A plugin failed without printing a CNI error.
    #[error("cni plugin {plugin} {op} exited with {status} without a cni error: {output}")]
    PluginCrashed {
        /// The plugin type.
        plugin: String,
        /// ADD or DEL.
        op: &'static str,
        /// The exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// A plugin's result is not what berth needs.
    #[error("cni plugin {plugin} returned a result berth cannot use: {detail}")]
    PluginResult {
        /// The plugin type.
        plugin: String,
        /// What was wrong with it.
        detail: String,
    },
    /// A host tool (unshare, umount, ip) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Tool {
        /// The command line.
        command: String,
        /// The exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A host tool could not be started.
    #[error("could not run {program}: {source}; it comes with util-linux or iproute2, install it")]
    ToolSpawn {
        /// The program.
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// A file operation failed.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// What berth was doing.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}

/// A CNI bridge network that containers are attached to and detached from.
#[derive(Debug, Clone)]
pub struct Network {
    config: NetworkConfig,
}

impl Network {
    /// Checks the config.
    pub fn new(config: NetworkConfig) -> Result<Network, NetworkError> {
        validate(&config)?;
        Ok(Network { config })
    }

    /// The config this network was made from.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Wires the container's namespace at `netns` to the bridge and publishes `ports`.
    /// On failure, whatever was already set up is deleted again before the error returns.
    pub fn attach(
        &self,
        container_id: &str,
        netns: &Path,
        ports: &[PortMapping],
    ) -> Result<Attachment, NetworkError> {
        check_container_id(container_id)?;
        check_ports(ports)?;
        if !Netns::is_mounted(netns) {
            return Err(NetworkError::NetnsMissing {
                path: netns.to_owned(),
            });
        }
        fs::create_dir_all(&self.config.ipam_data_dir).map_err(|source| NetworkError::Io {
            action: "create the IPAM directory",
            path: self.config.ipam_data_dir.clone(),
            source,
        })?;
        let mut last_result = None;
        let attached = self.add_chain(container_id, netns, ports, &mut last_result);
        if attached.is_err() {
            if let Err(error) =
                self.del_chain(container_id, Some(netns), last_result.as_ref(), ports, None)
            {
                tracing::warn!(container_id, %error, "cleanup after a failed attach failed");
            }
        }
        attached
    }

    fn add_chain(
        &self,
        container_id: &str,
        netns: &Path,
        ports: &[PortMapping],
        last_result: &mut Option<serde_json::Value>,
    ) -> Result<Attachment, NetworkError> {
        let call = |ifname| Call {
            op: Op::Add,
            bin_dir: &self.config.cni_bin_dir,
            container_id,
            netns: Some(netns),
            ifname,
        };
        self.run(call("lo"), cni::loopback_conf(), None)?;
        *last_result = self.run(call(CONTAINER_IFNAME), cni::bridge_conf(&self.config), None)?;
        if !ports.is_empty() {
            let result = self.run(
                call(CONTAINER_IFNAME),
                cni::portmap_conf(ports),
                last_result.as_ref(),
            )?;
            if result.is_some() {
                *last_result = result;
            }
        }
        let result = last_result
            .clone()
            .ok_or_else(|| NetworkError::PluginResult {
                plugin: "bridge".into(),
                detail: "ADD printed no result".into(),
            })?;
        cni::attachment_from_result(result)
    }

    /// Undoes [`attach`](Network::attach): removes the port mappings, the veth, the
    /// masquerade rules and the address lease. Succeeds when there is nothing left to undo:
    /// when called twice, when the namespace is already gone, and when `attachment` was lost
    /// (then `ports` may be empty too: the port rules are found by container id).
    pub fn detach(
        &self,
        container_id: &str,
        netns: &Path,
        attachment: Option<&Attachment>,
        ports: &[PortMapping],
    ) -> Result<(), NetworkError> {
        check_container_id(container_id)?;
        let live = Netns::is_mounted(netns).then_some(netns);
        // With the namespace gone, the lease tells whether the bridge plugin's DEL is still
        // to run (and on which address); a second detach finds none.
        let lost_ip = match live {
            Some(_) => None,
            None => self.leased_ip(container_id),
        };
        self.del_chain(
            container_id,
            live,
            attachment.map(|a| &a.result),
            ports,
            lost_ip,
        )
    }

    /// DEL for every plugin of the chain, in reverse order; all run even if one fails, and
    /// the first error is returned.
    fn del_chain(
        &self,
        container_id: &str,
        netns: Option<&Path>,
        prev_result: Option<&serde_json::Value>,
        ports: &[PortMapping],
        lost_ip: Option<Ipv4Addr>,
    ) -> Result<(), NetworkError> {
        let call = |ifname, netns| Call {
            op: Op::Del,
            bin_dir: &self.config.cni_bin_dir,
            container_id,
            netns,
            ifname,
        };
        // portmap's DEL does nothing when handed no mappings, yet removes the container's
        // rules by container id whatever mappings it is handed. So with the real ones lost,
        // a stand-in mapping still gets the rules removed.
        let stand_in_ports = [PortMapping {
            host_ip: None,
            host_port: 1,
            container_port: 1,
            protocol: Protocol::Tcp,
        }];
        let portmap = self.run(
            call(CONTAINER_IFNAME, netns),
            cni::portmap_conf(if ports.is_empty() {
                &stand_in_ports
            } else {
                ports
            }),
            prev_result,
        );
        let bridge = match (netns, lost_ip) {
            (None, Some(ip)) if self.config.masquerade => {
                self.del_bridge_with_stand_in(container_id, ip, prev_result)
            }
            _ => self.run(
                call(CONTAINER_IFNAME, netns),
                cni::bridge_conf(&self.config),
                prev_result,
            ),
        };
        let loopback = self.run(call("lo", netns), cni::loopback_conf(), None);
        portmap.and(bridge).and(loopback).map(drop)
    }

    /// The bridge plugin finds the masquerade rules to delete through the addresses on the
    /// container's interface; with the namespace gone it would release the lease but leave
    /// the rules. So DEL runs against a stand-in namespace whose `eth0` carries the address.
    fn del_bridge_with_stand_in(
        &self,
        container_id: &str,
        ip: Ipv4Addr,
        prev_result: Option<&serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, NetworkError> {
        // host-local only reads <dataDir>/<network name>, and network names cannot start
        // with '.', so this never collides with lease state.
        let path = self
            .config
            .ipam_data_dir
            .join(".stand-in")
            .join(container_id);
        let result = (|| {
            let stand_in = Netns::create(&path)?;
            let mut net = std::ffi::OsString::from("--net=");
            net.push(stand_in.path());
            let in_ns = |args: &[&str]| {
                let args = args.iter().map(OsStr::new);
                run_tool("nsenter", std::iter::once(net.as_os_str()).chain(args)).map(drop)
            };
            in_ns(&[
                "ip",
                "link",
                "add",
                CONTAINER_IFNAME,
                "type",
                "veth",
                "peer",
                "name",
                "stand-in",
            ])?;
            let address = format!("{ip}/{}", self.config.subnet.prefix_len());
            in_ns(&["ip", "addr", "add", &address, "dev", CONTAINER_IFNAME])?;
            self.run(
                Call {
                    op: Op::Del,
                    bin_dir: &self.config.cni_bin_dir,
                    container_id,
                    netns: Some(stand_in.path()),
                    ifname: CONTAINER_IFNAME,
                },
                cni::bridge_conf(&self.config),
                prev_result,
            )
        })();
        let removed = Netns::remove(&path);
        let result = result?;
        removed.map(|()| result)
    }

    /// The address host-local leased to `container_id`: its lease files are named after the
    /// address and hold the container id on their first line.
    fn leased_ip(&self, container_id: &str) -> Option<Ipv4Addr> {
        let dir = self.config.ipam_data_dir.join(&self.config.name);
        fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
            let ip: Ipv4Addr = entry.file_name().to_str()?.parse().ok()?;
            let owner = fs::read_to_string(entry.path()).ok()?;
            (owner.lines().next()?.trim() == container_id).then_some(ip)
        })
    }

    fn run(
        &self,
        call: Call<'_>,
        conf: serde_json::Value,
        prev_result: Option<&serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, NetworkError> {
        cni::invoke(
            call,
            &cni::plugin_conf(&self.config.name, conf, prev_result),
        )
    }

    /// The nameservers for containers' resolv.conf: `dns` from the config, else the host's
    /// non-loopback ones from /etc/resolv.conf (possibly none).
    pub fn nameservers(&self) -> Vec<IpAddr> {
        if self.config.dns.is_empty() {
            host_nameservers(Path::new("/etc/resolv.conf"))
        } else {
            self.config.dns.clone()
        }
    }

    /// Deletes the host bridge if it exists. The bridge plugin creates it but never deletes
    /// it, so this is for tests and for taking berth off a node.
    pub fn remove_bridge(&self) -> Result<(), NetworkError> {
        let sysfs = Path::new("/sys/class/net").join(&self.config.bridge);
        if !sysfs.exists() {
            return Ok(());
        }
        match run_tool("ip", ["link", "del", self.config.bridge.as_str()]) {
            Err(_) if !sysfs.exists() => Ok(()),
            other => other.map(drop),
        }
    }
}

fn validate(config: &NetworkConfig) -> Result<(), NetworkError> {
    let invalid = |field, reason: String| Err(NetworkError::InvalidConfig { field, reason });
    if !is_cni_name(&config.name) {
        return invalid(
            "name",
            format!(
                "{:?} is not a CNI network name: use letters, digits, '_', '.' and '-', starting with a letter or digit",
                config.name
            ),
        );
    }
    let bridge = &config.bridge;
    if bridge.is_empty()
        || bridge.len() > 15
        || !bridge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return invalid(
            "bridge",
            format!(
                "{bridge:?} is not an interface name: use 1 to 15 letters, digits, '_', '.' or '-'"
            ),
        );
    }
    if let Some(gateway) = config.gateway {
        let subnet = config.subnet;
        if !subnet.contains(gateway) || gateway == subnet.addr() || gateway == subnet.broadcast() {
            return invalid(
                "gateway",
                format!("{gateway} is not a host address in subnet {subnet}"),
            );
        }
    }
    for (field, dir) in [
        ("cni_bin_dir", &config.cni_bin_dir),
        ("ipam_data_dir", &config.ipam_data_dir),
    ] {
        if !dir.is_absolute() {
            return invalid(
                field,
                format!("{} is relative: use an absolute path", dir.display()),
            );
        }
    }
    Ok(())
}

/// CNI's rule for network names and container ids.
fn is_cni_name(name: &str) -> bool {
    name.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn check_container_id(id: &str) -> Result<(), NetworkError> {
    if is_cni_name(id) {
        Ok(())
    } else {
        Err(NetworkError::InvalidContainerId { id: id.to_owned() })
    }
}

fn check_ports(ports: &[PortMapping]) -> Result<(), NetworkError> {
    let mut seen = HashSet::new();
    for port in ports {
        let unsupported = |reason| {
            Err(NetworkError::UnsupportedPort {
                mapping: port.to_string(),
                reason,
            })
        };
        if matches!(port.host_ip, Some(IpAddr::V6(_))) {
            return unsupported("berth networks are IPv4-only; use an IPv4 host address or none");
        }
        if !seen.insert((port.host_ip, port.host_port, port.protocol)) {
            return unsupported(
                "the host port is published twice; give each mapping its own host port",
            );
        }
    }
    Ok(())
}

/// Runs a host tool and fails with its stderr if it fails.
fn run_tool<I, S>(program: &str, args: I) -> Result<std::process::Output, NetworkError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.args(args);
    let output = command.output().map_err(|source| NetworkError::ToolSpawn {
        program: program.to_owned(),
        source,
    })?;
    if output.status.success() {
        return Ok(output);
    }
    let args: Vec<_> = command
        .get_args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    Err(NetworkError::Tool {
        command: format!("{program} {}", args.join(" ")),
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}
