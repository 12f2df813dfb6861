//! The test guards leave nothing behind: no mounts, no processes, no files.
#![allow(clippy::unwrap_used, missing_docs)]

use std::fs;

use berth_e2e::{BerthOptions, BerthRegistry, Podman, Registry};

/// Mount points and process ids that mention `needle`.
fn traces_of(needle: &str) -> (Vec<String>, Vec<u32>) {
    let mounts = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect();
    let processes = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect();
    (mounts, processes)
}

#[test]
fn podman_guard_removes_running_containers_mounts_and_files() {
    let podman = Podman::new();
    let dir = podman.dir().to_owned();
    podman.build_busybox_image("localhost/e2e/busybox:v1");
    let id = podman.run_podman(&[
        "run",
        "--detach",
        "--network",
        "none",
        "localhost/e2e/busybox:v1",
        "/bin/sleep",
        "600",
    ]);
    assert!(!id.is_empty());
    let needle = dir.to_string_lossy().into_owned();
    let (mounts, processes) = traces_of(&needle);
    assert!(
        !mounts.is_empty() && !processes.is_empty(),
        "the container runs: {mounts:?} {processes:?}"
    );

    drop(podman);
    let (mounts, processes) = traces_of(&needle);
    assert!(mounts.is_empty(), "mounts left behind: {mounts:?}");
    assert!(processes.is_empty(), "processes left behind: {processes:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn berth_guard_kills_the_server_and_removes_its_data() {
    let registry = BerthRegistry::start(BerthOptions::default());
    let pid = registry.pid().unwrap();
    let data = registry.data_dir();
    assert!(registry.url().starts_with("http://127.0.0.1:"));
    drop(registry);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "berth {pid} still runs"
    );
    assert!(!data.exists(), "{} left behind", data.display());
}
