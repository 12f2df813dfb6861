//! Unpacking image layers into snapshot directories, safely and faithfully.
//!
//! A layer is a tar stream, plain or compressed with gzip or zstd. A layer comes from a
//! registry, so it is treated as hostile, and escape is impossible by construction: the
//! unpacker holds a directory handle of the snapshot and every filesystem operation
//! (create, open, mkdir, symlink, link, mknod, unlink, chmod, chown, utimes, xattrs,
//! whiteouts, opaque markers) resolves relative to a handle inside it with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, see [`crate::beneath`])
//! or acts on a single name in such a directory without following it. No host path into
//! the snapshot is ever used, so no symlink an entry leaves behind can redirect a later
//! operation, not even the directory metadata applied at the end of the layer.
//!
//! On top of that, entries are checked: `..` and absolute paths are refused, nothing is
//! written through a symlink (an error, not a silent detour), a relative symlink may not
//! climb above the layer's root, a hardlink may only point at a regular file or a symlink
//! inside the layer, whiteouts must name something (`.wh.`, `.wh..` and `.wh...` are
//! invalid layers), device nodes and FIFOs are refused or skipped as configured, setuid and
//! setgid bits (and file capabilities) are dropped unless kept on purpose, `trusted.*`
//! extended attributes (overlayfs' own) are refused, and long names and pax headers are
//! bounded before they are read.
//!
//! What the layer says comes out as it says it: owners (when unpacking as root), modes,
//! modification times (to the nanosecond with pax), hardlinks, symlink targets and
//! extended attributes. OCI whiteouts become what overlayfs understands: a `0/0` character
//! device for `.wh.NAME`, and the `trusted.overlay.opaque` xattr for `.wh..wh..opq`.
//!
//! A layer unpacks into a sibling staging directory, which is renamed into place only when
//! the whole layer succeeded. A failure removes the staging directory and leaves nothing
//! behind.

mod tar_stream;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::process::{Gid, Uid};
use tar::EntryType;

use crate::beneath::{self, WalkError};
use tar_stream::{Header, Mtime, TarStream};

/// Longest name (GNU long name or link) accepted, in bytes.
pub const MAX_NAME: u64 = 4096;
/// Largest pax extended header accepted, in bytes.
pub const MAX_PAX: u64 = 64 * 1024;

/// What to do with device nodes and FIFOs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpecialFiles {
    /// Fail the layer.
    #[default]
    Reject,
    /// Leave them out and count them.
    Skip,
}

/// How to unpack.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnpackOptions {
    /// Device nodes and FIFOs.
    pub special_files: SpecialFiles,
    /// Keep setuid and setgid bits and `security.capability` (dropped by default).
    pub keep_setid: bool,
}

/// What a layer held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Entries written (files, directories, links, whiteouts).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Whiteouts converted for overlayfs.
    pub whiteouts: u64,
    /// Special files skipped.
    pub skipped: u64,
    /// Files whose setuid/setgid bits or file capabilities were dropped.
    pub setid_dropped: u64,
    /// Extended attributes the snapshot's filesystem does not support, left out.
    pub xattrs_unsupported: u64,
}

/// Why a layer cannot be unpacked. Entry paths are shown as they appear in the layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading or decompressing the stream failed, or the tar is malformed.
    #[error("layer is not a readable tar stream: {0}")]
    Read(#[source] std::io::Error),
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Write {
        /// Where: the entry, or the snapshot's directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The destination exists already.
    #[error("destination {0} exists already")]
    Exists(String),
    /// An entry path contains `..`.
    #[error("entry {0:?} climbs out of the layer with '..'")]
    Traversal(String),
    /// An entry path is absolute.
    #[error("entry {0:?} has an absolute path")]
    Absolute(String),
    /// An entry would be written through a symlink.
    #[error("entry {entry:?} would be written through the symlink {symlink:?}")]
    ThroughSymlink {
        /// The entry.
        entry: String,
        /// The symlink on its path.
        symlink: String,
    },
    /// A symlink points above the layer's root.
    #[error("symlink {entry:?} points to {target:?}, outside the root")]
    EscapingSymlink {
        /// The symlink.
        entry: String,
        /// Its target.
        target: String,
    },
    /// A hardlink points outside the layer or at something that is not a regular file or
    /// a symlink in it.
    #[error(
        "hardlink {entry:?} points to {target:?}, which is not a regular file or symlink inside this layer"
    )]
    BadHardlink {
        /// The link.
        entry: String,
        /// Its target.
        target: String,
    },
    /// A device node or FIFO, refused by the options.
    #[error("entry {entry:?} is a {kind}; special files are refused")]
    SpecialFile {
        /// The entry.
        entry: String,
        /// What it is.
        kind: &'static str,
    },
    /// A name or pax header is larger than allowed.
    #[error("a {what} of {size} bytes exceeds the limit of {limit}")]
    HeaderTooLarge {
        /// Which header.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A path component is a file where a directory is needed.
    #[error("entry {entry:?} needs {component:?} to be a directory, but it is not")]
    NotADirectory {
        /// The entry.
        entry: String,
        /// The component.
        component: String,
    },
    /// An entry type berth does not unpack.
    #[error("entry {entry:?} has an unsupported type ({kind:?})")]
    Unsupported {
        /// The entry.
        entry: String,
        /// Its type byte.
        kind: u8,
    },
    /// An entry that no valid layer holds: a whiteout of nothing, `.` or `..`, a name with
    /// a NUL byte, an owner out of range.
    #[error("entry {entry:?} is invalid: {reason}")]
    Invalid {
        /// The entry.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An extended attribute berth never lets an image set.
    #[error("entry {entry:?} sets the extended attribute {name:?}, which images may not set")]
    ForbiddenXattr {
        /// The entry.
        entry: String,
        /// The attribute.
        name: String,
    },
}

/// The prefix of an OCI whiteout.
const WHITEOUT: &[u8] = b".wh.";
/// The opaque-directory whiteout.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// The prefix of AUFS' own metadata (`.wh..wh.plnk`, ...), which old images carry and
/// which means nothing to overlayfs.
const AUFS_META: &[u8] = b".wh..wh.";

/// Unpacks the layer read from `reader` into the new directory `dest`.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    options: &UnpackOptions,
) -> Result<UnpackReport, LayerError> {
    if dest.symlink_metadata().is_ok() {
        return Err(LayerError::Exists(dest.display().to_string()));
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = dest.with_file_name(format!(".{name}.unpacking-{}", std::process::id()));
    let host_err = |path: &Path| {
        let path = path.display().to_string();
        move |source: std::io::Error| LayerError::Write { path, source }
    };
    if staging.symlink_metadata().is_ok() {
        // Left by a crash, possibly with read-only directories.
        beneath::remove_tree(&staging).map_err(host_err(&staging))?;
    }
    std::fs::create_dir(&staging).map_err(host_err(&staging))?;
    let result = rustix::fs::open(
        &staging,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| host_err(&staging)(e.into()))
    .and_then(|root| {
        Unpacker {
            root: &root,
            options,
            chown: rustix::process::geteuid().is_root(),
            report: UnpackReport::default(),
            dirs: BTreeMap::new(),
            last_parent: None,
        }
        .run(reader)
    });
    match result {
        Ok(report) => {
            std::fs::rename(&staging, dest).map_err(host_err(dest))?;
            Ok(report)
        }
        Err(e) => {
            let _ = beneath::remove_tree(&staging);
            Err(e)
        }
    }
}

/// Wraps `reader` in a decompressor chosen by its first bytes.
fn decompress<'a>(reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>, LayerError> {
    let mut buffered = BufReader::with_capacity(256 << 10, reader);
    let head = buffered.fill_buf().map_err(LayerError::Read)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(buffered)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = ruzstd::decoding::StreamingDecoder::new(buffered)
            .map_err(|e| LayerError::Read(std::io::Error::other(e.to_string())))?;
        Ok(Box::new(decoder))
    } else {
        Ok(Box::new(buffered))
    }
}

/// The components of an entry path: `.` and empty components dropped, `..` and absolute
/// paths refused.
fn clean(raw: &[u8]) -> Result<Vec<Vec<u8>>, LayerError> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.starts_with(b"/") {
        return Err(LayerError::Absolute(shown()));
    }
    let mut parts = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(LayerError::Traversal(shown())),
            _ => parts.push(part.to_vec()),
        }
    }
    Ok(parts)
}

/// The metadata an entry gives a file, a directory or a symlink.
#[derive(Debug, Clone)]
struct Meta {
    mode: u32,
    uid: Uid,
    gid: Gid,
    mtime: Mtime,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn times(&self) -> Timestamps {
        let at = Timespec {
            tv_sec: self.mtime.secs,
            tv_nsec: self.mtime.nanos.into(),
        };
        Timestamps {
            last_access: at,
            last_modification: at,
        }
    }
}

struct Unpacker<'a> {
    /// The snapshot's root directory: everything happens beneath it.
    root: &'a OwnedFd,
    options: &'a UnpackOptions,
    /// Whether owners are applied (only root may give files to others).
    chown: bool,
    report: UnpackReport,
    /// Directories' metadata, by path, applied at the end of the layer (so a read-only
    /// directory does not stop its own entries, and entries do not change its mtime).
    /// Forgotten when the directory is removed or replaced.
    dirs: BTreeMap<Vec<u8>, Meta>,
    /// The parent directory of the last entry, kept open for the next (tar lists a
    /// directory's entries together); dropped whenever a directory is removed.
    last_parent: Option<(Vec<u8>, OwnedFd)>,
}

/// An entry being unpacked: how it is shown in errors, its path and its parent.
struct At<'e> {
    shown: &'e str,
    parts: &'e [Vec<u8>],
    key: Vec<u8>,
    name: &'e [u8],
}

impl Unpacker<'_> {
    fn run(mut self, reader: impl Read) -> Result<UnpackReport, LayerError> {
        let mut stream = TarStream::new(decompress(reader)?);
        while let Some(header) = stream.next_entry()? {
            let shown = String::from_utf8_lossy(&header.path).into_owned();
            let parts = clean(&header.path)?;
            let Some(name) = parts.last() else {
                continue; // the layer's root directory itself
            };
            let at = At {
                shown: &shown,
                parts: &parts,
                key: parts.join(&b'/'),
                name,
            };
            self.entry(&at, &header, &mut stream.data())?;
        }
        self.apply_dir_meta()
            .map_err(|(path, source)| LayerError::Write {
                path: String::from_utf8_lossy(&path).into_owned(),
                source,
            })?;
        Ok(self.report)
    }

    fn entry(
        &mut self,
        at: &At<'_>,
        header: &Header,
        data: &mut impl Read,
    ) -> Result<(), LayerError> {
        let write = |source: std::io::Error| LayerError::Write {
            path: at.shown.to_owned(),
            source,
        };
        let invalid = |reason: &str| LayerError::Invalid {
            entry: at.shown.to_owned(),
            reason: reason.to_owned(),
        };
        if at.name.contains(&0) {
            return Err(invalid("its name holds a NUL byte"));
        }
        if let Some(hidden) = at.name.strip_prefix(WHITEOUT) {
            return self.whiteout(at, hidden);
        }
        let meta = self.meta(at, header)?;
        let parent = self.parent(at)?;
        let parent = parent.as_fd();
        match header.kind {
            EntryType::Regular | EntryType::Continuous => {
                self.replace(parent, at, false).map_err(write)?;
                let fd = rustix::fs::openat(
                    parent,
                    at.name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| write(e.into()))?;
                let mut file = File::from(fd);
                self.report.bytes += std::io::copy(data, &mut file).map_err(LayerError::Read)?;
                self.apply_meta(file.as_fd(), &meta).map_err(write)?;
            }
            EntryType::Directory => {
                if !self.replace(parent, at, true).map_err(write)? {
                    rustix::fs::mkdirat(parent, at.name, Mode::from_raw_mode(0o700))
                        .map_err(|e| write(e.into()))?;
                }
                self.dirs.insert(at.key.clone(), meta);
            }
            EntryType::Symlink => {
                let target = header.link.clone().unwrap_or_default();
                if target.is_empty() || target.contains(&0) {
                    return Err(invalid("a symlink needs a target without NUL bytes"));
                }
                if escapes(at.parts.len() - 1, &target) {
                    return Err(LayerError::EscapingSymlink {
                        entry: at.shown.to_owned(),
                        target: String::from_utf8_lossy(&target).into_owned(),
                    });
                }
                self.replace(parent, at, false).map_err(write)?;
                rustix::fs::symlinkat(target.as_slice(), parent, at.name)
                    .map_err(|e| write(e.into()))?;
                if self.chown {
                    rustix::fs::chownat(
                        parent,
                        at.name,
                        Some(meta.uid),
                        Some(meta.gid),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| write(e.into()))?;
                }
                rustix::fs::utimensat(parent, at.name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| write(e.into()))?;
            }
            EntryType::Link => {
                let target = header.link.clone().unwrap_or_default();
                let (source_dir, source_name) = self.hardlink_source(at.shown, &target)?;
                self.replace(parent, at, false).map_err(write)?;
                rustix::fs::linkat(
                    &source_dir,
                    source_name.as_slice(),
                    parent,
                    at.name,
                    AtFlags::empty(),
                )
                .map_err(|e| match e {
                    // The link replaced its own target.
                    rustix::io::Errno::NOENT => LayerError::BadHardlink {
                        entry: at.shown.to_owned(),
                        target: String::from_utf8_lossy(&target).into_owned(),
                    },
                    e => write(e.into()),
                })?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match header.kind {
                    EntryType::Char => "character device",
                    EntryType::Block => "block device",
                    _ => "FIFO",
                };
                return match self.options.special_files {
                    SpecialFiles::Reject => Err(LayerError::SpecialFile {
                        entry: at.shown.to_owned(),
                        kind,
                    }),
                    SpecialFiles::Skip => {
                        self.report.skipped += 1;
                        Ok(())
                    }
                };
            }
            other => {
                return Err(LayerError::Unsupported {
                    entry: at.shown.to_owned(),
                    kind: other.as_byte(),
                })
            }
        }
        self.report.entries += 1;
        Ok(())
    }

    /// The entry's metadata as it will be applied: owner checked, setid bits and file
    /// capabilities dropped unless kept, xattrs checked.
    fn meta(&mut self, at: &At<'_>, header: &Header) -> Result<Meta, LayerError> {
        let id = |value: u64, what: &str| {
            u32::try_from(value)
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| LayerError::Invalid {
                    entry: at.shown.to_owned(),
                    reason: format!("its {what} {value} is out of range"),
                })
        };
        let mut mode = header.mode;
        let mut xattrs = Vec::with_capacity(header.xattrs.len());
        let mut dropped = false;
        for (name, value) in &header.xattrs {
            if name.starts_with(b"trusted.") {
                return Err(LayerError::ForbiddenXattr {
                    entry: at.shown.to_owned(),
                    name: String::from_utf8_lossy(name).into_owned(),
                });
            }
            if name.is_empty() || name.contains(&0) {
                return Err(LayerError::Invalid {
                    entry: at.shown.to_owned(),
                    reason: "an extended attribute's name is empty or holds a NUL byte".into(),
                });
            }
            if name == b"security.capability" && !self.options.keep_setid {
                dropped = true;
                continue;
            }
            xattrs.push((name.clone(), value.clone()));
        }
        let file = matches!(header.kind, EntryType::Regular | EntryType::Continuous);
        if file && !self.options.keep_setid && mode & 0o6000 != 0 {
            mode &= !0o6000;
            dropped = true;
        }
        if dropped {
            self.report.setid_dropped += 1;
        }
        Ok(Meta {
            mode,
            uid: Uid::from_raw(id(header.uid, "uid")?),
            gid: Gid::from_raw(id(header.gid, "gid")?),
            mtime: header.mtime,
            xattrs,
        })
    }

    /// Owner, mode, xattrs and times of an open file or directory, in the order that keeps
    /// them: chown clears setuid bits, and every change but the times moves the ctime only.
    fn apply_meta(&mut self, fd: BorrowedFd<'_>, meta: &Meta) -> std::io::Result<()> {
        if self.chown {
            rustix::fs::fchown(fd, Some(meta.uid), Some(meta.gid))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
        for (name, value) in &meta.xattrs {
            match rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(rustix::io::Errno::NOTSUP) => self.report.xattrs_unsupported += 1,
                Err(e) => return Err(e.into()),
            }
        }
        rustix::fs::futimens(fd, &meta.times())?;
        Ok(())
    }

    /// Applies the directories' metadata, deepest first. Each directory is opened again
    /// beneath the root without following anything, so a directory that a later entry
    /// replaced by a symlink cannot lend its mode to the link's target.
    fn apply_dir_meta(&mut self) -> Result<(), (Vec<u8>, std::io::Error)> {
        let dirs = std::mem::take(&mut self.dirs);
        for (key, meta) in dirs.iter().rev() {
            let parts: Vec<&[u8]> = key.split(|&b| b == b'/').collect();
            let fd = beneath::open_dir(self.root.as_fd(), &parts, false).map_err(|e| {
                let source = match e {
                    WalkError::Io(e) => e,
                    other => std::io::Error::other(format!("the directory changed: {other:?}")),
                };
                (key.clone(), source)
            })?;
            self.apply_meta(fd.as_fd(), meta)
                .map_err(|e| (key.clone(), e))?;
        }
        Ok(())
    }

    /// The entry's parent directory, opened beneath the root (missing directories created),
    /// never through a symlink.
    fn parent(&mut self, at: &At<'_>) -> Result<OwnedFd, LayerError> {
        let parent_parts = &at.parts[..at.parts.len() - 1];
        let key = parent_parts.join(&b'/');
        if let Some((cached, fd)) = &self.last_parent {
            if *cached == key {
                return fd.try_clone().map_err(|e| LayerError::Write {
                    path: at.shown.to_owned(),
                    source: e,
                });
            }
        }
        let fd = beneath::open_dir(self.root.as_fd(), parent_parts, true).map_err(|e| match e {
            WalkError::Symlink(i) => LayerError::ThroughSymlink {
                entry: at.shown.to_owned(),
                symlink: String::from_utf8_lossy(&at.parts[..=i].join(&b'/')).into_owned(),
            },
            WalkError::NotADirectory(i) | WalkError::Missing(i) => LayerError::NotADirectory {
                entry: at.shown.to_owned(),
                component: String::from_utf8_lossy(&at.parts[i]).into_owned(),
            },
            WalkError::Io(source) => LayerError::Write {
                path: at.shown.to_owned(),
                source,
            },
        })?;
        let keep = fd.try_clone().map_err(|e| LayerError::Write {
            path: at.shown.to_owned(),
            source: e,
        })?;
        self.last_parent = Some((key, keep));
        Ok(fd)
    }

    /// Removes whatever is at the entry's name (an earlier entry of the same name), unless
    /// it is a directory and `keep_dir`. Returns whether a directory was kept.
    fn replace(
        &mut self,
        parent: BorrowedFd<'_>,
        at: &At<'_>,
        keep_dir: bool,
    ) -> std::io::Result<bool> {
        if keep_dir && beneath::kind_of(parent, at.name)? == Some(FileType::Directory) {
            return Ok(true);
        }
        self.remove(parent, &at.key, at.name)?;
        Ok(false)
    }

    /// Removes `name` (whose path is `key`) from `parent`; a removed directory takes its
    /// pending metadata and everything under it along.
    fn remove(&mut self, parent: BorrowedFd<'_>, key: &[u8], name: &[u8]) -> std::io::Result<()> {
        if beneath::remove(parent, name)? == Some(FileType::Directory) {
            self.forget_dir(key);
        }
        Ok(())
    }

    fn forget_dir(&mut self, key: &[u8]) {
        self.dirs.remove(key);
        let mut below = key.to_vec();
        below.push(b'/');
        let mut end = key.to_vec();
        end.push(b'/' + 1);
        let doomed: Vec<Vec<u8>> = self
            .dirs
            .range(below..end)
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.dirs.remove(&k);
        }
        self.last_parent = None;
    }

    /// The directory and name of the file a hardlink points at: inside the layer, reached
    /// without symlinks, a regular file or a symlink.
    fn hardlink_source(
        &self,
        shown: &str,
        target: &[u8],
    ) -> Result<(OwnedFd, Vec<u8>), LayerError> {
        let bad = || LayerError::BadHardlink {
            entry: shown.to_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
        };
        let parts = clean(target).map_err(|_| bad())?;
        let Some(name) = parts.last() else {
            return Err(bad());
        };
        if name.contains(&0) {
            return Err(bad());
        }
        let dir = beneath::open_dir(self.root.as_fd(), &parts[..parts.len() - 1], false)
            .map_err(|_| bad())?;
        match beneath::kind_of(dir.as_fd(), name) {
            Ok(Some(FileType::RegularFile | FileType::Symlink)) => Ok((dir, name.clone())),
            _ => Err(bad()),
        }
    }

    fn whiteout(&mut self, at: &At<'_>, hidden: &[u8]) -> Result<(), LayerError> {
        let write = |source: std::io::Error| LayerError::Write {
            path: at.shown.to_owned(),
            source,
        };
        if at.name == OPAQUE {
            let parent = self.parent(at)?;
            rustix::fs::fsetxattr(&parent, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                .map_err(|e| write(e.into()))?;
            self.report.whiteouts += 1;
            return Ok(());
        }
        if at.name.starts_with(AUFS_META) {
            self.report.skipped += 1;
            return Ok(());
        }
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(LayerError::Invalid {
                entry: at.shown.to_owned(),
                reason: "a whiteout must name a file ('.wh.NAME')".into(),
            });
        }
        let parent = self.parent(at)?;
        let mut key = at.parts[..at.parts.len() - 1].join(&b'/');
        if !key.is_empty() {
            key.push(b'/');
        }
        key.extend_from_slice(hidden);
        self.remove(parent.as_fd(), &key, hidden).map_err(write)?;
        rustix::fs::mknodat(
            &parent,
            hidden,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| write(e.into()))?;
        self.report.whiteouts += 1;
        Ok(())
    }
}

/// Whether a relative symlink target climbs above the root from a link `depth` directories
/// deep. Absolute targets resolve inside the container's root and never escape it.
fn escapes(depth: usize, target: &[u8]) -> bool {
    if target.starts_with(b"/") {
        return false;
    }
    let mut depth = depth as i64;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests;
