//! Registry settings: the `[registry]` table of berth's config file, also filled from flags
//! and `BERTH_*` environment variables by the CLI.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use std::time::Duration;

use globset::{Glob, GlobMatcher};

use crate::api::Limits;
use crate::auth::LoginLimits;
use crate::retention::{RetentionConfig, RetentionRule};
use berth_units::{ByteSize, HumanDuration};

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
    /// Serve without users on an address other than loopback, open to everyone who can
    /// reach it (refused otherwise).
    pub allow_anonymous: Option<bool>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: Option<usize>,
    /// Allow DELETE of manifests, tags and blobs.
    pub deletes: Option<bool>,
    /// Run garbage collection this often (`0` or absent: only on request).
    pub gc_interval: Option<HumanDuration>,
    /// Content younger than this is never collected (protects pushes in progress).
    pub gc_grace: Option<HumanDuration>,
    /// Upload sessions idle for longer than this are removed by garbage collection.
    pub upload_max_age: Option<HumanDuration>,
    /// Let every collection delete manifests that have had no tag for `gc_grace`.
    pub delete_untagged: Option<bool>,
    /// Retention rules, first match per repository wins.
    #[serde(default)]
    pub retention: Vec<RetentionConfig>,
    /// Per-repository quotas, first match per repository wins.
    #[serde(default)]
    pub quotas: Vec<QuotaConfig>,
    /// Open connections at most (default 1024; lowered to fit the open-files limit).
    pub max_connections: Option<usize>,
    /// Open connections at most from one client address (default 128).
    pub max_connections_per_client: Option<usize>,
    /// How long a new connection may take for its TLS handshake and first request head
    /// (default 10s).
    pub header_timeout: Option<HumanDuration>,
    /// How long a connection with no request in flight stays open (default 60s).
    pub idle_timeout: Option<HumanDuration>,
    /// Failed logins a client may make in a row before it is answered 429 (default 10).
    pub max_failed_logins: Option<u32>,
    /// How long a client's failed-login allowance takes to refill (default 1m).
    pub failed_login_window: Option<HumanDuration>,
}

/// A quota as written in the config file (`[[registry.quotas]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Repositories it applies to (glob; `*` also matches `/`).
    pub repositories: String,
    /// Most bytes each matching repository may hold.
    pub max_bytes: ByteSize,
}

/// A compiled quota.
#[derive(Debug, Clone)]
pub struct Quota {
    matcher: GlobMatcher,
    /// The glob as written.
    pub pattern: String,
    /// Most bytes a matching repository may hold.
    pub max_bytes: u64,
}

impl Quota {
    /// Whether the quota governs `repo`.
    pub fn applies_to(&self, repo: &str) -> bool {
        self.matcher.is_match(repo)
    }
}

/// Garbage-collection settings.
#[derive(Debug, Clone, Copy)]
pub struct GcSettings {
    /// Interval of scheduled collections.
    pub interval: Option<Duration>,
    /// Content younger than this is kept.
    pub grace: Duration,
    /// Idle uploads older than this are removed.
    pub upload_max_age: Duration,
    /// Delete manifests untagged for longer than `grace`.
    pub delete_untagged: bool,
}

impl Default for GcSettings {
    fn default() -> GcSettings {
        GcSettings {
            interval: None,
            grace: Duration::from_secs(3600),
            upload_max_age: Duration::from_secs(24 * 3600),
            delete_untagged: false,
        }
    }
}

impl RegistryConfig {
    /// `self` with every key that `over` sets replaced by `over`'s value.
    pub fn merged(self, over: RegistryConfig) -> RegistryConfig {
        RegistryConfig {
            listen: over.listen.or(self.listen),
            data_dir: over.data_dir.or(self.data_dir),
            users: over.users.or(self.users),
            anonymous_pull: over.anonymous_pull.or(self.anonymous_pull),
            allow_anonymous: over.allow_anonymous.or(self.allow_anonymous),
            tls_cert: over.tls_cert.or(self.tls_cert),
            tls_key: over.tls_key.or(self.tls_key),
            max_manifest_bytes: over.max_manifest_bytes.or(self.max_manifest_bytes),
            deletes: over.deletes.or(self.deletes),
            gc_interval: over.gc_interval.or(self.gc_interval),
            gc_grace: over.gc_grace.or(self.gc_grace),
            upload_max_age: over.upload_max_age.or(self.upload_max_age),
            delete_untagged: over.delete_untagged.or(self.delete_untagged),
            retention: if over.retention.is_empty() {
                self.retention
            } else {
                over.retention
            },
            quotas: if over.quotas.is_empty() {
                self.quotas
            } else {
                over.quotas
            },
            max_connections: over.max_connections.or(self.max_connections),
            max_connections_per_client: over
                .max_connections_per_client
                .or(self.max_connections_per_client),
            header_timeout: over.header_timeout.or(self.header_timeout),
            idle_timeout: over.idle_timeout.or(self.idle_timeout),
            max_failed_logins: over.max_failed_logins.or(self.max_failed_logins),
            failed_login_window: over.failed_login_window.or(self.failed_login_window),
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
        let gc_defaults = GcSettings::default();
        let retention = self
            .retention
            .iter()
            .map(RetentionConfig::compile)
            .collect::<Result<Vec<_>, _>>()?;
        let quotas = self
            .quotas
            .iter()
            .map(|q| {
                Ok(Quota {
                    matcher: Glob::new(&q.repositories)
                        .map_err(|e| {
                            format!("quota: bad repositories glob {:?}: {e}", q.repositories)
                        })?
                        .compile_matcher(),
                    pattern: q.repositories.clone(),
                    max_bytes: q.max_bytes.0,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let connection_limits = berth_listen::LimitsConfig {
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            header_timeout: self.header_timeout.map(|d| d.0),
            idle_timeout: self.idle_timeout.map(|d| d.0),
        }
        .apply(berth_listen::Limits::REGISTRY)
        .map_err(|e| format!("registry connection limits: {e}"))?;
        let login_defaults = LoginLimits::default();
        let login_limits = LoginLimits {
            max_failures: self
                .max_failed_logins
                .unwrap_or(login_defaults.max_failures),
            window: self
                .failed_login_window
                .map_or(login_defaults.window, |d| d.0),
        };
        if login_limits.max_failures == 0 || login_limits.window.is_zero() {
            return Err(
                "max_failed_logins and failed_login_window must be above 0 (e.g. 10 per 1m)".into(),
            );
        }
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
            allow_anonymous: self.allow_anonymous.unwrap_or(false),
            admin: None,
            tls,
            limits: Limits {
                max_manifest_bytes: self
                    .max_manifest_bytes
                    .unwrap_or(defaults.max_manifest_bytes),
                deletes: self.deletes.unwrap_or(defaults.deletes),
            },
            gc: GcSettings {
                interval: self.gc_interval.map(|d| d.0).filter(|d| !d.is_zero()),
                grace: self.gc_grace.map_or(gc_defaults.grace, |d| d.0),
                upload_max_age: self
                    .upload_max_age
                    .map_or(gc_defaults.upload_max_age, |d| d.0),
                delete_untagged: self.delete_untagged.unwrap_or(false),
            },
            retention,
            quotas,
            connection_limits,
            login_limits,
        })
    }
}

/// An admin user that is not in a users file: its name and bcrypt hash.
#[derive(Clone)]
pub struct BuiltinAdmin {
    /// The user name.
    pub name: String,
    /// The bcrypt hash of its password.
    pub hash: String,
}

impl std::fmt::Debug for BuiltinAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinAdmin")
            .field("name", &self.name)
            .finish_non_exhaustive()
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
    /// Serve open (no users) on a non-loopback address.
    pub allow_anonymous: bool,
    /// An admin user the serving process adds itself (`berth server`'s own credential), on
    /// top of the users file if there is one.
    pub admin: Option<BuiltinAdmin>,
    /// TLS, if enabled.
    pub tls: Option<TlsFiles>,
    /// Request limits.
    pub limits: Limits,
    /// Garbage collection.
    pub gc: GcSettings,
    /// Retention rules.
    pub retention: Vec<RetentionRule>,
    /// Quotas.
    pub quotas: Vec<Quota>,
    /// Connections: caps, header and idle timeouts.
    pub connection_limits: berth_listen::Limits,
    /// Failed logins per client.
    pub login_limits: LoginLimits,
}
