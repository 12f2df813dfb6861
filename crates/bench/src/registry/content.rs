//! The content both registries get: random small blobs in memory, random large blobs in
//! files, and an OCI image layout (busybox-static FROM scratch plus random layers).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use berth_oci::{Algorithm, Digest, Hasher};
use bytes::Bytes;
use rand::{Rng as _, RngCore as _};

use super::blobs::Blob;

/// `count` blobs of random content, sizes spread evenly over `min_kib..=max_kib` KiB.
pub fn small_blobs(count: usize, min_kib: usize, max_kib: usize) -> Vec<Blob> {
    let mut rng = rand::rng();
    (0..count)
        .map(|_| {
            let mut data = vec![0; rng.random_range(min_kib * 1024..=max_kib * 1024)];
            rng.fill_bytes(&mut data);
            Blob {
                digest: Digest::sha256(&data),
                data: Bytes::from(data),
            }
        })
        .collect()
}

/// A blob kept in a file, too big to hold many of in memory.
pub struct FileBlob {
    /// Where the content is.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: usize,
    /// Its sha256.
    pub digest: Digest,
}

/// `count` files of `mib` MiB of random content each, under `dir`.
pub async fn large_blobs(dir: &Path, count: usize, mib: usize) -> anyhow::Result<Vec<FileBlob>> {
    let mut blobs = Vec::with_capacity(count);
    for i in 0..count {
        let path = dir.join(format!("large-{i}"));
        let len = mib << 20;
        let digest = write_random_file(path.clone(), len).await?;
        blobs.push(FileBlob { path, len, digest });
    }
    Ok(blobs)
}

/// Writes `len` random bytes to `path` a chunk at a time and returns their sha256.
async fn write_random_file(path: PathBuf, len: usize) -> anyhow::Result<Digest> {
    tokio::task::spawn_blocking(move || {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        let mut hasher = Hasher::new(Algorithm::Sha256);
        let mut rng = rand::rng();
        let mut chunk = vec![0; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            rng.fill_bytes(&mut chunk[..n]);
            hasher.update(&chunk[..n]);
            file.write_all(&chunk[..n])?;
            left -= n;
        }
        file.flush()?;
        Ok(hasher.finish())
    })
    .await?
}

/// An OCI image layout on disk and the tag of the image in it.
pub struct Layout {
    /// The layout directory.
    pub dir: PathBuf,
    /// The image's tag in the layout.
    pub tag: &'static str,
}

impl Layout {
    /// The image as a skopeo reference, `oci:DIR:TAG`.
    pub fn reference(&self) -> String {
        format!("oci:{}:{}", self.dir.display(), self.tag)
    }
}

/// Builds a layout under `work` with umoci: busybox-static as `/bin/busybox` in the first
/// layer, then `layers` layers of one random file each, `random_mib` MiB in all.
pub async fn image_layout(work: &Path, random_mib: usize, layers: usize) -> anyhow::Result<Layout> {
    let layout = Layout {
        dir: work.join("layout"),
        tag: "img",
    };
    let image = format!("{}:{}", layout.dir.display(), layout.tag);
    umoci(&["init", "--layout", &path_str(&layout.dir)?]).await?;
    umoci(&["new", "--image", &image]).await?;
    umoci(&["insert", "--image", &image, "/bin/busybox", "/bin/busybox"]).await?;
    umoci(&[
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/bin/busybox",
        "--config.cmd",
        "sh",
    ])
    .await?;
    let layers = layers.max(1);
    for layer in 0..layers {
        let source = work.join(format!("layer-{layer}"));
        write_random_file(source.clone(), (random_mib << 20) / layers).await?;
        let target = format!("/data/random-{layer}");
        umoci(&["insert", "--image", &image, &path_str(&source)?, &target]).await?;
        tokio::fs::remove_file(&source).await?;
    }
    Ok(layout)
}

async fn umoci(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("umoci")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("running umoci (scripts/install-deps.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "umoci {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn path_str(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_blobs_stay_within_their_sizes() {
        let blobs = small_blobs(50, 4, 8);
        assert_eq!(blobs.len(), 50);
        for blob in &blobs {
            assert!((4096..=8192).contains(&blob.data.len()));
            assert_eq!(blob.digest, Digest::sha256(&blob.data));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn random_files_hash_to_their_content() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        let digest = write_random_file(path.clone(), (3 << 20) + 17).await?;
        let content = std::fs::read(&path)?;
        assert_eq!(content.len(), (3 << 20) + 17);
        assert_eq!(digest, Digest::sha256(&content));
        Ok(())
    }
}
