//! A service's volumes as the runtime's mounts: named volumes are directories under
//! `<root>/volumes/<app>/<name>` that no cleanup removes (only `berth volume rm`), bind mounts
//! are the node's directories, tmpfs is memory.

use std::path::{Path, PathBuf};

use berth_core::spec::{ServiceSpec, VolumeSpec};
use berth_runtime::spec::{Bind, Tmpfs};

/// The mounts of one instance.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mounts {
    /// Named volumes and bind mounts.
    pub binds: Vec<Bind>,
    /// In-memory filesystems.
    pub tmpfs: Vec<Tmpfs>,
    /// The named volumes' directories, created before the start if missing.
    pub named: Vec<PathBuf>,
}

/// The directory of `app`'s named volume `name` under `volumes_root` (`<root>/volumes`).
pub fn volume_dir(volumes_root: &Path, app: &str, name: &str) -> PathBuf {
    volumes_root.join(app).join(name)
}

/// The mounts `service` of `app` asks for.
pub fn mounts(volumes_root: &Path, app: &str, service: &ServiceSpec) -> Mounts {
    let mut mounts = Mounts::default();
    for (name, volume) in &service.volumes {
        match volume {
            VolumeSpec::Named {
                path, read_only, ..
            } => {
                let source = volume_dir(volumes_root, app, name);
                mounts.named.push(source.clone());
                mounts.binds.push(Bind {
                    source,
                    destination: path.clone(),
                    read_only: *read_only,
                });
            }
            VolumeSpec::Bind {
                host,
                path,
                read_only,
            } => mounts.binds.push(Bind {
                source: PathBuf::from(host),
                destination: path.clone(),
                read_only: *read_only,
            }),
            VolumeSpec::Tmpfs { path, size } => mounts.tmpfs.push(Tmpfs {
                destination: path.clone(),
                size: *size,
            }),
        }
    }
    mounts
}

/// Whether `name` can be a volume's directory name: the spec's volume names are.
pub fn is_volume_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn each_volume_form_becomes_its_mount() {
        let spec = berth_core::AppSpec::parse(
            r#"
app = "shop"
[services.db]
image = "postgres:16"
[services.db.volumes]
data = "/var/lib/data"
config = { bind = "/srv/config", path = "/etc/db", read_only = true }
run = { tmpfs = "/run", size = "64Mi" }
"#,
            None,
        )
        .unwrap();
        let m = mounts(Path::new("/r/volumes"), "shop", &spec.services["db"]);
        assert_eq!(m.named, [PathBuf::from("/r/volumes/shop/data")]);
        assert_eq!(
            m.binds,
            [
                Bind {
                    source: "/srv/config".into(),
                    destination: "/etc/db".into(),
                    read_only: true
                },
                Bind {
                    source: "/r/volumes/shop/data".into(),
                    destination: "/var/lib/data".into(),
                    read_only: false
                },
            ]
        );
        assert_eq!(
            m.tmpfs,
            [Tmpfs {
                destination: "/run".into(),
                size: Some(64 << 20)
            }]
        );
    }

    #[test]
    fn volume_names_cannot_leave_the_app_directory() {
        assert!(is_volume_name("data"));
        for bad in ["", "..", ".x", "a/b", "-a"] {
            assert!(!is_volume_name(bad), "{bad}");
        }
    }
}
