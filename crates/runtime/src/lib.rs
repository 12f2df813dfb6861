//! berth's node runtime: the image store (pull, snapshots, cleanup), containers run through
//! runc or crun on an overlay root filesystem with CNI networking, their logs, the
//! per-container monitor, and what the host offers (cgroup layout, OCI runtimes, rlimits).

pub mod container;
pub mod host;
pub mod image;
pub mod logs;
pub mod monitor;
pub mod network;
pub mod node;
pub mod oci_runtime;
pub mod rootfs;
pub mod secret_files;
pub mod spec;

/// Now, in unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
