//! Unpacking image layers into snapshot directories, safely.
//!
//! A layer is a tar stream, plain or compressed with gzip or zstd. A layer comes from a
//! registry, so it is treated as hostile. Every entry's path is cleaned first: `..` and
//! absolute paths are refused. Nothing is ever written through a symlink. A symlink may not
//! point above the root, and a hardlink may only point at a regular file inside the layer.
//! Device nodes and FIFOs are refused or skipped as configured, and setuid/setgid bits are
//! dropped unless kept on purpose. Long names and pax headers are bounded. OCI whiteouts
//! become what overlayfs understands: a `0/0` character device for `.wh.NAME`, and the
//! `trusted.overlay.opaque` xattr for `.wh..wh..opq`.
//!
//! A layer unpacks into a sibling staging directory, which is renamed into place only when
//! the whole layer succeeded. A failure removes the staging directory and leaves nothing
//! behind.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

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
    /// Keep setuid and setgid bits (dropped by default).
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
    /// Files whose setuid/setgid bits were dropped.
    pub setid_dropped: u64,
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
        /// Where.
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
    /// A hardlink points outside the layer or at something that is not a regular file in it.
    #[error(
        "hardlink {entry:?} points to {target:?}, which is not a regular file inside this layer"
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
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayerError + '_ {
    move |source| LayerError::Write {
        path: path.display().to_string(),
        source,
    }
}

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
    if staging.symlink_metadata().is_ok() {
        // Left by a crash, possibly with read-only directories.
        let _ = make_writable(&staging);
        fs::remove_dir_all(&staging).map_err(write_err(&staging))?;
    }
    fs::create_dir_all(&staging).map_err(write_err(&staging))?;
    let result = Unpacker {
        root: &staging,
        options,
        report: UnpackReport::default(),
        dir_modes: Vec::new(),
    }
    .run(reader);
    match result {
        Ok(report) => {
            fs::rename(&staging, dest).map_err(write_err(dest))?;
            Ok(report)
        }
        Err(e) => {
            let _ = make_writable(&staging);
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Restores owner write permission on every directory so a failed unpack can be removed.
fn make_writable(dir: &Path) -> std::io::Result<()> {
    let meta = dir.symlink_metadata()?;
    if meta.is_dir() {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        for entry in fs::read_dir(dir)? {
            make_writable(&entry?.path())?;
        }
    }
    Ok(())
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

fn read_limited(
    entry: &mut impl Read,
    size: u64,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, LayerError> {
    if size > limit {
        return Err(LayerError::HeaderTooLarge { what, size, limit });
    }
    let mut data = Vec::new();
    entry
        .take(limit)
        .read_to_end(&mut data)
        .map_err(LayerError::Read)?;
    while data.last() == Some(&0) {
        data.pop();
    }
    Ok(data)
}

/// `path` and `linkpath` from pax records (`LEN key=value\n`).
fn pax_paths(data: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let (mut path, mut link) = (None, None);
    let mut rest = data;
    while let Some(space) = rest.iter().position(|&b| b == b' ') {
        let Some(len) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
        else {
            break;
        };
        if len <= space + 1 || len > rest.len() {
            break;
        }
        let record = &rest[space + 1..len - 1];
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            match &record[..eq] {
                b"path" => path = Some(record[eq + 1..].to_vec()),
                b"linkpath" => link = Some(record[eq + 1..].to_vec()),
                _ => {}
            }
        }
        rest = &rest[len..];
    }
    (path, link)
}

struct Unpacker<'a> {
    root: &'a Path,
    options: &'a UnpackOptions,
    report: UnpackReport,
    /// Directory modes applied at the end, so a read-only directory does not stop its own
    /// entries from being written.
    dir_modes: Vec<(PathBuf, u32)>,
}

impl Unpacker<'_> {
    fn run(mut self, reader: impl Read) -> Result<UnpackReport, LayerError> {
        let mut archive = tar::Archive::new(decompress(reader)?);
        let (mut long_path, mut long_link): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
        for entry in archive.entries().map_err(LayerError::Read)?.raw(true) {
            let mut entry = entry.map_err(LayerError::Read)?;
            let header = entry.header().clone();
            let size = header.entry_size().map_err(LayerError::Read)?;
            match header.entry_type() {
                EntryType::GNULongName => {
                    long_path = Some(read_limited(&mut entry, size, MAX_NAME, "GNU long name")?);
                    continue;
                }
                EntryType::GNULongLink => {
                    long_link = Some(read_limited(
                        &mut entry,
                        size,
                        MAX_NAME,
                        "GNU long link name",
                    )?);
                    continue;
                }
                EntryType::XHeader => {
                    let (path, link) =
                        pax_paths(&read_limited(&mut entry, size, MAX_PAX, "pax header")?);
                    long_path = path.or(long_path);
                    long_link = link.or(long_link);
                    continue;
                }
                EntryType::XGlobalHeader => {
                    read_limited(&mut entry, size, MAX_PAX, "pax global header")?;
                    continue;
                }
                _ => {}
            }
            let raw_path = long_path
                .take()
                .unwrap_or_else(|| header.path_bytes().into_owned());
            let raw_link = long_link
                .take()
                .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
            let shown = String::from_utf8_lossy(&raw_path).into_owned();
            let parts = clean(&raw_path)?;
            let Some(name) = parts.last().cloned() else {
                continue; // the layer's root directory itself
            };
            let mode = header.mode().map_err(LayerError::Read)? & 0o7777;
            self.entry(
                &mut entry,
                header.entry_type(),
                &shown,
                &parts,
                &name,
                mode,
                raw_link,
            )?;
        }
        for (path, mode) in self.dir_modes.iter().rev() {
            fs::set_permissions(path, fs::Permissions::from_mode(*mode))
                .map_err(write_err(path))?;
        }
        Ok(self.report)
    }

    /// Creates the parent directories of `parts` (never through a symlink); returns the
    /// parent path.
    fn parent(&self, shown: &str, parts: &[Vec<u8>]) -> Result<PathBuf, LayerError> {
        let mut path = self.root.to_path_buf();
        for part in &parts[..parts.len() - 1] {
            path.push(std::ffi::OsStr::from_bytes(part));
            match path.symlink_metadata() {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(LayerError::ThroughSymlink {
                        entry: shown.to_owned(),
                        symlink: path
                            .strip_prefix(self.root)
                            .unwrap_or(&path)
                            .display()
                            .to_string(),
                    })
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(LayerError::NotADirectory {
                        entry: shown.to_owned(),
                        component: String::from_utf8_lossy(part).into_owned(),
                    })
                }
                Err(_) => fs::create_dir(&path).map_err(write_err(&path))?,
            }
        }
        Ok(path)
    }

    /// Removes whatever is at `path` (an earlier entry of the same name), unless it is a
    /// directory and `keep_dir`.
    fn replace(path: &Path, keep_dir: bool) -> Result<bool, LayerError> {
        match path.symlink_metadata() {
            Ok(meta) if meta.is_dir() && keep_dir => Ok(true),
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(path)
                .map(|()| false)
                .map_err(write_err(path)),
            Ok(_) => fs::remove_file(path)
                .map(|()| false)
                .map_err(write_err(path)),
            Err(_) => Ok(false),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        data: &mut impl Read,
        kind: EntryType,
        shown: &str,
        parts: &[Vec<u8>],
        name: &[u8],
        mode: u32,
        link: Option<Vec<u8>>,
    ) -> Result<(), LayerError> {
        let parent = self.parent(shown, parts)?;
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            return self.whiteout(&parent, hidden);
        }
        let path = parent.join(std::ffi::OsStr::from_bytes(name));
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                Self::replace(&path, false)?;
                let mut mode = mode;
                if !self.options.keep_setid && mode & 0o6000 != 0 {
                    mode &= !0o6000;
                    self.report.setid_dropped += 1;
                }
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
                    .map_err(write_err(&path))?;
                self.report.bytes += std::io::copy(data, &mut file).map_err(LayerError::Read)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(write_err(&path))?;
            }
            EntryType::Directory => {
                if !Self::replace(&path, true)? {
                    fs::create_dir(&path).map_err(write_err(&path))?;
                }
                self.dir_modes.push((path, mode));
            }
            EntryType::Symlink => {
                let target = link.unwrap_or_default();
                if escapes(parts.len() - 1, &target) {
                    return Err(LayerError::EscapingSymlink {
                        entry: shown.to_owned(),
                        target: String::from_utf8_lossy(&target).into_owned(),
                    });
                }
                Self::replace(&path, false)?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                    .map_err(write_err(&path))?;
            }
            EntryType::Link => {
                let target = link.unwrap_or_default();
                let source = self.hardlink_source(shown, &target)?;
                Self::replace(&path, false)?;
                fs::hard_link(&source, &path).map_err(write_err(&path))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match kind {
                    EntryType::Char => "character device",
                    EntryType::Block => "block device",
                    _ => "FIFO",
                };
                return match self.options.special_files {
                    SpecialFiles::Reject => Err(LayerError::SpecialFile {
                        entry: shown.to_owned(),
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
                    entry: shown.to_owned(),
                    kind: other.as_byte(),
                })
            }
        }
        self.report.entries += 1;
        Ok(())
    }

    /// The file a hardlink points at: inside the layer, reached without symlinks, regular.
    fn hardlink_source(&self, shown: &str, target: &[u8]) -> Result<PathBuf, LayerError> {
        let bad = || LayerError::BadHardlink {
            entry: shown.to_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
        };
        let parts = clean(target).map_err(|_| bad())?;
        if parts.is_empty() {
            return Err(bad());
        }
        let mut path = self.root.to_path_buf();
        for (i, part) in parts.iter().enumerate() {
            path.push(std::ffi::OsStr::from_bytes(part));
            let meta = path.symlink_metadata().map_err(|_| bad())?;
            let last = i == parts.len() - 1;
            if meta.file_type().is_symlink()
                || (last && !meta.is_file())
                || (!last && !meta.is_dir())
            {
                return Err(bad());
            }
        }
        Ok(path)
    }

    fn whiteout(&mut self, parent: &Path, hidden: &[u8]) -> Result<(), LayerError> {
        if hidden == b".wh..opq" {
            xattr::set(parent, "trusted.overlay.opaque", b"y").map_err(write_err(parent))?;
        } else {
            let path = parent.join(std::ffi::OsStr::from_bytes(hidden));
            Self::replace(&path, false)?;
            nix::sys::stat::mknod(
                &path,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(|e| LayerError::Write {
                path: path.display().to_string(),
                source: e.into(),
            })?;
        }
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
