//! A corpus of hostile layers, built header by header (tar::Builder refuses to write most of
//! them), and the well-formed layers real images contain.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

struct Raw<'a> {
    name: &'a [u8],
    kind: EntryType,
    data: &'a [u8],
    link: &'a [u8],
    mode: u32,
}

fn file<'a>(name: &'a [u8], data: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        kind: EntryType::Regular,
        data,
        link: b"",
        mode: 0o644,
    }
}

fn dir(name: &[u8]) -> Raw<'_> {
    Raw {
        name,
        kind: EntryType::Directory,
        data: b"",
        link: b"",
        mode: 0o755,
    }
}

fn symlink<'a>(name: &'a [u8], target: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        kind: EntryType::Symlink,
        data: b"",
        link: target,
        mode: 0o777,
    }
}

fn hardlink<'a>(name: &'a [u8], target: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        kind: EntryType::Link,
        data: b"",
        link: target,
        mode: 0o644,
    }
}

fn header(name: &[u8], kind: EntryType, size: u64, link: &[u8], mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_cksum();
    h
}

fn tar_of(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        if e.name.len() > 99 {
            let mut long = e.name.to_vec();
            long.push(0);
            let h = header(
                b"././@LongLink",
                EntryType::GNULongName,
                long.len() as u64,
                b"",
                0o644,
            );
            builder.append(&h, long.as_slice()).expect("append");
            let h = header(&e.name[..99], e.kind, e.data.len() as u64, e.link, e.mode);
            builder.append(&h, e.data).expect("append");
        } else {
            let h = header(e.name, e.kind, e.data.len() as u64, e.link, e.mode);
            builder.append(&h, e.data).expect("append");
        }
    }
    builder.into_inner().expect("finish")
}

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn dest(&self) -> PathBuf {
        self.dir.path().join("snapshot")
    }

    fn unpack(&self, layer: &[u8], options: &UnpackOptions) -> Result<UnpackReport, LayerError> {
        unpack(layer, &self.dest(), options)
    }

    /// Nothing but the (absent) destination may exist beside it after a failure.
    fn assert_nothing_left(&self) {
        let left: Vec<_> = fs::read_dir(self.dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

fn rejected(layer: &[u8]) -> LayerError {
    let s = Scratch::new();
    let err = s
        .unpack(layer, &UnpackOptions::default())
        .expect_err("hostile layer accepted");
    s.assert_nothing_left();
    err
}

#[test]
fn a_well_formed_layer_unpacks_with_modes_links_and_long_names() {
    let long = format!("deep/{}", "n".repeat(150));
    let layer = tar_of(&[
        dir(b"./"),
        dir(b"./bin"),
        file(b"./bin/busybox", b"\x7fELF..."),
        symlink(b"./bin/sh", b"busybox"),
        symlink(b"./bin/abs", b"/bin/busybox"),
        hardlink(b"./bin/cat", b"bin/busybox"),
        Raw {
            name: b"./etc",
            kind: EntryType::Directory,
            data: b"",
            link: b"",
            mode: 0o555,
        },
        file(b"./etc/hostname", b"berth\n"),
        file(long.as_bytes(), b"long"),
    ]);
    let s = Scratch::new();
    let report = s
        .unpack(&layer, &UnpackOptions::default())
        .expect("unpacks");
    let root = s.dest();
    assert_eq!(
        fs::read(root.join("bin/busybox")).expect("read"),
        b"\x7fELF..."
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).expect("link"),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_link(root.join("bin/abs")).expect("link"),
        Path::new("/bin/busybox")
    );
    let (a, b) = (
        root.join("bin/busybox").metadata().expect("meta"),
        root.join("bin/cat").metadata().expect("meta"),
    );
    assert_eq!(a.ino(), b.ino(), "hardlink shares the inode");
    assert_eq!(
        root.join("etc")
            .metadata()
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o555
    );
    assert_eq!(fs::read(root.join(&long)).expect("long name"), b"long");
    assert_eq!(report.bytes, 7 + 6 + 4);
    fs::set_permissions(root.join("etc"), fs::Permissions::from_mode(0o755))
        .expect("chmod for cleanup");
}

#[test]
fn gzip_and_zstd_layers_unpack() {
    let layer = tar_of(&[file(b"a", b"compressed content")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &layer).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let zst = ruzstd::encoding::compress_to_vec(
        layer.as_slice(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    for compressed in [gz, zst] {
        let s = Scratch::new();
        s.unpack(&compressed, &UnpackOptions::default())
            .expect("unpacks");
        assert_eq!(
            fs::read(s.dest().join("a")).expect("read"),
            b"compressed content"
        );
    }
}

#[test]
fn traversal_is_refused() {
    for name in [&b"../evil"[..], b"./a/../../evil", b"a/b/../../../evil"] {
        let err = rejected(&tar_of(&[file(name, b"x")]));
        assert!(matches!(err, LayerError::Traversal(_)), "{err}");
    }
    let err = rejected(&tar_of(&[file(
        format!("{}/../../x", "a".repeat(120)).as_bytes(),
        b"x",
    )]));
    assert!(
        matches!(err, LayerError::Traversal(_)),
        "long names are checked too: {err}"
    );
}

#[test]
fn absolute_paths_are_refused() {
    let err = rejected(&tar_of(&[file(b"/etc/evil", b"x")]));
    assert!(matches!(err, LayerError::Absolute(_)), "{err}");
    assert!(err.to_string().contains("/etc/evil"));
}

#[test]
fn symlinks_that_escape_are_refused() {
    for (name, target) in [
        (&b"up"[..], &b"../../.."[..]),
        (b"a/b/c", b"../../../x"),
        (b"x", b".."),
    ] {
        let err = rejected(&tar_of(&[symlink(name, target)]));
        assert!(matches!(err, LayerError::EscapingSymlink { .. }), "{err}");
    }
    // Staying inside is fine, however it gets there.
    let s = Scratch::new();
    s.unpack(
        &tar_of(&[symlink(b"a/b/c", b"../../d"), symlink(b"e", b"./f/../g")]),
        &UnpackOptions::default(),
    )
    .expect("inside links unpack");
}

#[test]
fn nothing_is_written_through_a_symlink() {
    let outside = tempfile::tempdir().expect("outside");
    let target = outside.path().to_str().expect("utf-8").as_bytes().to_vec();
    let err = rejected(&tar_of(&[
        symlink(b"escape", &target),
        file(b"escape/pwned", b"x"),
    ]));
    assert!(matches!(err, LayerError::ThroughSymlink { .. }), "{err}");
    assert!(
        fs::read_dir(outside.path()).expect("list").next().is_none(),
        "wrote outside the layer"
    );
}

#[test]
fn hardlinks_out_of_the_layer_are_refused() {
    for target in [&b"../../etc/passwd"[..], b"/etc/passwd", b"missing", b""] {
        let err = rejected(&tar_of(&[hardlink(b"hl", target)]));
        assert!(
            matches!(err, LayerError::BadHardlink { .. }),
            "{target:?}: {err}"
        );
    }
    // Through a symlink to the host's /etc.
    let err = rejected(&tar_of(&[
        symlink(b"d", b"/etc"),
        hardlink(b"hl", b"d/passwd"),
    ]));
    assert!(matches!(err, LayerError::BadHardlink { .. }), "{err}");
    // To a directory.
    let err = rejected(&tar_of(&[dir(b"d"), hardlink(b"hl", b"d")]));
    assert!(matches!(err, LayerError::BadHardlink { .. }), "{err}");
}

#[test]
fn devices_and_fifos_are_refused_or_skipped() {
    for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
        let layer = tar_of(&[
            Raw {
                name: b"dev/node",
                kind,
                data: b"",
                link: b"",
                mode: 0o666,
            },
            file(b"ok", b"x"),
        ]);
        let err = rejected(&layer);
        assert!(matches!(err, LayerError::SpecialFile { .. }), "{err}");
        let s = Scratch::new();
        let options = UnpackOptions {
            special_files: SpecialFiles::Skip,
            ..UnpackOptions::default()
        };
        let report = s.unpack(&layer, &options).expect("skipped");
        assert_eq!(report.skipped, 1);
        assert!(!s.dest().join("dev/node").exists());
        assert!(s.dest().join("ok").exists());
    }
}

#[test]
fn setuid_and_setgid_bits_are_dropped_unless_kept() {
    let layer = tar_of(&[Raw {
        name: b"su",
        kind: EntryType::Regular,
        data: b"x",
        link: b"",
        mode: 0o6755,
    }]);
    let s = Scratch::new();
    let report = s
        .unpack(&layer, &UnpackOptions::default())
        .expect("unpacks");
    assert_eq!(report.setid_dropped, 1);
    assert_eq!(
        s.dest()
            .join("su")
            .metadata()
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    let s = Scratch::new();
    s.unpack(
        &layer,
        &UnpackOptions {
            keep_setid: true,
            ..UnpackOptions::default()
        },
    )
    .expect("unpacks");
    assert_eq!(
        s.dest()
            .join("su")
            .metadata()
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777,
        0o6755
    );
}

#[test]
fn huge_headers_are_refused_before_they_are_read() {
    let mut builder = tar::Builder::new(Vec::new());
    let size = 64 << 20;
    let h = header(b"././@LongLink", EntryType::GNULongName, size, b"", 0o644);
    builder
        .append(&h, std::io::repeat(b'a').take(size))
        .expect("append");
    let err = rejected(&builder.into_inner().expect("finish"));
    assert!(
        matches!(err, LayerError::HeaderTooLarge { size: s, .. } if s == size),
        "{err}"
    );
    let mut builder = tar::Builder::new(Vec::new());
    let h = header(b"pax", EntryType::XHeader, MAX_PAX + 1, b"", 0o644);
    builder
        .append(&h, std::io::repeat(b'1').take(MAX_PAX + 1))
        .expect("append");
    let err = rejected(&builder.into_inner().expect("finish"));
    assert!(matches!(err, LayerError::HeaderTooLarge { .. }), "{err}");
}

#[test]
fn pax_paths_are_checked_like_any_other() {
    let record = b"23 path=../../pax-evil\n";
    let mut builder = tar::Builder::new(Vec::new());
    let h = header(b"pax", EntryType::XHeader, record.len() as u64, b"", 0o644);
    builder.append(&h, &record[..]).expect("append");
    let h = header(b"innocent", EntryType::Regular, 1, b"", 0o644);
    builder.append(&h, &b"x"[..]).expect("append");
    let err = rejected(&builder.into_inner().expect("finish"));
    assert!(
        matches!(err, LayerError::Traversal(ref p) if p == "../../pax-evil"),
        "{err}"
    );
}

#[test]
fn garbage_and_truncated_streams_are_clear_errors() {
    let err = rejected(b"this is not a tar stream at all, but it is long enough to be read as a header block..........................................................................................................................................................................................................................................................................................................................................................................................................................................................................");
    assert!(matches!(err, LayerError::Read(_)), "{err}");
    let layer = tar_of(&[file(b"a", &[7u8; 10_000])]);
    let err = rejected(&layer[..3000]);
    assert!(matches!(err, LayerError::Read(_)), "{err}");
}

#[test]
fn whiteouts_become_what_overlayfs_reads() {
    let layer = tar_of(&[
        dir(b"etc"),
        file(b"etc/.wh.removed", b""),
        dir(b"var"),
        file(b"var/.wh..wh..opq", b""),
    ]);
    let s = Scratch::new();
    let report = s
        .unpack(&layer, &UnpackOptions::default())
        .expect("unpacks");
    assert_eq!(report.whiteouts, 2);
    let marker = s
        .dest()
        .join("etc/removed")
        .symlink_metadata()
        .expect("whiteout");
    assert!(marker.file_type().is_char_device());
    assert_eq!(marker.rdev(), 0);
    assert_eq!(
        xattr::get(s.dest().join("var"), "trusted.overlay.opaque").expect("xattr"),
        Some(b"y".to_vec())
    );
    assert!(!s.dest().join("var/.wh..wh..opq").exists());
}

#[test]
fn an_existing_destination_is_not_touched() {
    let s = Scratch::new();
    fs::create_dir(s.dest()).expect("mkdir");
    fs::write(s.dest().join("keep"), b"k").expect("write");
    let err = s
        .unpack(
            &tar_of(&[file(b"keep", b"overwritten")]),
            &UnpackOptions::default(),
        )
        .expect_err("refused");
    assert!(matches!(err, LayerError::Exists(_)));
    assert_eq!(fs::read(s.dest().join("keep")).expect("read"), b"k");
}

/// A pax extended header with these records, to precede the next entry.
fn pax_header(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (key, value) in records {
        let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = body_len + body_len.to_string().len();
        if (len).to_string().len() != body_len.to_string().len() {
            len += 1;
        }
        data.extend_from_slice(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let h = header(b"pax", EntryType::XHeader, data.len() as u64, b"", 0o644);
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(&data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// The blocks of one entry (header and padded data), with an owner and a time.
fn entry_with(raw: &Raw<'_>, uid: u64, gid: u64, mtime: u64) -> Vec<u8> {
    let mut h = header(
        raw.name,
        raw.kind,
        raw.data.len() as u64,
        raw.link,
        raw.mode,
    );
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(mtime);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(raw.data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn mode_of(path: &Path) -> u32 {
    path.symlink_metadata().expect("meta").permissions().mode() & 0o7777
}

/// A host file and directory outside the snapshot, to aim hostile layers at.
struct Outside {
    dir: tempfile::TempDir,
}

impl Outside {
    fn new() -> Outside {
        let dir = tempfile::tempdir().expect("outside");
        fs::write(dir.path().join("host-file"), b"host").expect("write");
        fs::set_permissions(
            dir.path().join("host-file"),
            fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        fs::create_dir(dir.path().join("host-dir")).expect("mkdir");
        fs::set_permissions(
            dir.path().join("host-dir"),
            fs::Permissions::from_mode(0o750),
        )
        .expect("chmod");
        fs::create_dir(dir.path().join("host-dir/sub")).expect("mkdir");
        fs::set_permissions(
            dir.path().join("host-dir/sub"),
            fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        Outside { dir }
    }

    fn path(&self, name: &str) -> Vec<u8> {
        self.dir
            .path()
            .join(name)
            .into_os_string()
            .into_encoded_bytes()
    }

    fn assert_untouched(&self) {
        assert_eq!(
            mode_of(&self.dir.path().join("host-file")),
            0o644,
            "host file's mode changed"
        );
        assert_eq!(
            fs::read(self.dir.path().join("host-file")).expect("read"),
            b"host"
        );
        assert_eq!(
            mode_of(&self.dir.path().join("host-dir")),
            0o750,
            "host dir's mode changed"
        );
        assert_eq!(
            mode_of(&self.dir.path().join("host-dir/sub")),
            0o755,
            "host sub's mode changed"
        );
        let inside: Vec<_> = fs::read_dir(self.dir.path().join("host-dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(inside, ["sub"], "something was created in the host dir");
    }
}

#[test]
fn a_directory_replaced_by_a_symlink_does_not_lend_its_mode_to_the_target() {
    let outside = Outside::new();
    let target = outside.path("host-file");
    let layer = tar_of(&[
        Raw {
            mode: 0o4777,
            ..dir(b"d")
        },
        symlink(b"d", &target),
    ]);
    let s = Scratch::new();
    s.unpack(&layer, &UnpackOptions::default())
        .expect("unpacks");
    outside.assert_untouched();
    assert!(s
        .dest()
        .join("d")
        .symlink_metadata()
        .expect("d")
        .file_type()
        .is_symlink());
}

#[test]
fn a_parent_replaced_by_a_symlink_does_not_lend_its_children_modes_to_the_target() {
    let outside = Outside::new();
    let target = outside.path("host-dir");
    let layer = tar_of(&[
        Raw {
            mode: 0o777,
            ..dir(b"p")
        },
        Raw {
            mode: 0o4777,
            ..dir(b"p/sub")
        },
        symlink(b"p", &target),
    ]);
    let s = Scratch::new();
    s.unpack(&layer, &UnpackOptions::default())
        .expect("unpacks");
    outside.assert_untouched();
}

#[test]
fn whiteouts_of_nothing_dot_or_dotdot_are_invalid_and_remove_nothing() {
    for name in [
        &b".wh..."[..],
        b".wh..",
        b".wh.",
        b"sub/.wh.",
        b"sub/.wh...",
        b"a/b/.wh..",
    ] {
        let s = Scratch::new();
        let sibling = s.dir.path().join("other-snapshot");
        fs::create_dir(&sibling).expect("mkdir");
        fs::write(sibling.join("bin"), b"keep").expect("write");
        let err = s
            .unpack(
                &tar_of(&[dir(b"sub"), file(name, b"")]),
                &UnpackOptions::default(),
            )
            .expect_err("invalid whiteout accepted");
        assert!(matches!(err, LayerError::Invalid { .. }), "{name:?}: {err}");
        assert_eq!(
            fs::read(sibling.join("bin")).expect("sibling survives"),
            b"keep"
        );
        fs::remove_dir_all(&sibling).expect("rm");
        s.assert_nothing_left();
    }
}

#[test]
fn a_hardlink_cannot_carry_a_directory_s_setuid_mode_to_a_file() {
    let layer = tar_of(&[
        Raw {
            mode: 0o755,
            ..file(b"a", b"#!/bin/sh")
        },
        Raw {
            mode: 0o6755,
            ..dir(b"d")
        },
        hardlink(b"d", b"a"),
    ]);
    let s = Scratch::new();
    s.unpack(&layer, &UnpackOptions::default())
        .expect("unpacks");
    assert_eq!(mode_of(&s.dest().join("a")), 0o755);
    assert_eq!(mode_of(&s.dest().join("d")), 0o755);
}

#[test]
fn a_pax_size_decides_where_the_next_header_is() {
    // A pax size of 1024 for an entry whose own header says 0: the 1024 bytes are the
    // file's content, although they look like the header of another file. A reader that
    // ignores the pax size (as the tar crate's raw mode does) unpacks that hidden file.
    let hidden = entry_with(&file(b"hidden", b"surprise"), 0, 0, 0);
    let mut content = hidden.clone();
    content.resize(1024, 0);
    let mut layer = pax_header(&[("size", b"1024")]);
    let mut h = header(b"visible", EntryType::Regular, 0, b"", 0o644);
    h.set_cksum();
    layer.extend_from_slice(h.as_bytes());
    layer.extend_from_slice(&content);
    layer.extend_from_slice(&[0; 1024]);
    let s = Scratch::new();
    let report = s
        .unpack(&layer, &UnpackOptions::default())
        .expect("unpacks");
    assert_eq!(
        fs::read(s.dest().join("visible")).expect("visible"),
        content
    );
    assert!(
        !s.dest().join("hidden").exists(),
        "read a header where the data was"
    );
    assert_eq!(report.entries, 1);
}

#[test]
fn owners_times_and_xattrs_come_out_as_the_layer_says() {
    let mut layer = Vec::new();
    layer.extend(entry_with(
        &Raw {
            mode: 0o2750,
            ..dir(b"data")
        },
        999,
        998,
        1_000_000_000,
    ));
    layer.extend(pax_header(&[
        ("mtime", b"1234567890.123456789"),
        ("SCHILY.xattr.user.origin", b"berth"),
        ("uid", b"100000"),
    ]));
    layer.extend(entry_with(&file(b"data/db", b"rows"), 0, 70, 0));
    layer.extend(entry_with(
        &symlink(b"data/current", b"db"),
        33,
        33,
        1_500_000_000,
    ));
    layer.extend(entry_with(&hardlink(b"data/db.link", b"data/db"), 0, 0, 0));
    layer.extend_from_slice(&[0; 1024]);
    let s = Scratch::new();
    s.unpack(&layer, &UnpackOptions::default())
        .expect("unpacks");
    let root = s.dest();
    let data = root.join("data").symlink_metadata().expect("data");
    assert_eq!(
        (data.uid(), data.gid(), data.mode() & 0o7777),
        (999, 998, 0o2750)
    );
    assert_eq!(
        data.mtime(),
        1_000_000_000,
        "entries inside do not move the dir's mtime"
    );
    let db = root.join("data/db").symlink_metadata().expect("db");
    assert_eq!((db.uid(), db.gid()), (100_000, 70));
    assert_eq!((db.mtime(), db.mtime_nsec()), (1_234_567_890, 123_456_789));
    assert_eq!(db.nlink(), 2);
    assert_eq!(
        xattr::get(root.join("data/db"), "user.origin").expect("xattr"),
        Some(b"berth".to_vec())
    );
    let link = root.join("data/current").symlink_metadata().expect("link");
    assert_eq!(
        (link.uid(), link.gid(), link.mtime()),
        (33, 33, 1_500_000_000)
    );
}

#[test]
fn overlayfs_xattrs_are_refused_and_file_capabilities_dropped_unless_kept() {
    let mut layer = pax_header(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")]);
    layer.extend(entry_with(&dir(b"d"), 0, 0, 0));
    layer.extend_from_slice(&[0; 1024]);
    let err = rejected(&layer);
    assert!(matches!(err, LayerError::ForbiddenXattr { .. }), "{err}");

    let capability: &[u8] =
        b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let mut layer = pax_header(&[("SCHILY.xattr.security.capability", capability)]);
    layer.extend(entry_with(&file(b"ping", b"elf"), 0, 0, 0));
    layer.extend_from_slice(&[0; 1024]);
    let s = Scratch::new();
    let report = s
        .unpack(&layer, &UnpackOptions::default())
        .expect("unpacks");
    assert_eq!(report.setid_dropped, 1);
    assert_eq!(
        xattr::get(s.dest().join("ping"), "security.capability").expect("get"),
        None
    );
    let s = Scratch::new();
    s.unpack(
        &layer,
        &UnpackOptions {
            keep_setid: true,
            ..UnpackOptions::default()
        },
    )
    .expect("unpacks");
    assert_eq!(
        xattr::get(s.dest().join("ping"), "security.capability")
            .expect("get")
            .as_deref(),
        Some(capability)
    );
}

#[test]
fn aufs_metadata_is_skipped_and_whiteouts_replace_what_the_layer_made() {
    let layer = tar_of(&[
        dir(b".wh..wh.plnk"),
        dir(b"gone"),
        Raw {
            mode: 0o4777,
            ..dir(b"gone/sub")
        },
        file(b".wh.gone", b""),
    ]);
    let s = Scratch::new();
    let report = s
        .unpack(&layer, &UnpackOptions::default())
        .expect("unpacks");
    assert!(!s.dest().join(".wh..wh.plnk").exists());
    let gone = s.dest().join("gone").symlink_metadata().expect("whiteout");
    assert!(gone.file_type().is_char_device());
    assert_eq!(report.whiteouts, 1);
}

#[test]
fn a_directory_that_comes_back_takes_its_last_mode() {
    let layer = tar_of(&[
        Raw {
            mode: 0o4777,
            ..dir(b"d")
        },
        file(b"d", b"now a file"),
        Raw {
            mode: 0o700,
            ..dir(b"d")
        },
        Raw {
            mode: 0o711,
            ..dir(b"e")
        },
        Raw {
            mode: 0o750,
            ..dir(b"e")
        },
    ]);
    let s = Scratch::new();
    s.unpack(&layer, &UnpackOptions::default())
        .expect("unpacks");
    assert_eq!(mode_of(&s.dest().join("d")), 0o700);
    assert_eq!(mode_of(&s.dest().join("e")), 0o750);
}
