//! `berth registry …`

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use berth_registry::{RegistryConfig, Server};
use berth_units::HumanDuration;

use crate::admin_cmd::{self, AdminClient};
use clap::{Args, Subcommand};

use crate::config::ConfigFile;

/// Where registry data goes when nothing else is said.
const DEFAULT_DATA_DIR: &str = "/var/lib/berth/registry";

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Serve the OCI registry (distribution spec v1.1).
    ///
    /// Prints `berth registry listening on URL` once it accepts connections. Without a users
    /// file everyone who can reach it may pull, push and delete: that is allowed on a loopback
    /// address, and elsewhere only with --allow-anonymous. With one, clients log in with HTTP
    /// Basic credentials (`podman login`, `skopeo login`, `docker login`).
    Serve(ServeArgs),
    /// Read a password on stdin and print its bcrypt hash for the users file.
    HashPassword,
    /// Collect garbage in a running registry now: retention rules, untagged manifests (with
    /// --delete-untagged), unreferenced blobs, orphaned files and abandoned uploads.
    ///
    /// Runs online: pushes and pulls go on while it works. Content younger than the
    /// registry's grace period (--gc-grace) and pinned content are never removed.
    Gc {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only report what would be removed, and why.
        #[arg(long)]
        dry_run: bool,
        /// Also delete manifests that have had no tag for the grace period.
        #[arg(long)]
        delete_untagged: bool,
    },
    /// Show the space each repository uses, split into bytes it shares with other
    /// repositories and bytes only it holds, with quotas.
    Du {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Pin a digest: no delete, retention rule or garbage collection removes it (for a
    /// manifest: nor anything it references).
    Pin {
        #[command(flatten)]
        admin: AdminArgs,
        /// The digest to pin (sha256:…).
        digest: String,
        /// Why, shown in `pins` and in refusals.
        #[arg(long, default_value = "pinned with berth registry pin")]
        reason: String,
    },
    /// Remove a pin.
    Unpin {
        #[command(flatten)]
        admin: AdminArgs,
        /// The pinned digest.
        digest: String,
        /// Also remove a pin its owner keeps (`berth server` pins the images of releases
        /// that are live or can be rolled back to; it pins them again on its next pass).
        #[arg(long)]
        force: bool,
    },
    /// List pins.
    Pins {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How to reach a running registry's admin API.
#[derive(Args)]
pub struct AdminArgs {
    /// The registry's base URL.
    #[arg(
        long,
        env = "BERTH_REGISTRY_URL",
        default_value = "http://127.0.0.1:5000"
    )]
    url: String,
    /// Admin user (with a users file); the password comes from BERTH_REGISTRY_PASSWORD.
    /// Without one, credentials for the URL's host:port come from the auth files
    /// (`$REGISTRY_AUTH_FILE`, `~/.docker/config.json`, then berth server's
    /// `<root>/registry-auth.json`, which root on its host can read).
    #[arg(long, env = "BERTH_REGISTRY_USER")]
    user: Option<String>,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:5000].
    #[arg(long, env = "BERTH_REGISTRY_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Directory for blobs and metadata [default: /var/lib/berth/registry].
    #[arg(long, env = "BERTH_REGISTRY_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Users file (TOML) with bcrypt password hashes and per-repository pull/push globs.
    #[arg(long, env = "BERTH_REGISTRY_USERS", value_name = "FILE")]
    users: Option<PathBuf>,

    /// With a users file: let anonymous clients pull every repository.
    #[arg(long, env = "BERTH_REGISTRY_ANONYMOUS_PULL")]
    anonymous_pull: bool,

    /// Without a users file, serve on an address other than loopback anyway: everyone who
    /// can reach it may pull, push and delete.
    #[arg(long, env = "BERTH_REGISTRY_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,

    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(
        long,
        env = "BERTH_REGISTRY_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(
        long,
        env = "BERTH_REGISTRY_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    /// Largest manifest accepted, in bytes [default: 4194304].
    #[arg(long, env = "BERTH_REGISTRY_MAX_MANIFEST_BYTES", value_name = "BYTES")]
    max_manifest_bytes: Option<usize>,

    /// Refuse DELETE of manifests, tags and blobs.
    #[arg(long, env = "BERTH_REGISTRY_NO_DELETES")]
    no_deletes: bool,

    /// Collect garbage this often, e.g. 1h (default: only when asked with `berth registry gc`).
    #[arg(long, env = "BERTH_REGISTRY_GC_INTERVAL", value_name = "DURATION")]
    gc_interval: Option<HumanDuration>,

    /// Never collect content younger than this [default: 1h].
    #[arg(long, env = "BERTH_REGISTRY_GC_GRACE", value_name = "DURATION")]
    gc_grace: Option<HumanDuration>,

    /// Remove upload sessions idle for longer than this [default: 24h].
    #[arg(long, env = "BERTH_REGISTRY_UPLOAD_MAX_AGE", value_name = "DURATION")]
    upload_max_age: Option<HumanDuration>,

    /// Let scheduled collections delete manifests untagged for longer than --gc-grace.
    #[arg(long, env = "BERTH_REGISTRY_DELETE_UNTAGGED")]
    delete_untagged: bool,

    /// Open connections at most; when full, the oldest connection that has not sent a
    /// request makes room [default: 1024, lowered to fit the open-files limit].
    #[arg(long, env = "BERTH_REGISTRY_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,

    /// Open connections at most from one client address (IPv6: one /64) [default: 128].
    #[arg(
        long,
        env = "BERTH_REGISTRY_MAX_CONNECTIONS_PER_CLIENT",
        value_name = "N"
    )]
    max_connections_per_client: Option<usize>,

    /// Time a new connection has for its TLS handshake and first request head [default: 10s].
    #[arg(long, env = "BERTH_REGISTRY_HEADER_TIMEOUT", value_name = "DURATION")]
    header_timeout: Option<HumanDuration>,

    /// Time a connection with no request in flight stays open [default: 60s].
    #[arg(long, env = "BERTH_REGISTRY_IDLE_TIMEOUT", value_name = "DURATION")]
    idle_timeout: Option<HumanDuration>,

    /// Failed logins a client address may make in a row before it is answered 429
    /// [default: 10].
    #[arg(long, env = "BERTH_REGISTRY_MAX_FAILED_LOGINS", value_name = "N")]
    max_failed_logins: Option<u32>,

    /// Time a client's failed-login allowance takes to refill [default: 1m].
    #[arg(
        long,
        env = "BERTH_REGISTRY_FAILED_LOGIN_WINDOW",
        value_name = "DURATION"
    )]
    failed_login_window: Option<HumanDuration>,
}

impl ServeArgs {
    fn into_config(self) -> RegistryConfig {
        RegistryConfig {
            listen: self.listen,
            data_dir: self.data_dir,
            users: self.users,
            anonymous_pull: self.anonymous_pull.then_some(true),
            allow_anonymous: self.allow_anonymous.then_some(true),
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            max_manifest_bytes: self.max_manifest_bytes,
            deletes: self.no_deletes.then_some(false),
            gc_interval: self.gc_interval,
            gc_grace: self.gc_grace,
            upload_max_age: self.upload_max_age,
            delete_untagged: self.delete_untagged.then_some(true),
            retention: Vec::new(),
            quotas: Vec::new(),
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_failed_logins: self.max_failed_logins,
            failed_login_window: self.failed_login_window,
        }
    }
}

pub fn run(cmd: RegistryCommand, config: Option<&Path>, root: &Path) -> anyhow::Result<()> {
    match cmd {
        RegistryCommand::Serve(args) => serve(args, config),
        RegistryCommand::HashPassword => hash_password(),
        RegistryCommand::Gc {
            admin,
            dry_run,
            delete_untagged,
        } => admin_cmd::gc(&admin.client(root)?, dry_run, delete_untagged),
        RegistryCommand::Du { admin } => admin_cmd::du(&admin.client(root)?),
        RegistryCommand::Pin {
            admin,
            digest,
            reason,
        } => admin_cmd::pin(&admin.client(root)?, &digest, &reason),
        RegistryCommand::Unpin {
            admin,
            digest,
            force,
        } => admin_cmd::unpin(&admin.client(root)?, &digest, force),
        RegistryCommand::Pins { admin } => admin_cmd::pins(&admin.client(root)?),
    }
}

fn serve(args: ServeArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let file = ConfigFile::load(config)?;
    let mut settings = file
        .registry
        .merged(args.into_config())
        .settings(PathBuf::from(DEFAULT_DATA_DIR))
        .map_err(anyhow::Error::msg)?;
    crate::config::fit_connection_limits(&mut [berth_listen::Budgeted {
        name: "registry",
        limits: &mut settings.connection_limits,
        descriptors_per_connection: 1,
    }]);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let server = Server::bind(&settings).await?;
        let shutdown = shutdown_signal()?;
        let url = server.url();
        if settings.users.is_none() && !server.local_addr().ip().is_loopback() {
            tracing::warn!(%url, "no users file and --allow-anonymous: anyone who can reach this address may push and delete");
        }
        tracing::info!(%url, data_dir = %settings.data_dir.display(), "registry started");
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "berth registry listening on {url} (data in {})",
            settings.data_dir.display()
        )?;
        out.flush()?;
        drop(out);
        server.run(shutdown).await?;
        tracing::info!("registry stopped");
        Ok(())
    })
}

/// A future that completes on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives right after the
/// listening line still stops the server gracefully.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::info!("shutting down: finishing in-flight requests");
    })
}

fn hash_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "empty password on stdin");
    let hash = berth_registry::auth::hash_password(password).context("hashing")?;
    println!("{hash}");
    Ok(())
}

impl AdminArgs {
    fn client(self, root: &Path) -> anyhow::Result<AdminClient> {
        let credentials = match self.user {
            Some(user) => {
                let password = std::env::var("BERTH_REGISTRY_PASSWORD").map_err(|_| {
                    anyhow::anyhow!("--user needs the password in BERTH_REGISTRY_PASSWORD")
                })?;
                Some((user, password))
            }
            None => {
                let host = self
                    .url
                    .split_once("://")
                    .map_or(self.url.as_str(), |(_, rest)| rest)
                    .split('/')
                    .next()
                    .unwrap_or_default();
                berth_runtime::image::lookup_credentials(&crate::image_cmd::auth_files(root), host)
                    .map(|c| (c.username, c.password))
            }
        };
        Ok(AdminClient::new(self.url, credentials))
    }
}
