//! The images the node benchmarks run and pull, built here and pushed with the distribution
//! API: busybox-static FROM scratch for starts, and the same plus a few large gzip layers of
//! text-like files for pulls. The content is generated from fixed seeds, so every run pulls
//! the same bytes.

use std::io::Write as _;

use anyhow::{bail, Context as _};
use berth_oci::Digest;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use reqwest::Client;
use serde_json::json;

use crate::registry::blobs::{self, Blob, PushMode};

/// Where Debian's busybox-static puts its binary.
const BUSYBOX: &str = "/bin/busybox";

/// Applets linked into the image's /bin.
const APPLETS: &[&str] = &["sh", "sleep", "true", "cat", "ls", "echo", "ip", "id"];

/// Distinct words the generated text is made of: few enough that gzip finds repeats,
/// random enough that it does not find many.
const VOCABULARY: usize = 8192;

/// One layer: its compressed blob and how big it is unpacked.
pub struct Layer {
    blob: Blob,
    /// sha256 of the uncompressed tar (the config's diff id).
    diff_id: Digest,
    /// Length of the uncompressed tar.
    pub tar_len: usize,
}

/// An image pushed to a registry.
pub struct Pushed {
    /// `host:port/repo:tag`.
    pub reference: String,
    /// Bytes of all layers' tars, uncompressed.
    pub unpacked_bytes: usize,
    /// Bytes of all layer blobs, compressed.
    pub compressed_bytes: usize,
    /// Layers, busybox's included.
    pub layers: usize,
}

/// busybox-static as `/bin/busybox` with applet symlinks, `/etc/passwd`, `/etc/group` and
/// `/tmp`.
pub fn busybox_layer() -> anyhow::Result<Layer> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (scripts/install-deps.sh installs it)"))?;
    let mut tar = tar::Builder::new(Vec::new());
    for (path, mode) in [("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777)] {
        append_dir(&mut tar, path, mode)?;
    }
    append_file(&mut tar, "bin/busybox", 0o755, &busybox)?;
    for applet in APPLETS {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        tar.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
    }
    append_file(
        &mut tar,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n",
    )?;
    append_file(&mut tar, "etc/group", 0o644, b"root:x:0:\n")?;
    gzip_layer(tar.into_inner()?)
}

/// Layer `index` of the pull image: files of text-like content under `/data/<index>/`,
/// `mib` MiB in all, sizes from 4 KiB to 4 MiB, everything from a seed of `index`.
pub fn text_layer(index: usize, mib: usize) -> anyhow::Result<Layer> {
    let mut rng = StdRng::seed_from_u64(index as u64);
    let words: Vec<String> = (0..VOCABULARY)
        .map(|_| {
            let len = rng.random_range(2..=11);
            (0..len)
                .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                .collect()
        })
        .collect();
    let mut tar = tar::Builder::new(Vec::with_capacity((mib << 20) + (1 << 20)));
    append_dir(&mut tar, "data", 0o755)?;
    let dir = format!("data/{index}");
    append_dir(&mut tar, &dir, 0o755)?;
    let mut left = mib << 20;
    let mut file = 0;
    while left > 0 {
        let len = rng.random_range(4 << 10..=4 << 20).min(left);
        let mut content = String::with_capacity(len + 16);
        while content.len() < len {
            content.push_str(&words[rng.random_range(0..VOCABULARY)]);
            content.push(if rng.random_ratio(1, 12) { '\n' } else { ' ' });
        }
        content.truncate(len);
        append_file(
            &mut tar,
            &format!("{dir}/file-{file:04}.txt"),
            0o644,
            content.as_bytes(),
        )?;
        left -= len;
        file += 1;
    }
    gzip_layer(tar.into_inner()?)
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(mode);
    header.set_size(0);
    tar.append_data(&mut header, path, std::io::empty())?;
    Ok(())
}

fn append_file(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    tar.append_data(&mut header, path, data)?;
    Ok(())
}

fn gzip_layer(tar: Vec<u8>) -> anyhow::Result<Layer> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar)?;
    let data = gz.finish()?;
    Ok(Layer {
        blob: Blob {
            digest: Digest::sha256(&data),
            data: Bytes::from(data),
        },
        diff_id: Digest::sha256(&tar),
        tar_len: tar.len(),
    })
}

/// Pushes `layers` (bottom first) as `repo:tag` to the registry at `base`
/// (`http://host:port`), with `sh` as the command.
pub async fn push(
    client: &Client,
    base: &str,
    repo: &str,
    tag: &str,
    layers: &[Layer],
) -> anyhow::Result<Pushed> {
    for layer in layers {
        blobs::push(client, base, repo, &layer.blob, PushMode::PostPut)
            .await
            .with_context(|| format!("pushing layer {}", layer.blob.digest))?;
    }
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = json!({
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        },
    });
    let config = serde_json::to_vec(&config)?;
    let config = Blob {
        digest: Digest::sha256(&config),
        data: Bytes::from(config),
    };
    blobs::push(client, base, repo, &config, PushMode::PostPut)
        .await
        .context("pushing the image config")?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.digest.to_string(),
            "size": config.data.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": l.blob.digest.to_string(),
            "size": l.blob.data.len(),
        })).collect::<Vec<_>>(),
    });
    let response = client
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest)?)
        .send()
        .await?;
    if response.status() != reqwest::StatusCode::CREATED {
        bail!(
            "pushing the manifest of {repo}:{tag}: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    let host = base.split_once("://").map_or(base, |(_, host)| host);
    Ok(Pushed {
        reference: format!("{host}/{repo}:{tag}"),
        unpacked_bytes: layers.iter().map(|l| l.tar_len).sum(),
        compressed_bytes: layers.iter().map(|l| l.blob.data.len()).sum(),
        layers: layers.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_layers_are_the_same_every_time_and_compress_somewhat() -> anyhow::Result<()> {
        let a = text_layer(3, 2)?;
        let b = text_layer(3, 2)?;
        assert_eq!(a.blob.digest, b.blob.digest);
        assert_ne!(a.blob.digest, text_layer(4, 2)?.blob.digest);
        assert!(a.tar_len >= 2 << 20);
        let ratio = a.tar_len as f64 / a.blob.data.len() as f64;
        assert!((1.3..6.0).contains(&ratio), "compression ratio {ratio}");
        Ok(())
    }
}
