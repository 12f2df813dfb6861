//! A busybox image FROM scratch, assembled here layer by layer and pushed with the
//! distribution API: the test image for berth's node runtime (no podman needed, so these
//! tests can run in parallel).

use std::io::Write;

use crate::api::{sha256_digest, Client};

/// Where Debian's busybox-static puts its binary.
const BUSYBOX: &str = "/bin/busybox";

/// Applets linked into the image's /bin.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "true", "false", "sleep", "env", "id", "dd", "httpd", "nc", "wget",
    "ping", "kill", "ps", "hostname", "mkdir", "rm", "touch", "ip", "head", "seq", "grep", "mount",
    "date", "cut", "uname", "tail", "wc", "test", "[",
];

/// The image: what to push and how to name it.
#[derive(Debug, Clone)]
pub struct BusyboxImage {
    /// `host:port/repo:tag`.
    pub reference: String,
    /// The manifest's digest.
    pub digest: String,
}

/// A gzipped tar layer and its uncompressed digest (the config's diff id): `/bin/busybox`, applet symlinks, `/etc/passwd` and `/etc/group`
/// with a non-root user, `/www/index.html`, and `/tmp`.
pub fn busybox_layer() -> (Vec<u8>, String) {
    let busybox = std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("reading {BUSYBOX} ({e}): apt-get install busybox-static"));
    let mut builder = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, path, std::io::empty())
            .expect("tar dir");
    };
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).expect("tar file");
    };
    for (path, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("www", 0o755),
    ] {
        dir(&mut builder, path, mode);
    }
    file(&mut builder, "bin/busybox", 0o755, &busybox);
    for applet in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        builder
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("tar symlink");
    }
    file(
        &mut builder,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/tmp:/bin/sh\n",
    );
    file(
        &mut builder,
        "etc/group",
        0o644,
        b"root:x:0:\napp:x:1000:\n",
    );
    file(&mut builder, "www/index.html", 0o644, b"hello from berth\n");
    let tar = builder.into_inner().expect("finishing the tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    (gz.finish().expect("gzip"), sha256_digest(&tar))
}

/// Pushes the busybox image to `registry` (a base URL like `http://127.0.0.1:PORT`) as
/// `repo:tag`, with `cmd` as its CMD.
#[track_caller]
pub fn push_busybox_image(registry: &str, repo: &str, tag: &str, cmd: &[&str]) -> BusyboxImage {
    push_image(registry, repo, tag, &[busybox_layer()], cmd)
}

/// A gzipped tar layer with one regular file at `path`, written as is (no path checks: for
/// hostile layers), and its diff id.
pub fn raw_layer(path: &str, content: &[u8]) -> (Vec<u8>, String) {
    raw_layer_mode(path, content, 0o644)
}

/// [`raw_layer`] with the file's `mode` (0o755 for a script).
pub fn raw_layer_mode(path: &str, content: &[u8], mode: u32) -> (Vec<u8>, String) {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(mode);
    header.set_size(content.len() as u64);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, content).expect("tar entry");
    let tar = builder.into_inner().expect("finishing the tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    (gz.finish().expect("gzip"), sha256_digest(&tar))
}

/// Pushes an image of `layers` (gzipped tars with their diff ids, bottom first) as
/// `repo:tag` with `cmd` as its CMD.
#[track_caller]
pub fn push_image(
    registry: &str,
    repo: &str,
    tag: &str,
    layers: &[(Vec<u8>, String)],
    cmd: &[&str],
) -> BusyboxImage {
    let client = Client::new(registry);
    let descriptors: Vec<serde_json::Value> = layers
        .iter()
        .map(|(layer, _)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": client.push_blob(repo, layer),
                "size": layer.len(),
            })
        })
        .collect();
    let diff_ids: Vec<&String> = layers.iter().map(|(_, id)| id).collect();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Cmd": cmd,
            "Env": ["PATH=/bin", "IMAGE_VAR=from-image"],
            "WorkingDir": "/",
            "ExposedPorts": {"80/tcp": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).expect("config json");
    let config_digest = client.push_blob(repo, &config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": descriptors,
    });
    let manifest = serde_json::to_vec(&manifest).expect("manifest json");
    let response = client.put_manifest(
        repo,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    );
    assert_eq!(response.status().as_u16(), 201, "pushing the manifest");
    let host = crate::api::registry_host(registry);
    BusyboxImage {
        reference: format!("{host}/{repo}:{tag}"),
        digest: sha256_digest(&manifest),
    }
}
