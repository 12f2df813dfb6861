//! Published ports, parsed from docker's `-p` forms and handed to the CNI `portmap` plugin.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default when `-p` names none).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The name CNI and docker use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A host port forwarded to a container port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// The host address to listen on; `None` means every host address.
    #[serde(default)]
    pub host_ip: Option<IpAddr>,
    /// The port on the host.
    pub host_port: u16,
    /// The port inside the container.
    pub container_port: u16,
    /// TCP or UDP.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Why a `-p` value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port mapping {input:?}: {reason}; write it as HOSTPORT:PORT or IP:HOSTPORT:PORT, optionally ending in /tcp or /udp")]
pub struct PortMappingError {
    /// What was given.
    pub input: String,
    /// What was wrong with it.
    pub reason: String,
}

impl PortMapping {
    /// Whether `self` and `other` forward the same host port: same protocol and port, on the
    /// same host address or with one of them on every address.
    pub fn clashes_with(&self, other: &PortMapping) -> bool {
        let every = |ip: Option<IpAddr>| ip.is_none_or(|ip| ip.is_unspecified());
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (every(self.host_ip) || every(other.host_ip) || self.host_ip == other.host_ip)
    }

    /// The host side: `IP:PORT/PROTO`, or `PORT/PROTO` for every host address.
    pub fn host_side(&self) -> String {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{}/{}", self.host_port, self.protocol.as_str()),
            Some(IpAddr::V4(ip)) => format!("{ip}:{}/{}", self.host_port, self.protocol.as_str()),
            None => format!("{}/{}", self.host_port, self.protocol.as_str()),
        }
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.protocol.as_str()
        )
    }
}

impl FromStr for PortMapping {
    type Err = PortMappingError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| PortMappingError {
            input: input.to_owned(),
            reason,
        };
        let (spec, protocol) = match input.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, Protocol::Tcp),
            Some((spec, "udp")) => (spec, Protocol::Udp),
            Some((_, other)) => {
                return Err(fail(format!(
                    "protocol {other:?} is not supported (only tcp and udp)"
                )))
            }
            None => (input, Protocol::Tcp),
        };
        // An IPv6 host address is bracketed, as in docker: [::1]:8080:80.
        let (host_ip, ports) = if let Some(rest) = spec.strip_prefix('[') {
            let (ip, ports) = rest
                .split_once("]:")
                .ok_or_else(|| fail("a bracketed IPv6 address must be followed by ]:".into()))?;
            let ip = ip
                .parse()
                .map_err(|_| fail(format!("{ip:?} is not an IPv6 address")))?;
            (Some(IpAddr::V6(ip)), ports)
        } else {
            match spec.split(':').collect::<Vec<_>>().as_slice() {
                [_] => {
                    return Err(fail(
                        "a host port is required (berth does not pick random host ports)".into(),
                    ))
                }
                [_, _] => (None, spec),
                [ip, _, _] => {
                    let ip: IpAddr = ip
                        .parse()
                        .map_err(|_| fail(format!("{ip:?} is not an IP address")))?;
                    (Some(ip), &spec[spec.find(':').map_or(0, |i| i + 1)..])
                }
                _ => {
                    return Err(fail(
                        "too many ':' (bracket IPv6 addresses: [::1]:8080:80)".into(),
                    ))
                }
            }
        };
        let (host_port, container_port) = ports
            .split_once(':')
            .ok_or_else(|| fail("expected HOSTPORT:PORT after the address".into()))?;
        let port = |text: &str, what: &str| -> Result<u16, PortMappingError> {
            if text.contains('-') {
                return Err(fail(format!(
                    "{what} {text:?}: port ranges are not supported"
                )));
            }
            match text.parse::<u16>() {
                Ok(0) | Err(_) => Err(fail(format!(
                    "{what} {text:?} is not a port from 1 to 65535"
                ))),
                Ok(port) => Ok(port),
            }
        };
        Ok(PortMapping {
            host_ip,
            host_port: port(host_port, "host port")?,
            container_port: port(container_port, "container port")?,
            protocol,
        })
    }
}
