//! Filesystem work inside a tree that came from an image, relative to a directory handle.
//!
//! A tree built from an image is hostile: any directory in it may have been replaced by a
//! symlink to the host's `/etc`. So nothing here takes a host path into the tree. Every
//! operation starts from an open directory of the tree and resolves with `openat2`:
//! - [`open_dir`] and [`remove`] resolve *beneath* the handle with no symlink followed at
//!   all (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`):
//!   for berth's own writes, where a symlink on the way is an error, not a detour;
//! - [`read_in_root`] resolves *in root* (`RESOLVE_IN_ROOT`): symlinks are followed the way
//!   the container would follow them, as if the tree were `/`, so an image's
//!   `/etc/passwd -> /etc/shadow` reads the image's shadow file, never the host's.
//!
//! The calls that then act on a name (`mkdirat`, `unlinkat`, `symlinkat`, `linkat`,
//! `mknodat`, `fchownat`, `utimensat`) take a directory handle and a single component, and
//! none of them follows a symlink in that last component.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// How berth's own writes resolve a path in a tree: beneath the handle, no symlinks.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// How a directory is opened to be worked in.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Why a directory path in a tree could not be opened.
#[derive(Debug)]
pub enum WalkError {
    /// Component `index` of the path is a symlink.
    Symlink(usize),
    /// Component `index` of the path is not a directory.
    NotADirectory(usize),
    /// Component `index` does not exist (and was not to be created).
    Missing(usize),
    /// Anything else.
    Io(std::io::Error),
}

/// Opens the directory of `tree` whose path is `parts` (each a single component, never
/// `.`, `..` or empty), creating missing ones with mode 0755 when `create`. No symlink is
/// followed and nothing outside `tree` is reached. An empty `parts` opens `tree` itself.
pub fn open_dir(
    tree: BorrowedFd<'_>,
    parts: &[impl AsRef<[u8]>],
    create: bool,
) -> Result<OwnedFd, WalkError> {
    // One call for the whole path when it all exists, which is the common case.
    let joined = join(parts);
    match openat2(tree, joined.as_slice(), DIR_FLAGS) {
        Ok(fd) => return Ok(fd),
        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR | Errno::NOSYS | Errno::XDEV) => {}
        Err(e) => return Err(WalkError::Io(e.into())),
    }
    // Component by component, to create what is missing and to say what is wrong.
    let mut current: Option<OwnedFd> = None;
    for (index, part) in parts.iter().enumerate() {
        let part = part.as_ref();
        let dir = current.as_ref().map_or(tree, |fd| fd.as_fd());
        let opened = match openat2(dir, part, DIR_FLAGS) {
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(dir, part, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => openat2(dir, part, DIR_FLAGS),
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        current = Some(opened.map_err(|e| classify(dir, part, index, e))?);
    }
    match current {
        Some(fd) => Ok(fd),
        None => openat2(tree, ".", DIR_FLAGS).map_err(|e| WalkError::Io(e.into())),
    }
}

/// What a failed open of `part` in `dir` means.
fn classify(dir: BorrowedFd<'_>, part: &[u8], index: usize, e: Errno) -> WalkError {
    match e {
        Errno::NOENT => WalkError::Missing(index),
        Errno::LOOP | Errno::NOTDIR | Errno::XDEV => {
            match rustix::fs::statat(dir, part, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    WalkError::Symlink(index)
                }
                Ok(_) => WalkError::NotADirectory(index),
                Err(e) => WalkError::Io(e.into()),
            }
        }
        e => WalkError::Io(e.into()),
    }
}

/// `openat2` beneath `dir`, falling back to a plain `openat` of a single component with
/// `O_NOFOLLOW` on kernels without `openat2` (a single component without `/` or `..`
/// cannot leave `dir` either).
fn openat2(dir: BorrowedFd<'_>, path: impl AsRef<[u8]>, flags: OFlags) -> Result<OwnedFd, Errno> {
    let path = path.as_ref();
    loop {
        match rustix::fs::openat2(dir, path, flags, Mode::empty(), BENEATH) {
            // The kernel asks for a retry when a rename raced the lookup.
            Err(Errno::AGAIN) => continue,
            Err(Errno::NOSYS) if !path.contains(&b'/') && path != b".." => {
                return rustix::fs::openat(dir, path, flags | OFlags::NOFOLLOW, Mode::empty())
            }
            other => return other,
        }
    }
}

fn join(parts: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let mut joined = Vec::new();
    for part in parts {
        if !joined.is_empty() {
            joined.push(b'/');
        }
        joined.extend_from_slice(part.as_ref());
    }
    if joined.is_empty() {
        joined.push(b'.');
    }
    joined
}

/// The type of `name` in `dir`, without following it; `None` when it does not exist.
pub fn kind_of(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` from `dir`, whatever it is; a directory with everything in it. Symlinks
/// are removed, never followed. Returns what was there (`None`: nothing).
pub fn remove(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<Option<FileType>> {
    let Some(kind) = kind_of(dir, name)? else {
        return Ok(None);
    };
    if kind == FileType::Directory {
        let inner = openat2(dir, name, DIR_FLAGS)?;
        // It is going away: make sure a read-only mode does not stop us emptying it.
        let _ = rustix::fs::fchmod(&inner, Mode::from_raw_mode(0o700));
        empty(inner.as_fd())?;
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(Some(kind))
}

/// Removes everything inside the directory `dir`.
fn empty(dir: BorrowedFd<'_>) -> std::io::Result<()> {
    // Names first, then removal: removing while reading may skip entries.
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    for name in names {
        remove(dir, &name)?;
    }
    Ok(())
}

/// Removes the directory tree at `path` (a host path berth owns, like a failed staging
/// directory), working relative to its parent so that nothing inside it is followed.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot remove {}", path.display()),
        ));
    };
    let parent = rustix::fs::open(
        if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        },
        DIR_FLAGS,
        Mode::empty(),
    )?;
    remove(parent.as_fd(), name.as_encoded_bytes()).map(|_| ())
}

/// Reads the regular file `relative` of the tree at `root` as the container would see it:
/// symlinks resolve inside the tree (`RESOLVE_IN_ROOT`), never on the host. At most `limit`
/// bytes are read; a larger file is an error, so is anything but a regular file.
pub fn read_in_root(root: &Path, relative: &str, limit: u64) -> std::io::Result<Vec<u8>> {
    let tree = rustix::fs::open(root, DIR_FLAGS, Mode::empty())?;
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
    let fd = loop {
        match rustix::fs::openat2(&tree, relative, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) => continue,
            other => break other?,
        }
    };
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{relative} is not a regular file"),
        ));
    }
    let mut data = Vec::new();
    std::fs::File::from(fd)
        .take(limit + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{relative} is larger than {limit} bytes"),
        ));
    }
    Ok(data)
}

#[cfg(test)]
mod tests;
