//! Generated hostile layers: arbitrary sequences of tar entries (names with `.`, `..`,
//! absolute and over-long components, directories later replaced by symlinks or files,
//! symlinks to `/`, up the tree and into a canary tree beside the snapshot, hardlinks to
//! links, whiteouts and opaque markers anywhere, setuid modes, xattrs, owners, device nodes)
//! are unpacked into a fresh directory beside a canary tree. Whatever happens, the canary
//! tree (content, modes, owners, times, xattrs) is untouched, nothing is created at the
//! host's `/`, and the result is either a snapshot that holds only what berth allows or a
//! clear refusal that leaves nothing behind.
//!
//! `PROPTEST_CASES` sets the number of cases (default 3000).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use berth_oci::layer::{self, SpecialFiles, UnpackOptions};
use proptest::prelude::*;

/// Every plain name the generator uses: distinctive, so that a write that escaped to the
/// host's `/` through a symlink is found there (and nothing real is hit).
const NAMES: [&str; 4] = ["bx-a", "bx-b", "bx-d", "bx-p"];
/// Replaced by the canary tree's absolute path when the layer is built.
const CANARY: &str = "@CANARY";

#[derive(Debug, Clone)]
enum Kind {
    File { mode: u32, data: Vec<u8> },
    Dir { mode: u32 },
    Symlink { target: String },
    Hardlink { target: String },
    Fifo,
    CharDevice,
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    kind: Kind,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => proptest::sample::select(&NAMES[..]).prop_map(str::to_owned),
        1 => Just(".".to_owned()),
        1 => Just("..".to_owned()),
        1 => Just(String::new()),
        2 => proptest::sample::select(&NAMES[..]).prop_map(|n| format!(".wh.{n}")),
        1 => Just(".wh...".to_owned()),
        1 => Just(".wh..".to_owned()),
        1 => Just(".wh.".to_owned()),
        1 => Just(".wh..wh..opq".to_owned()),
        1 => Just(".wh..wh.plnk".to_owned()),
        1 => Just("n".repeat(200)),
        1 => Just("m".repeat(300)),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (
        prop_oneof![8 => Just(""), 2 => Just("./"), 1 => Just("/")],
        prop_oneof![
            3 => proptest::collection::vec(component(), 1..=2),
            1 => proptest::collection::vec(component(), 3..=4),
        ],
    )
        .prop_map(|(prefix, parts)| format!("{prefix}{}", parts.join("/")))
}

/// A path of this case's pool (so that entries meet: a directory replaced by a symlink, a
/// link to an earlier file), a pool path's child, or a fresh one.
fn pooled(pool: Vec<String>) -> impl Strategy<Value = String> {
    let children = pool.clone();
    prop_oneof![
        5 => proptest::sample::select(pool),
        2 => (proptest::sample::select(children), proptest::sample::select(&NAMES[..]))
            .prop_map(|(parent, name)| format!("{parent}/{name}")),
        2 => path(),
    ]
}

fn target(pool: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => pooled(pool),
        1 => Just("/".to_owned()),
        1 => Just("..".to_owned()),
        1 => Just("../..".to_owned()),
        1 => Just("../canary".to_owned()),
        1 => Just("../canary/file".to_owned()),
        2 => Just(CANARY.to_owned()),
        2 => Just(format!("{CANARY}/file")),
        2 => Just(format!("{CANARY}/dir")),
        1 => Just(format!("{CANARY}/link")),
        1 => Just("/bx-d".to_owned()),
        1 => Just("bx-d/../..".to_owned()),
        1 => Just("../../../../../../etc".to_owned()),
    ]
}

fn mode() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => Just(0o644),
        3 => Just(0o755),
        2 => Just(0o4777),
        2 => Just(0o6755),
        1 => Just(0o000),
        1 => Just(0o7777),
        2 => 0u32..0o7777,
    ]
}

fn kind(pool: Vec<String>) -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => (mode(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(mode, data)| Kind::File { mode, data }),
        4 => mode().prop_map(|mode| Kind::Dir { mode }),
        3 => target(pool.clone()).prop_map(|target| Kind::Symlink { target }),
        2 => target(pool).prop_map(|target| Kind::Hardlink { target }),
        1 => Just(Kind::Fifo),
        1 => Just(Kind::CharDevice),
    ]
}

fn xattrs() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    proptest::collection::vec(
        (
            proptest::sample::select(
                &[
                    "user.note",
                    "trusted.overlay.opaque",
                    "trusted.overlay.redirect",
                    "security.capability",
                ][..],
            )
            .prop_map(str::to_owned),
            proptest::collection::vec(any::<u8>(), 1..8),
        ),
        0..2,
    )
}

fn entry(pool: Vec<String>) -> impl Strategy<Value = Entry> {
    (
        pooled(pool.clone()),
        kind(pool),
        prop_oneof![Just(0u32), Just(1000u32), 0u32..70000],
        prop_oneof![Just(0u32), Just(1000u32)],
        prop_oneof![
            Just(0u64),
            Just(1_600_000_000u64),
            any::<u32>().prop_map(u64::from)
        ],
        prop_oneof![4 => Just(Vec::new()), 1 => xattrs()],
    )
        .prop_map(|(path, kind, uid, gid, mtime, xattrs)| Entry {
            path,
            kind,
            uid,
            gid,
            mtime,
            xattrs,
        })
}

/// Builds the layer's tar stream header by header (tar::Builder refuses most of these).
fn tar_of(entries: &[Entry], canary: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut pax: Vec<(String, Vec<u8>)> = e
            .xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone()))
            .collect();
        let (kind, size, data, link) = match &e.kind {
            Kind::File { data, .. } => (tar::EntryType::Regular, data.len(), data.clone(), None),
            Kind::Dir { .. } => (tar::EntryType::Directory, 0, Vec::new(), None),
            Kind::Symlink { target } => (tar::EntryType::Symlink, 0, Vec::new(), Some(target)),
            Kind::Hardlink { target } => (tar::EntryType::Link, 0, Vec::new(), Some(target)),
            Kind::Fifo => (tar::EntryType::Fifo, 0, Vec::new(), None),
            Kind::CharDevice => (tar::EntryType::Char, 0, Vec::new(), None),
        };
        let mode = match e.kind {
            Kind::File { mode, .. } | Kind::Dir { mode } => mode,
            _ => 0o777,
        };
        let link = link.map(|l| l.replace(CANARY, canary));
        if e.path.len() > 99 {
            pax.push(("path".into(), e.path.clone().into_bytes()));
        }
        if let Some(l) = link.as_ref().filter(|l| l.len() > 99) {
            pax.push(("linkpath".into(), l.clone().into_bytes()));
        }
        if !pax.is_empty() {
            let mut records = Vec::new();
            for (key, value) in &pax {
                let body = key.len() + value.len() + 3;
                let mut len = body + body.to_string().len();
                if len.to_string().len() != body.to_string().len() {
                    len += 1;
                }
                records.extend_from_slice(format!("{len} {key}=").as_bytes());
                records.extend_from_slice(value);
                records.push(b'\n');
            }
            push(
                &mut out,
                &header(
                    b"pax",
                    tar::EntryType::XHeader,
                    records.len(),
                    b"",
                    0o644,
                    0,
                    0,
                    0,
                ),
                &records,
            );
        }
        let name = &e.path.as_bytes()[..e.path.len().min(99)];
        let link = link
            .as_deref()
            .map(|l| &l.as_bytes()[..l.len().min(99)])
            .unwrap_or(b"");
        push(
            &mut out,
            &header(name, kind, size, link, mode, e.uid, e.gid, e.mtime),
            &data,
        );
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

#[allow(clippy::too_many_arguments)]
fn header(
    name: &[u8],
    kind: tar::EntryType,
    size: usize,
    link: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(size as u64);
    h.set_mode(mode);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(mtime);
    h.set_cksum();
    h
}

fn push(out: &mut Vec<u8>, h: &tar::Header, data: &[u8]) {
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Everything about one filesystem object that a hostile layer could change.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    content: Vec<u8>,
    xattrs: Vec<(String, Option<Vec<u8>>)>,
}

fn seen(path: &Path) -> Seen {
    let meta = path.symlink_metadata().expect("stat");
    let ft = meta.file_type();
    let (kind, content) = if ft.is_symlink() {
        (
            "symlink",
            fs::read_link(path)
                .expect("readlink")
                .into_os_string()
                .into_encoded_bytes(),
        )
    } else if ft.is_dir() {
        ("dir", Vec::new())
    } else if ft.is_file() {
        ("file", fs::read(path).expect("read"))
    } else {
        ("other", Vec::new())
    };
    let xattrs = if ft.is_symlink() {
        Vec::new()
    } else {
        xattr::list(path)
            .expect("xattrs")
            .map(|n| {
                let value = xattr::get(path, &n).expect("xattr");
                (n.to_string_lossy().into_owned(), value)
            })
            .collect()
    };
    Seen {
        kind,
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        content,
        xattrs,
    }
}

/// Every object under `dir`, without following symlinks, except `skip` at the top.
fn walk(dir: &Path, skip: &str) -> BTreeMap<String, Seen> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("list") {
            let p = e.expect("entry").path();
            let rel = p.strip_prefix(dir).expect("under").display().to_string();
            if rel == skip {
                continue;
            }
            let s = seen(&p);
            if s.kind == "dir" {
                stack.push(p.clone());
            }
            all.insert(rel, s);
        }
    }
    all
}

/// A canary tree and another snapshot beside the destination, with owners, modes, times
/// and an xattr that a hostile layer would like to change.
fn plant(base: &Path) {
    let canary = base.join("canary");
    fs::create_dir_all(canary.join("dir/inner")).expect("mkdir");
    fs::write(canary.join("file"), b"canary").expect("write");
    fs::write(canary.join("dir/inner/secret"), b"secret").expect("write");
    std::os::unix::fs::symlink("file", canary.join("link")).expect("symlink");
    for (p, mode) in [
        ("file", 0o644),
        ("dir", 0o750),
        ("dir/inner", 0o700),
        ("dir/inner/secret", 0o600),
    ] {
        fs::set_permissions(canary.join(p), fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::os::unix::fs::chown(canary.join("file"), Some(4242), Some(4343)).expect("chown");
    xattr::set(canary.join("file"), "user.canary", b"1").expect("xattr");
    fs::create_dir_all(base.join("other-snapshot/bin")).expect("mkdir");
    fs::write(base.join("other-snapshot/bin/sh"), b"sh").expect("write");
    for p in [
        "canary/file",
        "canary/dir/inner/secret",
        "canary/dir/inner",
        "canary/dir",
        "canary",
        "other-snapshot/bin/sh",
    ] {
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        fs::File::open(base.join(p))
            .expect("open")
            .set_modified(t)
            .expect("mtime");
    }
}

fn escaped_to_host_root() -> Vec<String> {
    NAMES
        .iter()
        .filter(|n| Path::new("/").join(n).symlink_metadata().is_ok())
        .map(|n| format!("/{n}"))
        .collect()
}

/// What a snapshot may hold after a successful unpack.
fn check_snapshot(dest: &Path, options: &UnpackOptions) -> Result<(), String> {
    for (rel, s) in walk(dest, "") {
        let meta = dest.join(&rel).symlink_metadata().expect("stat");
        let ft = meta.file_type();
        if ft.is_fifo() || ft.is_block_device() || ft.is_socket() {
            return Err(format!("{rel}: a special file"));
        }
        if ft.is_char_device() && meta.rdev() != 0 {
            return Err(format!("{rel}: a device that is not a whiteout"));
        }
        if s.kind == "file" && !options.keep_setid && s.mode & 0o6000 != 0 {
            return Err(format!("{rel}: setuid/setgid kept: {:o}", s.mode));
        }
        for (name, value) in &s.xattrs {
            let opaque = name == "trusted.overlay.opaque"
                && s.kind == "dir"
                && value.as_deref() == Some(b"y");
            if name.starts_with("trusted.") && !opaque {
                return Err(format!("{rel}: xattr {name}"));
            }
            if name == "security.capability" && !options.keep_setid {
                return Err(format!("{rel}: file capability kept"));
            }
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn no_layer_reaches_outside_its_snapshot(
        entries in proptest::collection::vec(path(), 1..5)
            .prop_flat_map(|pool| proptest::collection::vec(entry(pool), 1..12)),
        keep_setid in any::<bool>(),
        skip_special in any::<bool>(),
    ) {
        let base = tempfile::tempdir().expect("tempdir");
        plant(base.path());
        let canary = base.path().join("canary").display().to_string();
        let before = walk(base.path(), "snap");
        let before_base = seen(base.path());
        let layer = tar_of(&entries, &canary);
        let options = UnpackOptions {
            keep_setid,
            special_files: if skip_special { SpecialFiles::Skip } else { SpecialFiles::Reject },
        };
        let dest = base.path().join("snap");
        let result = layer::unpack(layer.as_slice(), &dest, &options);
        let after = walk(base.path(), "snap");
        prop_assert_eq!(&before, &after, "the tree beside the snapshot changed ({:?})", result);
        let after_base = seen(base.path());
        prop_assert_eq!((before_base.mode, before_base.uid, before_base.gid), (after_base.mode, after_base.uid, after_base.gid));
        prop_assert_eq!(escaped_to_host_root(), Vec::<String>::new());
        match result {
            Ok(_) => {
                if let Err(e) = check_snapshot(&dest, &options) {
                    prop_assert!(false, "{}", e);
                }
            }
            Err(e) => {
                prop_assert!(!dest.exists(), "a failed unpack left {}", dest.display());
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
