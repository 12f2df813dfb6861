//! Containers on this node: `berth run`, `ps`, `start`, `stop`, `kill`, `rm`, `logs`,
//! `inspect`, `exec`, `wait`, and the hidden per-container monitor.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use berth_runtime::container::{ContainerRequest, NetworkMode, RestartPolicy, Status};
use berth_runtime::logs::{self, LogLimits, LogQuery, LogRecord, Stream};
use berth_runtime::network::PortMapping;
use berth_runtime::node::{short, Container, Node, NodeConfig, NodeError};
use berth_runtime::spec::{Bind, Resources, Tmpfs};
use berth_units::{ByteSize, HumanDuration};
use clap::{Args, Subcommand};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::ImageCleanup;

/// The container commands.
#[derive(Subcommand)]
pub enum NodeCommand {
    /// Run a container from an image (pulled if missing): shows its output and returns its
    /// exit code, or with -d prints its id once it runs.
    Run(Box<RunArgs>),
    /// List containers (running ones; -a for all).
    Ps(PsArgs),
    /// Start containers that exited or were stopped.
    Start(NamesArgs),
    /// Stop containers: their stop signal (SIGTERM by default), then SIGKILL after a grace
    /// period. A stopped container is not restarted by its restart policy.
    Stop(StopArgs),
    /// Send a signal to containers' processes (the restart policy still applies).
    Kill(KillArgs),
    /// Remove containers and everything they hold on the node (root filesystem, address,
    /// network namespace, cgroup, logs).
    Rm(RmArgs),
    /// Show a container's output (stdout and stderr; --timestamps adds their times).
    Logs(LogsArgs),
    /// Show containers' records and state as JSON.
    Inspect(NamesArgs),
    /// Run a command inside a running container, through the OCI runtime.
    Exec(ExecArgs),
    /// Wait until containers exit (for good) and print their exit codes.
    Wait(NamesArgs),
}

/// Runs a container command against the node at `root`, configured by the `[node]` table of
/// the config file.
pub fn run_command(
    command: NodeCommand,
    config: Option<&Path>,
    root: &Path,
) -> anyhow::Result<ExitCode> {
    let file = crate::config::ConfigFile::load(config)?;
    let node = open_node(&file, root)?;
    match command {
        NodeCommand::Run(args) => run(&node, *args, &file.node.images),
        NodeCommand::Ps(args) => ps(&node, args),
        NodeCommand::Start(args) => start(&node, args),
        NodeCommand::Stop(args) => stop(&node, args),
        NodeCommand::Kill(args) => kill(&node, args),
        NodeCommand::Rm(args) => rm(&node, args),
        NodeCommand::Logs(args) => logs(&node, args),
        NodeCommand::Inspect(args) => inspect(&node, args),
        NodeCommand::Exec(args) => exec(&node, args),
        NodeCommand::Wait(args) => wait(&node, args),
    }
}

/// The node at `root`.
pub fn open_node(file: &crate::config::ConfigFile, root: &Path) -> anyhow::Result<Node> {
    open_node_with(file, root, |_| {})
}

/// [`open_node`], with `adjust` applied to the network config first.
pub fn open_node_with(
    file: &crate::config::ConfigFile,
    root: &Path,
    adjust: impl FnOnce(&mut berth_runtime::network::NetworkConfig),
) -> anyhow::Result<Node> {
    let monitor = std::env::current_exe().context("finding the berth binary")?;
    let mut network = file.node.network_config(root)?;
    adjust(&mut network);
    Ok(Node::open(NodeConfig {
        root: root.to_owned(),
        runtime: file.node.runtime.map(Into::into),
        network,
        namespace_helper: vec![monitor.clone(), "internal-cgroup-ns".into(), "--".into()],
        monitor: vec![monitor.into_os_string(), "internal-monitor".into()],
    })?)
}

/// `berth run`
#[derive(Args)]
pub struct RunArgs {
    /// A name for the container (unique on this node); generated when absent.
    #[arg(long)]
    name: Option<String>,
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Memory limit, at least 6Mi, e.g. 256Mi or 64m: above it the kernel kills the process
    /// (OOM). Without it the container may use all of the host's memory.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true, value_parser = parse_memory)]
    memory: Option<ByteSize>,
    /// CPU limit in CPUs, at least 0.01, e.g. 0.5. Without it the container may use every CPU.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_cpus)]
    cpus: Option<f64>,
    /// Most processes and threads at once, from 1 to 4194304 [default: 4096].
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = parse_pids)]
    pids: Option<i64>,
    /// Restart policy: no, on-failure[:MAX] or always (with exponential backoff).
    #[arg(long, default_value = "no", value_name = "POLICY")]
    restart: RestartPolicy,
    /// Forward a host port to the container: [IP:]HOSTPORT:PORT[/tcp|/udp] (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    publish: Vec<PortMapping>,
    /// Network: bridge (an address on berth's bridge) or none.
    #[arg(long, default_value = "bridge")]
    network: NetworkMode,
    /// Bind a host directory: HOSTPATH:PATH[:ro] (repeatable).
    #[arg(short = 'v', long = "volume", value_name = "HOST:PATH[:ro]")]
    volume: Vec<String>,
    /// Mount a tmpfs: PATH[:size=SIZE] (repeatable), e.g. /scratch:size=64Mi.
    #[arg(long, value_name = "PATH[:size=SIZE]")]
    tmpfs: Vec<String>,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User: name, uid, name:group or uid:gid.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Replace the image's entrypoint (the image's cmd is dropped too).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Hostname (the name by default).
    #[arg(long)]
    hostname: Option<String>,
    /// Seconds between the stop signal and SIGKILL on stop.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    stop_timeout: u64,
    /// Rotate the log file at this size.
    #[arg(long, default_value = "10MiB", value_name = "SIZE")]
    log_max_size: ByteSize,
    /// Log files kept (the current one included).
    #[arg(long, default_value_t = 3, value_name = "N")]
    log_max_files: u32,
    /// Print the id and return once the process runs, instead of showing its output and
    /// returning its exit code.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Remove the container when it exits (not with --detach).
    #[arg(long, conflicts_with = "detach")]
    rm: bool,
    /// The image: a reference (pulled if missing) or an image id.
    image: String,
    /// Command and arguments (replace the image's cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

impl RunArgs {
    fn request(&self) -> anyhow::Result<ContainerRequest> {
        let volumes = self
            .volume
            .iter()
            .map(|v| parse_volume(v))
            .collect::<Result<_, _>>()?;
        Ok(ContainerRequest {
            name: self.name.clone(),
            image: self.image.clone(),
            command: self.command.clone(),
            entrypoint: self
                .entrypoint
                .as_ref()
                .map(|e| e.split_whitespace().map(str::to_owned).collect()),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            resources: Resources {
                memory: self.memory.map(|m| m.0),
                cpus: self.cpus,
                pids: self.pids,
            },
            restart: self.restart,
            ports: self.publish.clone(),
            network: self.network,
            volumes,
            tmpfs: self
                .tmpfs
                .iter()
                .map(|t| parse_tmpfs(t))
                .collect::<Result<_, _>>()?,
            read_only: self.read_only,
            stop_timeout: self.stop_timeout,
            log: LogLimits {
                max_file_bytes: self.log_max_size.0,
                max_files: self.log_max_files,
            },
            secret_env: Default::default(),
            secret_files: Default::default(),
        })
    }
}

/// `--memory`: a size a container can start under.
fn parse_memory(text: &str) -> Result<ByteSize, String> {
    let size: ByteSize = text
        .parse()
        .map_err(|e: berth_units::UnitError| format!("{e} (a memory limit is at least 6MiB)"))?;
    Resources {
        memory: Some(size.0),
        ..Resources::default()
    }
    .check()
    .map_err(|e| e.to_string())?;
    Ok(size)
}

/// `--cpus`: a number of CPUs of at least 0.01.
fn parse_cpus(text: &str) -> Result<f64, String> {
    let cpus: f64 = text.parse().map_err(|_| {
        "not a number: give a number of CPUs of at least 0.01 (1% of one CPU), like 0.5 or 2"
            .to_owned()
    })?;
    Resources {
        cpus: Some(cpus),
        ..Resources::default()
    }
    .check()
    .map_err(|e| e.to_string())?;
    Ok(cpus)
}

/// `--pids`: a process count from 1 to 4194304.
fn parse_pids(text: &str) -> Result<i64, String> {
    let pids: i64 = text.parse().map_err(|_| {
        "not a whole number: give a count from 1 to 4194304 (without --pids a container gets 4096)"
            .to_owned()
    })?;
    Resources {
        pids: Some(pids),
        ..Resources::default()
    }
    .check()
    .map_err(|e| e.to_string())?;
    Ok(pids)
}

fn parse_tmpfs(spec: &str) -> anyhow::Result<Tmpfs> {
    let (destination, size) = match spec.split_once(':') {
        None => (spec, None),
        Some((path, option)) => {
            let size = option.strip_prefix("size=").ok_or_else(|| {
                anyhow::anyhow!("invalid tmpfs {spec:?}: use PATH or PATH:size=SIZE")
            })?;
            let size: ByteSize = size
                .parse()
                .map_err(|e: berth_units::UnitError| anyhow::anyhow!("tmpfs {spec:?}: {e}"))?;
            (path, Some(size.0))
        }
    };
    Ok(Tmpfs {
        destination: destination.to_owned(),
        size,
    })
}

fn parse_volume(spec: &str) -> anyhow::Result<Bind> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, destination, read_only) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => anyhow::bail!("invalid volume {spec:?}: use HOSTPATH:PATH or HOSTPATH:PATH:ro"),
    };
    Ok(Bind {
        source: PathBuf::from(source),
        destination: destination.to_owned(),
        read_only,
    })
}

/// `berth ps`
#[derive(Args)]
pub struct PsArgs {
    /// Show exited containers too.
    #[arg(short, long)]
    all: bool,
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
    /// JSON (record and state of each).
    #[arg(long)]
    pub(crate) json: bool,
    /// An app of berth server: its instances (service, instance, release, state, health,
    /// address, uptime) as the server sees them. Without: this node's containers.
    pub(crate) app: Option<String>,
    #[command(flatten)]
    pub(crate) client: crate::server_cmd::ClientArgs,
}

/// `berth stop`
#[derive(Args)]
pub struct StopArgs {
    /// Seconds to wait after the stop signal before SIGKILL (default: the container's).
    #[arg(short = 't', long, value_name = "SECONDS")]
    time: Option<u64>,
    /// Containers (names or ids).
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `berth kill`
#[derive(Args)]
pub struct KillArgs {
    /// Signal (name or number).
    #[arg(short, long, default_value = "KILL")]
    signal: String,
    /// Containers (names or ids).
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `berth rm`
#[derive(Args)]
pub struct RmArgs {
    /// Kill and remove running containers.
    #[arg(short, long)]
    force: bool,
    /// Containers (names or ids).
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `berth logs`
#[derive(Args)]
pub struct LogsArgs {
    /// Keep printing new output until the container exits.
    #[arg(short, long)]
    pub(crate) follow: bool,
    /// Only output since a time (RFC 3339) or for a duration back (e.g. 5m).
    #[arg(long, value_name = "WHEN")]
    pub(crate) since: Option<String>,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub(crate) tail: Option<usize>,
    /// Show each line's timestamp.
    #[arg(short, long)]
    pub(crate) timestamps: bool,
    /// NAME is an app of berth server (also when a container has that name).
    #[arg(long)]
    pub(crate) app: bool,
    /// A container, or an app of berth server as APP or APP/SERVICE: its instances' output
    /// merged by time, each line after the instance's name. A NAME without `/` is an app
    /// when no container on this node has that name (or with --app).
    #[arg(value_name = "NAME")]
    pub(crate) container: String,
    #[command(flatten)]
    pub(crate) client: crate::server_cmd::ClientArgs,
}

/// `berth exec`
#[derive(Args)]
pub struct ExecArgs {
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The container.
    container: String,
    /// Command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Containers named on the command line.
#[derive(Args)]
pub struct NamesArgs {
    /// Containers (names or ids).
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `berth run`: create, start, and unless detached show the output and return the exit code.
fn run(node: &Node, args: RunArgs, cleanup: &ImageCleanup) -> anyhow::Result<ExitCode> {
    let request = args.request()?;
    // Refused here, before a pull: what no container could run with, and host ports taken.
    node.check(&request)?;
    if node.images().get(&request.image)?.is_none() {
        crate::image_cmd::pull_for_run(node.images(), node.root(), &request.image, cleanup)?;
    }
    let started = match node.run(request) {
        Ok(started) => started,
        Err(NodeError::Start { name, message }) => {
            if args.rm {
                let _ = node.remove(&name, true);
            }
            return Err(NodeError::Start { name, message }.into());
        }
        Err(e) => return Err(e.into()),
    };
    let id = started.record.id.clone();
    if args.detach {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    print_logs(node, &started, &LogQuery::default(), true, false)?;
    let done = node.wait(&id)?;
    if args.rm {
        node.remove(&id, true)?;
    }
    Ok(exit_code(&done))
}

fn exit_code(container: &Container) -> ExitCode {
    let code = container.state.exit.map_or(0, |e| e.code);
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

/// `berth start`
pub fn start(node: &Node, args: NamesArgs) -> anyhow::Result<ExitCode> {
    for name in &args.containers {
        let c = node.start(name)?;
        println!("{}", c.record.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// `berth ps`
pub fn ps(node: &Node, args: PsArgs) -> anyhow::Result<ExitCode> {
    let containers: Vec<Container> = node
        .list()?
        .into_iter()
        .filter(|c| args.all || c.is_active())
        .collect();
    if args.json {
        let values: Vec<_> = containers.iter().map(inspect_value).collect();
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.quiet {
        for c in &containers {
            println!("{}", short(&c.record.id));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "ID".to_owned(),
        "NAME".into(),
        "IMAGE".into(),
        "COMMAND".into(),
        "STATUS".into(),
        "ADDRESS".into(),
        "PORTS".into(),
    ]];
    for c in &containers {
        rows.push([
            short(&c.record.id),
            c.record.name.clone(),
            c.record.image.clone(),
            ellipsize(&c.record.process.args.join(" "), 30),
            status_text(c),
            c.record
                .network
                .as_ref()
                .map(|a| a.ip.to_string())
                .unwrap_or_else(|| "-".into()),
            ports_text(&c.record.request.ports),
        ]);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

fn ports_text(ports: &[PortMapping]) -> String {
    if ports.is_empty() {
        return "-".into();
    }
    ports
        .iter()
        .map(|p| {
            let ip = p.host_ip.map(|ip| format!("{ip}:")).unwrap_or_default();
            format!("{ip}{}->{}", p.host_port, p.container_port)
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let cut: String = s.chars().take(max - 1).collect();
    format!("{cut}…")
}

/// Prints rows as left-aligned columns.
pub fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn status_text(c: &Container) -> String {
    let since = |at: &Option<String>| {
        at.as_deref()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .map(|t| age((OffsetDateTime::now_utc() - t).whole_seconds().max(0) as u64))
            .unwrap_or_default()
    };
    let mut text = match c.state.status {
        Status::Created => "created".to_owned(),
        Status::Running => format!("up {}", since(&c.state.started_at))
            .trim()
            .to_owned(),
        Status::Paused => format!("paused {}", since(&c.state.paused_at))
            .trim()
            .to_owned(),
        Status::Restarting => format!(
            "restarting (exit {}, {} restarts)",
            c.state.exit.map_or(0, |e| e.code),
            c.state.restart_count
        ),
        Status::Exited => {
            let exit = c.state.exit.unwrap_or_default();
            let oom = if exit.oom_killed { ", OOM-killed" } else { "" };
            format!(
                "exited ({}{oom}) {} ago",
                exit.code,
                since(&c.state.finished_at)
            )
        }
    };
    if c.state.status == Status::Running && c.state.restart_count > 0 {
        text.push_str(&format!(" ({} restarts)", c.state.restart_count));
    }
    if let Some(error) = &c.state.error {
        text.push_str(&format!(" [{error}]"));
    }
    text
}

/// A duration for people: `42s`, `3m`, `5h`, `2d`.
pub fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// `berth stop`
pub fn stop(node: &Node, args: StopArgs) -> anyhow::Result<ExitCode> {
    for name in &args.containers {
        let c = node.get(name)?;
        let timeout = Duration::from_secs(args.time.unwrap_or(c.record.request.stop_timeout));
        node.stop(name, timeout)?;
        println!("{}", c.record.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// `berth kill`
pub fn kill(node: &Node, args: KillArgs) -> anyhow::Result<ExitCode> {
    for name in &args.containers {
        let c = node.kill(name, &args.signal)?;
        println!("{}", c.record.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// `berth rm`
pub fn rm(node: &Node, args: RmArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for name in &args.containers {
        match node.remove(name, args.force) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("berth: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `berth logs`
pub fn logs(node: &Node, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let container = node.get(&args.container)?;
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let query = LogQuery {
        since,
        tail: args.tail,
    };
    print_logs(node, &container, &query, args.follow, args.timestamps)?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn parse_since(when: &str) -> anyhow::Result<OffsetDateTime> {
    if let Ok(at) = OffsetDateTime::parse(when, &Rfc3339) {
        return Ok(at);
    }
    let back: HumanDuration = when.parse().map_err(|e: berth_units::UnitError| {
        anyhow::anyhow!("{e}; or give a time like 2026-11-29T13:00:00Z")
    })?;
    Ok(OffsetDateTime::now_utc() - back.0)
}

/// Prints the container's log records (stdout to stdout, stderr to stderr); with `follow`,
/// until the container has exited for good.
fn print_logs(
    node: &Node,
    container: &Container,
    query: &LogQuery,
    follow: bool,
    timestamps: bool,
) -> anyhow::Result<()> {
    let dir = container.log_dir();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let mut sink = |r: &LogRecord| -> std::io::Result<()> {
        let out: &mut dyn Write = match r.stream {
            Stream::Stdout => &mut stdout,
            Stream::Stderr => &mut stderr,
        };
        if timestamps {
            write!(out, "{} ", r.time)?;
        }
        out.write_all(&r.text)?;
        if !r.partial {
            out.write_all(b"\n")?;
        }
        out.flush()
    };
    if !follow {
        for record in logs::read(&dir, query)? {
            sink(&record)?;
        }
        return Ok(());
    }
    let id = container.record.id.clone();
    let active = || node.get(&id).map(|c| c.is_active()).unwrap_or(false);
    if !dir.join(logs::LOG_FILE).exists() {
        std::fs::create_dir_all(&dir)?;
    }
    logs::follow(&dir, query, active, sink).context("following the log")
}

/// `berth inspect`
pub fn inspect(node: &Node, args: NamesArgs) -> anyhow::Result<ExitCode> {
    let values = args
        .containers
        .iter()
        .map(|name| node.get(name).map(|c| inspect_value(&c)))
        .collect::<Result<Vec<_>, _>>()?;
    println!("{}", serde_json::to_string_pretty(&values)?);
    Ok(ExitCode::SUCCESS)
}

fn inspect_value(c: &Container) -> serde_json::Value {
    serde_json::json!({
        "id": c.record.id,
        "name": c.record.name,
        "dir": c.dir,
        "record": c.record,
        "state": c.state,
    })
}

/// `berth exec`: runs a command in the container through the OCI runtime and returns its
/// exit code.
pub fn exec(node: &Node, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let status = node
        .exec_command(&args.container, &args.command, &args.env)?
        .status()
        .context("running the OCI runtime's exec")?;
    Ok(ExitCode::from(
        status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(255),
    ))
}

/// `berth wait`: waits for each container to exit for good and prints its exit code.
pub fn wait(node: &Node, args: NamesArgs) -> anyhow::Result<ExitCode> {
    let mut last = ExitCode::SUCCESS;
    for name in &args.containers {
        let done = node.wait(name)?;
        println!("{}", done.state.exit.map_or(0, |e| e.code));
        last = exit_code(&done);
    }
    Ok(last)
}

/// `berth internal-monitor DIR`: the per-container monitor (started by berth itself).
pub fn monitor(dir: &Path) -> anyhow::Result<ExitCode> {
    // Not part of the caller's session: a terminal's Ctrl-C or hangup must not reach it.
    let _ = nix::unistd::setsid();
    berth_runtime::monitor::run(dir, std::io::stdin().lock(), std::io::stdout())?;
    Ok(ExitCode::SUCCESS)
}
