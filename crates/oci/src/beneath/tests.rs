use std::fs;
use std::os::unix::fs::symlink;

use super::*;

/// A tree (as an image would leave it) beside a host directory it must never reach.
struct Trees {
    _dir: tempfile::TempDir,
    tree: std::path::PathBuf,
    host: std::path::PathBuf,
}

impl Trees {
    fn new() -> Trees {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        let host = dir.path().join("host");
        fs::create_dir_all(tree.join("etc")).expect("mkdir");
        fs::create_dir_all(&host).expect("mkdir");
        fs::write(host.join("shadow"), b"host secret").expect("write");
        fs::write(tree.join("etc/shadow"), b"image shadow").expect("write");
        Trees {
            _dir: dir,
            tree,
            host,
        }
    }

    fn handle(&self) -> OwnedFd {
        rustix::fs::open(&self.tree, DIR_FLAGS, Mode::empty()).expect("open tree")
    }
}

#[test]
fn reading_in_root_follows_links_as_the_container_would() {
    let t = Trees::new();
    // Absolute: resolves against the tree, not the host.
    symlink("/etc/shadow", t.tree.join("etc/passwd")).expect("symlink");
    assert_eq!(
        read_in_root(&t.tree, "etc/passwd", 1024).expect("read"),
        b"image shadow"
    );
    // Climbing: `..` stops at the tree's root.
    let host_shadow = format!("../../../../..{}", t.host.join("shadow").display());
    symlink(&host_shadow, t.tree.join("etc/group")).expect("symlink");
    let err = read_in_root(&t.tree, "etc/group", 1024).expect_err("host file read");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    // A directory on the way that is a link to the host is the tree's, too.
    fs::remove_dir_all(t.tree.join("etc")).expect("rm");
    symlink(&t.host, t.tree.join("etc")).expect("symlink");
    let err = read_in_root(&t.tree, "etc/shadow", 1024).expect_err("host file read");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
}

#[test]
fn reading_in_root_takes_only_small_regular_files() {
    let t = Trees::new();
    fs::write(t.tree.join("etc/big"), vec![b'x'; 2048]).expect("write");
    let err = read_in_root(&t.tree, "etc/big", 1024).expect_err("too big");
    assert!(err.to_string().contains("larger than 1024"), "{err}");
    assert_eq!(
        read_in_root(&t.tree, "etc/big", 2048).expect("fits").len(),
        2048
    );
    let err = read_in_root(&t.tree, "etc", 1024).expect_err("a directory");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        t.tree.join("etc/fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    // A FIFO would block a plain open forever.
    let err = read_in_root(&t.tree, "etc/fifo", 1024).expect_err("a fifo");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn opening_a_directory_never_follows_a_symlink() {
    let t = Trees::new();
    symlink(&t.host, t.tree.join("escape")).expect("symlink");
    symlink("etc", t.tree.join("inside")).expect("symlink");
    fs::write(t.tree.join("file"), b"").expect("write");
    let tree = t.handle();
    for (path, create) in [
        (&["escape"][..], false),
        (&["escape", "new"], true),
        (&["inside"], false),
    ] {
        let err = open_dir(tree.as_fd(), path, create).expect_err("followed a symlink");
        assert!(matches!(err, WalkError::Symlink(0)), "{path:?}: {err:?}");
    }
    assert!(matches!(
        open_dir(tree.as_fd(), &["file", "x"], true),
        Err(WalkError::NotADirectory(0))
    ));
    assert!(matches!(
        open_dir(tree.as_fd(), &["etc", "missing"], false),
        Err(WalkError::Missing(1))
    ));
    open_dir(tree.as_fd(), &["etc", "new", "deeper"], true).expect("created");
    assert!(t.tree.join("etc/new/deeper").is_dir());
    assert_eq!(
        fs::read_dir(&t.host).expect("list").count(),
        1,
        "created something on the host"
    );
}

#[test]
fn removing_a_tree_removes_links_not_what_they_point_at() {
    let t = Trees::new();
    let doomed = t.tree.join("doomed");
    fs::create_dir_all(doomed.join("a/b")).expect("mkdir");
    symlink(&t.host, doomed.join("a/to-host")).expect("symlink");
    symlink(t.host.join("shadow"), doomed.join("a/b/to-shadow")).expect("symlink");
    fs::write(doomed.join("a/b/file"), b"x").expect("write");
    fs::set_permissions(
        doomed.join("a"),
        std::os::unix::fs::PermissionsExt::from_mode(0o500),
    )
    .expect("chmod");
    let tree = t.handle();
    assert_eq!(
        remove(tree.as_fd(), b"doomed").expect("removed"),
        Some(FileType::Directory)
    );
    assert!(!doomed.exists());
    assert_eq!(
        fs::read(t.host.join("shadow")).expect("host file"),
        b"host secret"
    );
    assert_eq!(remove(tree.as_fd(), b"doomed").expect("nothing"), None);
    remove_tree(&t.tree).expect("whole tree");
    assert!(!t.tree.exists());
    assert!(t.host.join("shadow").exists());
}
