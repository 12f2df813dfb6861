//! `berth info` on this host: real cgroups, real runc and crun from Debian.
#![allow(missing_docs, clippy::unwrap_used)]

use std::process::Command;

#[test]
fn info_names_the_runtime_and_why() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["info", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runtime = &info["selection"]["runtime"];
    let kind = runtime["kind"]
        .as_str()
        .expect("a runtime is chosen (install-deps installs runc and crun)");
    assert!(info["selection"]["reason"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    // The chosen binary runs.
    let path = runtime["path"].as_str().unwrap();
    assert!(Command::new(path)
        .arg("--version")
        .status()
        .unwrap()
        .success());
    // On a hybrid host whose cgroup2 mount holds controllers, plain crun refuses to run: berth
    // runs it in a private mount namespace.
    let v2 =
        std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    if !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() && !v2.trim().is_empty()
    {
        assert_eq!(info["cgroups"]["mode"], "hybrid");
        assert_eq!(kind, "crun", "{info}");
        assert_eq!(
            info["selection"]["private_cgroup_namespace"], true,
            "{info}"
        );
    }
    assert!(info["nofile_hard_limit"].as_u64().is_some_and(|n| n > 0));

    let text = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("info")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("runtime   {kind}")), "{text}");
}
