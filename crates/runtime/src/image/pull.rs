//! `pull`: resolve the manifest (picking this host's platform from an index), fetch and verify
//! the config, download, verify and unpack the layers a few at a time, then record the image.

use std::collections::HashSet;
use std::io::SeekFrom;
use std::path::Path;
use std::sync::Arc;

use berth_oci::layer::{self, LayerError, SpecialFiles, UnpackOptions};
use berth_oci::{Descriptor, Digest, Hasher, Manifest, ManifestKind};
use futures::StreamExt;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::client::RegistryClient;
use super::locks::{self, Held};
use super::reference::Reference;
use super::store::tree_size;
use super::{Image, ImageConfig, ImageError, ImageStore, LayerOutcome, PullOptions, PullProgress};
use crate::unix_now;

/// Config media types of container images (anything else is an artifact: a chart, a
/// signature, an SBOM).
const IMAGE_CONFIG_TYPES: [&str; 2] = [
    berth_oci::media_type::OCI_CONFIG,
    "application/vnd.docker.container.image.v1+json",
];

/// Largest manifest or config accepted, in bytes.
const MAX_METADATA: u64 = 8 << 20;

/// The architecture name OCI platforms use for this host.
pub(crate) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[derive(Deserialize)]
struct IndexWire {
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: Option<String>,
    digest: Digest,
    size: u64,
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
    variant: Option<String>,
}

/// Picks the linux/`architecture` entry of an index body; `Err` lists what it offers.
pub(crate) fn select_platform(body: &[u8], architecture: &str) -> Result<Descriptor, String> {
    let index: IndexWire = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut offered = Vec::new();
    for entry in &index.manifests {
        let Some(platform) = &entry.platform else {
            continue;
        };
        if platform.os == "linux" && platform.architecture == architecture {
            return Ok(Descriptor {
                media_type: entry.media_type.clone().unwrap_or_default(),
                digest: entry.digest.clone(),
                size: entry.size,
                artifact_type: None,
                annotations: None,
                urls: None,
            });
        }
        let variant = platform
            .variant
            .as_deref()
            .map(|v| format!("/{v}"))
            .unwrap_or_default();
        offered.push(format!(
            "{}/{}{variant}",
            platform.os, platform.architecture
        ));
    }
    if offered.is_empty() {
        offered.push("no platforms".to_owned());
    }
    Err(offered.join(", "))
}

pub(crate) async fn pull(
    store: &ImageStore,
    reference_str: &str,
    options: &PullOptions,
) -> Result<Image, ImageError> {
    let reference: Reference = reference_str.parse()?;
    let name = reference.to_string();
    let client = RegistryClient::new(&reference, options)?;
    let manifest_error = |message: String| ImageError::Manifest {
        reference: name.clone(),
        message,
    };

    let (mut id, mut body, media_type) = fetch_manifest(
        &client,
        &name,
        &reference.manifest_reference(),
        reference.digest.as_ref(),
    )
    .await?;
    let mut manifest =
        Manifest::parse(media_type.as_deref(), &body).map_err(|e| manifest_error(e.to_string()))?;
    if manifest.kind == ManifestKind::Index {
        let architecture = host_architecture();
        let chosen = select_platform(&body, architecture).map_err(|available| {
            ImageError::NoMatchingPlatform {
                reference: name.clone(),
                architecture: architecture.to_owned(),
                available,
            }
        })?;
        let child = chosen.digest.to_string();
        (id, body, _) = fetch_manifest(&client, &name, &child, Some(&chosen.digest)).await?;
        manifest = Manifest::parse(None, &body).map_err(|e| manifest_error(e.to_string()))?;
        if manifest.kind != ManifestKind::Image {
            return Err(manifest_error(format!(
                "the entry for linux/{architecture} ({child}) is itself an index"
            )));
        }
    }
    let Some((config, layers)) = manifest.blobs.split_first() else {
        return Err(manifest_error("it has no config".to_owned()));
    };
    if !IMAGE_CONFIG_TYPES.contains(&config.media_type.as_str()) {
        return Err(manifest_error(format!(
            "it is an artifact of type {:?}, not a container image; berth runs container images only",
            config.media_type
        )));
    }
    if let Some(odd) = layers.iter().find(|l| !l.media_type.contains("tar")) {
        return Err(manifest_error(format!(
            "layer {} has media type {:?}, which is not a filesystem layer; berth runs container images only",
            odd.digest, odd.media_type
        )));
    }

    let config_blob = fetch_config(&client, config).await?;
    let image_config = ImageConfig::parse(&config_blob).map_err(|source| ImageError::Config {
        digest: config.digest.clone(),
        source,
    })?;
    let progress = options.progress.clone();
    if let Some(progress) = &progress {
        let sizes: Vec<(Digest, u64)> = layers.iter().map(|l| (l.digest.clone(), l.size)).collect();
        progress.resolved(&name, &id, &sizes);
    }

    let client = Arc::new(client);
    let mut seen = HashSet::new();
    let unique_layers: Vec<Descriptor> = layers
        .iter()
        .filter(|l| seen.insert(l.digest.clone()))
        .cloned()
        .collect();
    let results: Vec<Result<EnsuredLayer, (Digest, ImageError)>> =
        futures::stream::iter(unique_layers.into_iter().map(|layer| {
            let store = store.clone();
            let client = client.clone();
            let progress = progress.clone();
            async move {
                let digest = layer.digest.clone();
                ensure_layer(&store, &client, &layer, options, progress.as_deref())
                    .await
                    .map_err(|e| (digest, e))
            }
        }))
        .buffer_unordered(options.parallel_layers.max(1))
        .collect()
        .await;

    let mut ensured = Vec::new();
    let mut first_error = None;
    for result in results {
        match result {
            Ok(layer) => ensured.push(layer),
            Err((digest, e)) => {
                tracing::warn!(%digest, error = %e, "layer failed");
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(error) = first_error {
        // Leave nothing behind: snapshots this pull unpacked that no image uses go again.
        let fresh: Vec<Digest> = ensured
            .iter()
            .filter(|l| l.outcome == LayerOutcome::Pulled)
            .map(|l| l.digest.clone())
            .collect();
        drop(ensured);
        let store = store.clone();
        let _ =
            tokio::task::spawn_blocking(move || store.remove_unused_snapshots(Some(&fresh))).await;
        return Err(error);
    }

    let sizes: Vec<u64> = layers
        .iter()
        .map(|l| {
            ensured
                .iter()
                .find(|e| e.digest == l.digest)
                .map(|e| e.size)
                .unwrap_or_default()
        })
        .collect();
    let record = Image {
        id,
        references: vec![name.clone()],
        config_digest: config.digest.clone(),
        config: image_config,
        layers: layers.iter().map(|l| l.digest.clone()).collect(),
        size: sizes.iter().sum(),
        layer_sizes: sizes,
        created: unix_now(),
        last_used: 0,
        pinned: false,
    };
    let committing = store.clone();
    let image = tokio::task::spawn_blocking(move || commit(&committing, record))
        .await
        .map_err(|e| ImageError::Internal(format!("recording the image: {e}")))??;
    // The use locks protected the snapshots until the image was recorded.
    drop(ensured);
    tracing::debug!(reference = %name, id = %image.id, "image pulled");
    Ok(image)
}

/// Records `record` in the index: its reference moves to it from any other image.
fn commit(store: &ImageStore, record: Image) -> Result<Image, ImageError> {
    store.update_index(|index| {
        for reference in &record.references {
            for image in index.images.iter_mut() {
                image.references.retain(|r| r != reference);
            }
        }
        if let Some(existing) = index.images.iter_mut().find(|i| i.id == record.id) {
            for reference in record.references {
                if !existing.references.contains(&reference) {
                    existing.references.push(reference);
                }
            }
            return Ok(existing.clone());
        }
        index.images.push(record.clone());
        Ok(record)
    })
}

/// Reads at most `limit` bytes of a response body.
async fn read_limited(
    client: &RegistryClient,
    response: Response,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, ImageError> {
    let too_big = || ImageError::Registry {
        registry: client.registry().to_owned(),
        status: 200,
        what: what.to_owned(),
        message: format!("it is larger than {limit} bytes, which berth does not accept"),
    };
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| client.connection(&e))?;
        body.extend_from_slice(&chunk);
        if body.len() as u64 > limit {
            return Err(too_big());
        }
    }
    Ok(body)
}

/// GETs a manifest and verifies it: against `expected` when pulled by digest, else against
/// the registry's `Docker-Content-Digest`. Returns (digest, body, content type).
async fn fetch_manifest(
    client: &RegistryClient,
    name: &str,
    reference: &str,
    expected: Option<&Digest>,
) -> Result<(Digest, Vec<u8>, Option<String>), ImageError> {
    let response = client.manifest(reference).await?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Err(ImageError::NotFound(name.to_owned())),
        _ => {
            return Err(client
                .unexpected(response, format!("manifest {reference}"))
                .await)
        }
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let announced = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok());
    let body = read_limited(client, response, MAX_METADATA, "a manifest").await?;
    let expected = expected.cloned().or(announced);
    let digest = match expected {
        Some(expected) => {
            let actual = Digest::of(expected.algorithm(), &body);
            if actual != expected {
                return Err(ImageError::DigestMismatch {
                    what: "manifest",
                    expected,
                    actual: actual.to_string(),
                });
            }
            actual
        }
        None => Digest::sha256(&body),
    };
    Ok((digest, body, content_type))
}

async fn fetch_config(client: &RegistryClient, config: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let response = client.blob(&config.digest.to_string(), 0).await?;
    if response.status() != StatusCode::OK {
        return Err(client
            .unexpected(response, format!("config {}", config.digest))
            .await);
    }
    let body = read_limited(
        client,
        response,
        MAX_METADATA.min(config.size.max(1)),
        "the config",
    )
    .await?;
    let actual = Digest::of(config.digest.algorithm(), &body);
    if actual != config.digest {
        return Err(ImageError::DigestMismatch {
            what: "config",
            expected: config.digest.clone(),
            actual: actual.to_string(),
        });
    }
    Ok(body)
}

/// A layer whose snapshot exists; the shared use lock keeps it from being removed until the
/// image is recorded.
struct EnsuredLayer {
    digest: Digest,
    size: u64,
    outcome: LayerOutcome,
    _use_lock: Held,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Internal(format!("blocking task failed: {e}")))?
}

/// Makes sure the snapshot of `layer` exists: downloads, verifies and unpacks it unless some
/// image (or another pull) has it already.
async fn ensure_layer(
    store: &ImageStore,
    client: &RegistryClient,
    layer: &Descriptor,
    options: &PullOptions,
    progress: Option<&dyn PullProgress>,
) -> Result<EnsuredLayer, ImageError> {
    let digest = layer.digest.clone();
    let use_path = store.lock_path(&digest, "use");
    let use_lock = blocking(move || locks::shared(&use_path)).await?;
    let dir = store.snapshot_dir(&digest);
    let present = |use_lock| -> Result<EnsuredLayer, ImageError> {
        let size = known_size(store, &digest, &dir)?;
        if let Some(progress) = progress {
            progress.layer_done(&digest, LayerOutcome::AlreadyPresent);
        }
        Ok(EnsuredLayer {
            digest: digest.clone(),
            size,
            outcome: LayerOutcome::AlreadyPresent,
            _use_lock: use_lock,
        })
    };
    if dir.is_dir() {
        return present(use_lock);
    }
    let unpack_path = store.lock_path(&digest, "unpack");
    let unpack_lock = blocking(move || locks::exclusive(&unpack_path)).await?;
    if dir.is_dir() {
        return present(use_lock);
    }
    let download = store.download_path(&digest);
    download_blob(client, layer, &download, options, progress).await?;
    let (unpack_from, unpack_into) = (download.clone(), dir.clone());
    let unpacked = blocking(move || {
        let file =
            std::fs::File::open(&unpack_from).map_err(ImageError::io("opening", &unpack_from))?;
        let options = UnpackOptions {
            special_files: SpecialFiles::Skip,
            keep_setid: false,
        };
        Ok(layer::unpack(
            std::io::BufReader::new(file),
            &unpack_into,
            &options,
        ))
    })
    .await?;
    let size = match unpacked {
        Ok(report) => {
            tracing::debug!(%digest, entries = report.entries, bytes = report.bytes, skipped = report.skipped, "layer unpacked");
            report.bytes
        }
        // Another process got there first (it did not honour our lock, or it crashed after
        // the rename): the snapshot is complete, since it only ever appears by that rename.
        Err(LayerError::Exists(_)) if dir.is_dir() => known_size(store, &digest, &dir)?,
        Err(source) => {
            let _ = std::fs::remove_file(&download);
            return Err(ImageError::Unpack {
                digest: digest.clone(),
                source,
            });
        }
    };
    let _ = std::fs::remove_file(&download);
    drop(unpack_lock);
    if let Some(progress) = progress {
        progress.layer_done(&digest, LayerOutcome::Pulled);
    }
    Ok(EnsuredLayer {
        digest,
        size,
        outcome: LayerOutcome::Pulled,
        _use_lock: use_lock,
    })
}

/// The unpacked size of an existing snapshot: as recorded for another image, else measured.
fn known_size(store: &ImageStore, digest: &Digest, dir: &Path) -> Result<u64, ImageError> {
    let recorded = store.read_index()?.images.iter().find_map(|image| {
        let i = image.layers.iter().position(|l| l == digest)?;
        image.layer_sizes.get(i).copied()
    });
    match recorded {
        Some(size) => Ok(size),
        None => tree_size(dir, &mut HashSet::new()).map_err(ImageError::io("measuring", dir)),
    }
}

/// Whether a failed download attempt is worth resuming.
enum Attempt {
    Retry(ImageError),
    Fail(ImageError),
}

/// Downloads a blob to `path`, resuming what an earlier attempt left there, and verifies it.
async fn download_blob(
    client: &RegistryClient,
    blob: &Descriptor,
    path: &Path,
    options: &PullOptions,
    progress: Option<&dyn PullProgress>,
) -> Result<(), ImageError> {
    let mut attempt = 0;
    loop {
        match download_attempt(client, blob, path, progress).await {
            Ok(()) => return Ok(()),
            Err(Attempt::Retry(e)) if attempt < options.retries => {
                attempt += 1;
                tracing::warn!(digest = %blob.digest, attempt, error = %e, "download interrupted, resuming");
            }
            Err(Attempt::Retry(e) | Attempt::Fail(e)) => return Err(e),
        }
    }
}

async fn download_attempt(
    client: &RegistryClient,
    blob: &Descriptor,
    path: &Path,
    progress: Option<&dyn PullProgress>,
) -> Result<(), Attempt> {
    let io = |action| {
        let f = ImageError::io(action, path);
        move |e| Attempt::Fail(f(e))
    };
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .await
        .map_err(io("opening"))?;
    let mut have = file.metadata().await.map_err(io("reading"))?.len();
    if have > blob.size {
        file.set_len(0).await.map_err(io("truncating"))?;
        have = 0;
    }
    // The hash covers the whole blob, so what is on disk already is hashed again.
    let mut hasher = Hasher::new(blob.digest.algorithm());
    let mut buffer = vec![0; 256 * 1024];
    let mut hashed = 0;
    while hashed < have {
        let n = file.read(&mut buffer).await.map_err(io("reading"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        hashed += n as u64;
    }
    have = hashed;
    if let Some(progress) = progress {
        progress.layer_started(&blob.digest, blob.size, have);
    }
    if have < blob.size {
        let response = client
            .blob(&blob.digest.to_string(), have)
            .await
            .map_err(|e| match e {
                ImageError::Connection { .. } => Attempt::Retry(e),
                e => Attempt::Fail(e),
            })?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT if have > 0 => {
                let range = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !range.starts_with(&format!("bytes {have}-")) {
                    // Not the range asked for: start over.
                    file.set_len(0).await.map_err(io("truncating"))?;
                    return Err(Attempt::Retry(ImageError::Registry {
                        registry: client.registry().to_owned(),
                        status: 206,
                        what: format!("blob {}", blob.digest),
                        message: format!("it sent range {range:?} instead of bytes {have}-"),
                    }));
                }
            }
            StatusCode::OK => {
                if have > 0 {
                    // The registry ignored Range: take the whole blob from the start.
                    tracing::debug!(digest = %blob.digest, have, "registry ignored Range");
                    file.set_len(0).await.map_err(io("truncating"))?;
                    hasher = Hasher::new(blob.digest.algorithm());
                    have = 0;
                    if let Some(progress) = progress {
                        progress.layer_started(&blob.digest, blob.size, 0);
                    }
                }
            }
            StatusCode::NOT_FOUND => {
                return Err(Attempt::Fail(ImageError::Registry {
                    registry: client.registry().to_owned(),
                    status: 404,
                    what: format!("blob {}", blob.digest),
                    message: "the manifest lists a blob the registry does not have".to_owned(),
                }))
            }
            _ => {
                return Err(Attempt::Fail(
                    client
                        .unexpected(response, format!("blob {}", blob.digest))
                        .await,
                ))
            }
        }
        file.seek(SeekFrom::Start(have))
            .await
            .map_err(io("seeking"))?;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    file.flush().await.map_err(io("writing"))?;
                    return Err(Attempt::Retry(ImageError::Connection {
                        registry: client.registry().to_owned(),
                        message: format!(
                            "download of {} broke off after {have} of {} bytes ({e}); pull again to resume",
                            blob.digest, blob.size
                        ),
                    }));
                }
            };
            if have + chunk.len() as u64 > blob.size {
                drop(file);
                let _ = tokio::fs::remove_file(path).await;
                return Err(Attempt::Fail(ImageError::DigestMismatch {
                    what: "blob",
                    expected: blob.digest.clone(),
                    actual: format!("more than the {} bytes the manifest says", blob.size),
                }));
            }
            file.write_all(&chunk).await.map_err(io("writing"))?;
            hasher.update(&chunk);
            have += chunk.len() as u64;
            if let Some(progress) = progress {
                progress.layer_progress(&blob.digest, chunk.len() as u64);
            }
        }
        file.flush().await.map_err(io("writing"))?;
        file.sync_all().await.map_err(io("syncing"))?;
        if have < blob.size {
            return Err(Attempt::Retry(ImageError::Connection {
                registry: client.registry().to_owned(),
                message: format!(
                    "download of {} ended after {have} of {} bytes; pull again to resume",
                    blob.digest, blob.size
                ),
            }));
        }
    }
    drop(file);
    let actual = hasher.finish();
    if actual != blob.digest {
        let _ = tokio::fs::remove_file(path).await;
        return Err(Attempt::Fail(ImageError::DigestMismatch {
            what: "layer",
            expected: blob.digest.clone(),
            actual: actual.to_string(),
        }));
    }
    Ok(())
}
