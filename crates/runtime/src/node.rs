//! The node: containers created from the image store, wired to the network, run and watched
//! by a per-container monitor, stopped, removed. Everything a container is lives in
//! `<root>/containers/<id>/`, so any berth process (or a restarted one) finds it again.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::container::{
    process_for, read_json, resolve_user, write_json, write_json_fast, ContainerRecord,
    ContainerRequest, ContainerState, NetworkMode, Status, PAUSED_FILE, RECORD_FILE, STATE_FILE,
    STOP_FILE,
};
use crate::host::RuntimeKind;
use crate::image::{ImageError, ImageStore};
use crate::network::{self, Netns, Network, NetworkConfig, NetworkError};
use crate::oci_runtime::{DriverError, OciRuntime, RuntimeConfig};
use crate::rootfs::Rootfs;
use crate::secret_files::{mount_files, unmount_files, SECRETS_DIR};
use crate::spec::{self, Bind, BundleSpec};

/// What went wrong, for people.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No such container.
    #[error("no container named or with id {0:?} (see berth ps -a)")]
    NotFound(String),
    /// A prefix matches several.
    #[error("{0:?} matches several containers: give more of the id or the name")]
    Ambiguous(String),
    /// The name is taken.
    #[error("the name {0:?} is already used by container {1}: remove it or choose another name")]
    NameInUse(String, String),
    /// The request cannot be run.
    #[error("{0}")]
    Invalid(String),
    /// The image is not on this node.
    #[error("image {0:?} is not on this node: berth pull it first")]
    ImageMissing(String),
    /// Image store trouble.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Network trouble.
    #[error("network: {0}")]
    Network(#[from] NetworkError),
    /// The OCI runtime failed.
    #[error(transparent)]
    Runtime(#[from] DriverError),
    /// The container is running and must not be.
    #[error("container {0} is running: stop it first, or force")]
    Running(String),
    /// Another container publishes the host port.
    #[error("host port {port} is already published by container {by}: choose another host port, or remove that container")]
    PortTaken {
        /// The host side asked for.
        port: String,
        /// The container that has it (name and short id).
        by: String,
    },
    /// The container could not start.
    #[error("container {name} did not start: {message}")]
    Start {
        /// Its name.
        name: String,
        /// Why.
        message: String,
    },
    /// Files.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

/// How the node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Everything berth keeps on this node.
    pub root: PathBuf,
    /// The OCI runtime to use (detected when `None`).
    pub runtime: Option<RuntimeKind>,
    /// The bridge network.
    pub network: NetworkConfig,
    /// The command that runs a monitor: the container directory is appended
    /// (`berth internal-monitor`).
    pub monitor: Vec<OsString>,
    /// The command that runs the OCI runtime in a private mount namespace without the
    /// cgroup2 mount, where that is needed (`berth internal-cgroup-ns`); empty: `unshare`.
    pub namespace_helper: Vec<PathBuf>,
}

/// A container: what was asked and what it is doing.
#[derive(Debug, Clone)]
pub struct Container {
    /// Fixed at creation.
    pub record: ContainerRecord,
    /// Current.
    pub state: ContainerState,
    /// Its directory.
    pub dir: PathBuf,
}

impl Container {
    /// The directory holding its log files.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Whether its process runs (or is paused), or will run again.
    pub fn is_active(&self) -> bool {
        matches!(
            self.state.status,
            Status::Running | Status::Restarting | Status::Paused
        )
    }
}

/// The node's containers.
pub struct Node {
    config: NodeConfig,
    images: ImageStore,
    network: Network,
}

impl Node {
    /// Opens the node's directories.
    pub fn open(config: NodeConfig) -> Result<Node, NodeError> {
        crate::private_dir(&config.root)
            .map_err(io(format!("creating {}", config.root.display())))?;
        for dir in ["containers", "netns"] {
            fs::create_dir_all(config.root.join(dir))
                .map_err(io(format!("creating {}", config.root.join(dir).display())))?;
        }
        Ok(Node {
            images: ImageStore::open(&config.root.join("images"))?,
            network: Network::new(config.network.clone())?,
            config,
        })
    }

    /// Everything berth keeps on this node.
    pub fn root(&self) -> &Path {
        &self.config.root
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    fn containers_dir(&self) -> PathBuf {
        self.config.root.join("containers")
    }

    /// Every container, oldest first.
    pub fn list(&self) -> Result<Vec<Container>, NodeError> {
        let mut containers = Vec::new();
        let entries = fs::read_dir(self.containers_dir()).map_err(io("listing containers"))?;
        for entry in entries.flatten() {
            let dir = entry.path();
            let Ok(record) = read_json::<ContainerRecord>(&dir.join(RECORD_FILE)) else {
                continue;
            };
            containers.push(self.load(record, dir));
        }
        containers.sort_by(|a, b| {
            (a.record.created, &a.record.id).cmp(&(b.record.created, &b.record.id))
        });
        Ok(containers)
    }

    fn load(&self, record: ContainerRecord, dir: PathBuf) -> Container {
        let mut state: ContainerState = read_json(&dir.join(STATE_FILE)).unwrap_or_default();
        reconcile(&record, &mut state, &dir);
        if state.status == Status::Running {
            if let Ok(since) = fs::read_to_string(dir.join(PAUSED_FILE)) {
                state.status = Status::Paused;
                state.paused_at = Some(since.trim().to_owned());
            }
        }
        Container { record, state, dir }
    }

    /// The container with this name, id or unique id prefix.
    pub fn get(&self, name_or_id: &str) -> Result<Container, NodeError> {
        if name_or_id.len() == 64 && name_or_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let dir = self.containers_dir().join(name_or_id);
            if let Ok(record) = read_json::<ContainerRecord>(&dir.join(RECORD_FILE)) {
                return Ok(self.load(record, dir));
            }
        }
        let all = self.list()?;
        if let Some(c) = all.iter().find(|c| c.record.name == name_or_id) {
            return Ok(c.clone());
        }
        let mut matches = all
            .into_iter()
            .filter(|c| !name_or_id.is_empty() && c.record.id.starts_with(name_or_id));
        match (matches.next(), matches.next()) {
            (Some(c), None) => Ok(c),
            (Some(_), Some(_)) => Err(NodeError::Ambiguous(name_or_id.to_owned())),
            _ => Err(NodeError::NotFound(name_or_id.to_owned())),
        }
    }

    /// Creates a container (root filesystem, network, bundle) without starting it. On failure
    /// everything set up so far is taken down again.
    pub fn create(&self, request: ContainerRequest) -> Result<Container, NodeError> {
        let container = self.create_with_id(new_id(), request)?;
        self.note_image_use(&container);
        Ok(container)
    }

    /// Creates and starts a container, and returns once its process runs. The monitor is
    /// spawned first and waits while the container is created, so that its start-up overlaps
    /// with the creation instead of adding to it.
    pub fn run(&self, request: ContainerRequest) -> Result<Container, NodeError> {
        let id = new_id();
        let dir = self.containers_dir().join(&id);
        fs::create_dir_all(&dir).map_err(io("creating the container directory"))?;
        let monitor = match self.spawn_monitor(&dir) {
            Ok(monitor) => monitor,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let container = match self.create_with_id(id, request) {
            Ok(container) => container,
            Err(e) => {
                monitor.cancel();
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let started = self.release(monitor, &container);
        // After the start, not before it: the last use only matters to image cleanup.
        self.note_image_use(&container);
        started
    }

    /// Records that the container's image was used. The container exists either way: a
    /// failure here is logged, not returned.
    fn note_image_use(&self, container: &Container) {
        let touched = container
            .record
            .image_id
            .parse::<berth_oci::Digest>()
            .map_err(|e| e.to_string())
            .and_then(|id| self.images.touch(&id).map_err(|e| e.to_string()));
        if let Err(error) = touched {
            tracing::warn!(%error, id = %container.record.id, "recording the image's last use");
        }
    }

    /// Refuses a request that cannot run here, before anything is pulled or set up: limits
    /// no container can start under, ports with network none, and host ports that another
    /// container (running or not: its forwarding stays until it is removed) or another
    /// program on this host already has.
    pub fn check(&self, request: &ContainerRequest) -> Result<(), NodeError> {
        request.check().map_err(NodeError::Invalid)?;
        if request.ports.is_empty() {
            return Ok(());
        }
        for other in self.list()? {
            if other.record.netns.is_none() {
                continue;
            }
            for theirs in &other.record.request.ports {
                if let Some(ours) = request.ports.iter().find(|p| p.clashes_with(theirs)) {
                    return Err(NodeError::PortTaken {
                        port: ours.host_side(),
                        by: format!("{} ({})", other.record.name, short(&other.record.id)),
                    });
                }
            }
        }
        for port in &request.ports {
            if port_in_use(port) {
                return Err(NodeError::Invalid(format!(
                    "host port {} is in use by another program on this host (`ss -ltnup` shows which): choose another host port",
                    port.host_side()
                )));
            }
        }
        Ok(())
    }

    fn create_with_id(
        &self,
        id: String,
        request: ContainerRequest,
    ) -> Result<Container, NodeError> {
        let request = ContainerRequest {
            resources: request.resources.with_defaults(),
            ..request
        };
        let image = self
            .images
            .get(&request.image)?
            .ok_or_else(|| NodeError::ImageMissing(request.image.clone()))?;
        let process = process_for(&image.config, &request).map_err(NodeError::Invalid)?;
        let runtime = RuntimeConfig::detect(
            self.config.runtime,
            &self.config.root.join("run"),
            &self.config.namespace_helper,
        )?;
        let lock = self.lock_names()?;
        // Under the lock, so that two creates cannot both take a free port.
        self.check(&request)?;
        let name = match &request.name {
            Some(name) => {
                validate_name(name)?;
                if let Some(other) = self.list()?.iter().find(|c| &c.record.name == name) {
                    return Err(NodeError::NameInUse(name.clone(), short(&other.record.id)));
                }
                name.clone()
            }
            None => generated_name(&request.image, &id),
        };
        let dir = self.containers_dir().join(&id);
        fs::create_dir_all(&dir).map_err(io("creating the container directory"))?;
        let mut record = ContainerRecord {
            id: id.clone(),
            name: name.clone(),
            image: request.image.clone(),
            image_id: image.id.to_string(),
            created: crate::unix_now(),
            netns: (request.network == NetworkMode::Bridge)
                .then(|| self.config.root.join("netns").join(&id)),
            network: None,
            process,
            runtime,
            request,
        };
        write_json(&dir.join(RECORD_FILE), &record).map_err(io("writing the container record"))?;
        drop(lock);
        match self.set_up(&mut record, &dir, &image) {
            Ok(()) => Ok(self.load(record, dir)),
            Err(e) => {
                if let Err(undo) = self.tear_down(&record, &dir) {
                    tracing::warn!(error = %undo, id = %record.id, "cleaning up a failed create");
                }
                Err(e)
            }
        }
    }

    fn set_up(
        &self,
        record: &mut ContainerRecord,
        dir: &Path,
        image: &crate::image::Image,
    ) -> Result<(), NodeError> {
        let rootfs = Rootfs::at(dir);
        rootfs
            .mount(&self.images.layer_dirs(image))
            .map_err(io("mounting the root filesystem"))?;
        let user = resolve_user(
            &record.process.user,
            &read_image_file(&rootfs.merged, "etc/passwd"),
            &read_image_file(&rootfs.merged, "etc/group"),
        )
        .map_err(NodeError::Invalid)?;
        let hostname = record
            .request
            .hostname
            .clone()
            .unwrap_or_else(|| record.name.replace(['_', '.'], "-"));
        let etc = dir.join("etc");
        fs::create_dir_all(&etc).map_err(io("creating the container's /etc files"))?;
        if let Some(netns) = &record.netns {
            Netns::create(netns)?;
            let attachment = self
                .network
                .attach(&record.id, netns, &record.request.ports)?;
            record.network = Some(attachment);
            write_json(&dir.join(RECORD_FILE), record)
                .map_err(io("writing the container record"))?;
        }
        let ip = record
            .network
            .as_ref()
            .map_or(Ipv4Addr::LOCALHOST, |a| a.ip);
        network::write_hosts(&etc, &hostname, IpAddr::V4(ip), &[])?;
        network::write_hostname(&etc, &hostname)?;
        network::write_resolv_conf(&etc, &self.network.nameservers(), &[])?;
        let mut binds: Vec<Bind> = ["hosts", "hostname", "resolv.conf"]
            .into_iter()
            .map(|file| Bind {
                source: etc.join(file),
                destination: format!("/etc/{file}"),
                read_only: false,
            })
            .collect();
        for tmpfs in &record.request.tmpfs {
            if !tmpfs.destination.starts_with('/') {
                return Err(NodeError::Invalid(format!(
                    "tmpfs path {} must be absolute",
                    tmpfs.destination
                )));
            }
        }
        for volume in &record.request.volumes {
            if !volume.source.is_absolute() || !volume.destination.starts_with('/') {
                return Err(NodeError::Invalid(format!(
                    "volume {}:{} must use absolute paths",
                    volume.source.display(),
                    volume.destination
                )));
            }
            if !volume.source.exists() {
                return Err(NodeError::Invalid(format!(
                    "volume source {} does not exist",
                    volume.source.display()
                )));
            }
            binds.push(volume.clone());
        }
        let secret_files = &record.request.secret_files;
        if !secret_files.is_empty() {
            secret_files.check().map_err(NodeError::Invalid)?;
            let secrets = dir.join(SECRETS_DIR);
            mount_files(&secrets, secret_files, (user.uid, user.gid))
                .map_err(io("putting the secret files on a tmpfs"))?;
            binds.extend(secret_files.0.iter().map(|file| Bind {
                source: secrets.join(&file.name),
                destination: file.destination.clone(),
                read_only: true,
            }));
        }
        let spec = BundleSpec {
            args: record.process.args.clone(),
            env: record
                .process
                .env
                .iter()
                .filter(|var| !overridden_by(var, &record.request.secret_env.0))
                .cloned()
                .chain(std::iter::once(format!("HOSTNAME={hostname}")))
                .chain(record.request.secret_env.0.iter().cloned())
                .collect(),
            cwd: record.process.cwd.clone(),
            user,
            hostname,
            rootfs: rootfs.merged.clone(),
            read_only: record.request.read_only,
            binds,
            tmpfs: record.request.tmpfs.clone(),
            netns: record.netns.clone(),
            cgroups_path: spec::cgroup_path(&record.id),
            resources: record.request.resources,
            host_nofile_hard: crate::host::nofile_limits().map(|(_, hard)| hard),
        };
        // Owner-only: it is the one file that holds the secret environment.
        write_json_fast(&dir.join("bundle/config.json"), &spec::config_json(&spec))
            .map_err(io("writing the bundle's config.json"))
    }

    /// Starts a created or exited container: spawns its monitor and waits until the process
    /// runs (or failed to start).
    pub fn start(&self, name_or_id: &str) -> Result<Container, NodeError> {
        let mut container = self.get(name_or_id)?;
        if container.is_active() {
            return Err(NodeError::Running(container.record.name));
        }
        self.restore_after_reboot(&mut container)?;
        let monitor = self.spawn_monitor(&container.dir)?;
        self.release(monitor, &container)
    }

    /// Spawns the container's monitor; it waits for [`Node::release`].
    fn spawn_monitor(&self, dir: &Path) -> Result<Monitor, NodeError> {
        let (program, args) = self
            .config
            .monitor
            .split_first()
            .ok_or_else(|| NodeError::Invalid("no monitor command configured".into()))?;
        let monitor_log = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("monitor.log"))
            .map_err(io("creating the monitor log"))?;
        let mut child = Command::new(program)
            .args(args)
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(monitor_log)
            .spawn()
            .map_err(io(format!(
                "starting the monitor {}",
                Path::new(program).display()
            )))?;
        let go = child.stdin.take();
        Ok(Monitor { child, go })
    }

    /// Tells the monitor to start the container and waits until the process runs (or failed
    /// to start).
    fn release(&self, monitor: Monitor, container: &Container) -> Result<Container, NodeError> {
        let Monitor { mut child, go } = monitor;
        if let Some(mut go) = go {
            let _ = writeln!(go, "{}", crate::monitor::GO);
        }
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        // The monitor runs until the container is gone for good; don't leave a zombie in a
        // long-running caller.
        std::thread::spawn(move || child.wait());
        let name = container.record.name.clone();
        match line.trim_end().split_once(' ') {
            Some(("running", _)) => self.get(&container.record.id),
            Some(("error", message)) => Err(NodeError::Start {
                name,
                message: message.to_owned(),
            }),
            _ => Err(NodeError::Start {
                name,
                message: format!(
                    "the monitor exited early: {}",
                    fs::read_to_string(container.dir.join("monitor.log"))
                        .unwrap_or_default()
                        .trim()
                ),
            }),
        }
    }

    /// A reboot takes the root filesystem mount and the network namespace away (both live
    /// in memory) but leaves the container's directory: put them back before a start.
    fn restore_after_reboot(&self, container: &mut Container) -> Result<(), NodeError> {
        let secrets = container.dir.join(SECRETS_DIR);
        if secrets.exists() && !crate::rootfs::is_mount_point(&secrets) {
            return Err(NodeError::Invalid(format!(
                "the secret files of container {} were in memory and are gone (the node restarted?): remove it and create it again",
                container.record.name
            )));
        }
        let rootfs = Rootfs::at(&container.dir);
        if !crate::rootfs::is_mount_point(&rootfs.merged) {
            let image = self
                .images
                .get(&container.record.image_id)?
                .ok_or_else(|| NodeError::ImageMissing(container.record.image.clone()))?;
            rootfs
                .mount(&self.images.layer_dirs(&image))
                .map_err(io("mounting the root filesystem"))?;
        }
        let Some(netns) = container.record.netns.clone() else {
            return Ok(());
        };
        if Netns::is_mounted(&netns) {
            return Ok(());
        }
        tracing::info!(id = %container.record.id, "network namespace gone (reboot?): wiring it again");
        let record = &mut container.record;
        self.network.detach(
            &record.id,
            &netns,
            record.network.as_ref(),
            &record.request.ports,
        )?;
        Netns::create(&netns)?;
        let attachment = self
            .network
            .attach(&record.id, &netns, &record.request.ports)?;
        let etc = container.dir.join("etc");
        let hostname = fs::read_to_string(etc.join("hostname")).unwrap_or_default();
        network::write_hosts(&etc, hostname.trim(), IpAddr::V4(attachment.ip), &[])?;
        record.network = Some(attachment);
        write_json(&container.dir.join(RECORD_FILE), record)
            .map_err(io("writing the container record"))
    }

    /// Freezes a running container's processes with the cgroup freezer: it keeps its memory,
    /// its address and its mounts, and uses no CPU, until [`Node::resume`].
    pub fn pause(&self, name_or_id: &str) -> Result<Container, NodeError> {
        let container = self.get(name_or_id)?;
        if container.state.status != Status::Running {
            return Err(NodeError::Invalid(format!(
                "container {} is not running",
                container.record.name
            )));
        }
        container
            .record
            .runtime
            .driver()
            .pause(&container.record.id)?;
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        fs::write(container.dir.join(PAUSED_FILE), now).map_err(io("marking it paused"))?;
        self.get(&container.record.id)
    }

    /// Thaws a paused container.
    pub fn resume(&self, name_or_id: &str) -> Result<Container, NodeError> {
        let container = self.get(name_or_id)?;
        if container.state.status != Status::Paused {
            return Err(NodeError::Invalid(format!(
                "container {} is not paused",
                container.record.name
            )));
        }
        self.thaw(&container)?;
        self.get(&container.record.id)
    }

    fn thaw(&self, container: &Container) -> Result<(), NodeError> {
        container
            .record
            .runtime
            .driver()
            .resume(&container.record.id)?;
        match fs::remove_file(container.dir.join(PAUSED_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io("removing the paused marker")(e))
            }
            _ => Ok(()),
        }
    }

    /// Asks the container to stop (its stop signal, then SIGKILL after `timeout`) and waits
    /// until it has. The restart policy does not apply to a stop. A paused container is
    /// thawed first: frozen processes take no signal.
    pub fn stop(&self, name_or_id: &str, timeout: Duration) -> Result<Container, NodeError> {
        let mut container = self.get(name_or_id)?;
        if container.state.status == Status::Paused {
            self.thaw(&container)?;
            container = self.get(&container.record.id)?;
        }
        fs::write(container.dir.join(STOP_FILE), b"").map_err(io("requesting the stop"))?;
        if !container.is_active() {
            return Ok(container);
        }
        let runtime = container.record.runtime.driver();
        let id = &container.record.id;
        if container.state.status == Status::Running && !timeout.is_zero() {
            let _ = runtime.kill(id, &container.record.process.stop_signal);
            if let Some(stopped) = self.wait_inactive(id, timeout)? {
                return Ok(stopped);
            }
            tracing::info!(%id, ?timeout, "stop timeout passed: killing");
        }
        let _ = runtime.kill(id, "KILL");
        match self.wait_inactive(id, Duration::from_secs(10))? {
            Some(stopped) => Ok(stopped),
            None => Err(NodeError::Invalid(format!(
                "container {} did not exit after SIGKILL",
                container.record.name
            ))),
        }
    }

    fn wait_inactive(&self, id: &str, timeout: Duration) -> Result<Option<Container>, NodeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let container = self.get(id)?;
            if !container.is_active() {
                return Ok(Some(container));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the container has exited for good (no restart pending).
    pub fn wait(&self, name_or_id: &str) -> Result<Container, NodeError> {
        let id = self.get(name_or_id)?.record.id;
        loop {
            if let Some(done) = self.wait_inactive(&id, Duration::from_secs(3600))? {
                return Ok(done);
            }
        }
    }

    /// Sends `signal` to the container's process. The restart policy still applies.
    pub fn kill(&self, name_or_id: &str, signal: &str) -> Result<Container, NodeError> {
        let container = self.get(name_or_id)?;
        if container.state.status != Status::Running {
            return Err(NodeError::Invalid(format!(
                "container {} is not running",
                container.record.name
            )));
        }
        container
            .record
            .runtime
            .driver()
            .kill(&container.record.id, signal)?;
        Ok(container)
    }

    /// Removes a container and everything it holds on the node (root filesystem, network
    /// namespace and address, cgroup, logs). A running container needs `force` (it is killed).
    pub fn remove(&self, name_or_id: &str, force: bool) -> Result<(), NodeError> {
        let container = self.get(name_or_id)?;
        if container.is_active() {
            if !force {
                return Err(NodeError::Running(container.record.name));
            }
            self.stop(&container.record.id, Duration::ZERO)?;
        }
        self.tear_down(&container.record, &container.dir)
    }

    /// Undoes whatever of a container exists; safe to repeat.
    fn tear_down(&self, record: &ContainerRecord, dir: &Path) -> Result<(), NodeError> {
        record.runtime.driver().delete(&record.id)?;
        let rootfs = Rootfs::at(dir);
        rootfs
            .unmount()
            .map_err(io("unmounting the root filesystem"))?;
        if let Some(netns) = &record.netns {
            self.network.detach(
                &record.id,
                netns,
                record.network.as_ref(),
                &record.request.ports,
            )?;
            Netns::remove(netns)?;
        }
        if crate::rootfs::is_mount_point(&rootfs.merged) {
            return Err(NodeError::Invalid(format!(
                "{} is still mounted; not removing the container directory",
                rootfs.merged.display()
            )));
        }
        unmount_files(&dir.join(SECRETS_DIR)).map_err(io("unmounting the secret files"))?;
        match fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("removing {}", dir.display()))(e)),
        }
    }

    /// A command running `args` in the container (with its environment and working
    /// directory, plus `env`), attached to the caller's stdio.
    pub fn exec_command(
        &self,
        name_or_id: &str,
        args: &[String],
        env: &[String],
    ) -> Result<Command, NodeError> {
        let container = self.get(name_or_id)?;
        if container.state.status != Status::Running {
            return Err(NodeError::Invalid(format!(
                "container {} is not running",
                container.record.name
            )));
        }
        let process = &container.record.process;
        let env: Vec<String> = process.env.iter().chain(env).cloned().collect();
        Ok(container.record.runtime.driver().exec_command(
            &container.record.id,
            &env,
            &process.cwd,
            args,
        ))
    }

    fn lock_names(&self) -> Result<nix::fcntl::Flock<fs::File>, NodeError> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.containers_dir().join(".lock"))
            .map_err(io("opening the containers lock"))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io("locking the containers directory")(e.into()))
    }
}

/// Whether another program on this host holds `port` (a bind on it fails with "address in
/// use"). Forwarded ports are DNAT rules, not sockets, so berth's own do not count here.
fn port_in_use(port: &crate::network::PortMapping) -> bool {
    let ip = port.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let address = std::net::SocketAddr::new(ip, port.host_port);
    let bound = match port.protocol {
        crate::network::Protocol::Tcp => std::net::TcpListener::bind(address).map(drop),
        crate::network::Protocol::Udp => std::net::UdpSocket::bind(address).map(drop),
    };
    bound.is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
}

/// A spawned monitor waiting for its go.
struct Monitor {
    child: std::process::Child,
    go: Option<std::process::ChildStdin>,
}

impl Monitor {
    /// The container will not be created: end of input tells the monitor to exit.
    fn cancel(mut self) {
        drop(self.go.take());
        let _ = self.child.wait();
    }
}

/// A monitor that died leaves `state.json` saying running: say what is really known.
fn reconcile(record: &ContainerRecord, state: &mut ContainerState, dir: &Path) {
    if !matches!(state.status, Status::Running | Status::Restarting) {
        return;
    }
    let alive = state.monitor_pid.is_some_and(|pid| monitor_alive(pid, dir));
    if alive {
        return;
    }
    match record.runtime.driver().state(&record.id) {
        Ok(Some(s)) if s.status == "running" => {
            state.error = Some("its monitor is gone: the exit code will not be recorded".into());
        }
        _ => {
            state.status = Status::Exited;
            state.pid = None;
            state.error = Some("its monitor died; the exit code is unknown".into());
        }
    }
}

fn monitor_alive(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let wanted = dir.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == wanted)
}

/// Reads a small file of the image (like /etc/passwd) as the container would see it:
/// symlinks resolve inside the image's tree, never on the host. Missing, too large (over
/// 4 MiB) or not a regular file: empty.
fn read_image_file(rootfs: &Path, relative: &str) -> String {
    berth_oci::beneath::read_in_root(rootfs, relative, 4 << 20)
        .map(|data| String::from_utf8_lossy(&data).into_owned())
        .unwrap_or_default()
}

fn validate_name(name: &str) -> Result<(), NodeError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(NodeError::Invalid(format!(
            "invalid container name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        )))
    }
}

fn generated_name(image: &str, id: &str) -> String {
    let repo = image.split('@').next().unwrap_or(image);
    let last = repo.rsplit('/').next().unwrap_or(repo);
    let base: String = last
        .split(':')
        .next()
        .unwrap_or(last)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .collect();
    let base = if base.is_empty() {
        "container".into()
    } else {
        base
    };
    format!("{base}-{}", &id[..6])
}

/// The first 12 characters of an id.
pub fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Whether the `KEY=value` entry `var` is replaced by one of `secrets`.
fn overridden_by(var: &str, secrets: &[String]) -> bool {
    let key = |v: &str| v.split_once('=').map(|(k, _)| k.to_owned());
    let Some(name) = key(var) else { return false };
    secrets
        .iter()
        .any(|s| key(s).as_deref() == Some(name.as_str()))
}
