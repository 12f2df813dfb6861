//! Handing secrets to a container: environment variables, or files on a private tmpfs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{check_name, Secret, SecretError};

/// Room on the tmpfs beyond the secrets themselves (tmpfs counts whole pages per file).
const TMPFS_HEADROOM: usize = 1024 * 1024;

/// `NAME=value` for each secret, for a container's environment. Each entry is itself a
/// [`Secret`], so the list never prints its values.
pub fn env_vars(secrets: &[(String, Secret)]) -> Result<Vec<Secret>, SecretError> {
    secrets
        .iter()
        .map(|(name, value)| {
            check_name(name)?;
            let text = value
                .expose_str()
                .filter(|text| !text.contains('\0'))
                .ok_or_else(|| SecretError::NotEnvSafe(name.clone()))?;
            Ok(Secret::new(format!("{name}={text}")))
        })
        .collect()
}

fn files_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SecretError {
    let path = path.to_path_buf();
    move |source| SecretError::Files { what, path, source }
}

/// Secrets as files on a tmpfs mounted for one container (never on disk): the directory is
/// mode 0700 and each file, named after its secret, mode 0400, both owned by the container's
/// user. The runtime bind-mounts the directory into the container (at `/run/secrets`). The
/// tmpfs is unmounted by [`SecretFiles::unmount`], or when the value is dropped.
#[derive(Debug)]
pub struct SecretFiles {
    dir: PathBuf,
    mounted: bool,
}

impl SecretFiles {
    /// Mounts a tmpfs at `dir` (created if missing; a tmpfs left there by a crash is
    /// unmounted first) and writes each secret to `dir/<name>`. `owner` is the container
    /// user's `(uid, gid)`; root keeps them when `None`.
    pub fn mount(
        dir: &Path,
        secrets: &[(String, Secret)],
        owner: Option<(u32, u32)>,
    ) -> Result<SecretFiles, SecretError> {
        for (name, _) in secrets {
            check_name(name)?;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(files_error("creating the secrets directory", dir))?;
        if is_mountpoint(dir)? {
            tracing::warn!(dir = %dir.display(), "unmounting a secrets tmpfs left behind");
            unmount(dir)?;
        }
        let size: usize =
            TMPFS_HEADROOM + secrets.iter().map(|(_, s)| s.expose().len()).sum::<usize>();
        let options = format!("size={size},mode=0700,nr_inodes={}", secrets.len() + 16);
        mount(
            Some("berth-secrets"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(options.as_str()),
        )
        .map_err(|e| files_error("mounting a tmpfs on", dir)(e.into()))?;
        let files = SecretFiles {
            dir: dir.to_path_buf(),
            mounted: true,
        };
        // On failure `files` is dropped, which unmounts what was written so far.
        for (name, value) in secrets {
            files.write(name, value, owner)?;
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(files_error(
                "giving the secrets directory to the container user",
                dir,
            ))?;
        }
        tracing::debug!(dir = %dir.display(), count = secrets.len(), "secrets mounted");
        Ok(files)
    }

    fn write(
        &self,
        name: &str,
        value: &Secret,
        owner: Option<(u32, u32)>,
    ) -> Result<(), SecretError> {
        let path = self.dir.join(name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .map_err(files_error("creating secret file", &path))?;
        file.write_all(value.expose())
            .map_err(files_error("writing secret file", &path))?;
        // The mode given to open is filtered by the umask; make sure it is exactly 0400.
        file.set_permissions(fs::Permissions::from_mode(0o400))
            .map_err(files_error("setting the mode of secret file", &path))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(files_error(
                "giving secret file to the container user",
                &path,
            ))?;
        }
        Ok(())
    }

    /// The directory the secrets are in.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Unmounts the tmpfs (the values are gone with it) and removes the empty directory.
    pub fn unmount(mut self) -> Result<(), SecretError> {
        self.mounted = false;
        unmount(&self.dir)?;
        fs::remove_dir(&self.dir).map_err(files_error("removing the secrets directory", &self.dir))
    }
}

impl Drop for SecretFiles {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(error) = unmount(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), %error, "secrets tmpfs not unmounted");
            }
        }
    }
}

fn unmount(dir: &Path) -> Result<(), SecretError> {
    // Detach: a process still holding a file open must not keep the mount (and the values)
    // visible in the directory.
    umount2(dir, MntFlags::MNT_DETACH)
        .map_err(|e| files_error("unmounting the secrets tmpfs at", dir)(e.into()))
}

/// Whether something is mounted on `dir`: it is on another device than its parent.
fn is_mountpoint(dir: &Path) -> Result<bool, SecretError> {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.join("..");
    let here = fs::metadata(dir).map_err(files_error("inspecting", dir))?;
    let above = fs::metadata(&parent).map_err(files_error("inspecting", &parent))?;
    Ok(here.dev() != above.dev())
}
