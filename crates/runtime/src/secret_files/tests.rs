#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;

use super::*;

fn file(name: &str, destination: &str, value: &[u8]) -> SecretFile {
    SecretFile {
        name: name.into(),
        destination: destination.into(),
        value: Zeroizing::new(value.to_vec()),
    }
}

/// The mount table entry for `dir`: (filesystem type, mount options).
fn mount_of(dir: &Path) -> Option<(String, String)> {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        (fields[4] == dir).then(|| (fields[separator + 1].to_owned(), fields[5].to_owned()))
    })
}

#[test]
fn secret_files_live_on_a_private_tmpfs_and_go_away_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("container").join(SECRETS_DIR);
    let files = SecretFiles(vec![
        file("DB_PASSWORD", "/run/secrets/db", b"hunter2"),
        file("CERT", "/etc/tls/cert.pem", &[0xff, 0x00, 0x01]),
        // The same secret at a second path is one file on the tmpfs.
        file("CERT", "/etc/other/cert.pem", &[0xff, 0x00, 0x01]),
    ]);
    files.check().unwrap();
    mount_files(&secrets, &files, (1000, 1000)).expect("mount (needs root)");
    let (fstype, options) = mount_of(&secrets).expect("a mount at the secrets dir");
    assert_eq!(fstype, "tmpfs");
    for flag in ["nosuid", "nodev", "noexec"] {
        assert!(options.split(',').any(|o| o == flag), "{options}");
    }
    let meta = fs::metadata(&secrets).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "the directory stays root's"
    );
    for f in &files.0 {
        let path = secrets.join(&f.name);
        assert_eq!(fs::read(&path).unwrap(), *f.value);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o400);
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    }

    // A crash leaves the mount behind: mounting again replaces it instead of stacking.
    let again = SecretFiles(vec![file("B", "/run/secrets/b", b"two")]);
    mount_files(&secrets, &again, (0, 0)).unwrap();
    assert!(!secrets.join("DB_PASSWORD").exists());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let at = secrets.to_str().unwrap();
    assert_eq!(
        mounts
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(at))
            .count(),
        1
    );

    unmount_files(&secrets).unwrap();
    assert_eq!(mount_of(&secrets), None);
    assert!(!secrets.exists());
    // Nothing mounted, nothing there: fine.
    unmount_files(&secrets).unwrap();
}

#[test]
fn bad_names_and_paths_are_refused_and_values_never_printed() {
    for bad in [
        file("../escape", "/run/secrets/x", b"x"),
        file("X", "run/secrets/x", b"x"),
        file("X", "/run/../etc/passwd", b"x"),
        file("X", "/", b"x"),
    ] {
        let files = SecretFiles(vec![bad]);
        assert!(files.check().is_err(), "{files:?}");
    }
    let twice = SecretFiles(vec![file("A", "/s/a", b"1"), file("B", "/s/a", b"2")]);
    assert!(twice.check().is_err());
    let shown = format!(
        "{:?}",
        SecretFiles(vec![file("TOKEN", "/run/secrets/t", b"hunter2")])
    );
    assert_eq!(shown, r#"{"TOKEN": "/run/secrets/t"}"#);
}
