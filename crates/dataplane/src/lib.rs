//! berth's data plane as a process of its own (`berth dataplane`): the proxy, the DNS server
//! and the Consul-compatible catalog, fed by `berth server` and independent of it.
//!
//! Every request to every app goes through the proxy, so it must not stop when the server
//! does. The server runs the control plane (API, controller, registry) and pushes the data
//! plane its whole desired state — the proxy's routes and the catalog's endpoints — over an
//! admin socket ([`admin`], a Unix socket readable by root only). The data plane applies each
//! push at once and writes it to disk ([`state`]), so a data plane that restarts serves its
//! last-known routes before any server is up, and one whose server was killed, restarted or
//! upgraded goes on serving as if nothing happened. The server asks it to drain an address
//! before stopping an instance, and reads the proxy's counters back, through the same socket
//! ([`client`]).
//!
//! [`engine::Engine`] is the part that applies a state to a [`berth_proxy::Proxy`] and a
//! [`berth_discovery::Catalog`]; the binary wires the listeners around it.

pub mod admin;
pub mod client;
pub mod engine;
pub mod state;

pub use client::{AdminClient, ClientError};
pub use engine::{Engine, EngineError};
pub use state::{DrainAnswer, DrainRequest, Health, PushedState};
