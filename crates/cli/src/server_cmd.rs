//! `berth server` (API + controller + node + optional registry in one process) and its
//! clients: `berth deploy`, `status`, `releases`, `rollback`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use berth_listen::http::{tower_per_connection, HttpServer};
use berth_listen::{Budgeted, Limiter, Limits, LimitsConfig};
use berth_server::{load_or_create_token, ApiState, Controller, REGISTRY_AUTH_FILE, TOKEN_FILE};
use clap::Args;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::ConfigFile;

/// Where the API listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";

/// `berth server`
#[derive(Args)]
pub struct ServerArgs {
    /// Address of the /v1 API.
    #[arg(long, env = "BERTH_SERVER_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Also serve the OCI registry on this address, with its data in <root>/registry (the
    /// [registry] table of the config file applies). Off by default.
    #[arg(long, env = "BERTH_REGISTRY_LISTEN", value_name = "ADDR")]
    registry_listen: Option<SocketAddr>,
    /// Answer DNS for the healthy instances (SERVICE.APP.berth, A and SRV) on this address,
    /// UDP and TCP; other names are forwarded to the host's resolvers. Off by default.
    #[arg(long, env = "BERTH_DNS_LISTEN", value_name = "ADDR")]
    dns_listen: Option<SocketAddr>,
    /// Also answer DNS on port 53 of the node bridge's address, and make that the
    /// containers' resolver (needs --dns-listen).
    #[arg(long, env = "BERTH_CONTAINER_DNS", requires = "dns_listen")]
    container_dns: bool,
    /// Serve the Consul-compatible HTTP catalog (/v1/catalog, /v1/health, /v1/agent) on this
    /// address. Off by default.
    #[arg(long, env = "BERTH_CATALOG_LISTEN", value_name = "ADDR")]
    catalog_listen: Option<SocketAddr>,
    /// Serve the proxy over HTTP on this address (repeatable); routes come from the
    /// services' `route` in berth.toml. Off by default.
    #[arg(
        long = "proxy-listen",
        env = "BERTH_PROXY_LISTEN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    proxy_listen: Vec<SocketAddr>,
    /// Serve the proxy over HTTPS on this address (repeatable); needs --proxy-cert.
    #[arg(
        long = "proxy-tls-listen",
        env = "BERTH_PROXY_TLS_LISTEN",
        value_name = "ADDR",
        value_delimiter = ',',
        requires = "proxy_cert"
    )]
    proxy_tls_listen: Vec<SocketAddr>,
    /// A certificate for HTTPS, chosen by SNI: HOST[,HOST...]=CERT.pem:KEY.pem (repeatable;
    /// the first one is the default; `*.example.test` covers its direct subdomains).
    #[arg(long = "proxy-cert", value_name = "HOSTS=CERT:KEY", value_parser = parse_cert)]
    proxy_cert: Vec<berth_proxy::CertSpec>,
    /// Where the proxy's access log goes: a file, rotated by size [default:
    /// <root>/logs/proxy-access.log], `stderr` (with the server's own log) or `off`.
    #[arg(
        long = "proxy-access-log",
        env = "BERTH_PROXY_ACCESS_LOG",
        value_name = "FILE|stderr|off"
    )]
    proxy_access_log: Option<String>,
    /// The size at which the access log file is rotated.
    #[arg(
        long = "proxy-access-log-max-size",
        env = "BERTH_PROXY_ACCESS_LOG_MAX_SIZE",
        default_value = "100MiB",
        value_name = "SIZE"
    )]
    proxy_access_log_max_size: berth_units::ByteSize,
    /// How many access log files are kept, the current one included (at least 1).
    #[arg(
        long = "proxy-access-log-max-files",
        env = "BERTH_PROXY_ACCESS_LOG_MAX_FILES",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    proxy_access_log_max_files: u32,
    /// Connection limits of the /v1 API, any of max_connections, max_connections_per_client,
    /// header_timeout, idle_timeout, e.g. `max_connections=128,idle_timeout=30s`
    /// [default: max_connections=256,max_connections_per_client=64,header_timeout=10s,idle_timeout=60s].
    #[arg(long, env = "BERTH_API_LIMITS", value_name = "LIMITS")]
    api_limits: Option<LimitsConfig>,
    /// Connection limits of the proxy (HTTP and HTTPS together), as --api-limits
    /// [default: max_connections=4096,max_connections_per_client=256,header_timeout=10s,idle_timeout=60s].
    #[arg(long, env = "BERTH_PROXY_LIMITS", value_name = "LIMITS")]
    proxy_limits: Option<LimitsConfig>,
    /// Connection limits of the Consul-compatible catalog, as --api-limits
    /// [default: max_connections=1024,max_connections_per_client=128,header_timeout=10s,idle_timeout=60s].
    #[arg(long, env = "BERTH_CATALOG_LIMITS", value_name = "LIMITS")]
    catalog_limits: Option<LimitsConfig>,
    /// Connection limits of DNS over TCP (each DNS listener), as --api-limits
    /// [default: max_connections=256,max_connections_per_client=16,header_timeout=5s,idle_timeout=10s].
    #[arg(long, env = "BERTH_DNS_LIMITS", value_name = "LIMITS")]
    dns_limits: Option<LimitsConfig>,
}

/// Every listener's connection limits, resolved and fitted to the open-files limit.
struct ConnectionLimits {
    api: Limits,
    proxy: Limits,
    catalog: Limits,
    dns: Limits,
}

impl ServerArgs {
    /// The limits of the listeners this server runs (the registry's are in `registry`),
    /// lowered together when they would not fit in the open-files limit.
    fn connection_limits(&self, registry: Option<&mut Limits>) -> anyhow::Result<ConnectionLimits> {
        let resolve = |config: &Option<LimitsConfig>, defaults: Limits, flag: &str| {
            config
                .unwrap_or_default()
                .apply(defaults)
                .with_context(|| format!("--{flag}"))
        };
        let mut limits = ConnectionLimits {
            api: resolve(&self.api_limits, Limits::API, "api-limits")?,
            proxy: resolve(&self.proxy_limits, Limits::PROXY, "proxy-limits")?,
            catalog: resolve(&self.catalog_limits, Limits::CATALOG, "catalog-limits")?,
            dns: resolve(&self.dns_limits, Limits::DNS, "dns-limits")?,
        };
        let has_proxy = !self.proxy_listen.is_empty() || !self.proxy_tls_listen.is_empty();
        let dns_listeners = match (self.dns_listen.is_some(), self.container_dns) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        };
        let mut budget = vec![Budgeted {
            name: "api",
            limits: &mut limits.api,
            descriptors_per_connection: 1,
        }];
        if has_proxy {
            budget.push(Budgeted {
                name: "proxy",
                limits: &mut limits.proxy,
                descriptors_per_connection: 2,
            });
        }
        if self.catalog_listen.is_some() {
            budget.push(Budgeted {
                name: "catalog",
                limits: &mut limits.catalog,
                descriptors_per_connection: 1,
            });
        }
        if dns_listeners > 0 {
            budget.push(Budgeted {
                name: "dns",
                limits: &mut limits.dns,
                descriptors_per_connection: dns_listeners,
            });
        }
        if let Some(registry) = registry {
            budget.push(Budgeted {
                name: "registry",
                limits: registry,
                descriptors_per_connection: 1,
            });
        }
        crate::config::fit_connection_limits(&mut budget);
        Ok(limits)
    }

    /// Where the proxy's access log goes, as the flags say.
    pub(crate) fn access_log(&self, root: &Path) -> crate::logging::AccessLog {
        use crate::logging::AccessLog;
        let limits = berth_runtime::logs::LogLimits {
            max_file_bytes: self.proxy_access_log_max_size.0.max(1),
            max_files: self.proxy_access_log_max_files,
        };
        match self.proxy_access_log.as_deref() {
            Some("stderr") => AccessLog::Stderr,
            Some("off") => AccessLog::Off,
            Some(path) => AccessLog::File {
                path: PathBuf::from(path),
                limits,
            },
            None => AccessLog::File {
                path: root.join("logs").join("proxy-access.log"),
                limits,
            },
        }
    }
}

/// `HOST[,HOST...]=CERT.pem:KEY.pem`
fn parse_cert(text: &str) -> Result<berth_proxy::CertSpec, String> {
    let (hosts, files) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: write HOST[,HOST...]=CERT.pem:KEY.pem"))?;
    let (cert, key) = files
        .split_once(':')
        .ok_or_else(|| format!("{files:?}: write CERT.pem:KEY.pem"))?;
    let hosts: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    if hosts.is_empty() || cert.is_empty() || key.is_empty() {
        return Err(format!("{text:?}: write HOST[,HOST...]=CERT.pem:KEY.pem"));
    }
    Ok(berth_proxy::CertSpec {
        hosts,
        cert_path: cert.into(),
        key_path: key.into(),
    })
}

/// How clients reach the server.
#[derive(Args)]
pub struct ClientArgs {
    /// The server's URL.
    #[arg(long, env = "BERTH_SERVER", default_value_t = format!("http://{DEFAULT_LISTEN}"), value_name = "URL")]
    pub(crate) server: String,
    /// The API token [default: the contents of <root>/server.token].
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

/// `berth deploy`
#[derive(Args)]
pub struct DeployArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The app spec.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "berth.toml",
        value_name = "FILE"
    )]
    file: PathBuf,
    /// Apply the [env.<ENV>] overlay of the file.
    #[arg(long, value_name = "ENV")]
    env: Option<String>,
    /// Return once the release is created instead of following the deploy.
    #[arg(long)]
    no_wait: bool,
    /// Show what the release would do to each service (restart and why, or keep its
    /// instances) and store nothing. Images are still resolved to digests.
    #[arg(long)]
    dry_run: bool,
    /// Follow a blue/green deploy to its very end (until the old set is stopped after
    /// `keep_old`) instead of returning once traffic switched.
    #[arg(long, conflicts_with = "no_wait")]
    wait: bool,
}

/// `berth status`
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// An app: its services, instances and recent events. Without: every app.
    app: Option<String>,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
}

/// `berth releases`
#[derive(Args)]
pub struct ReleasesArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The app.
    app: String,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
}

/// `berth rollback`
#[derive(Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The app.
    app: String,
    /// The release to go back to [default: the newest good one before the current].
    release: Option<u64>,
    /// Return at once instead of following the deploy of the old release.
    #[arg(long)]
    no_wait: bool,
}

/// Runs the server until SIGTERM or SIGINT.
pub fn serve(args: ServerArgs, config: Option<&Path>, root: &Path) -> anyhow::Result<()> {
    let file = ConfigFile::load(config)?;
    berth_runtime::private_dir(root).with_context(|| format!("creating {}", root.display()))?;
    let mut gateway = None;
    let node = Arc::new(crate::container_cmd::open_node_with(
        &file,
        root,
        |network| {
            if args.container_dns {
                let address = network.gateway_address();
                network.dns = vec![address.into()];
                gateway = Some(address);
            }
        },
    )?);
    let token = load_or_create_token(root)
        .with_context(|| format!("reading or creating {}", root.join(TOKEN_FILE).display()))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let db = root.join("server.redb");
        let store = berth_store::RedbStore::open(&db)
            .await
            .with_context(|| format!("opening the state store {}", db.display()))?;
        let key_file = root.join("secret.key");
        let (secret_key, source) =
            berth_agent::secrets::SecretKey::load(&key_file).context("loading the secret key")?;
        tracing::info!(key_id = secret_key.id(), %source, "secret key loaded");
        // Pulls find the built-in registry's admin credential beside the user's own.
        let pull = berth_runtime::image::PullOptions {
            auth_files: crate::image_cmd::auth_files(root),
            ..Default::default()
        };
        let controller = Controller::new(Arc::new(store), node, pull, secret_key);
        let mut registry_settings = match args.registry_listen {
            Some(listen) => Some(registry_settings(&file, root, listen)?),
            None => None,
        };
        let limits = args.connection_limits(
            registry_settings
                .as_mut()
                .map(|settings| &mut settings.connection_limits),
        )?;
        if let Some(settings) = registry_settings {
            let registry = serve_registry(root, settings).await?;
            // The images of the releases a rollback may need are pinned in it, in-process.
            controller.registry_pins().attach(
                Arc::new(berth_server::registry_pins::LocalRegistry(
                    registry.registry(),
                )),
                berth_server::registry_pins::registry_hosts(registry.local_addr()),
            );
            tokio::spawn(async move {
                if let Err(e) = registry.run(std::future::pending()).await {
                    tracing::error!(error = %e, "registry stopped");
                }
            });
        }
        crate::discovery_cmd::start(
            &controller,
            crate::discovery_cmd::Listeners {
                dns: args.dns_listen,
                container_dns: gateway,
                catalog: args.catalog_listen,
                proxy: args.proxy_listen.clone(),
                proxy_tls: args.proxy_tls_listen.clone(),
                certs: args.proxy_cert.clone(),
                dns_limits: limits.dns,
                catalog_limits: limits.catalog,
                proxy_limits: limits.proxy,
            },
        )
        .await?;
        tokio::spawn(controller.clone().run());
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "berth server listening on http://{addr} (state in {}, token in {})",
            db.display(),
            root.join(TOKEN_FILE).display()
        )?;
        out.flush()?;
        drop(out);
        let shutdown = crate::registry_cmd::shutdown_signal()?;
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopper.cancel();
        });
        HttpServer::new(Limiter::new("api", limits.api))
            .serve(
                listener,
                None,
                tower_per_connection(berth_server::router(ApiState::new(controller, token))),
                stop,
                Duration::from_secs(10),
            )
            .await;
        Ok(())
    })
}

/// Binds the built-in registry: data in `<root>/registry`, closed to anonymous clients unless
/// the config file's `[registry]` says otherwise, with an admin credential made on the first
/// start and kept in `<root>/registry-auth.json` (mode 0600) for this host's clients.
/// The built-in registry's settings: the config file's `[registry]` table, listening on
/// `listen` with its data under the server's root.
fn registry_settings(
    file: &ConfigFile,
    root: &Path,
    listen: SocketAddr,
) -> anyhow::Result<berth_registry::Settings> {
    file.registry
        .clone()
        .merged(berth_registry::RegistryConfig {
            listen: Some(listen),
            data_dir: Some(root.join("registry")),
            ..Default::default()
        })
        .settings(root.join("registry"))
        .map_err(anyhow::Error::msg)
}

/// Binds the built-in registry with the server's admin credential (made on the first start)
/// and writes the credential file this host's clients use.
async fn serve_registry(
    root: &Path,
    mut settings: berth_registry::Settings,
) -> anyhow::Result<berth_registry::Server> {
    let (admin, created) = berth_server::load_or_create_registry_admin(root)
        .with_context(|| format!("reading {}", root.join(REGISTRY_AUTH_FILE).display()))?;
    let hash = berth_registry::auth::hash_random_secret(&admin.password)
        .context("hashing the registry's admin credential")?;
    settings.admin = Some(berth_registry::BuiltinAdmin {
        name: admin.username.clone(),
        hash,
    });
    let registry = berth_registry::Server::bind(&settings).await?;
    // Every name this host's clients may use for the registry, rewritten on each start so
    // that a new address is covered too.
    let path = root.join(REGISTRY_AUTH_FILE);
    let hosts = berth_server::registry_pins::registry_hosts(registry.local_addr());
    berth_runtime::image::write_auth_file(&path, hosts.iter().map(String::as_str), &admin)
        .with_context(|| format!("writing {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    if created {
        writeln!(
            out,
            "berth registry admin credential created for user {} (kept in {}, mode 0600)",
            admin.username,
            path.display()
        )?;
    }
    writeln!(
        out,
        "berth registry listening on {} (anonymous access {}; admin credential in {}: podman, skopeo and buildah take --authfile {}, berth on this host uses it by itself)",
        registry.url(),
        match (&settings.users, settings.anonymous_pull) {
            (Some(_), true) => "read-only, and what the users file's [anonymous] table grants",
            (Some(_), false) => "what the users file's [anonymous] table grants",
            (None, true) => "read-only",
            (None, false) => "off",
        },
        path.display(),
        path.display()
    )?;
    out.flush()?;
    Ok(registry)
}

/// A blocking client of the /v1 API.
pub(crate) struct Client {
    pub(crate) base: String,
    pub(crate) token: String,
    pub(crate) http: reqwest::blocking::Client,
}

impl Client {
    pub(crate) fn new(args: &ClientArgs, root: &Path) -> anyhow::Result<Client> {
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let path = root.join(TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "reading the API token from {} (set BERTH_TOKEN or --root)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        Ok(Client {
            base: args.server.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()?,
        })
    }

    pub(crate) fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.send(method, path, |request| match body {
            Some(body) => request.json(&body),
            None => request,
        })
    }

    /// Sends a request with the body `with_body` gives it.
    pub(crate) fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        with_body: impl FnOnce(reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let request = with_body(self.http.request(method, &url).bearer_auth(&self.token));
        let response = request
            .send()
            .with_context(|| format!("cannot reach the berth server at {} (is `berth server` running? --server / BERTH_SERVER)", self.base))?;
        let status = response.status();
        let value: Value = response.json().unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["error"].as_str().unwrap_or("no error message");
            bail!("{message}");
        }
        Ok(value)
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None)
    }

    pub(crate) fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body))
    }
}

/// `berth deploy`: exits non-zero when the deploy fails (and was rolled back).
pub fn deploy(args: DeployArgs, root: &Path) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client, root)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let file = args.file.display().to_string();
    let spec = berth_core::AppSpec::parse_file(&file, &text, args.env.as_deref())
        .map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let app = spec.app;
    println!("pulling images of {app}…");
    let created = client.post(
        &format!("/v1/apps/{app}/deploy"),
        json!({ "spec": text, "env": args.env, "file": file, "by": who(), "dry_run": args.dry_run }),
    )?;
    let release = created["release"].as_u64().unwrap_or_default();
    let replaces = created["previous"]
        .as_u64()
        .map_or(String::new(), |p| format!(" replaces {app}#{p}"));
    if args.dry_run {
        println!("dry run: release {app}#{release} would be made{replaces}; nothing was stored");
    } else {
        println!("release {app}#{release}{replaces}");
    }
    let images = created["images"].as_object();
    for change in created["services"].as_array().into_iter().flatten() {
        let service = change["service"].as_str().unwrap_or_default();
        let reasons: Vec<&str> = change["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .collect();
        let image = images
            .and_then(|images| images.get(service))
            .map(|image| {
                format!(
                    " {} ({})",
                    image["reference"].as_str().unwrap_or_default(),
                    image["digest"].as_str().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let runs = change["runs"].as_u64().unwrap_or_default();
        let line = match change["action"].as_str().unwrap_or_default() {
            "add" => format!("added:{image}"),
            "remove" => "removed: its instances stop".to_owned(),
            "restart" => format!("restart: {}", reasons.join("; ")),
            _ if reasons.is_empty() => format!("unchanged: keeps its instances (release #{runs})"),
            _ => format!(
                "keeps its instances (release #{runs}); {}",
                reasons.join("; ")
            ),
        };
        println!("  {service}: {line}");
    }
    if args.no_wait || args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    follow(&client, &app, release, args.wait)
}

/// Whether every service of `view` runs its release and, among them, a blue/green deploy
/// switched its traffic but still holds its old set (for `keep_old`).
fn switched(view: &Value) -> bool {
    let services = view["services"].as_array().cloned().unwrap_or_default();
    let mut holding = false;
    for service in &services {
        let deploy = &service["deploy"];
        if deploy["to_release"] != service["release"] || deploy["failed"] == true {
            return false;
        }
        if deploy["finished"] == true {
            continue;
        }
        if service["strategy"] == "blue_green" && deploy["step"].as_u64() >= Some(1) {
            holding = true;
        } else {
            return false;
        }
    }
    holding
}

/// Prints instance progress until `release` of `app` is live (success) or failed, or, unless
/// `to_the_end`, until a blue/green deploy switched its traffic.
fn follow(client: &Client, app: &str, release: u64, to_the_end: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let view = client.get(&format!("/v1/apps/{app}"))?;
        for service in view["services"].as_array().into_iter().flatten() {
            for instance in service["instances"].as_array().into_iter().flatten() {
                let id = instance["id"].as_str().unwrap_or_default().to_owned();
                let state = instance["state"].as_str().unwrap_or_default();
                let health = instance["health"].as_str().unwrap_or_default();
                let line = match (state, health) {
                    ("running", "healthy") => "healthy".to_owned(),
                    ("running", "unhealthy") => "unhealthy".to_owned(),
                    ("running", _) => "running, health check pending".to_owned(),
                    (state, _) => state.to_owned(),
                };
                let line = match instance["address"].as_str() {
                    Some(address) if state == "running" => format!("{line:<32} {address}"),
                    _ => line,
                };
                if shown.get(&id) != Some(&line) {
                    println!("  {id:<12} {line}");
                    shown.insert(id, line);
                }
            }
        }
        let releases = client.get(&format!("/v1/apps/{app}/releases"))?;
        let ours = releases
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["number"].as_u64() == Some(release));
        let status = ours.and_then(|r| r["status"].as_str()).unwrap_or_default();
        let desired = view["desired_release"].as_u64().unwrap_or_default();
        if status == "deploying" && desired == release && !to_the_end && switched(&view) {
            println!(
                "release {app}#{release} switched in {:.1}s: all traffic on its instances; the old set is kept until keep_old passes, for an instant rollback (berth deploy --wait follows to the end)",
                started.elapsed().as_secs_f64()
            );
            return Ok(ExitCode::SUCCESS);
        }
        match status {
            "live" => {
                println!(
                    "release {app}#{release} live in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(ExitCode::SUCCESS);
            }
            "failed" => {
                let why = ours
                    .and_then(|r| r["failure"].as_str())
                    .unwrap_or("no reason recorded");
                eprintln!("release {app}#{release} failed: {why}");
                if desired != release {
                    eprintln!("{app} is going back to release #{desired}");
                }
                return Ok(ExitCode::FAILURE);
            }
            _ if desired != release => {
                eprintln!("release {app}#{release} is no longer desired: #{desired} is");
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `berth status [APP]`
pub fn status(args: StatusArgs, root: &Path) -> anyhow::Result<()> {
    let client = Client::new(&args.client, root)?;
    let Some(app) = args.app else {
        let apps = client.get("/v1/apps")?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&apps)?);
            return Ok(());
        }
        println!("{:<20} {:<8} {:<10} LATEST", "APP", "RELEASE", "STATUS");
        for app in apps.as_array().into_iter().flatten() {
            println!(
                "{:<20} {:<8} {:<10} #{}",
                app["app"].as_str().unwrap_or_default(),
                release(&app["desired_release"]),
                app["status"].as_str().unwrap_or_default(),
                app["latest_release"]
            );
        }
        return Ok(());
    };
    let view = client.get(&format!("/v1/apps/{app}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    println!(
        "{app}: release #{} ({})",
        view["desired_release"],
        view["desired_status"].as_str().unwrap_or("unknown")
    );
    for failed in view["rolled_back"].as_array().into_iter().flatten() {
        println!(
            "rolled back from release #{}: {}",
            failed["release"],
            failed["reason"].as_str().unwrap_or_default()
        );
    }
    println!(
        "{:<10} {:<14} {:<8} {:<9} {:<10} ADDRESS",
        "SERVICE", "INSTANCE", "RELEASE", "STATE", "HEALTH"
    );
    let services = view["services"].as_array().cloned().unwrap_or_default();
    let orphans = view["orphans"].as_array().cloned().unwrap_or_default();
    for instance in services
        .iter()
        .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
        .chain(orphans)
    {
        println!(
            "{:<10} {:<14} {:<8} {:<9} {:<10} {}",
            instance["service"].as_str().unwrap_or_default(),
            instance["id"].as_str().unwrap_or_default(),
            release(&instance["release"]),
            instance["state"].as_str().unwrap_or_default(),
            instance["health"].as_str().unwrap_or_default(),
            instance["address"].as_str().unwrap_or("-"),
        );
    }
    for service in &services {
        for wait in service["waiting"].as_array().into_iter().flatten() {
            println!(
                "{}: {}",
                service["name"].as_str().unwrap_or_default(),
                wait.as_str().unwrap_or_default()
            );
        }
    }
    let events = view["events"].as_array().cloned().unwrap_or_default();
    if !events.is_empty() {
        println!("recent events:");
        for event in events.iter().rev().take(8).rev() {
            println!("  {}", event["message"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}

/// `berth releases APP`
pub fn releases(args: ReleasesArgs, root: &Path) -> anyhow::Result<()> {
    let client = Client::new(&args.client, root)?;
    let releases = client.get(&format!("/v1/apps/{}/releases", args.app))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&releases)?);
        return Ok(());
    }
    println!(
        "{:<8} {:<11} {:<20} {:<20} IMAGES",
        "RELEASE", "STATUS", "CREATED", "BY"
    );
    for release in releases.as_array().into_iter().flatten() {
        let created = release["created_at"]
            .as_u64()
            .and_then(|ms| {
                time::OffsetDateTime::from_unix_timestamp(i64::try_from(ms / 1000).ok()?).ok()
            })
            .map(|t| {
                format!(
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                )
            })
            .unwrap_or_default();
        let images: Vec<String> = release["images"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(service, image)| {
                format!(
                    "{service}={}",
                    image["reference"].as_str().unwrap_or_default()
                )
            })
            .collect();
        println!(
            "{:<8} {:<11} {:<20} {:<20} {}",
            self::release(&release["number"]),
            release["status"].as_str().unwrap_or_default(),
            created,
            release["by"].as_str().unwrap_or("-"),
            images.join(" ")
        );
        for change in release["changes"].as_array().into_iter().flatten() {
            println!("         {}", change.as_str().unwrap_or_default());
        }
        if let Some(failure) = release["failure"].as_str() {
            println!("         {failure}");
        }
    }
    Ok(())
}

/// `berth rollback APP [RELEASE]`
pub fn rollback(args: RollbackArgs, root: &Path) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client, root)?;
    let body = match args.release {
        Some(release) => json!({ "release": release }),
        None => json!({}),
    };
    let answer = client.post(&format!("/v1/apps/{}/rollback", args.app), body)?;
    let to = answer["to"].as_u64().unwrap_or_default();
    println!("{app}#{} -> {app}#{to}", answer["from"], app = args.app);
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    follow(&client, &args.app, to, false)
}

/// `#7` for a release number in a JSON answer.
pub(crate) fn release(number: &Value) -> String {
    format!("#{}", number.as_u64().unwrap_or_default())
}

/// `user@host` of whoever runs this command, for the release record.
fn who() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", nix::unistd::getuid()));
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{user}@{host}")
}

#[cfg(test)]
mod cert_tests {
    #![allow(clippy::unwrap_used)]

    use super::parse_cert;

    #[test]
    fn proxy_certs_name_hosts_then_files() {
        let spec = parse_cert("shop.test,*.shop.test=/etc/c.pem:/etc/k.pem").unwrap();
        assert_eq!(spec.hosts, ["shop.test", "*.shop.test"]);
        assert_eq!(spec.cert_path.to_str(), Some("/etc/c.pem"));
        assert_eq!(spec.key_path.to_str(), Some("/etc/k.pem"));
        for bad in [
            "shop.test",
            "shop.test=/c.pem",
            "=/c.pem:/k.pem",
            "a=:/k.pem",
        ] {
            let error = parse_cert(bad).unwrap_err();
            assert!(error.contains("write"), "{bad}: {error}");
        }
    }
}
