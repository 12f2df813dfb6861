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
    /// `[node]`: containers on this host.
    #[serde(default)]
    pub node: NodeSection,
}

/// `[node]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// `runc` or `crun`; detected when absent (see `berth info`).
    #[serde(default)]
    pub runtime: Option<RuntimeName>,
    /// `[node.network]`: the bridge, its subnet, DNS; host-local's lease directory defaults to
    /// `<root>/cni/ipam`.
    #[serde(default)]
    pub network: Option<toml::Table>,
    /// `[node.images]`: automatic image cleanup after every pull.
    #[serde(default)]
    pub images: ImageCleanup,
}

/// `[node.images]`: after every pull, images that no container uses and that are not pinned
/// are removed when they were not used for `prune_unused_for`, and least recently used first
/// while the store is above `prune_high` (down to `prune_low`). Nothing is set by default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageCleanup {
    /// E.g. `30d`.
    pub prune_unused_for: Option<berth_units::HumanDuration>,
    /// E.g. `20GiB`.
    pub prune_high: Option<berth_units::ByteSize>,
    /// E.g. `15GiB` (the high mark when unset).
    pub prune_low: Option<berth_units::ByteSize>,
}

impl ImageCleanup {
    /// The policy, if any rule is set.
    pub fn policy(&self) -> Option<berth_runtime::image::PrunePolicy> {
        if self.prune_unused_for.is_none() && self.prune_high.is_none() {
            return None;
        }
        Some(berth_runtime::image::PrunePolicy {
            all_unused: false,
            unused_for: self.prune_unused_for.map(|d| d.0),
            high_water: self.prune_high.map(|s| s.0),
            low_water: self.prune_low.map(|s| s.0),
        })
    }
}

/// An OCI runtime by name.
#[derive(Debug, Clone, Copy, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeName {
    /// runc
    Runc,
    /// crun
    Crun,
}

impl From<RuntimeName> for berth_runtime::host::RuntimeKind {
    fn from(name: RuntimeName) -> Self {
        match name {
            RuntimeName::Runc => berth_runtime::host::RuntimeKind::Runc,
            RuntimeName::Crun => berth_runtime::host::RuntimeKind::Crun,
        }
    }
}

impl NodeSection {
    /// The network config, with the lease directory under `root` unless the file names one.
    pub fn network_config(
        &self,
        root: &Path,
    ) -> anyhow::Result<berth_runtime::network::NetworkConfig> {
        let table = self.network.clone().unwrap_or_default();
        let explicit_ipam = table.contains_key("ipam_data_dir");
        let mut config: berth_runtime::network::NetworkConfig = table
            .try_into()
            .map_err(|e| anyhow::anyhow!("config [node.network]: {e}"))?;
        if !explicit_ipam {
            config.ipam_data_dir = root.join("cni/ipam");
        }
        Ok(config)
    }
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

/// Raises the soft open-files limit to the hard one, then lowers the listeners' connection
/// caps if, together, they would not fit in it (with a warning saying so).
pub fn fit_connection_limits(listeners: &mut [berth_listen::Budgeted<'_>]) {
    let open_files = match berth_listen::raise_open_files_limit() {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-files limit; connection caps unchanged");
            return;
        }
    };
    if let Some(warning) = berth_listen::fit_to_open_files(open_files, listeners) {
        tracing::warn!(open_files, "{warning}");
    }
}
