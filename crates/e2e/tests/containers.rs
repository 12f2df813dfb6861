//! berth's node runtime end to end, on real runc (and crun), the real CNI plugins and a
//! busybox image FROM scratch pushed to berth's registry and pulled: output and exit codes,
//! limits, networking, restarts, a SIGKILLed berth, and that nothing is left behind.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::busybox::{push_busybox_image, push_image, raw_layer, BusyboxImage};
use berth_e2e::{berth_binary, BerthOptions, BerthRegistry, Registry};

/// One node: its own root, bridge and /24, a registry holding the busybox image (pulled).
struct Node {
    dir: tempfile::TempDir,
    bridge: String,
    image: BusyboxImage,
    _registry: BerthRegistry,
}

impl Node {
    fn new() -> Node {
        Node::with_runtime("runc")
    }

    /// The runtime that created a container.
    fn runtime_of(&self, name: &str) -> String {
        self.inspect(name)["record"]["runtime"]["kind"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn with_runtime(runtime: &'static str) -> Node {
        let registry = BerthRegistry::start(BerthOptions::default());
        let image = push_busybox_image(registry.url(), "test/busybox", "1", &["sh"]);
        let dir = tempfile::Builder::new()
            .prefix("berth-node.")
            .tempdir()
            .unwrap();
        let tag: [u8; 3] = rand_bytes();
        let bridge = format!("bt{}", hex::encode(tag));
        let net = 10 + tag[0] % 200;
        let config = format!(
            "[node]\nruntime = \"{runtime}\"\n[node.network]\nbridge = \"{bridge}\"\nsubnet = \"10.{}.{net}.0/24\"\nmasquerade = false\n",
            203 + tag[1] % 40
        );
        std::fs::write(dir.path().join("berth.toml"), config).unwrap();
        let node = Node {
            dir,
            bridge,
            image,
            _registry: registry,
        };
        node.ok(&["pull", "--quiet", &node.image.reference]);
        node
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn berth(&self) -> Command {
        let mut cmd = Command::new(berth_binary());
        cmd.arg("--root")
            .arg(self.root())
            .arg("--config")
            .arg(self.dir.path().join("berth.toml"))
            .env("BERTH_LOG", "warn");
        cmd
    }

    fn output(&self, args: &[&str]) -> Output {
        self.berth().args(args).output().unwrap()
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `berth inspect NAME` as JSON.
    fn inspect(&self, name: &str) -> serde_json::Value {
        let text = self.ok(&["inspect", name]);
        serde_json::from_str::<serde_json::Value>(&text).unwrap()[0].clone()
    }

    fn status(&self, name: &str) -> String {
        self.inspect(name)["state"]["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn logs(&self, name: &str) -> String {
        self.ok(&["logs", name])
    }

    #[track_caller]
    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything a container could leave on the host, for the cleanup assertions.
    fn leftovers(&self, id: &str) -> Vec<String> {
        let mut found = Vec::new();
        let root = self.root().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        found.extend(
            mounts
                .lines()
                .filter(|l| l.contains(&root))
                .map(|l| format!("mount: {l}")),
        );
        let links = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        found.extend(links.lines().map(|l| format!("veth: {l}")));
        for cgroup in [
            format!("/sys/fs/cgroup/memory/berth/{id}"),
            format!("/sys/fs/cgroup/pids/berth/{id}"),
            format!("/sys/fs/cgroup/unified/berth/{id}"),
        ] {
            if Path::new(&cgroup).exists() {
                found.push(format!("cgroup: {cgroup}"));
            }
        }
        if self.root().join("netns").join(id).exists() {
            found.push("netns file".into());
        }
        if self.root().join("containers").join(id).exists() {
            found.push("container directory".into());
        }
        let ipam = self.root().join("cni/ipam");
        for entry in walk(&ipam) {
            let text = std::fs::read_to_string(&entry).unwrap_or_default();
            if text.contains(id) {
                found.push(format!("ip lease: {}", entry.display()));
            }
        }
        let rules = Command::new("iptables-save").output().unwrap();
        if String::from_utf8_lossy(&rules.stdout).contains(id) {
            found.push("iptables rule".into());
        }
        found
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        berth_e2e::process::remove_node(|| self.berth(), &self.bridge);
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(url: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn run_shows_output_and_returns_the_exit_code() {
    let node = Node::new();
    let out = node.output(&[
        "run",
        "--rm",
        "-e",
        "GREETING=hi",
        &node.image.reference,
        "sh",
        "-c",
        "echo $GREETING $IMAGE_VAR; echo to-stderr >&2; id -u; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi from-image\n0\n",
        "{out:?}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
    // --rm removed it.
    assert_eq!(node.ok(&["ps", "-aq"]), "");
    // Another user, no network, a read-only root filesystem.
    let out = node.output(&[
        "run",
        "--rm",
        "--user",
        "app",
        "--network",
        "none",
        "--read-only",
        &node.image.reference,
        "sh",
        "-c",
        "id -u; id -g; touch /x || echo read-only",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000\n1000\nread-only\n",
        "{out:?}"
    );
    // A host directory bound read-only, and a sized tmpfs.
    let host = node.dir.path().join("shared");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("file"), "from the host\n").unwrap();
    let volume = format!("{}:/data:ro", host.display());
    let out = node.output(&[
        "run",
        "--rm",
        "-v",
        &volume,
        "--tmpfs",
        "/scratch:size=1Mi",
        &node.image.reference,
        "sh",
        "-c",
        "cat /data/file; touch /data/x || echo ro-volume; grep ' /scratch ' /proc/mounts",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("from the host\nro-volume\ntmpfs /scratch tmpfs"),
        "{out:?}"
    );
    assert!(stdout.contains("size=1024k"), "{stdout}");
    assert!(!host.join("x").exists());
    // Bad mounts are clear errors.
    let out = node.output(&["run", "--tmpfs", "/t:mode=1", &node.image.reference]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PATH:size=SIZE"),
        "{out:?}"
    );
    let out = node.output(&[
        "run",
        "-v",
        "/no/such/dir:/d",
        &node.image.reference,
        "true",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{out:?}"
    );
}

#[test]
fn a_detached_container_lives_through_ps_logs_exec_stop_and_rm_on_runc() {
    a_detached_container_lives_through_ps_logs_exec_stop_and_rm("runc");
}

#[test]
fn a_detached_container_lives_through_ps_logs_exec_stop_and_rm_on_crun() {
    a_detached_container_lives_through_ps_logs_exec_stop_and_rm("crun");
}

fn a_detached_container_lives_through_ps_logs_exec_stop_and_rm(runtime: &'static str) {
    let node = Node::with_runtime(runtime);
    let id = node.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        &node.image.reference,
        "sh",
        "-c",
        "trap 'echo bye; exit 0' TERM; echo started; httpd -f -p 80 -h /www & wait",
    ]);
    assert_eq!(id.len(), 64, "{id}");
    assert_eq!(node.runtime_of("web"), runtime);
    let ps = node.ok(&["ps"]);
    assert!(ps.contains("web") && ps.contains("up"), "{ps}");
    node.wait_for("the first log line", || {
        node.logs("web").contains("started")
    });
    assert_eq!(node.ok(&["exec", "web", "cat", "/etc/hostname"]), "web");
    assert_eq!(
        node.inspect("web")["record"]["process"]["exposed_ports"][0],
        "80/tcp"
    );
    let ip = node.inspect("web")["record"]["network"]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        node.ok(&["exec", "web", "wget", "-qO-", "http://127.0.0.1/"]),
        "hello from berth"
    );
    let exec_code = node.output(&["exec", "web", "sh", "-c", "exit 4"]);
    assert_eq!(exec_code.status.code(), Some(4));
    assert_eq!(
        http_get(&format!("http://{ip}/")).unwrap(),
        "hello from berth\n"
    );
    // The name is taken while it exists.
    let clash = node.output(&["run", "-d", "--name", "web", &node.image.reference, "true"]);
    assert!(!clash.status.success());
    assert!(String::from_utf8_lossy(&clash.stderr).contains("already used"));
    // A stop: the shell's trap handles SIGTERM (no SIGKILL needed).
    node.ok(&["stop", "web"]);
    let state = node.inspect("web")["state"].clone();
    assert_eq!(state["status"], "exited");
    assert_eq!(state["exit"]["code"], 0, "{state}");
    assert!(node.logs("web").ends_with("bye"));
    // Started again: same filesystem and address.
    let exec = node.output(&["exec", "web", "true"]);
    assert!(
        String::from_utf8_lossy(&exec.stderr).contains("not running"),
        "{exec:?}"
    );
    node.ok(&["start", "web"]);
    assert_eq!(node.status("web"), "running");
    assert_eq!(node.inspect("web")["record"]["network"]["ip"], ip.as_str());
    assert_eq!(
        http_get(&format!("http://{ip}/")).unwrap(),
        "hello from berth\n"
    );
    node.ok(&["stop", "web"]);
    assert!(node.ok(&["ps"]).lines().count() == 1, "only the header");
    assert!(node.ok(&["ps", "-a"]).contains("exited"));
    assert!(node
        .leftovers(&id)
        .contains(&"container directory".to_owned()));
    node.ok(&["rm", "web"]);
    assert_eq!(node.leftovers(&id), Vec::<String>::new());
}

#[test]
fn stop_kills_after_the_grace_period_and_rm_needs_force() {
    let node = Node::new();
    // A shell as PID 1 ignores SIGTERM.
    let id = node.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        &node.image.reference,
        "sleep",
        "1000",
    ]);
    let rm = node.output(&["rm", "stubborn"]);
    assert!(!rm.status.success());
    assert!(
        String::from_utf8_lossy(&rm.stderr).contains("is running"),
        "{rm:?}"
    );
    let started = Instant::now();
    node.ok(&["stop", "-t", "1", "stubborn"]);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "{took:?}");
    let state = node.inspect("stubborn")["state"].clone();
    assert_eq!(state["exit"]["code"], 137, "{state}");
    assert_eq!(state["exit"]["signal"], 9);
    // A reboot takes the overlay mount and the netns away; start puts them back.
    let dir = node.inspect("stubborn")["dir"].as_str().unwrap().to_owned();
    let netns = node.root().join("netns").join(&id);
    for mount in [format!("{dir}/bundle/rootfs"), netns.display().to_string()] {
        let out = Command::new("umount").arg(&mount).output().unwrap();
        assert!(out.status.success(), "umount {mount}: {out:?}");
    }
    std::fs::remove_file(&netns).unwrap();
    node.ok(&["start", "stubborn"]);
    let gateway = node.inspect("stubborn")["record"]["network"]["gateway"]
        .as_str()
        .unwrap()
        .to_owned();
    let ping = node.output(&["exec", "stubborn", "ping", "-c", "1", "-W", "2", &gateway]);
    assert!(ping.status.success(), "{ping:?}");
    node.ok(&["stop", "-t", "0", "stubborn"]);
    node.ok(&["rm", "stubborn"]);
    assert_eq!(node.leftovers(&id), Vec::<String>::new());
    // rm -f of a running container.
    let id = node.ok(&["run", "-d", &node.image.reference, "sleep", "1000"]);
    node.ok(&["rm", "-f", &id[..12]]);
    assert_eq!(node.leftovers(&id), Vec::<String>::new());
}

#[test]
fn a_memory_limit_oom_kills_and_a_pids_limit_stops_forks_on_runc() {
    a_memory_limit_oom_kills_and_a_pids_limit_stops_forks("runc");
}

#[test]
fn a_memory_limit_oom_kills_and_a_pids_limit_stops_forks_on_crun() {
    a_memory_limit_oom_kills_and_a_pids_limit_stops_forks("crun");
}

fn a_memory_limit_oom_kills_and_a_pids_limit_stops_forks(runtime: &'static str) {
    let node = Node::with_runtime(runtime);
    let out = node.output(&[
        "run",
        "--name",
        "hog",
        "--memory",
        "32Mi",
        &node.image.reference,
        "dd",
        "if=/dev/zero",
        "of=/dev/shm/fill",
        "bs=1M",
        "count=60",
    ]);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    let state = node.inspect("hog")["state"].clone();
    assert_eq!(state["exit"]["oom_killed"], true, "{state}");
    assert!(node.ok(&["ps", "-a"]).contains("OOM"));
    // Under the limit the same work succeeds.
    let out = node.output(&[
        "run",
        "--rm",
        "--memory",
        "96Mi",
        &node.image.reference,
        "dd",
        "if=/dev/zero",
        "of=/dev/shm/fill",
        "bs=1M",
        "count=20",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let out = node.output(&[
        "run",
        "--rm",
        "--pids",
        "4",
        &node.image.reference,
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; echo done",
    ]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("can't fork"), "{all}");
}

#[test]
fn containers_get_a_default_pids_limit_and_the_smallest_limits_still_run_on_runc() {
    containers_get_a_default_pids_limit_and_the_smallest_limits_still_run("runc");
}

#[test]
fn containers_get_a_default_pids_limit_and_the_smallest_limits_still_run_on_crun() {
    containers_get_a_default_pids_limit_and_the_smallest_limits_still_run("crun");
}

/// Without `--pids` a container gets 4096 processes (a fork bomb stops there, not at the
/// host's pid_max); `--pids` overrides it; and the smallest limits `berth run` accepts start
/// a container, so a refusal up front is the only failure a limit can cause.
fn containers_get_a_default_pids_limit_and_the_smallest_limits_still_run(runtime: &'static str) {
    let node = Node::with_runtime(runtime);
    let pids_max = |id: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/berth/{id}/pids.max"))
            .or_else(|_| {
                std::fs::read_to_string(format!("/sys/fs/cgroup/unified/berth/{id}/pids.max"))
            })
            .unwrap()
            .trim()
            .to_owned()
    };
    let id = node.ok(&["run", "-d", &node.image.reference, "sleep", "1000"]);
    assert_eq!(pids_max(&id), "4096");
    assert_eq!(
        node.inspect(&id)["record"]["request"]["resources"]["pids"],
        4096,
        "berth inspect shows the limit in force"
    );
    let limited = node.ok(&[
        "run",
        "-d",
        "--pids",
        "64",
        &node.image.reference,
        "sleep",
        "1000",
    ]);
    assert_eq!(pids_max(&limited), "64");
    // The default bites: no more than 4096 at once, whatever the container tries.
    let out = node.output(&[
        "exec",
        &id,
        "sh",
        "-c",
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4096"),
        "the container sees its limit: {out:?}"
    );
    node.ok(&["rm", "-f", &id, &limited]);
    let out = node.output(&[
        "run",
        "--rm",
        "--pids",
        "1",
        "--memory",
        "6Mi",
        "--cpus",
        "0.01",
        &node.image.reference,
        "echo",
        "smallest limits",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "smallest limits\n");
}

#[test]
fn a_host_port_published_by_another_container_is_refused() {
    let node = Node::new();
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let first = node.ok(&[
        "run",
        "-d",
        "--name",
        "first",
        "-p",
        &publish,
        &node.image.reference,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let refusal = |host: &str| {
        format!(
            "berth: host port {host}/tcp is already published by container first ({}): choose another host port, or remove that container\n",
            &first[..12]
        )
    };
    let same_address = format!("127.0.0.1:{port}:81");
    let every_address = format!("{port}:80");
    for (publish, host) in [
        (&same_address, format!("127.0.0.1:{port}")),
        (&every_address, port.to_string()),
    ] {
        let out = node.output(&[
            "run",
            "-d",
            "--name",
            "second",
            "-p",
            publish,
            &node.image.reference,
            "sleep",
            "1000",
        ]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), refusal(&host));
    }
    assert_eq!(
        node.ok(&["ps", "-aq"]),
        first[..12],
        "the refused runs left no container"
    );
    // The first still answers on its port.
    let mut last = Err(String::new());
    node.wait_for("the published port", || {
        last = http_get(&format!("http://127.0.0.1:{port}/"));
        last.is_ok()
    });
    assert_eq!(last.unwrap(), "hello from berth\n");
    // Another protocol or address is another host port.
    let udp = node.ok(&[
        "run",
        "-d",
        "-p",
        &format!("{publish}/udp"),
        "-p",
        &format!("127.0.0.2:{port}:80"),
        &node.image.reference,
        "sleep",
        "1000",
    ]);
    // Stopped, the first still holds its forwarding; removed, it frees the port.
    node.ok(&["stop", "-t", "1", "first"]);
    let out = node.output(&["run", "-d", "-p", &publish, &node.image.reference, "true"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        refusal(&format!("127.0.0.1:{port}"))
    );
    node.ok(&["rm", "first"]);
    let again = node.ok(&[
        "run",
        "-d",
        "-p",
        &publish,
        &node.image.reference,
        "sleep",
        "1000",
    ]);
    node.ok(&["rm", "-f", &again, &udp]);
}

#[test]
fn cpu_limit_is_written_to_the_cgroup() {
    let node = Node::new();
    let id = node.ok(&[
        "run",
        "-d",
        "--cpus",
        "0.5",
        &node.image.reference,
        "sleep",
        "1000",
    ]);
    let quota = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/cpu,cpuacct/berth/{id}/cpu.cfs_quota_us"
    ))
    .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/berth/{id}/cpu.cfs_quota_us")))
    .unwrap();
    assert_eq!(quota.trim(), "50000");
    node.ok(&["rm", "-f", &id]);
}

#[test]
fn two_containers_talk_over_the_bridge_and_a_published_port_reaches_the_host_on_runc() {
    two_containers_talk_over_the_bridge_and_a_published_port_reaches_the_host("runc");
}

#[test]
fn two_containers_talk_over_the_bridge_and_a_published_port_reaches_the_host_on_crun() {
    two_containers_talk_over_the_bridge_and_a_published_port_reaches_the_host("crun");
}

fn two_containers_talk_over_the_bridge_and_a_published_port_reaches_the_host(
    runtime: &'static str,
) {
    let node = Node::with_runtime(runtime);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    node.ok(&[
        "run",
        "-d",
        "--name",
        "server",
        "-p",
        &publish,
        &node.image.reference,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let ip = node.inspect("server")["record"]["network"]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = node.output(&[
        "run",
        "--rm",
        &node.image.reference,
        "wget",
        "-qO-",
        &format!("http://{ip}/"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from berth\n",
        "{out:?}"
    );
    let mut last = Err(String::new());
    node.wait_for("the published port", || {
        last = http_get(&format!("http://127.0.0.1:{port}/"));
        last.is_ok()
    });
    assert_eq!(last.unwrap(), "hello from berth\n");
    let resolv = node.ok(&["exec", "server", "cat", "/etc/hosts"]);
    assert!(
        resolv.contains(&ip) && resolv.contains("server"),
        "{resolv}"
    );
    let id = node.inspect("server")["id"].as_str().unwrap().to_owned();
    node.ok(&["rm", "-f", "server"]);
    assert_eq!(node.leftovers(&id), Vec::<String>::new());
    assert!(http_get(&format!("http://127.0.0.1:{port}/")).is_err());
}

#[test]
fn the_restart_policy_restarts_a_crashing_process_with_backoff_on_runc() {
    the_restart_policy_restarts_a_crashing_process_with_backoff("runc");
}

#[test]
fn the_restart_policy_restarts_a_crashing_process_with_backoff_on_crun() {
    the_restart_policy_restarts_a_crashing_process_with_backoff("crun");
}

fn the_restart_policy_restarts_a_crashing_process_with_backoff(runtime: &'static str) {
    let node = Node::with_runtime(runtime);
    let out = node.output(&[
        "run",
        "--name",
        "crashy",
        "--restart",
        "on-failure:3",
        &node.image.reference,
        "sh",
        "-c",
        "cut -d' ' -f1 /proc/uptime; exit 2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let starts: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(starts.len(), 4, "the first run and 3 restarts: {starts:?}");
    let state = node.inspect("crashy")["state"].clone();
    assert_eq!(state["restart_count"], 3, "{state}");
    assert_eq!(state["status"], "exited");
    // The delays double: at least 0.1 s, 0.2 s, 0.4 s between starts.
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, min) in gaps.iter().zip([0.1, 0.2, 0.4]) {
        assert!(*gap >= min, "gaps {gaps:?}");
    }
    // `always` restarts a clean exit too, until stopped.
    node.ok(&[
        "run",
        "-d",
        "--name",
        "looper",
        "--restart",
        "always",
        &node.image.reference,
        "sh",
        "-c",
        "echo again; sleep 0.2",
    ]);
    node.wait_for("two restarts", || {
        node.inspect("looper")["state"]["restart_count"]
            .as_u64()
            .unwrap()
            >= 2
    });
    node.ok(&["stop", "looper"]);
    assert_eq!(node.status("looper"), "exited");
    let count = node.inspect("looper")["state"]["restart_count"].clone();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        node.inspect("looper")["state"]["restart_count"],
        count,
        "stopped stays stopped"
    );
}

/// Starts an attached `berth run` whose output we read line by line.
fn attached_run(node: &Node, args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = node
        .berth()
        .arg("run")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

#[test]
fn containers_outlive_a_sigkilled_berth_and_are_found_again_on_runc() {
    containers_outlive_a_sigkilled_berth_and_are_found_again("runc");
}

#[test]
fn containers_outlive_a_sigkilled_berth_and_are_found_again_on_crun() {
    containers_outlive_a_sigkilled_berth_and_are_found_again("crun");
}

fn containers_outlive_a_sigkilled_berth_and_are_found_again(runtime: &'static str) {
    let node = Node::with_runtime(runtime);
    let (mut ticker, mut out) = attached_run(
        &node,
        &[
            "--name",
            "ticker",
            &node.image.reference,
            "sh",
            "-c",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
        ],
    );
    let (mut short, mut short_out) = attached_run(
        &node,
        &[
            "--name",
            "short",
            &node.image.reference,
            "sh",
            "-c",
            "echo begun; sleep 1; exit 7",
        ],
    );
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "tick 0\n");
    line.clear();
    short_out.read_line(&mut line).unwrap();
    assert_eq!(line, "begun\n");
    // SIGKILL both berth processes while their containers run.
    ticker.kill().unwrap();
    ticker.wait().unwrap();
    short.kill().unwrap();
    short.wait().unwrap();
    // A new berth finds them; the ticker runs on and its log keeps growing.
    assert_eq!(node.status("ticker"), "running");
    let before = node.logs("ticker").lines().count();
    std::thread::sleep(Duration::from_millis(500));
    let after = node.logs("ticker").lines().count();
    assert!(after > before, "log grew from {before} to {after}");
    // The short one exited meanwhile: its exit code was recorded.
    node.wait_for("short to exit", || node.status("short") == "exited");
    assert_eq!(node.inspect("short")["state"]["exit"]["code"], 7);
    assert_eq!(node.logs("short"), "begun");
    // Follow, from another berth process, then stop it from yet another.
    let mut follower = node
        .berth()
        .args(["logs", "-f", "--tail", "1", "ticker"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut follow_out = BufReader::new(follower.stdout.take().unwrap());
    let mut first = String::new();
    follow_out.read_line(&mut first).unwrap();
    assert!(first.starts_with("tick "), "{first}");
    node.ok(&["stop", "-t", "1", "ticker"]);
    let mut rest = String::new();
    follow_out.read_to_string(&mut rest).unwrap();
    assert!(
        follower.wait().unwrap().success(),
        "logs -f ends when the container does"
    );
    assert!(rest.lines().count() >= 2, "followed {rest:?}");
}

#[test]
fn failures_leave_nothing_behind() {
    let node = Node::new();
    // The process cannot start: no such binary.
    let out = node.output(&[
        "run",
        "--name",
        "nobin",
        &node.image.reference,
        "/no/such/binary",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not start") && err.contains("/no/such/binary"),
        "{err}"
    );
    let id = node.inspect("nobin")["id"].as_str().unwrap().to_owned();
    node.ok(&["rm", "nobin"]);
    assert_eq!(node.leftovers(&id), Vec::<String>::new());
    // Create fails after the network was set up (unknown user): everything is undone.
    let out = node.output(&["run", "--user", "nobody", &node.image.reference, "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not in the image's /etc/passwd"), "{err}");
    assert_eq!(node.ok(&["ps", "-aq"]), "");
    let containers = std::fs::read_dir(node.root().join("containers")).unwrap();
    let dirs: Vec<_> = containers.flatten().filter(|e| e.path().is_dir()).collect();
    assert!(dirs.is_empty(), "{dirs:?}");
    assert_eq!(node.leftovers("no-such-id"), Vec::<String>::new());
    let links = Command::new("ip")
        .args(["-o", "link", "show", "master", &node.bridge])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&links.stdout), "");
    // A bad flag value is a clear error, not a panic.
    let out = node.output(&["run", "--memory", "lots", &node.image.reference]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a size"));
}

#[test]
fn crun_runs_containers_where_plain_crun_would_refuse() {
    let node = Node::with_runtime("crun");
    let out = node.output(&[
        "run",
        "--rm",
        "--memory",
        "32Mi",
        &node.image.reference,
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || echo no-v1; echo ok",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{out:?}"
    );
    let out = node.output(&[
        "run",
        "--name",
        "crun-oom",
        "--memory",
        "32Mi",
        &node.image.reference,
        "dd",
        "if=/dev/zero",
        "of=/dev/shm/fill",
        "bs=1M",
        "count=60",
    ]);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    assert_eq!(
        node.inspect("crun-oom")["record"]["runtime"]["kind"],
        "crun"
    );
}

#[test]
fn run_pulls_a_missing_image_and_cleanup_spares_used_pinned_and_new_images() {
    let node = Node::new();
    let config = node.dir.path().join("berth.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[node.images]\nprune_high = \"1B\"\n");
    std::fs::write(&config, text).unwrap();
    let registry = node.image.reference.split('/').next().unwrap().to_owned();
    let url = format!("http://{registry}");
    let pinned = push_busybox_image(&url, "test/pinned", "1", &["echo", "pinned"]);
    let first = push_busybox_image(&url, "test/first", "1", &["echo", "first"]);
    let second = push_busybox_image(&url, "test/second", "1", &["echo", "second"]);
    // The busybox image is used by a container; `berth run` pulls what is missing.
    node.ok(&[
        "run",
        "-d",
        "--name",
        "user",
        &node.image.reference,
        "sleep",
        "1000",
    ]);
    node.ok(&["pull", "--quiet", &pinned.reference]);
    node.ok(&["image", "pin", &pinned.reference]);
    let out = node.output(&["run", "--rm", &first.reference]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "first\n", "{out:?}");
    let images = node.ok(&["images"]);
    for kept in [&node.image.reference, &pinned.reference, &first.reference] {
        assert!(images.contains(kept.as_str()), "{kept} kept: {images}");
    }
    // Above the high mark, the next pull removes the unused, unpinned image (not the new one).
    node.ok(&["pull", "--quiet", &second.reference]);
    let images = node.ok(&["images"]);
    assert!(!images.contains(&first.reference), "{images}");
    for kept in [&node.image.reference, &pinned.reference, &second.reference] {
        assert!(images.contains(kept.as_str()), "{kept} kept: {images}");
    }
}

#[test]
fn a_hostile_layer_fails_the_pull_clearly_and_writes_nothing_outside_the_store() {
    let node = Node::new();
    let registry = node.image.reference.split('/').next().unwrap().to_owned();
    let url = format!("http://{registry}");
    let marker = format!("berth-escaped-{}", hex::encode(rand_bytes::<4>()));
    let snapshots_before = std::fs::read_dir(node.root().join("images/snapshots"))
        .unwrap()
        .count();
    // Deep enough to leave any store directory.
    let path = format!("{}tmp/{marker}", "../".repeat(12));
    let hostile = push_image(
        &url,
        "test/hostile",
        "1",
        &[
            berth_e2e::busybox::busybox_layer(),
            raw_layer(&path, b"gotcha"),
        ],
        &["true"],
    );
    let out = node.output(&["pull", "--quiet", &hostile.reference]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&marker) && err.contains(".."), "{err}");
    assert!(!Path::new("/tmp").join(&marker).exists(), "escaped to /tmp");
    assert!(walk(node.dir.path()).iter().all(|p| !p.ends_with(&marker)));
    assert!(!node.ok(&["images"]).contains("hostile"));
    let snapshots_after = std::fs::read_dir(node.root().join("images/snapshots"))
        .unwrap()
        .count();
    assert_eq!(
        snapshots_before, snapshots_after,
        "no snapshot registered or left"
    );
}

#[test]
fn logs_are_bounded_by_rotation_and_selected_by_tail() {
    let node = Node::new();
    let out = node.output(&[
        "run",
        "--name",
        "chatty",
        "--log-max-size",
        "4KiB",
        "--log-max-files",
        "2",
        &node.image.reference,
        "seq",
        "1",
        "5000",
    ]);
    assert!(out.status.success(), "{out:?}");
    let dir = node.inspect("chatty")["dir"].as_str().unwrap().to_owned();
    let files: Vec<PathBuf> = walk(&Path::new(&dir).join("logs"));
    assert_eq!(files.len(), 2, "{files:?}");
    let total: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    assert!(total <= 8 * 1024, "{total} bytes kept");
    assert_eq!(node.ok(&["logs", "--tail", "2", "chatty"]), "4999\n5000");
    let stamped = node.ok(&["logs", "-t", "--tail", "1", "chatty"]);
    assert!(stamped.ends_with("Z 5000"), "{stamped}");
}
