#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;

use super::cni::{self, Op};
use super::files::{check_hostname, render_hosts, render_resolv_conf, usable_nameservers};
use super::*;

// ---- pure parts -------------------------------------------------------------------------

fn port(text: &str) -> PortMapping {
    text.parse().unwrap()
}

#[test]
fn port_mappings_parse_docker_forms() {
    assert_eq!(
        port("8080:80"),
        PortMapping {
            host_ip: None,
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp
        }
    );
    assert_eq!(
        port("127.0.0.1:8080:80/udp"),
        PortMapping {
            host_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Udp
        }
    );
    assert_eq!(
        port("[::1]:53:5353/udp").host_ip,
        Some("::1".parse().unwrap())
    );
    assert_eq!(port("1:65535/tcp").container_port, 65535);
    for text in ["8080:80", "127.0.0.1:8080:80/tcp", "[::1]:53:53/udp"] {
        let parsed = port(text);
        assert_eq!(port(&parsed.to_string()), parsed, "{text} round-trips");
    }
}

#[test]
fn port_mapping_errors_say_what_is_wrong() {
    for (text, reason) in [
        ("80", "a host port is required"),
        ("8080:80/sctp", "protocol \"sctp\""),
        ("0:80", "host port \"0\""),
        ("8080:70000", "container port \"70000\""),
        ("8080-8090:80", "port ranges"),
        ("localhost:8080:80", "\"localhost\" is not an IP address"),
        ("::1:8080:80", "too many ':'"),
        ("[::1:8080:80", "followed by ]:"),
        ("1.2.3.4:8080", "host port \"1.2.3.4\""),
    ] {
        let err = text.parse::<PortMapping>().unwrap_err().to_string();
        assert!(err.contains(reason), "{text}: {err}");
        assert!(err.contains("HOSTPORT:PORT"), "{text}: {err}");
    }
}

#[test]
fn subnets_parse_and_reject_host_bits() {
    let subnet: Ipv4Subnet = "10.89.0.0/16".parse().unwrap();
    assert_eq!(subnet.first_host(), Ipv4Addr::new(10, 89, 0, 1));
    assert_eq!(subnet.broadcast(), Ipv4Addr::new(10, 89, 255, 255));
    assert!(subnet.contains(Ipv4Addr::new(10, 89, 7, 9)));
    assert!(!subnet.contains(Ipv4Addr::new(10, 90, 0, 1)));
    let err = "10.89.0.5/16".parse::<Ipv4Subnet>().unwrap_err();
    assert!(err.contains("did you mean 10.89.0.0/16"), "{err}");
    assert!("10.0.0.0/31".parse::<Ipv4Subnet>().is_err());
    assert!("10.0.0.0".parse::<Ipv4Subnet>().is_err());
    assert!("10.0.0.0/33".parse::<Ipv4Subnet>().is_err());
}

#[test]
fn config_defaults_and_rejects_unknown_keys() {
    let config: NetworkConfig = serde_json::from_value(json!({ "bridge": "br1" })).unwrap();
    assert_eq!(config.subnet.to_string(), "10.89.0.0/16");
    assert_eq!(config.cni_bin_dir, Path::new("/usr/lib/cni"));
    assert!(config.masquerade);
    assert!(config.ipam_data_dir.starts_with("/var/lib/berth"));
    let err = serde_json::from_value::<NetworkConfig>(json!({ "bridg": "x" })).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
    let err = serde_json::from_value::<NetworkConfig>(json!({ "subnet": "10.1.2.3/8" }));
    assert!(err.is_err());
}

#[test]
fn config_validation_explains_bad_values() {
    let with = |f: fn(&mut NetworkConfig)| {
        let mut config = NetworkConfig::default();
        f(&mut config);
        Network::new(config).map(drop).unwrap_err().to_string()
    };
    assert!(with(|c| c.bridge = "a-very-long-bridge".into()).contains("1 to 15"));
    assert!(with(|c| c.name = "-x".into()).contains("CNI network name"));
    assert!(with(|c| c.gateway = Some(Ipv4Addr::new(10, 90, 0, 1))).contains("not a host address"));
    assert!(with(|c| c.ipam_data_dir = "ipam".into()).contains("absolute"));
    assert!(Network::new(NetworkConfig::default()).is_ok());
}

#[test]
fn bad_container_ids_and_ports_are_refused_before_any_plugin_runs() {
    let network = Network::new(NetworkConfig::default()).unwrap();
    let err = network
        .attach("../x", Path::new("/nonexistent"), &[])
        .unwrap_err();
    assert!(
        matches!(err, NetworkError::InvalidContainerId { .. }),
        "{err}"
    );
    let err = network
        .attach("c1", Path::new("/nonexistent"), &[port("[::1]:80:80")])
        .unwrap_err();
    assert!(err.to_string().contains("IPv4-only"), "{err}");
    let err = network
        .attach(
            "c1",
            Path::new("/nonexistent"),
            &[port("80:80"), port("80:81")],
        )
        .unwrap_err();
    assert!(err.to_string().contains("published twice"), "{err}");
    let err = network
        .attach("c1", Path::new("/nonexistent"), &[])
        .unwrap_err();
    assert!(matches!(err, NetworkError::NetnsMissing { .. }), "{err}");
}

#[test]
fn plugin_configs_carry_berths_ipam_dir_and_snat() {
    let config = NetworkConfig {
        ipam_data_dir: "/srv/berth/cni/ipam".into(),
        gateway: Some(Ipv4Addr::new(10, 89, 0, 254)),
        ..NetworkConfig::default()
    };
    let bridge = cni::plugin_conf("berth", cni::bridge_conf(&config), None);
    assert_eq!(bridge["cniVersion"], "1.0.0");
    assert_eq!(bridge["name"], "berth");
    assert_eq!(bridge["isGateway"], true);
    assert_eq!(bridge["ipam"]["dataDir"], "/srv/berth/cni/ipam");
    assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.89.0.0/16");
    assert_eq!(bridge["ipam"]["ranges"][0][0]["gateway"], "10.89.0.254");
    let prev = json!({ "cniVersion": "1.0.0", "ips": [] });
    let portmap = cni::plugin_conf(
        "berth",
        cni::portmap_conf(&[port("127.0.0.1:8080:80"), port("53:53/udp")]),
        Some(&prev),
    );
    assert_eq!(portmap["snat"], true);
    assert_eq!(portmap["prevResult"], prev);
    assert_eq!(
        portmap["runtimeConfig"]["portMappings"],
        json!([
            { "hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1" },
            { "hostPort": 53, "containerPort": 53, "protocol": "udp" },
        ])
    );
}

#[test]
fn plugin_errors_are_parsed_from_the_cni_error_object() {
    let stdout = br#"{"code":7,"msg":"invalid network config","details":"bridge name too long"}"#;
    let err = cni::plugin_failure("bridge", Op::Add, stdout, b"", "exit status: 1");
    assert_eq!(
        err.to_string(),
        "cni plugin bridge ADD failed with code 7: invalid network config (bridge name too long)"
    );
    let err = cni::plugin_failure("bridge", Op::Del, b"", b"panic: boom\n", "signal: 6");
    assert_eq!(
        err.to_string(),
        "cni plugin bridge DEL exited with signal: 6 without a cni error: panic: boom"
    );
}

#[test]
fn the_container_address_is_read_from_the_result() {
    let result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            { "name": "br0", "mac": "4a:6f:d9:4e:83:d2" },
            { "name": "veth1", "mac": "96:66:86:e3:44:79" },
            { "name": "eth0", "mac": "ca:cb:56:5f:9e:f8", "sandbox": "/run/netns/x" }
        ],
        "ips": [{ "interface": 2, "address": "10.209.1.2/24", "gateway": "10.209.1.1" }],
    });
    let attachment = cni::attachment_from_result(result.clone()).unwrap();
    assert_eq!(attachment.ip, Ipv4Addr::new(10, 209, 1, 2));
    assert_eq!(attachment.prefix_len, 24);
    assert_eq!(attachment.gateway, Ipv4Addr::new(10, 209, 1, 1));
    assert_eq!(attachment.mac.as_deref(), Some("ca:cb:56:5f:9e:f8"));
    assert_eq!(attachment.interface, "eth0");
    let persisted: Attachment =
        serde_json::from_str(&serde_json::to_string(&attachment).unwrap()).unwrap();
    assert_eq!(persisted, attachment);
    let err = cni::attachment_from_result(json!({ "ips": [] })).unwrap_err();
    assert!(err.to_string().contains("no IPv4 address"), "{err}");
}

#[test]
fn loopback_nameservers_are_left_out() {
    let host = "# comment\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.255.255.53\n\
                nameserver fe80::1%eth0\nsearch example.org\nnameserver 2001:db8::53\n";
    assert_eq!(
        usable_nameservers(host),
        vec![
            "10.255.255.53".parse::<IpAddr>().unwrap(),
            "2001:db8::53".parse().unwrap()
        ]
    );
    assert!(usable_nameservers("nameserver 127.0.0.1\n").is_empty());
}

#[test]
fn hosts_and_resolv_conf_render() {
    let hosts = render_hosts(
        "web",
        "10.89.0.2".parse().unwrap(),
        &[("db".into(), "10.89.0.3".parse().unwrap())],
    );
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost"));
    assert!(hosts.ends_with("10.89.0.2\tweb\n10.89.0.3\tdb\n"));
    assert_eq!(
        render_resolv_conf(&["10.0.0.53".parse().unwrap()], &["svc.local".into()]),
        "search svc.local\nnameserver 10.0.0.53\n"
    );
    assert_eq!(render_resolv_conf(&[], &[]), "");
    assert!(check_hostname("web-1.example").is_ok());
    for bad in ["", "a b", "x\n10.0.0.1 evil", "-a", "a..b"] {
        assert!(check_hostname(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn container_files_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let ip = "10.89.0.2".parse().unwrap();
    let hosts = write_hosts(dir.path(), "web", ip, &[]).unwrap();
    assert!(std::fs::read_to_string(hosts)
        .unwrap()
        .contains("10.89.0.2\tweb\n"));
    let resolv = write_resolv_conf(dir.path(), &["1.1.1.1".parse().unwrap()], &[]).unwrap();
    assert_eq!(
        std::fs::read_to_string(resolv).unwrap(),
        "nameserver 1.1.1.1\n"
    );
    let hostname = write_hostname(dir.path(), "web").unwrap();
    assert_eq!(std::fs::read_to_string(hostname).unwrap(), "web\n");
    assert!(write_hostname(dir.path(), "bad name").is_err());
    let network = Network::new(NetworkConfig {
        dns: vec!["9.9.9.9".parse().unwrap()],
        ..NetworkConfig::default()
    })
    .unwrap();
    assert_eq!(
        network.nameservers(),
        vec!["9.9.9.9".parse::<IpAddr>().unwrap()]
    );
}

// ---- the real plugins (root) ------------------------------------------------------------

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user.
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// A per-test /24 in 10.201.0.0/16: a random start, then counting, so this process's
/// tests never share one.
fn next_subnet() -> Ipv4Subnet {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let n = NEXT
        .get_or_init(|| AtomicU32::new(rand::random_range(0..256)))
        .fetch_add(1, Ordering::Relaxed);
    Ipv4Subnet::new(Ipv4Addr::new(10, 201, (n % 256) as u8, 0), 24).unwrap()
}

/// One test's network: its own bridge, subnet, IPAM dir and namespaces, all torn down on
/// drop even when the test fails.
struct Lab {
    dir: tempfile::TempDir,
    network: Network,
    containers: Vec<(String, PathBuf)>,
    children: Vec<Child>,
}

impl Lab {
    fn new() -> Lab {
        Lab::with(|_| {})
    }

    fn with(adjust: impl FnOnce(&mut NetworkConfig)) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let bridge = format!("bt{:06x}", rand::random::<u32>() & 0xff_ffff);
        let mut config = NetworkConfig {
            name: "berth-test".into(),
            bridge,
            subnet: next_subnet(),
            ipam_data_dir: dir.path().join("cni/ipam"),
            ..NetworkConfig::default()
        };
        adjust(&mut config);
        Lab {
            network: Network::new(config).unwrap(),
            dir,
            containers: Vec::new(),
            children: Vec::new(),
        }
    }

    /// A new container id and namespace (the id embeds the bridge name, so it is unique).
    fn container(&mut self, name: &str) -> (String, PathBuf) {
        let id = format!("{}-{name}", self.network.config().bridge);
        let netns = self.dir.path().join("netns").join(name);
        Netns::create(&netns).unwrap();
        self.containers.push((id.clone(), netns.clone()));
        (id, netns)
    }

    fn leases(&self) -> Vec<String> {
        let dir = self.network.config().ipam_data_dir.join("berth-test");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.parse::<Ipv4Addr>().is_ok())
            .collect()
    }

    fn links_on_bridge(&self) -> String {
        let bridge = &self.network.config().bridge;
        sh("ip", &["-o", "link", "show", "master", bridge]).unwrap_or_default()
    }

    /// Starts busybox httpd on port 80 in `netns`, serving `body`.
    fn serve(&mut self, netns: &Path, body: &str) {
        let www = self.dir.path().join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), body).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["busybox", "httpd", "-f", "-p", "80", "-h"])
            .arg(&www)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (id, netns) in &self.containers {
            let _ = self.network.detach(id, netns, None, &[]);
            let _ = Netns::remove(netns);
        }
        let _ = self.network.remove_bridge();
    }
}

/// Runs a command and returns its stdout if it succeeds.
fn sh(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn in_netns(netns: &Path, args: &[&str]) -> Option<String> {
    let net = format!("--net={}", netns.display());
    let mut full = vec![net.as_str()];
    full.extend_from_slice(args);
    sh("nsenter", &full)
}

/// GETs `url` from the host, retrying while the server starts.
fn http_get(url: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = sh("curl", &["-sS", "--max-time", "2", url]);
        if body.is_some() || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn iptables_rules_for(id: &str) -> Vec<String> {
    sh("iptables-save", &[])
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(id))
        .map(str::to_owned)
        .collect()
}

fn is_mount_point(path: &Path) -> bool {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(&path))
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root for network namespaces and the CNI plugins");
            return;
        }
    };
}

#[test]
fn netns_create_and_remove_are_idempotent() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep/netns/c1");
    let netns = Netns::create(&path).unwrap();
    assert_eq!(netns.path(), path);
    assert!(Netns::is_mounted(&path));
    assert!(is_mount_point(&path));
    let err = Netns::create(&path).unwrap_err();
    assert!(matches!(err, NetworkError::NetnsExists { .. }), "{err}");
    Netns::remove(&path).unwrap();
    assert!(!path.exists());
    assert!(!is_mount_point(&path));
    Netns::remove(&path).unwrap();
    // A file left by a crash, with nothing mounted on it, is reused.
    std::fs::write(&path, "").unwrap();
    Netns::create(&path).unwrap();
    assert!(Netns::is_mounted(&path));
    Netns::remove(&path).unwrap();
    assert!(!path.exists());
}

#[test]
fn two_containers_reach_each_other_and_a_published_port_from_host_loopback() {
    require_root!();
    let mut lab = Lab::new();
    let subnet = lab.network.config().subnet;
    let (id_a, ns_a) = lab.container("a");
    let (id_b, ns_b) = lab.container("b");
    let host_port = rand::random_range(20000..40000u16);
    let ports = [
        port(&format!("127.0.0.1:{host_port}:80")),
        port(&format!("{}:80", host_port + 1)),
    ];
    let a = lab.network.attach(&id_a, &ns_a, &ports).unwrap();
    let b = lab.network.attach(&id_b, &ns_b, &[]).unwrap();

    assert_ne!(a.ip, b.ip);
    for attachment in [&a, &b] {
        assert!(
            subnet.contains(attachment.ip),
            "{} in {subnet}",
            attachment.ip
        );
        assert_eq!(attachment.prefix_len, 24);
        assert_eq!(attachment.gateway, subnet.first_host());
        assert_eq!(attachment.interface, "eth0");
        assert!(attachment.mac.is_some());
    }
    let lo = in_netns(&ns_a, &["ip", "-o", "link", "show", "lo"]).unwrap();
    assert!(lo.contains("UP"), "lo is up inside: {lo}");
    assert_eq!(lab.leases().len(), 2);

    let (ip_a, ip_b) = (a.ip.to_string(), b.ip.to_string());
    assert!(in_netns(&ns_a, &["busybox", "ping", "-c1", "-W1", &ip_b]).is_some());
    assert!(in_netns(&ns_b, &["busybox", "ping", "-c1", "-W1", &ip_a]).is_some());

    lab.serve(&ns_a, "hello from a\n");
    let loopback = http_get(&format!("http://127.0.0.1:{host_port}/"));
    assert_eq!(
        loopback.as_deref(),
        Some("hello from a\n"),
        "127.0.0.1:{host_port}"
    );
    let any_address = http_get(&format!("http://127.0.0.1:{}/", host_port + 1));
    assert_eq!(
        any_address.as_deref(),
        Some("hello from a\n"),
        "all-address mapping"
    );
    let direct = http_get(&format!("http://{ip_a}:80/"));
    assert_eq!(
        direct.as_deref(),
        Some("hello from a\n"),
        "container address"
    );
    let from_b = in_netns(
        &ns_b,
        &["busybox", "wget", "-qO-", &format!("http://{ip_a}/")],
    );
    assert_eq!(
        from_b.as_deref(),
        Some("hello from a\n"),
        "from container b"
    );
    let gateway_port = format!("http://{}:{}/", a.gateway, host_port + 1);
    let hairpin = in_netns(&ns_a, &["busybox", "wget", "-qO-", &gateway_port]);
    assert_eq!(
        hairpin.as_deref(),
        Some("hello from a\n"),
        "a through its own port"
    );

    let veth_a = a.result["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(lab.links_on_bridge().contains(&veth_a));
    assert!(!iptables_rules_for(&id_a).is_empty());

    lab.network.detach(&id_a, &ns_a, Some(&a), &ports).unwrap();
    lab.network.detach(&id_b, &ns_b, Some(&b), &[]).unwrap();
    assert!(lab.leases().is_empty(), "leases left: {:?}", lab.leases());
    assert_eq!(lab.links_on_bridge(), "", "veths left on the bridge");
    assert!(sh("ip", &["link", "show", &veth_a]).is_none());
    for id in [&id_a, &id_b] {
        assert_eq!(iptables_rules_for(id), Vec::<String>::new());
    }
    assert!(http_get(&format!("http://127.0.0.1:{host_port}/")).is_none());

    // Detaching again does nothing and succeeds.
    lab.network.detach(&id_a, &ns_a, Some(&a), &ports).unwrap();
    for netns in [&ns_a, &ns_b] {
        Netns::remove(netns).unwrap();
        assert!(!netns.exists());
        assert!(!is_mount_point(netns));
    }
}

#[test]
fn detach_after_the_netns_is_gone_releases_everything() {
    require_root!();
    let mut lab = Lab::new();
    let (id, netns) = lab.container("gone");
    let ports = [port(&format!(
        "127.0.0.1:{}:80",
        rand::random_range(40000..50000u16)
    ))];
    let attachment = lab.network.attach(&id, &netns, &ports).unwrap();
    Netns::remove(&netns).unwrap();

    lab.network
        .detach(&id, &netns, Some(&attachment), &ports)
        .unwrap();
    assert!(lab.leases().is_empty(), "leases left: {:?}", lab.leases());
    assert_eq!(iptables_rules_for(&id), Vec::<String>::new());
    assert_eq!(lab.links_on_bridge(), "");
    lab.network
        .detach(&id, &netns, Some(&attachment), &ports)
        .unwrap();
}

#[test]
fn detach_after_a_crash_needs_only_the_config() {
    require_root!();
    let mut lab = Lab::new();
    let (id, netns) = lab.container("crashed");
    let ports = [port(&format!("{}:80", rand::random_range(50000..60000u16)))];
    lab.network.attach(&id, &netns, &ports).unwrap();
    Netns::remove(&netns).unwrap();

    // Neither the attachment nor the ports survived the crash.
    lab.network.detach(&id, &netns, None, &[]).unwrap();
    assert!(lab.leases().is_empty(), "leases left: {:?}", lab.leases());
    assert_eq!(iptables_rules_for(&id), Vec::<String>::new());
    assert_eq!(lab.links_on_bridge(), "");
}

#[test]
fn a_failing_plugin_midway_leaves_no_address_or_veth_behind() {
    require_root!();
    // A plugin dir without portmap: loopback and bridge succeed, then portmap is missing.
    let plugins = tempfile::tempdir().unwrap();
    for plugin in ["loopback", "bridge", "host-local"] {
        std::os::unix::fs::symlink(
            Path::new("/usr/lib/cni").join(plugin),
            plugins.path().join(plugin),
        )
        .unwrap();
    }
    let plugin_dir = plugins.path().to_owned();
    let mut lab = Lab::with(|config| config.cni_bin_dir = plugin_dir);
    let (id, netns) = lab.container("half");

    let err = lab
        .network
        .attach(&id, &netns, &[port("127.0.0.1:40999:80")])
        .unwrap_err();
    assert!(
        matches!(&err, NetworkError::PluginMissing { plugin, .. } if plugin == "portmap"),
        "{err}"
    );
    assert!(lab.leases().is_empty(), "leases left: {:?}", lab.leases());
    assert_eq!(lab.links_on_bridge(), "");
    assert_eq!(
        in_netns(&netns, &["ip", "-o", "addr", "show", "eth0"]),
        None
    );
    assert_eq!(iptables_rules_for(&id), Vec::<String>::new());
}

#[test]
fn a_plugin_error_is_reported_with_its_cni_code() {
    require_root!();
    let mut lab = Lab::new();
    let (id, netns) = lab.container("refused");
    // "lo" exists and is not a bridge, so the bridge plugin refuses it before touching
    // anything. A network of its own, so the lab's teardown never goes near lo.
    let refused = Network::new(NetworkConfig {
        bridge: "lo".into(),
        ..lab.network.config().clone()
    })
    .unwrap();
    let err = refused.attach(&id, &netns, &[]).unwrap_err();
    let NetworkError::Plugin {
        plugin, op, msg, ..
    } = &err
    else {
        panic!("expected a CNI error, got {err}");
    };
    assert_eq!((plugin.as_str(), *op), ("bridge", "ADD"));
    assert!(msg.contains("not a bridge"), "{err}");
    assert!(lab.leases().is_empty());
}
