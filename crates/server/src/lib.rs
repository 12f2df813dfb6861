//! berth's all-in-one server: the `/v1` API ([`api`]), immutable releases and each app's
//! deploy state in the state store ([`releases`]), and the [`controller`] that plans with
//! `berth_core::plan` and carries the actions out on the node's containers, gated by health
//! checks. `docs/server.md` describes it; `berth server` runs it.

pub mod api;
pub mod controller;
pub mod events;
pub mod mounts;
pub mod registry_pins;
pub mod releases;
pub mod secrets_api;
pub mod traffic;
pub mod volumes_api;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_core::plan::Timestamp;

pub use api::{router, ApiState};
pub use controller::Controller;

/// The name of the file under the server's root that holds the API token.
pub const TOKEN_FILE: &str = "server.token";

/// The name of the file under the server's root that holds the built-in registry's admin
/// credential, in the auth-file format podman, skopeo, buildah (`--authfile`) and docker read,
/// one entry per name of the registry on this host. `berth` reads it on this host (as root),
/// and the server's own pulls from its registry use it.
pub const REGISTRY_AUTH_FILE: &str = "registry-auth.json";

/// The user name of the built-in registry's admin credential.
pub const REGISTRY_ADMIN: &str = "admin";

/// What can go wrong inside the server (client mistakes are [`api::ApiError`]s).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    /// The node failed.
    #[error(transparent)]
    Node(#[from] berth_runtime::node::NodeError),
    /// Something that should not happen.
    #[error("{0}")]
    Internal(String),
}

/// This node's name in the catalog: the host name.
pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "berth".to_owned())
}

/// Now, for the planner.
pub fn now() -> Timestamp {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp::from_millis(millis)
}

/// The API token in `<root>/server.token`, generated (32 random bytes, hex, mode 0600) when
/// the file does not exist.
pub fn load_or_create_token(root: &Path) -> std::io::Result<String> {
    let path = root.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    writeln!(file, "{token}")?;
    file.sync_all()?;
    Ok(token)
}

/// The built-in registry's admin credential: read from `<root>/registry-auth.json`, or made
/// (32 random bytes, hex) when the file has none. `true` when it was made now: the caller
/// writes the file (see `berth_runtime::image::write_auth_file`) once it knows the registry's
/// address, and shows the password this once.
pub fn load_or_create_registry_admin(
    root: &Path,
) -> std::io::Result<(berth_runtime::image::Credentials, bool)> {
    let path = root.join(REGISTRY_AUTH_FILE);
    if let Some(existing) = berth_runtime::image::read_auth_file_user(&path, REGISTRY_ADMIN)? {
        return Ok((existing, false));
    }
    let made = berth_runtime::image::Credentials {
        username: REGISTRY_ADMIN.to_owned(),
        password: hex::encode(rand::random::<[u8; 32]>()),
    };
    Ok((made, true))
}
