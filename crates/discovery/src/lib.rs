//! Service discovery: the [`catalog`] of healthy instances that the controller fills, read by
//! the [`dns`] server and the Consul-compatible HTTP catalog (and by the proxy, through the
//! server). See `docs/discovery.md`.

pub mod catalog;
pub mod consul;
pub mod dns;

pub use catalog::{Catalog, Change, Endpoint, Snapshot};
pub use consul::ConsulConfig;
pub use dns::{host_upstreams, DnsConfig, DnsError, DnsServer, DnsShutdown};
