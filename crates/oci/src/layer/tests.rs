//! A corpus of hostile layers, built header by header (tar::Builder refuses to write most of
//! them), and the well-formed layers real images contain.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

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
