//! The parts of an OCI image config (`config` object) that running a container needs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why an image config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON of the config's shape.
    #[error("not a valid image config: {0}")]
    Json(#[from] serde_json::Error),
    /// An exposed port is not `PORT[/tcp|udp]`.
    #[error("exposed port {0:?} is not of the form PORT[/tcp|/udp]")]
    Port(String),
}

/// How the image wants to be run, from the OCI image config's `config` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`, if not empty.
    pub working_dir: Option<String>,
    /// `User`, if not empty.
    pub user: Option<String>,
    /// `ExposedPorts` as (port, "tcp" | "udp"), sorted.
    pub exposed_ports: Vec<(u16, String)>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`, if not empty.
    pub stop_signal: Option<String>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<Wire>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Wire {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl ImageConfig {
    /// Parses an image config blob. Every field is optional.
    pub fn parse(blob: &[u8]) -> Result<ImageConfig, ConfigError> {
        let file: ConfigFile = serde_json::from_slice(blob)?;
        let wire = file.config.unwrap_or_default();
        let mut exposed_ports = Vec::new();
        for key in wire.exposed_ports.unwrap_or_default().into_keys() {
            let (port, protocol) = key.split_once('/').unwrap_or((&key, "tcp"));
            let port = port
                .parse::<u16>()
                .map_err(|_| ConfigError::Port(key.clone()))?;
            let protocol = protocol.to_ascii_lowercase();
            if protocol != "tcp" && protocol != "udp" {
                return Err(ConfigError::Port(key));
            }
            exposed_ports.push((port, protocol));
        }
        exposed_ports.sort();
        exposed_ports.dedup();
        Ok(ImageConfig {
            entrypoint: wire.entrypoint.unwrap_or_default(),
            cmd: wire.cmd.unwrap_or_default(),
            env: wire.env.unwrap_or_default(),
            working_dir: non_empty(wire.working_dir),
            user: non_empty(wire.user),
            exposed_ports,
            labels: wire.labels.unwrap_or_default(),
            stop_signal: non_empty(wire.stop_signal),
        })
    }
}
