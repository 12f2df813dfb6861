//! berth's listeners: every TCP listener of berth (the registry, the `/v1` API, the proxy,
//! the Consul-compatible catalog, DNS over TCP) admits its connections through a
//! [`Limiter`], which bounds how many connections it holds in all and per client, how long a
//! client may take to send its first request head (TLS handshake included) and how long a
//! connection with no request in flight stays open. When a cap is full, the oldest
//! connection that has not sent a request head yet is closed to make room, so a flood of
//! slow clients cannot lock out a client that sends its request at once. [`http`] is the
//! HTTP accept loop the HTTP listeners share; [`Acceptor`] is the bare accept loop (DNS uses
//! it with its own framing). See `docs/security.md`.

mod accept;
pub mod http;
mod limiter;
mod limits;
mod nofile;
pub mod tls;

pub use accept::Acceptor;
pub use limiter::{ClientKey, Expiry, InFlight, Limiter, Permit, Refused, Stats};
pub use limits::{fit_to_open_files, Budgeted, Limits, LimitsConfig, LimitsError};
pub use nofile::raise_open_files_limit;
