//! File locks (`flock`) shared by every `berth` process on the node.
//!
//! Lock files are never deleted: removing a lock file while another process waits on it would
//! let a third process lock a fresh file of the same name, and the two would not exclude each
//! other.

use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::ImageError;

/// A held lock; released on drop.
pub(crate) type Held = Flock<File>;

fn open(path: &Path) -> Result<File, ImageError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(ImageError::io("opening lock file", path))
}

fn flock(path: &Path, arg: FlockArg) -> Result<Option<Held>, ImageError> {
    let file = open(path)?;
    match Flock::lock(file, arg) {
        Ok(held) => Ok(Some(held)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(ImageError::Io {
            action: "locking",
            path: path.display().to_string(),
            source: std::io::Error::from(errno),
        }),
    }
}

/// Waits for an exclusive lock.
pub(crate) fn exclusive(path: &Path) -> Result<Held, ImageError> {
    flock(path, FlockArg::LockExclusive)?
        .ok_or_else(|| ImageError::Internal("blocking flock returned EWOULDBLOCK".to_owned()))
}

/// Waits for a shared lock.
pub(crate) fn shared(path: &Path) -> Result<Held, ImageError> {
    flock(path, FlockArg::LockShared)?
        .ok_or_else(|| ImageError::Internal("blocking flock returned EWOULDBLOCK".to_owned()))
}

/// Takes an exclusive lock if nobody holds the lock; `None` if somebody does.
pub(crate) fn try_exclusive(path: &Path) -> Result<Option<Held>, ImageError> {
    flock(path, FlockArg::LockExclusiveNonblock)
}
