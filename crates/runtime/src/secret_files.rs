//! Secrets as files: each container that asks for some gets a small tmpfs of its own on the
//! node, at `<container dir>/secrets`, holding one file per secret (mode 0400, owned by the
//! container's user; the directory 0700, root's), and each file is bind-mounted read-only at
//! its path in the container. The values live in memory only: never in the image, the
//! container's root filesystem (its overlay upper directory gets an empty mount point at
//! most), the record or `config.json`. Removing the container unmounts the tmpfs, which
//! destroys them; so does a reboot, after which such a container cannot start again (it is
//! created anew with the values).

#[cfg(test)]
mod tests;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use zeroize::Zeroizing;

/// The directory of a container's secret files tmpfs, inside its container directory.
pub const SECRETS_DIR: &str = "secrets";

/// Room on the tmpfs beyond the secrets themselves (tmpfs counts whole pages per file).
const TMPFS_HEADROOM: usize = 1024 * 1024;

/// One secret delivered as a file.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// The secret's name: the file's name on the tmpfs (letters, digits, `_`).
    pub name: String,
    /// The file's absolute path in the container.
    pub destination: String,
    /// The value; zeroed when dropped.
    pub value: Zeroizing<Vec<u8>>,
}

/// The secret files of a container. `Debug` shows names and paths only; the request never
/// serializes them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretFiles(pub Vec<SecretFile>);

impl std::fmt::Debug for SecretFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|file| (&file.name, &file.destination)))
            .finish()
    }
}

impl SecretFiles {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks names (plain file names) and destinations (absolute, without `.` or `..`,
    /// distinct).
    pub fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for file in &self.0 {
            let name_ok = file
                .name
                .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && file
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !name_ok {
                return Err(format!(
                    "secret file name {:?} must be letters, digits and `_`, not starting with a digit",
                    file.name
                ));
            }
            let plain = file.destination.starts_with('/')
                && file.destination.len() > 1
                && file.destination[1..]
                    .split('/')
                    .all(|part| !matches!(part, "" | "." | ".."));
            if !plain {
                return Err(format!(
                    "secret file path {:?} must be an absolute path without `.`, `..` or `//`",
                    file.destination
                ));
            }
            if !seen.insert(file.destination.as_str()) {
                return Err(format!("two secret files at {:?}", file.destination));
            }
        }
        Ok(())
    }
}

/// Mounts a tmpfs at `dir` (created, mode 0700; a tmpfs left there by a crash is unmounted
/// first, never stacked) and writes each secret to `dir/<name>`, mode 0400, owned by `owner`
/// (uid, gid). On failure whatever was mounted is unmounted again.
pub fn mount_files(dir: &Path, files: &SecretFiles, owner: (u32, u32)) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    if crate::rootfs::is_mount_point(dir) {
        tracing::warn!(dir = %dir.display(), "unmounting a secrets tmpfs left behind");
        umount2(dir, MntFlags::MNT_DETACH)?;
    }
    let size: usize = TMPFS_HEADROOM + files.0.iter().map(|f| f.value.len()).sum::<usize>();
    let options = format!("size={size},mode=0700,nr_inodes={}", files.0.len() + 16);
    mount(
        Some("berth-secrets"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )?;
    let written = files
        .0
        .iter()
        .try_for_each(|file| write_file(&dir.join(&file.name), &file.value, owner));
    if let Err(e) = written {
        let _ = umount2(dir, MntFlags::MNT_DETACH);
        return Err(e);
    }
    tracing::debug!(dir = %dir.display(), count = files.0.len(), "secret files mounted");
    Ok(())
}

fn write_file(path: &Path, value: &[u8], (uid, gid): (u32, u32)) -> std::io::Result<()> {
    // A secret given twice (two paths) is one file on the tmpfs.
    if path.exists() {
        return Ok(());
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)?;
    file.write_all(value)?;
    // The mode given to open is filtered by the umask; make sure it is exactly 0400.
    file.set_permissions(fs::Permissions::from_mode(0o400))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

/// Unmounts the secrets tmpfs at `dir` if one is mounted (detached: a process still holding
/// a file open does not keep the values visible) and removes the directory; nothing to do
/// when there is none.
pub fn unmount_files(dir: &Path) -> std::io::Result<()> {
    if crate::rootfs::is_mount_point(dir) {
        umount2(dir, MntFlags::MNT_DETACH)?;
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
