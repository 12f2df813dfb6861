//! berth's node runtime: what the host offers (cgroup layout, OCI runtime binaries, rlimits),
//! container logs, and container networking through the standard CNI plugins.

pub mod host;
pub mod logs;
pub mod network;
