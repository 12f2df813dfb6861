//! Persistent network namespaces, kept alive by a bind mount on a file (as `ip netns` does),
//! so CNI plugins and the OCI runtime can find them by path.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, NSFS_MAGIC};

use super::{run_tool, NetworkError};

/// A network namespace bind-mounted at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    path: PathBuf,
}

impl Netns {
    /// Creates a new, empty network namespace and bind-mounts it at `path`, creating the
    /// parent directory if needed. Fails if a namespace is already mounted there; a plain
    /// file left by a crash is reused.
    pub fn create(path: &Path) -> Result<Netns, NetworkError> {
        if Netns::is_mounted(path) {
            return Err(NetworkError::NetnsExists {
                path: path.to_owned(),
            });
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| NetworkError::Io {
                action: "create the network namespace directory",
                path: parent.to_owned(),
                source,
            })?;
        }
        // unshare(1) bind-mounts the new namespace over an existing file.
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| NetworkError::Io {
                action: "create the network namespace file",
                path: path.to_owned(),
                source,
            })?;
        let mut net = std::ffi::OsString::from("--net=");
        net.push(path);
        if let Err(err) = run_tool("unshare", [net.as_os_str(), "true".as_ref()]) {
            // The file is ours and empty; leave nothing behind.
            let _ = fs::remove_file(path);
            return Err(err);
        }
        Ok(Netns {
            path: path.to_owned(),
        })
    }

    /// Unmounts the namespace at `path` (lazily if it is busy) and deletes the file.
    /// Removing a namespace that is not there succeeds, so teardown can be repeated.
    pub fn remove(path: &Path) -> Result<(), NetworkError> {
        // A path can hold stacked mounts; unmount until none is left.
        for _ in 0..8 {
            if !Netns::is_mounted(path) {
                break;
            }
            if run_tool("umount", [path.as_os_str()]).is_err() {
                run_tool("umount", ["--lazy".as_ref(), path.as_os_str()])?;
            }
        }
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NetworkError::Io {
                action: "remove the network namespace file",
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Whether a network namespace is mounted at `path`.
    pub fn is_mounted(path: &Path) -> bool {
        statfs(path).is_ok_and(|fs| fs.filesystem_type() == NSFS_MAGIC)
    }

    /// Where the namespace is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
