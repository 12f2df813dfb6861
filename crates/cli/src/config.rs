//! berth's config file: one TOML file with a table per component.

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

/// The whole config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[registry]`
    #[serde(default)]
    pub registry: berth_registry::RegistryConfig,
}

impl ConfigFile {
    /// Reads `path`, or the empty config when no file is given.
    pub fn load(path: Option<&Path>) -> anyhow::Result<ConfigFile> {
        let Some(path) = path else {
            return Ok(ConfigFile::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }
}
