//! Test images built FROM scratch with the static busybox: nothing is pulled from anywhere.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::process;
use crate::Podman;

/// What the CMD of [`Podman::build_busybox_image`]'s image prints.
pub const MARKER: &str = "berth-e2e: hello from a busybox image";

/// Where Debian's busybox-static puts its binary.
const BUSYBOX: &str = "/bin/busybox";

/// Applets linked into the images' /bin.
const APPLETS: &[&str] = &["sh", "echo", "cat", "ls", "true", "sleep", "env"];

/// A local manifest list over one image per platform, made by [`Podman::build_multiarch_list`].
#[derive(Debug, Clone)]
pub struct MultiArch {
    /// The list's local name.
    pub list: String,
    /// `(architecture, what that platform's CMD prints)`; the first is the host's.
    pub platforms: Vec<(String, String)>,
}

impl Podman {
    /// Builds `tag` FROM scratch: /bin/busybox plus applet symlinks, and a CMD that prints
    /// [`MARKER`]. Takes a fraction of a second.
    #[track_caller]
    pub fn build_busybox_image(&self, tag: &str) {
        self.build_busybox_variant(tag, host_architecture(), MARKER);
    }

    /// Like [`build_busybox_image`](Self::build_busybox_image), with the image config's
    /// architecture set to `arch` (linux) and a CMD that prints `marker`. The binary is the
    /// host's whatever `arch` says, so every variant runs here: which one ran tells which
    /// platform a client picked.
    #[track_caller]
    pub fn build_busybox_variant(&self, tag: &str, arch: &str, marker: &str) {
        assert!(
            !marker.contains(['"', '\\']),
            "keep markers free of quotes and backslashes"
        );
        let context = self.busybox_context(tag, marker);
        process::run(
            self.podman()
                .args(["build", "--quiet", "--network", "none", "--os", "linux"])
                .args(["--arch", arch, "--tag", tag])
                .arg(&context),
        );
    }

    /// Builds one variant per platform (the host's architecture and one other) and a local
    /// manifest list `list` over them, which `podman manifest push --all` can push.
    #[track_caller]
    pub fn build_multiarch_list(&self, list: &str) -> MultiArch {
        let host = host_architecture();
        let other = if host == "arm64" { "amd64" } else { "arm64" };
        let mut platforms = Vec::new();
        process::run(self.podman().args(["manifest", "create", list]));
        for arch in [host, other] {
            let marker = format!("berth-e2e: hello from the linux/{arch} variant");
            let tag = format!("{}-{arch}", list.split(':').next().unwrap_or(list));
            self.build_busybox_variant(&tag, arch, &marker);
            process::run(self.podman().args([
                "manifest",
                "add",
                list,
                &format!("containers-storage:{tag}"),
            ]));
            platforms.push((arch.to_owned(), marker));
        }
        MultiArch {
            list: list.to_owned(),
            platforms,
        }
    }

    /// Writes local image (or, with `all`, manifest list) `image` into the OCI layout
    /// `layout` under `tag`; returns the `oci:LAYOUT:TAG` reference.
    #[track_caller]
    pub fn save_oci_layout(&self, image: &str, all: bool, layout: &Path, tag: &str) -> String {
        let reference = format!("oci:{}:{tag}", layout.display());
        if all {
            process::run(
                self.podman()
                    .args(["manifest", "push", "--all", image, &reference]),
            );
        } else {
            process::run(self.podman().args(["push", image, &reference]));
        }
        reference
    }

    /// A build context: rootfs/ with the static busybox and its applets, and a Containerfile.
    fn busybox_context(&self, tag: &str, marker: &str) -> PathBuf {
        let binary = fs::read(BUSYBOX).unwrap_or_else(|e| {
            panic!("reading {BUSYBOX}: {e}; scripts/install-deps.sh installs busybox-static")
        });
        assert!(
            !has_interpreter(&binary),
            "{BUSYBOX} is dynamically linked: install busybox-static (scripts/install-deps.sh)"
        );
        let name: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let context = self.dir().join(format!("context-{name}"));
        let bin = context.join("rootfs/bin");
        if context.exists() {
            fs::remove_dir_all(&context).expect("removing an old build context");
        }
        fs::create_dir_all(&bin).expect("creating the build context");
        fs::write(bin.join("busybox"), &binary).expect("copying busybox");
        let mut permissions = fs::metadata(bin.join("busybox"))
            .expect("busybox metadata")
            .permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        fs::set_permissions(bin.join("busybox"), permissions).expect("chmod busybox");
        for applet in APPLETS {
            symlink("busybox", bin.join(applet)).expect("linking an applet");
        }
        fs::write(
            context.join("Containerfile"),
            format!("FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/echo\", \"{marker}\"]\n"),
        )
        .expect("writing the Containerfile");
        context
    }
}

/// The host's architecture in OCI terms.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Whether an ELF64 little-endian binary names a dynamic loader (a `PT_INTERP` program
/// header): a FROM-scratch image has none to offer.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |at: usize, len: usize| elf.get(at..at + len).map(<[u8]>::to_vec);
    let le = |bytes: Vec<u8>| bytes.iter().rev().fold(0u64, |n, b| n << 8 | u64::from(*b));
    let (Some(offset), Some(entry_size), Some(count)) =
        (read(0x20, 8), read(0x36, 2), read(0x38, 2))
    else {
        return false;
    };
    let (offset, entry_size) = (le(offset) as usize, le(entry_size) as usize);
    (0..le(count) as usize).any(|i| {
        read(offset + i * entry_size, 4).is_some_and(|kind| le(kind) == u64::from(PT_INTERP))
    })
}
