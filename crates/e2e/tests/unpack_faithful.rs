//! berth unpacks an image as the layers say: three layers built with buildah from the files
//! of Debian packages (setuid and setgid programs, files owned by other users, a long tree
//! of symlinks) plus owners, modes, nanosecond times, hardlinks (also to a symlink), xattrs,
//! long names, whiteouts, a directory replaced by a symlink, a file replaced by a directory
//! and an opaque directory across the layers. The image is pushed to berth's registry and
//! pulled with `berth pull`; its snapshots, stacked by overlayfs as a container sees them,
//! are compared field by field with `umoci raw unpack` of the same blobs.
//!
//! The only differences allowed are berth's documented policy: setuid/setgid bits and file
//! capabilities are dropped from files (and the test checks that they were).
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use berth_e2e::process::{self, run, stdout_of};
use berth_e2e::{berth_binary, BerthOptions, BerthRegistry, Podman, Registry};

/// Debian packages whose installed files make up the first layer.
const PACKAGES: &[&str] = &[
    "busybox-static",
    "passwd",
    "login",
    "nginx-common",
    "dnsmasq-base",
];

/// A valid `security.capability` value (v2: cap_net_raw permitted and effective).
const CAPABILITY: &[u8] = &[
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

fn at(secs: u64, nanos: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
}

fn set_mtime(path: &Path, time: SystemTime) {
    // Through the parent and name, without following a symlink.
    let times = rustix::fs::Timestamps {
        last_access: timespec(time),
        last_modification: timespec(time),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

fn timespec(time: SystemTime) -> rustix::fs::Timespec {
    let d = time.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    rustix::fs::Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: d.subsec_nanos().into(),
    }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A buildah working container, mounted.
struct Working<'a> {
    podman: &'a Podman,
    name: String,
    mount: PathBuf,
}

impl<'a> Working<'a> {
    fn from(podman: &'a Podman, base: &str) -> Working<'a> {
        let name = stdout_of(podman.buildah().args(["from", "--pull-never", base]));
        let mount = PathBuf::from(stdout_of(podman.buildah().args(["mount", &name])));
        Working {
            podman,
            name,
            mount,
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.mount.join(relative)
    }

    fn commit(self, image: &str) {
        run(self.podman.buildah().args(["unmount", &self.name]));
        run(self
            .podman
            .buildah()
            .args(["commit", "--quiet", "--format", "oci", &self.name, image]));
        run(self.podman.buildah().args(["rm", &self.name]));
    }
}

/// Layer 1: the files of Debian packages as installed on this host (owners, modes, setid
/// bits, symlinks), plus an app tree with every kind of metadata.
fn layer_one(w: &Working<'_>) {
    let mut paths = Vec::new();
    for package in PACKAGES {
        let listed = stdout_of(Command::new("dpkg").args(["-L", package]));
        // Through the host's merged /usr (/bin -> usr/bin), each path as it really is.
        paths.extend(
            listed
                .lines()
                .filter(|p| *p != "/." && Path::new(p).symlink_metadata().is_ok())
                .filter_map(|p| {
                    let p = Path::new(p);
                    let parent = fs::canonicalize(p.parent()?).ok()?;
                    let real = parent.join(p.file_name()?);
                    Some(
                        real.display()
                            .to_string()
                            .trim_start_matches('/')
                            .to_owned(),
                    )
                })
                .filter(|p| !p.is_empty()),
        );
    }
    paths.sort();
    paths.dedup();
    let list = w.path("../package-files");
    fs::write(&list, paths.join("\n")).unwrap();
    let archive = w.path("../packages.tar");
    run(Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--no-recursion",
            "-C",
            "/",
            "-cf",
        ])
        .arg(&archive)
        .arg("-T")
        .arg(&list));
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--same-owner", "-xpf"])
        .arg(&archive)
        .arg("-C")
        .arg(&w.mount));
    fs::remove_file(&list).unwrap();
    fs::remove_file(&archive).unwrap();

    let app = w.path("srv/app");
    fs::create_dir_all(app.join("data")).unwrap();
    fs::create_dir_all(app.join("cache/objects")).unwrap();
    fs::create_dir_all(w.path("usr/local/bin")).unwrap();
    fs::write(app.join("data/db"), b"rows").unwrap();
    fs::write(app.join("cache/objects/1"), b"cached").unwrap();
    fs::write(app.join("config"), b"listen = 8080\n").unwrap();
    fs::write(app.join("private"), b"nobody reads this").unwrap();
    let long_dir = app.join("n".repeat(120));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join("f".repeat(140)), b"long").unwrap();
    let tool = w.path("usr/local/bin/tool");
    fs::write(&tool, b"#!/bin/sh\necho tool\n").unwrap();
    fs::write(w.path("usr/local/bin/suid-tool"), b"#!/bin/sh\n").unwrap();
    fs::hard_link(&tool, w.path("usr/local/bin/tool-alias")).unwrap();
    std::os::unix::fs::symlink("data", app.join("current")).unwrap();
    std::os::unix::fs::symlink("/usr/local/bin/tool", app.join("abs")).unwrap();
    // A hardlink to the symlink itself (link(2) does not follow).
    fs::hard_link(app.join("current"), app.join("current-too")).unwrap();
    xattr::set(&tool, "user.origin", b"berth-e2e").unwrap();
    xattr::set(&tool, "security.capability", CAPABILITY).unwrap();
    xattr::set(app.join("data"), "user.role", b"database").unwrap();
    fs::create_dir_all(w.path("tmp")).unwrap();

    chmod(&tool, 0o755);
    chmod(&w.path("usr/local/bin/suid-tool"), 0o4755);
    chmod(&app.join("private"), 0o000);
    chmod(&w.path("tmp"), 0o1777);
    chown(&app, 1001, 1001);
    chmod(&app, 0o750);
    chown(&app.join("data"), 999, 999);
    chmod(&app.join("data"), 0o2770);
    chown(&app.join("data/db"), 999, 999);
    chmod(&app.join("data/db"), 0o600);
    chown(&app.join("current"), 1001, 1001);
    chown(&app.join("config"), 0, 1001);
    chmod(&app.join("config"), 0o640);
    set_mtime(&app.join("data/db"), at(1_000_000_000, 123_456_789));
    set_mtime(&app.join("current"), at(1_100_000_000, 0));
    set_mtime(&tool, at(1_200_000_000, 987_654_321));
    set_mtime(&app.join("data"), at(1_300_000_000, 5));
    set_mtime(&app, at(1_400_000_000, 0));
}

/// Layer 2: whiteouts, a directory replaced by a symlink, a file by a directory, metadata
/// changes on files of layer 1.
fn layer_two(w: &Working<'_>) {
    let app = w.path("srv/app");
    fs::remove_file(app.join("data/db")).unwrap();
    fs::remove_dir_all(app.join("cache")).unwrap();
    std::os::unix::fs::symlink("/tmp", app.join("cache")).unwrap();
    fs::remove_file(app.join("config")).unwrap();
    fs::create_dir(app.join("config")).unwrap();
    fs::write(app.join("config/main.conf"), b"workers = 2\n").unwrap();
    chown(&app.join("config"), 1001, 1001);
    chmod(&app.join("config"), 0o700);
    let nginx = w.path("etc/nginx/nginx.conf");
    chmod(&nginx, 0o600);
    chown(&nginx, 33, 33);
    set_mtime(&nginx, at(1_500_000_000, 42));
    fs::remove_dir_all(w.path("etc/nginx/snippets")).unwrap();
    fs::create_dir(w.path("etc/nginx/snippets")).unwrap();
    fs::write(w.path("etc/nginx/snippets/new.conf"), b"# new\n").unwrap();
    set_mtime(&app.join("data"), at(1_600_000_000, 6));
}

/// Layer 3: a name of a hardlink pair removed, a directory emptied and made again with
/// another owner (opaque), a changed file of a package.
fn layer_three(w: &Working<'_>) {
    fs::remove_file(w.path("usr/local/bin/tool-alias")).unwrap();
    let data = w.path("srv/app/data");
    fs::remove_dir_all(&data).unwrap();
    fs::create_dir(&data).unwrap();
    fs::write(data.join("fresh"), b"new rows").unwrap();
    chown(&data, 70, 70);
    chmod(&data, 0o700);
    let mut passwd = fs::read(w.path("etc/default/useradd")).unwrap_or_default();
    passwd.extend_from_slice(b"# changed in layer 3\n");
    fs::write(w.path("etc/default/useradd"), passwd).unwrap();
}

/// What one object looks like, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Object {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    content: String,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// The smallest path of the inode's paths in the tree, when it has several.
    link_group: Option<String>,
}

fn walk(root: &Path) -> BTreeMap<String, Object> {
    let mut objects = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = path.symlink_metadata().unwrap();
            let ft = meta.file_type();
            let (kind, content) = if ft.is_symlink() {
                (
                    "symlink",
                    fs::read_link(&path).unwrap().display().to_string(),
                )
            } else if ft.is_dir() {
                stack.push(path.clone());
                ("dir", String::new())
            } else if ft.is_file() {
                let bytes = fs::read(&path).unwrap();
                ("file", hex::encode(sha2::Sha256::digest(&bytes)))
            } else {
                ("special", format!("rdev {}", meta.rdev()))
            };
            if kind != "dir" {
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            let xattrs = if ft.is_symlink() {
                BTreeMap::new()
            } else {
                xattr::list(&path)
                    .unwrap()
                    .filter(|n| !n.to_string_lossy().starts_with("trusted.overlay."))
                    .map(|n| {
                        let value = xattr::get(&path, &n).unwrap().unwrap_or_default();
                        (n.to_string_lossy().into_owned(), value)
                    })
                    .collect()
            };
            objects.insert(
                rel,
                Object {
                    kind,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    size: if kind == "dir" { 0 } else { meta.len() },
                    content,
                    xattrs,
                    link_group: None,
                },
            );
        }
    }
    // Hardlinks as the tree shows them: paths sharing an inode (a lower layer's inode may
    // count links that a later layer's whiteout hides).
    for names in inodes.values().filter(|names| names.len() > 1) {
        let first = names.iter().min().unwrap().clone();
        for name in names {
            objects.get_mut(name).unwrap().link_group = Some(first.clone());
        }
    }
    objects
}

use sha2::Digest as _;

/// An overlay of berth's snapshots, read-only, as a container's root sees them.
struct Overlay {
    mount: PathBuf,
}

impl Overlay {
    fn mount(lower_top_first: &[PathBuf], at: &Path) -> Overlay {
        fs::create_dir_all(at).unwrap();
        let lower: Vec<String> = lower_top_first
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,lowerdir={}", lower.join(":")))
            .arg(at));
        Overlay {
            mount: at.to_owned(),
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

#[test]
fn an_image_unpacks_as_umoci_unpacks_it_field_by_field() {
    assert!(
        process::on_path("umoci"),
        "umoci is not installed: run scripts/install-deps.sh"
    );
    let podman = Podman::new();
    let registry = BerthRegistry::start(BerthOptions::default());
    let work = tempfile::Builder::new()
        .prefix("berth-faithful.")
        .tempdir()
        .unwrap();

    let w = Working::from(&podman, "scratch");
    layer_one(&w);
    w.commit("localhost/faithful:1");
    let w = Working::from(&podman, "localhost/faithful:1");
    layer_two(&w);
    w.commit("localhost/faithful:2");
    let w = Working::from(&podman, "localhost/faithful:2");
    layer_three(&w);
    w.commit("localhost/faithful:3");

    let reference = format!("{}/test/faithful:3", registry.host());
    run(podman.buildah().args([
        "push",
        "--quiet",
        "--tls-verify=false",
        "localhost/faithful:3",
        &format!("docker://{reference}"),
    ]));
    // umoci reads the very blobs berth pulls.
    let layout = work.path().join("layout");
    podman.run_skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("oci:{}:3", layout.display()),
    ]);
    let umoci_root = work.path().join("umoci");
    run(Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:3", layout.display()))
        .arg(&umoci_root));

    let berth_root = work.path().join("berth-root");
    run(Command::new(berth_binary())
        .arg("--root")
        .arg(&berth_root)
        .args(["pull", "--quiet", &reference])
        .env("BERTH_LOG", "warn"));
    let manifest: serde_json::Value = serde_json::from_str(&podman.run_skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]))
    .unwrap();
    let layers: Vec<PathBuf> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|l| {
            let digest = l["digest"].as_str().unwrap().replace(':', "-");
            berth_root.join("images/snapshots").join(digest)
        })
        .collect();
    assert_eq!(layers.len(), 3, "three layers: {manifest}");
    let overlay = Overlay::mount(&layers, &work.path().join("merged"));

    let expected = walk(&umoci_root);
    let actual = walk(&overlay.mount);
    let mut problems = Vec::new();
    let (mut compared, mut setid_dropped, mut caps_dropped) = (0, 0, 0);
    for (path, want) in &expected {
        let Some(got) = actual.get(path) else {
            problems.push(format!("{path}: missing in berth's tree"));
            continue;
        };
        compared += 1;
        let mut want = want.clone();
        if want.kind == "file" && want.mode & 0o6000 != 0 {
            want.mode &= !0o6000;
            setid_dropped += 1;
        }
        if want.xattrs.remove("security.capability").is_some() {
            caps_dropped += 1;
        }
        if *got != want {
            problems.push(format!("{path}:\n  umoci {want:?}\n  berth {got:?}"));
        }
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        problems.push(format!("{path}: only in berth's tree"));
    }
    println!(
        "compared {compared} objects field by field (kind, mode, uid, gid, mtime to the ns, size, content, xattrs, hardlinks); setid dropped on {setid_dropped}, capabilities on {caps_dropped}"
    );
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // The policy differences did happen (and the images did hold such files).
    assert!(
        setid_dropped >= 3,
        "passwd, su and suid-tool are setuid in the image"
    );
    assert_eq!(
        caps_dropped, 1,
        "usr/local/bin/tool has a capability in the image"
    );
    for must in [
        "srv/app/data/fresh",
        "srv/app/config/main.conf",
        "etc/nginx/snippets/new.conf",
        "srv/app/current-too",
    ] {
        assert!(actual.contains_key(must), "{must} is in the tree");
    }
    for gone in [
        "srv/app/data/db",
        "usr/local/bin/tool-alias",
        "srv/app/cache/objects/1",
    ] {
        assert!(
            !actual.contains_key(gone),
            "{gone} was removed by a later layer"
        );
    }
    assert_eq!(actual["srv/app/cache"].kind, "symlink");
    drop(overlay);
}
