//! A container's root filesystem: an overlay of the image's read-only layer snapshots with a
//! per-container upper directory, mounted in the host's mount namespace so that it outlives
//! restarts of the container's process.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The directories of one container's root filesystem.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// Where it is mounted (the bundle's `rootfs`).
    pub merged: PathBuf,
    upper: PathBuf,
    work: PathBuf,
}

impl Rootfs {
    /// The layout under a container directory.
    pub fn at(container_dir: &Path) -> Rootfs {
        Rootfs {
            merged: container_dir.join("bundle/rootfs"),
            upper: container_dir.join("upper"),
            work: container_dir.join("work"),
        }
    }

    /// Mounts `layers` (bottom layer first) with a fresh upper directory.
    pub fn mount(&self, layers: &[PathBuf]) -> io::Result<()> {
        for dir in [&self.merged, &self.upper, &self.work] {
            std::fs::create_dir_all(dir)?;
        }
        if layers.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the image has no layers",
            ));
        }
        // overlayfs lists the topmost lower layer first.
        let lower: Vec<String> = layers
            .iter()
            .rev()
            .map(|p| escape(&p.display().to_string()))
            .collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            escape(&self.upper.display().to_string()),
            escape(&self.work.display().to_string()),
        );
        if options.len() >= 4096 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the image has too many layers ({}) for one overlay mount at this path",
                    layers.len()
                ),
            ));
        }
        mount(
            Some("overlay"),
            &self.merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(io::Error::from)
    }

    /// Unmounts it; not mounted is fine.
    pub fn unmount(&self) -> io::Result<()> {
        if !is_mount_point(&self.merged) {
            return Ok(());
        }
        umount2(&self.merged, MntFlags::MNT_DETACH).map_err(io::Error::from)
    }
}

/// overlayfs separates options with `,` and layers with `:`; both are escaped with `\`.
fn escape(path: &str) -> String {
    path.replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

/// Whether something is mounted at `path` in this mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.display().to_string();
    mounts.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|point| unescape_mountinfo(point) == wanted)
    })
}

fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
