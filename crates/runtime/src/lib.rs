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

/// Creates the node root `dir` (and its parents) with the root itself 0700, or takes group and
/// other access away from one that exists. Everything berth keeps on the node (records with
/// the containers' environment, bundles with their secrets, the image index, the server's
/// token, state store and keys) is then out of reach of other users, whatever each file's own
/// mode. Containers are not affected: their root filesystems and bind-mounted files are
/// mounted by root, and a mount does not need its path's directories to be searchable.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if std::fs::metadata(dir)?.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
