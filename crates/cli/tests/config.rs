//! Configuration precedence (flag > environment > file > default), strict config files, and
//! structured logs, on the real binary.
#![allow(missing_docs, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Starts `berth registry serve` with `args` and `env`, returns its first stdout line.
fn first_line(args: &[&str], env: &[(&str, &str)]) -> (String, std::process::Child) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (line, child)
}

fn stop(child: std::process::Child) -> String {
    send_sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// SIGTERM through the `kill` command, to exercise graceful shutdown.
fn send_sigterm(pid: u32) {
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn flags_override_env_which_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!("[registry]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{d}/from-file\"\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let (line, child) = first_line(&["--config", config, "registry", "serve"], &[]);
    assert!(line.contains(&format!("{d}/from-file")), "{line}");
    stop(child);

    let env_dir = format!("{d}/from-env");
    let (line, child) = first_line(
        &["--config", config, "registry", "serve"],
        &[("BERTH_REGISTRY_DATA_DIR", &env_dir)],
    );
    assert!(line.contains(&env_dir), "{line}");
    stop(child);

    let flag_dir = format!("{d}/from-flag");
    let (line, child) = first_line(
        &[
            "--config",
            config,
            "registry",
            "serve",
            "--data-dir",
            &flag_dir,
        ],
        &[("BERTH_REGISTRY_DATA_DIR", &env_dir)],
    );
    assert!(line.contains(&flag_dir), "{line}");
    let stderr = stop(child);
    assert!(
        stderr.contains("registry stopped"),
        "no graceful stop: {stderr}"
    );
}

#[test]
fn unknown_config_keys_are_rejected_with_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        "[registry]\nlisten = \"127.0.0.1:0\"\ndata_dri = \"/tmp/x\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["--config", config.to_str().unwrap(), "registry", "serve"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("berth.toml") && stderr.contains("data_dri"),
        "{stderr}"
    );
    assert!(stderr.contains("line 3"), "no line number: {stderr}");
}

#[test]
fn bad_users_file_and_half_tls_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        "[[users]]\nname = \"a\"\npassword = \"plaintext\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "registry",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--users",
            users.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hash-password"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["registry", "serve", "--tls-cert", "/nonexistent.pem"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let (_, child) = first_line(
        &[
            "--log-format",
            "json",
            "registry",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
        ],
        &[],
    );
    let stderr = stop(child);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["registry", "serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--users",
        "--anonymous-pull",
        "--tls-cert",
        "--tls-key",
        "--max-manifest-bytes",
        "--no-deletes",
        "--config",
        "--log-format",
        "BERTH_REGISTRY_LISTEN",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}

#[test]
fn an_open_registry_beyond_loopback_needs_allow_anonymous() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["registry", "serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A registry that serves instead of refusing would never exit: give it 10 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "it served open on 0.0.0.0: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "berth: refusing to serve a registry without users on 0.0.0.0:0: anyone who can reach it could push and delete. Give a users file (--users FILE; `berth registry hash-password` makes the hashes), listen on a loopback address (--listen 127.0.0.1:5000), or pass --allow-anonymous (allow_anonymous = true in [registry]) to serve it open on purpose\n"
    );
    // Told so by flag, environment or config file, it serves open (and says so in its log).
    let config = dir.path().join("berth.toml");
    std::fs::write(&config, "[registry]\nallow_anonymous = true\n").unwrap();
    let data = data.to_str().unwrap();
    let config = config.to_str().unwrap();
    for (args, env) in [
        (vec!["--allow-anonymous"], vec![]),
        (vec![], vec![("BERTH_REGISTRY_ALLOW_ANONYMOUS", "true")]),
        (vec!["--config", config], vec![]),
    ] {
        let mut all = args.clone();
        if all.first() == Some(&"--config") {
            all.extend(["registry", "serve"]);
        } else {
            all.splice(0..0, ["registry", "serve"]);
        }
        all.extend(["--listen", "0.0.0.0:0", "--data-dir", data]);
        let (line, child) = first_line(&all, &env);
        assert!(
            line.starts_with("berth registry listening on http://0.0.0.0:"),
            "{args:?} {env:?}: {line}"
        );
        let stderr = stop(child);
        assert!(
            stderr.contains("anyone who can reach this address may push and delete"),
            "{stderr}"
        );
    }
}
