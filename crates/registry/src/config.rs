//! Registry settings: the `[registry]` table of berth's config file, also filled from flags
//! and `BERTH_*` environment variables by the CLI.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::api::Limits;

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";

/// The `[registry]` table of the config file; every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Address to listen on.
    pub listen: Option<SocketAddr>,
    /// Where blobs and metadata are stored.
    pub data_dir: Option<PathBuf>,
    /// Users file (TOML); without one the registry is open to everyone.
    pub users: Option<PathBuf>,
    /// Let anonymous clients pull every repository.
    pub anonymous_pull: Option<bool>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: Option<usize>,
    /// Allow DELETE of manifests, tags and blobs.
    pub deletes: Option<bool>,
}

impl RegistryConfig {
    /// `self` with every key that `over` sets replaced by `over`'s value.
    pub fn merged(self, over: RegistryConfig) -> RegistryConfig {
        RegistryConfig {
            listen: over.listen.or(self.listen),
            data_dir: over.data_dir.or(self.data_dir),
            users: over.users.or(self.users),
            anonymous_pull: over.anonymous_pull.or(self.anonymous_pull),
            tls_cert: over.tls_cert.or(self.tls_cert),
            tls_key: over.tls_key.or(self.tls_key),
            max_manifest_bytes: over.max_manifest_bytes.or(self.max_manifest_bytes),
            deletes: over.deletes.or(self.deletes),
        }
    }

    /// Resolves defaults; `default_data_dir` is used when no data dir is set.
    pub fn settings(self, default_data_dir: PathBuf) -> Result<Settings, String> {
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err("TLS needs both a certificate (tls_cert) and a key (tls_key)".into()),
        };
        let defaults = Limits::default();
        Ok(Settings {
            listen: match self.listen {
                Some(addr) => addr,
                None => DEFAULT_LISTEN
                    .parse()
                    .map_err(|e| format!("default listen address: {e}"))?,
            },
            data_dir: self.data_dir.unwrap_or(default_data_dir),
            users: self.users,
            anonymous_pull: self.anonymous_pull.unwrap_or(false),
            tls,
            limits: Limits {
                max_manifest_bytes: self
                    .max_manifest_bytes
                    .unwrap_or(defaults.max_manifest_bytes),
                deletes: self.deletes.unwrap_or(defaults.deletes),
            },
        })
    }
}

/// Certificate and key files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Resolved registry settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Storage root.
    pub data_dir: PathBuf,
    /// Users file.
    pub users: Option<PathBuf>,
    /// Anonymous pull of everything.
    pub anonymous_pull: bool,
    /// TLS, if enabled.
    pub tls: Option<TlsFiles>,
    /// Request limits.
    pub limits: Limits,
}
