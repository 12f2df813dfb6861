//! An IPv4 network in CIDR notation, as the config file spells it (`10.89.0.0/16`).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 network: a network address with no host bits set, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Subnet {
    addr: Ipv4Addr,
    prefix_len: u8,
}

/// berth's default container network.
pub(super) const DEFAULT_SUBNET: Ipv4Subnet = Ipv4Subnet {
    addr: Ipv4Addr::new(10, 89, 0, 0),
    prefix_len: 16,
};

impl Ipv4Subnet {
    /// The largest prefix that still leaves room for a gateway and one container.
    pub const MAX_PREFIX_LEN: u8 = 30;

    /// `addr/prefix_len`; fails when host bits are set or the prefix is too long.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Ipv4Subnet, String> {
        if prefix_len > Self::MAX_PREFIX_LEN {
            return Err(format!(
                "prefix /{prefix_len} leaves no room for a gateway and a container: use /{} or shorter",
                Self::MAX_PREFIX_LEN
            ));
        }
        let subnet = Ipv4Subnet { addr, prefix_len };
        if subnet.network() != addr {
            return Err(format!(
                "{addr}/{prefix_len} has host bits set: did you mean {}/{prefix_len}?",
                subnet.network()
            ));
        }
        Ok(subnet)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// The first usable host address, which the bridge plugin takes as gateway by default.
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    /// Whether `ip` is in this network (network and broadcast addresses included).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR form: write it like 10.89.0.0/16"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} in {s:?} is not an IPv4 address"))?;
        let prefix_len: u8 =
            prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| {
                format!("{prefix:?} in {s:?} is not a prefix length from 0 to 32")
            })?;
        Ipv4Subnet::new(addr, prefix_len)
    }
}

impl Serialize for Ipv4Subnet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Subnet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
