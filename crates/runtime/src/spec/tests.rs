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

mod limits {
    use super::*;
    use proptest::prelude::*;

    fn with(resources: Resources) -> Value {
        config_json(&BundleSpec {
            resources,
            ..spec()
        })["linux"]["resources"]
            .clone()
    }

    #[test]
    fn unset_pids_get_the_default_and_set_ones_stay() {
        assert_eq!(
            Resources::default().with_defaults().pids,
            Some(DEFAULT_PIDS)
        );
        assert_eq!(
            with(Resources::default().with_defaults())["pids"]["limit"],
            4096
        );
        let asked = Resources {
            pids: Some(64),
            ..Resources::default()
        };
        assert_eq!(asked.with_defaults().pids, Some(64));
        // Memory and CPU stay unlimited unless asked for.
        let defaults = with(Resources::default().with_defaults());
        assert!(defaults.get("memory").is_none() && defaults.get("cpu").is_none());
    }

    #[test]
    fn the_refusals_say_what_is_allowed() {
        let cases = [
            (
                Resources { cpus: Some(0.0), ..Resources::default() },
                "0 CPUs is not a CPU limit: give a number of CPUs of at least 0.01 (1% of one CPU), like 0.5 or 2, or no limit",
            ),
            (
                Resources { cpus: Some(f64::NAN), ..Resources::default() },
                "NaN CPUs is not a CPU limit: give a number of CPUs of at least 0.01 (1% of one CPU), like 0.5 or 2, or no limit",
            ),
            (
                Resources { pids: Some(0), ..Resources::default() },
                "0 is not a process limit: give a count from 1 to 4194304 (without one a container gets 4096)",
            ),
            (
                Resources { memory: Some(0), ..Resources::default() },
                "a memory limit of 0 bytes is too small: give at least 6MiB (like 64Mi or 1Gi), or no limit",
            ),
        ];
        for (resources, message) in cases {
            assert_eq!(resources.check().unwrap_err().to_string(), message);
        }
    }

    proptest! {
        /// What is accepted is applied exactly as asked (no silent rounding of a 0 up to 1%,
        /// no 0 read as "no limit"); what is refused is never applied.
        #[test]
        fn accepted_limits_are_applied_as_asked(
            memory in prop_oneof![0u64..(16 << 20), any::<u64>()],
            cpus in prop_oneof![-2.0f64..0.05, 0.0f64..512.0, Just(f64::INFINITY), Just(-0.0)],
            pids in prop_oneof![-10i64..10, any::<i64>(), Just(MAX_PIDS), Just(MAX_PIDS + 1)],
        ) {
            let resources = Resources { memory: Some(memory), cpus: Some(cpus), pids: Some(pids) };
            let accepted = resources.check().is_ok();
            let allowed = memory >= MIN_MEMORY
                && cpus.is_finite() && cpus >= MIN_CPUS
                && (MIN_PIDS..=MAX_PIDS).contains(&pids);
            prop_assert_eq!(accepted, allowed);
            if accepted {
                let applied = with(resources.with_defaults());
                prop_assert_eq!(applied["memory"]["limit"].as_u64(), Some(memory));
                let quota = applied["cpu"]["quota"].as_i64().unwrap();
                prop_assert!(quota >= 1000, "quota {} for {} CPUs", quota, cpus);
                prop_assert!((quota as f64 - cpus * 100_000.0).abs() <= 0.5);
                prop_assert_eq!(applied["pids"]["limit"].as_i64(), Some(pids));
            }
        }
    }
}
