//! The `berth` binary: parses the command line and hands off to the library crates.

mod admin_cmd;
mod app_cmd;
mod config;
mod container_cmd;
mod discovery_cmd;
mod image_cmd;
mod info;
mod logging;
mod registry_cmd;
mod secret_cmd;
mod server_cmd;
mod volume_cmd;

use clap::{Parser, Subcommand, ValueEnum};

/// berth: a self-hosted container platform in one binary.
///
/// Every flag can also be set through an environment variable (shown as [env: …]) or in the
/// TOML config file given with --config; flags win over the environment, which wins over the
/// file.
#[derive(Parser)]
#[command(
    name = "berth",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// Config file (TOML) with [registry] and [node] tables; unknown keys are rejected.
    #[arg(long, global = true, env = "BERTH_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,

    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "BERTH_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,

    /// Log filter, e.g. `info`, `debug`, `berth_registry=debug`.
    #[arg(
        long,
        global = true,
        env = "BERTH_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    log: String,

    /// The node's state directory: images under <root>/images, containers under
    /// <root>/containers.
    #[arg(
        long,
        global = true,
        env = "BERTH_ROOT",
        default_value = "/var/lib/berth",
        value_name = "DIR"
    )]
    root: std::path::PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The OCI registry: serve it, manage its users.
    #[command(subcommand)]
    Registry(registry_cmd::RegistryCommand),
    /// What this host offers containers (cgroups, runc/crun, rlimits) and which OCI runtime
    /// berth uses, with the reason.
    Info(info::InfoArgs),
    /// Pull an image from an OCI registry into this node's image store; prints its id.
    Pull(image_cmd::PullArgs),
    /// List the images in this node's image store.
    Images(image_cmd::ImagesArgs),
    /// Manage this node's images: prune, remove, pin.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    #[command(flatten)]
    Node(container_cmd::NodeCommand),
    /// Run the all-in-one server: the /v1 API, the controller that deploys releases on this
    /// node's containers, and optionally the registry. State in <root>/server.redb.
    Server(Box<server_cmd::ServerArgs>),
    /// Deploy an app spec (berth.toml) as a new release and follow it until it is live;
    /// exits non-zero when it fails (it is then rolled back).
    Deploy(server_cmd::DeployArgs),
    /// Show apps, or one app's services, instances and recent events.
    Status(server_cmd::StatusArgs),
    /// List an app's releases, newest first.
    Releases(server_cmd::ReleasesArgs),
    /// Make an earlier release of an app desired again and follow its deploy.
    Rollback(server_cmd::RollbackArgs),
    /// An app's secrets on the server: set (value from stdin), list, rm.
    #[command(subcommand)]
    Secret(secret_cmd::SecretCommand),
    /// An app's named volumes on the server: ls, rm.
    #[command(subcommand)]
    Volume(volume_cmd::VolumeCommand),
    /// Show the events of an app (or of every app): releases, deploy steps, instances
    /// starting, becoming healthy, exiting, being replaced; -f follows.
    Events(app_cmd::EventsArgs),
    /// Set how many instances of an app's service run, without a new release (until the
    /// next deploy or rollback).
    Scale(app_cmd::ScaleArgs),
    /// Let a canary deploy paused at a step with pause = "manual" go on.
    Promote(app_cmd::PromoteArgs),
    /// Manage apps on the server: rm.
    #[command(subcommand)]
    App(app_cmd::AppCommand),
    /// Hold an app's deploys under way: they start and stop nothing, and their
    /// healthy_deadline stops, until `berth resume`.
    Pause(app_cmd::PromoteArgs),
    /// Let held deploys go on; their healthy_deadline counts from now.
    Resume(app_cmd::PromoteArgs),
    /// The proxy's routes: hosts and paths, the releases behind each with their weights and
    /// upstreams, and the requests, 5xx responses and p99 latency each release served.
    Routes(app_cmd::RoutesArgs),
    /// The per-container monitor (started by berth itself).
    #[command(hide = true)]
    InternalMonitor {
        /// The container's directory.
        dir: std::path::PathBuf,
    },
    /// Runs the OCI runtime in a private mount namespace without the cgroup2 mount (started
    /// by berth itself, for crun on hybrid cgroup hosts).
    #[command(hide = true)]
    InternalCgroupNs {
        /// The runtime binary.
        program: std::path::PathBuf,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let access = match &cli.command {
        Command::Server(args) => args.access_log(&cli.root),
        _ => logging::AccessLog::Stderr,
    };
    if let Err(e) = logging::init(cli.log_format == LogFormat::Json, &cli.log, access) {
        eprintln!("berth: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let ok = |result: anyhow::Result<()>| result.map(|()| std::process::ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Registry(cmd) => ok(registry_cmd::run(cmd, cli.config.as_deref(), &cli.root)),
        Command::Info(args) => ok(info::run(args, cli.config.as_deref())),
        Command::Pull(args) => ok(config::ConfigFile::load(cli.config.as_deref())
            .and_then(|file| image_cmd::pull(args, &cli.root, &file.node.images))),
        Command::Images(args) => ok(image_cmd::images(args, &cli.root)),
        Command::Image(cmd) => ok(image_cmd::run(cmd, &cli.root)),
        Command::Node(container_cmd::NodeCommand::Ps(args)) if args.app.is_some() => {
            ok(app_cmd::ps(
                &args.client,
                &cli.root,
                args.app.as_deref().unwrap_or_default(),
                args.json,
            ))
        }
        Command::Node(container_cmd::NodeCommand::Logs(args)) => {
            app_cmd::logs_command(args, cli.config.as_deref(), &cli.root)
        }
        Command::Node(cmd) => container_cmd::run_command(cmd, cli.config.as_deref(), &cli.root),
        Command::Server(args) => ok(server_cmd::serve(*args, cli.config.as_deref(), &cli.root)),
        Command::Deploy(args) => server_cmd::deploy(args, &cli.root),
        Command::Status(args) => ok(server_cmd::status(args, &cli.root)),
        Command::Releases(args) => ok(server_cmd::releases(args, &cli.root)),
        Command::Rollback(args) => server_cmd::rollback(args, &cli.root),
        Command::Secret(cmd) => ok(secret_cmd::run(cmd, &cli.root)),
        Command::Volume(cmd) => ok(volume_cmd::run(cmd, &cli.root)),
        Command::Events(args) => ok(app_cmd::events(args, &cli.root)),
        Command::Scale(args) => ok(app_cmd::scale(args, &cli.root)),
        Command::Promote(args) => app_cmd::promote(args, &cli.root),
        Command::Pause(args) => app_cmd::pause(args, &cli.root),
        Command::App(command) => app_cmd::app(command, &cli.root),
        Command::Resume(args) => app_cmd::resume(args, &cli.root),
        Command::Routes(args) => ok(app_cmd::routes(args, &cli.root)),
        Command::InternalMonitor { dir } => container_cmd::monitor(&dir),
        Command::InternalCgroupNs { program, args } => Err(
            berth_runtime::oci_runtime::exec_in_private_cgroup_namespace(&program, &args).into(),
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
