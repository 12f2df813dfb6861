#![allow(clippy::unwrap_used)]

use super::*;

fn spec() -> BundleSpec {
    BundleSpec {
        args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: User {
            uid: 1000,
            gid: 100,
            additional_gids: vec![10],
        },
        hostname: "web".into(),
        rootfs: "/var/lib/berth/containers/x/bundle/rootfs".into(),
        read_only: true,
        binds: vec![Bind {
            source: "/data".into(),
            destination: "/srv".into(),
            read_only: true,
        }],
        tmpfs: vec![Tmpfs {
            destination: "/scratch".into(),
            size: Some(1 << 20),
        }],
        netns: Some("/var/lib/berth/netns/x".into()),
        cgroups_path: cgroup_path("x"),
        resources: Resources {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(32),
        },
        host_nofile_hard: Some(20_000),
    }
}

#[test]
fn process_is_non_terminal_unprivileged_and_within_host_limits() {
    let config = config_json(&spec());
    let process = &config["process"];
    assert_eq!(process["terminal"], false);
    assert_eq!(process["noNewPrivileges"], true);
    assert_eq!(process["user"]["uid"], 1000);
    assert_eq!(process["user"]["additionalGids"][0], 10);
    assert_eq!(process["rlimits"][0]["hard"], 20_000);
    assert_eq!(process["rlimits"][0]["soft"], 20_000);
    let caps: Vec<&str> = process["capabilities"]["bounding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(caps.contains(&"CAP_NET_BIND_SERVICE"));
    assert!(!caps.contains(&"CAP_SYS_ADMIN"));
    assert!(!caps.contains(&"CAP_NET_ADMIN"));
    assert!(process["capabilities"].get("ambient").is_none());
}

#[test]
fn without_a_host_limit_nofile_is_the_default() {
    let mut s = spec();
    s.host_nofile_hard = None;
    assert_eq!(config_json(&s)["process"]["rlimits"][0]["hard"], NOFILE);
    s.host_nofile_hard = Some(u64::MAX);
    assert_eq!(config_json(&s)["process"]["rlimits"][0]["hard"], NOFILE);
}

#[test]
fn limits_namespaces_and_mounts() {
    let config = config_json(&spec());
    let linux = &config["linux"];
    assert_eq!(linux["cgroupsPath"], "/berth/x");
    assert_eq!(linux["resources"]["memory"]["limit"], 64 << 20);
    assert_eq!(linux["resources"]["cpu"]["quota"], 50_000);
    assert_eq!(linux["resources"]["cpu"]["period"], 100_000);
    assert_eq!(linux["resources"]["pids"]["limit"], 32);
    let network = linux["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "network")
        .unwrap();
    assert_eq!(network["path"], "/var/lib/berth/netns/x");
    assert!(linux["maskedPaths"]
        .as_array()
        .unwrap()
        .contains(&"/proc/kcore".into()));
    assert_eq!(config["root"]["readonly"], true);
    let bind = config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/srv")
        .unwrap();
    assert_eq!(bind["source"], "/data");
    assert!(bind["options"].as_array().unwrap().contains(&"ro".into()));
    let tmpfs = config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/scratch")
        .unwrap();
    assert_eq!(tmpfs["type"], "tmpfs");
    assert!(tmpfs["options"]
        .as_array()
        .unwrap()
        .contains(&"size=1048576".into()));
}

#[test]
fn no_limits_means_no_limit_sections_and_a_new_netns() {
    let mut s = spec();
    s.resources = Resources::default();
    s.netns = None;
    let config = config_json(&s);
    let resources = &config["linux"]["resources"];
    assert!(resources.get("memory").is_none());
    assert!(resources.get("cpu").is_none());
    assert!(resources.get("pids").is_none());
    let network = config["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "network")
        .unwrap()
        .clone();
    assert!(network.get("path").is_none());
}
