//! berth's node runtime. Today: what the host offers (cgroup layout, OCI runtime binaries,
//! rlimits) and which OCI runtime berth runs containers with, and why; and container
//! networking through the standard CNI plugins.

pub mod host;
pub mod network;
