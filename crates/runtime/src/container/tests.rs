#![allow(clippy::unwrap_used)]

use super::*;

fn image() -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["/bin/web".into()],
        cmd: vec!["--port".into(), "80".into()],
        env: vec!["PATH=/usr/bin:/bin".into(), "MODE=prod".into()],
        working_dir: Some("/srv".into()),
        user: Some("www".into()),
        stop_signal: Some("SIGQUIT".into()),
        exposed_ports: vec![(80, "tcp".into())],
        ..ImageConfig::default()
    }
}

fn request() -> ContainerRequest {
    ContainerRequest {
        image: "127.0.0.1:5000/web:1".into(),
        ..ContainerRequest::default()
    }
}

#[test]
fn the_image_config_gives_the_process() {
    let p = process_for(&image(), &request()).unwrap();
    assert_eq!(p.args, ["/bin/web", "--port", "80"]);
    assert_eq!(p.env, ["PATH=/usr/bin:/bin", "MODE=prod"]);
    assert_eq!(p.cwd, "/srv");
    assert_eq!(p.user, "www");
    assert_eq!(p.stop_signal, "QUIT");
    assert_eq!(p.exposed_ports, ["80/tcp"]);
}

#[test]
fn the_request_overrides_command_env_and_workdir() {
    let mut r = request();
    r.command = vec!["--port".into(), "8080".into()];
    r.env = vec!["MODE=dev".into(), "EXTRA=1".into()];
    r.workdir = Some("/tmp".into());
    r.user = Some("1000:1000".into());
    let p = process_for(&image(), &r).unwrap();
    assert_eq!(p.args, ["/bin/web", "--port", "8080"]);
    assert_eq!(p.env, ["PATH=/usr/bin:/bin", "MODE=dev", "EXTRA=1"]);
    assert_eq!(p.cwd, "/tmp");
    assert_eq!(p.user, "1000:1000");
    // A new entrypoint drops the image's cmd.
    r.entrypoint = Some(vec!["/bin/sh".into()]);
    r.command.clear();
    assert_eq!(process_for(&image(), &r).unwrap().args, ["/bin/sh"]);
}

#[test]
fn bad_requests_are_explained() {
    let empty = ImageConfig::default();
    let e = process_for(&empty, &request()).unwrap_err();
    assert!(e.contains("no command"), "{e}");
    let mut r = request();
    r.command = vec!["true".into()];
    r.env = vec!["NOEQUALS".into()];
    assert!(process_for(&empty, &r).unwrap_err().contains("KEY=value"));
    r.env.clear();
    r.workdir = Some("relative".into());
    assert!(process_for(&empty, &r)
        .unwrap_err()
        .contains("not absolute"));
    // Without PATH in the image, a default one is set; root by default.
    let p = process_for(&empty, &request_with_cmd()).unwrap();
    assert!(p.env[0].starts_with("PATH=/usr/local/sbin"));
    assert_eq!(p.user, "0");
    assert_eq!(p.stop_signal, "TERM");
}

fn request_with_cmd() -> ContainerRequest {
    ContainerRequest {
        command: vec!["true".into()],
        ..request()
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/srv:/bin/false\n";
const GROUP: &str = "root:x:0:\nwww:x:33:\nlog:x:4:www,root\ndocker:x:999:other\n";

#[test]
fn users_resolve_against_the_image_files() {
    let www = resolve_user("www", PASSWD, GROUP).unwrap();
    assert_eq!((www.uid, www.gid, www.additional_gids), (33, 33, vec![4]));
    let numeric = resolve_user("1000", PASSWD, GROUP).unwrap();
    assert_eq!((numeric.uid, numeric.gid), (1000, 0));
    let pair = resolve_user("1000:2000", "", "").unwrap();
    assert_eq!((pair.uid, pair.gid), (1000, 2000));
    let named_group = resolve_user("www:log", PASSWD, GROUP).unwrap();
    assert_eq!((named_group.gid, named_group.additional_gids), (4, vec![]));
    assert!(resolve_user("nobody", PASSWD, GROUP)
        .unwrap_err()
        .contains("not in the image's /etc/passwd"));
    assert!(resolve_user("www:nogroup", PASSWD, GROUP)
        .unwrap_err()
        .contains("/etc/group"));
}

#[test]
fn restart_policies_parse_and_decide_with_backoff() {
    assert_eq!("no".parse(), Ok(RestartPolicy::No));
    assert_eq!("always".parse(), Ok(RestartPolicy::Always));
    assert_eq!(
        "on-failure:3".parse(),
        Ok(RestartPolicy::OnFailure {
            max_retries: Some(3)
        })
    );
    assert!("sometimes".parse::<RestartPolicy>().is_err());
    assert!("on-failure:x".parse::<RestartPolicy>().is_err());

    let failed = Exit {
        code: 1,
        ..Exit::default()
    };
    let ok = Exit::default();
    let quick = Duration::from_millis(10);
    let on_failure = RestartPolicy::OnFailure {
        max_retries: Some(2),
    };
    assert_eq!(
        restart_delay(RestartPolicy::No, failed, 0, 0, quick, false),
        None
    );
    assert_eq!(restart_delay(on_failure, ok, 0, 0, quick, false), None);
    assert_eq!(
        restart_delay(on_failure, failed, 0, 0, quick, false),
        Some(BACKOFF_START)
    );
    assert_eq!(restart_delay(on_failure, failed, 2, 2, quick, false), None);
    assert_eq!(
        restart_delay(RestartPolicy::Always, ok, 0, 0, quick, true),
        None,
        "a stop wins"
    );
    let delays: Vec<Duration> = (0..10)
        .map(|n| restart_delay(RestartPolicy::Always, failed, n, n, quick, false).unwrap())
        .collect();
    assert_eq!(delays[1], BACKOFF_START * 2);
    assert_eq!(delays[3], BACKOFF_START * 8);
    assert_eq!(delays[9], BACKOFF_MAX);
    assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(
        restart_delay(RestartPolicy::Always, failed, 9, 9, BACKOFF_RESET, false),
        Some(BACKOFF_START),
        "a long run resets the backoff"
    );
    assert_eq!(
        restart_delay(RestartPolicy::Always, failed, 99, u32::MAX, quick, false),
        Some(BACKOFF_MAX)
    );
}

#[test]
fn secret_env_is_neither_serialized_nor_debug_printed() {
    let mut r = request();
    r.secret_env = SecretEnv(vec!["TOKEN=hunter2".into()]);
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains("hunter2"), "{json}");
    let debug = format!("{r:?}");
    assert!(
        !debug.contains("hunter2") && debug.contains("TOKEN"),
        "{debug}"
    );
}

#[test]
fn records_are_owner_only_even_over_a_leftover_temporary_file() {
    use std::os::unix::fs::PermissionsExt;
    type Writer = fn(&std::path::Path, &serde_json::Value) -> io::Result<()>;
    let writers: [(&str, Writer); 2] = [
        ("container.json", |p, v| write_json(p, v)),
        ("config.json", |p, v| write_json_fast(p, v)),
    ];
    for (name, write) in writers {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        fs::write(path.with_extension("json.tmp"), "old").unwrap();
        fs::set_permissions(
            path.with_extension("json.tmp"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        write(&path, &serde_json::json!({"env": ["TOKEN=x"]})).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
}

fn ports(specs: &[&str]) -> Vec<PortMapping> {
    specs.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn ports_need_a_network_and_each_host_port_is_published_once() {
    let none = ContainerRequest {
        network: NetworkMode::None,
        ports: ports(&["127.0.0.1:8080:80"]),
        ..request()
    };
    assert_eq!(
        none.check().unwrap_err(),
        "cannot publish 127.0.0.1:8080:80/tcp with network none: such a container has only loopback, so nothing could reach it; use network bridge or publish nothing"
    );
    let twice = ContainerRequest {
        ports: ports(&["8080:80", "127.0.0.1:8080:81"]),
        ..request()
    };
    assert_eq!(
        twice.check().unwrap_err(),
        "host port 127.0.0.1:8080/tcp is published twice (8080:80/tcp and 127.0.0.1:8080:81/tcp): a host port forwards to one container port"
    );
    for fine in [
        &["8080:80", "8080:80/udp"][..],
        &["127.0.0.1:8080:80", "127.0.0.2:8080:80"],
        &["8080:80", "8081:80"],
    ] {
        let request = ContainerRequest {
            ports: ports(fine),
            ..request()
        };
        assert_eq!(request.check(), Ok(()), "{fine:?}");
    }
    let bad_limit = ContainerRequest {
        resources: Resources {
            pids: Some(0),
            ..Resources::default()
        },
        ..request()
    };
    assert!(bad_limit
        .check()
        .unwrap_err()
        .contains("not a process limit"));
}

mod clashes {
    use super::*;
    use proptest::prelude::*;

    fn mapping() -> impl Strategy<Value = PortMapping> {
        let ip = prop_oneof![
            Just(None),
            Just(Some("0.0.0.0".parse().unwrap())),
            Just(Some("127.0.0.1".parse().unwrap())),
            Just(Some("127.0.0.2".parse().unwrap())),
            Just(Some("::".parse().unwrap())),
            Just(Some("::1".parse().unwrap())),
        ];
        let protocol = prop_oneof![
            Just(crate::network::Protocol::Tcp),
            Just(crate::network::Protocol::Udp)
        ];
        (ip, 8080u16..8083, 1u16..3, protocol).prop_map(
            |(host_ip, host_port, container_port, protocol)| PortMapping {
                host_ip,
                host_port,
                container_port,
                protocol,
            },
        )
    }

    proptest! {
        /// Two mappings clash exactly when a packet to some host address could match both.
        #[test]
        fn a_clash_is_a_shared_host_address_port_and_protocol(a in mapping(), b in mapping()) {
            prop_assert_eq!(a.clashes_with(&b), b.clashes_with(&a));
            let every = |m: &PortMapping| m.host_ip.is_none_or(|ip| ip.is_unspecified());
            let shared_address = every(&a) || every(&b) || a.host_ip == b.host_ip;
            prop_assert_eq!(
                a.clashes_with(&b),
                shared_address && a.host_port == b.host_port && a.protocol == b.protocol
            );
            prop_assert!(a.clashes_with(&a));
        }
    }
}
