//! berth's node runtime. Today: what the host offers (cgroup layout, OCI runtime binaries,
//! rlimits) and which OCI runtime berth runs containers with, and why; the image store and
//! `pull`.

pub mod host;
pub mod image;
