//! berth's node runtime: what the host offers (cgroup layout, OCI runtime binaries, rlimits),
//! and containers run through runc or crun with their logs.

pub mod host;
pub mod logs;
