//! What the server pushes and the data plane keeps: the wire types of the admin socket, and
//! the last-known state on disk.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use berth_discovery::Endpoint;
use berth_proxy::Route;
use serde::{Deserialize, Serialize};

/// The data plane's whole desired state, as the server pushes it (`PUT /state`) and as the
/// data plane keeps it on disk. Each push replaces the previous one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedState {
    /// Counts the server's pushes; a drain waits until the push it follows is applied. A new
    /// server process counts from 1 again, so any version is accepted.
    pub version: u64,
    /// Every route of every app, as the proxy takes them.
    pub routes: Vec<Route>,
    /// Every instance the catalog (DNS, Consul API) lists.
    pub endpoints: Vec<Endpoint>,
}

/// `POST /drain`: wait until no request is in flight to any upstream at `address`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// The instance's address.
    pub address: IpAddr,
    /// How long to wait at most, in milliseconds.
    pub timeout_ms: u64,
    /// The push that took the instance out of the routes: the drain starts once it is
    /// applied (or when the timeout passes).
    pub after_version: u64,
}

/// The answer to a drain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainAnswer {
    /// Requests still in flight when the drain gave up (0: drained).
    pub left: usize,
}

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The data plane's process.
    pub pid: u32,
    /// The version of the last push applied (0: none since it started, it serves what it
    /// loaded from disk).
    pub version: u64,
    /// What binary it runs (its path, size and modification time), so that a server of
    /// another build can tell and replace it.
    pub binary: String,
    /// The listeners, as `berth dataplane` was started with them.
    pub listeners: String,
}

/// Writes `state` to `path` so that a crash leaves the old file or the new one, readable by
/// root only (routes name every instance's address).
pub fn save(path: &Path, state: &PushedState) -> std::io::Result<()> {
    let json = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&json)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The state last saved at `path`; `None` when there is none (a first start).
pub fn load(path: &Path) -> std::io::Result<Option<PushedState>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A fingerprint of the binary running now: a data plane started from another build (the
/// berth binary was replaced) has another one.
pub fn binary_fingerprint() -> String {
    let Ok(path) = std::env::current_exe() else {
        return "unknown".into();
    };
    let meta = std::fs::metadata(&path).ok();
    let modified = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!(
        "{} {} {modified}",
        path.display(),
        meta.map_or(0, |m| m.len())
    )
}
