//! Test images built from tar streams, pushed to real registries: berth's in-process one,
//! Debian's `docker-registry` with htpasswd auth, and a small fake for fault injection.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::Digest;
use berth_registry::{RegistryConfig, Server};
use berth_runtime::image::{LayerOutcome, PullProgress};
use futures::StreamExt;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

// ---- building images ----

/// What goes into a layer.
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

/// An uncompressed tar of `entries`.
pub fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::File(path, data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, *data).unwrap();
            }
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, path, &[][..]).unwrap();
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Bytes that do not compress, so a layer is big enough to cut mid-way.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A layer blob and its media type.
#[derive(Clone)]
pub struct Layer {
    pub media_type: &'static str,
    pub blob: Vec<u8>,
}

impl Layer {
    pub fn new(media_type: &'static str, blob: Vec<u8>) -> Layer {
        Layer { media_type, blob }
    }

    pub fn digest(&self) -> Digest {
        Digest::sha256(&self.blob)
    }
}

/// An image ready to push: config, layers, manifest.
#[derive(Clone)]
pub struct TestImage {
    pub config: Vec<u8>,
    pub layers: Vec<Layer>,
    pub manifest: Vec<u8>,
    pub manifest_type: &'static str,
}

impl TestImage {
    /// An OCI image with a config naming `cmd` and `layers`.
    pub fn oci(cmd: &str, layers: Vec<Layer>) -> TestImage {
        Self::build(
            cmd,
            layers,
            OCI_MANIFEST,
            "application/vnd.oci.image.config.v1+json",
        )
    }

    /// A Docker schema 2 image.
    pub fn docker(cmd: &str, layers: Vec<Layer>) -> TestImage {
        Self::build(cmd, layers, DOCKER_MANIFEST, DOCKER_CONFIG)
    }

    /// An OCI artifact: a manifest whose config is not an image config.
    pub fn artifact(config_type: &str, layers: Vec<Layer>) -> TestImage {
        Self::build("artifact", layers, OCI_MANIFEST, config_type)
    }

    fn build(
        cmd: &str,
        layers: Vec<Layer>,
        manifest_type: &'static str,
        config_type: &str,
    ) -> TestImage {
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {
                "Cmd": [cmd], "Env": ["PATH=/usr/bin:/bin"], "WorkingDir": "/srv",
                "ExposedPorts": {"8080/tcp": {}}, "Labels": {"test": cmd}
            },
            "rootfs": {"type": "layers", "diff_ids": []}
        })
        .to_string()
        .into_bytes();
        let layer_descriptors: Vec<_> = layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "mediaType": l.media_type, "digest": l.digest().to_string(), "size": l.blob.len()
                })
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": Digest::sha256(&config).to_string(), "size": config.len()},
            "layers": layer_descriptors,
        })
        .to_string()
        .into_bytes();
        TestImage {
            config,
            layers,
            manifest,
            manifest_type,
        }
    }

    pub fn id(&self) -> Digest {
        Digest::sha256(&self.manifest)
    }

    /// Every blob: config first.
    pub fn blobs(&self) -> Vec<Vec<u8>> {
        let mut blobs = vec![self.config.clone()];
        blobs.extend(self.layers.iter().map(|l| l.blob.clone()));
        blobs
    }
}

pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An OCI index of `(architecture, image)`.
pub fn index(entries: &[(&str, &TestImage)]) -> Vec<u8> {
    index_of(OCI_INDEX, entries)
}

/// An index or Docker manifest list of `(architecture, image)`.
pub fn index_of(media_type: &str, entries: &[(&str, &TestImage)]) -> Vec<u8> {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(arch, image)| {
            serde_json::json!({
                "mediaType": image.manifest_type, "digest": image.id().to_string(),
                "size": image.manifest.len(), "platform": {"architecture": arch, "os": "linux"}
            })
        })
        .collect();
    serde_json::json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests})
        .to_string()
        .into_bytes()
}

// ---- pushing ----

/// Pushes over the distribution API (POST then monolithic PUT), with Basic auth if given.
pub struct Pusher {
    pub url: String,
    pub http: reqwest::Client,
    pub auth: Option<(String, String)>,
}

impl Pusher {
    pub fn new(url: &str, auth: Option<(&str, &str)>) -> Pusher {
        Pusher {
            url: url.to_owned(),
            http: reqwest::Client::new(),
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
        }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.auth {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    pub async fn blob(&self, repo: &str, data: &[u8]) {
        let digest = Digest::sha256(data);
        let started = self
            .request(
                reqwest::Method::POST,
                &format!("{}/v2/{repo}/blobs/uploads/", self.url),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(started.status().as_u16(), 202, "{:?}", started.text().await);
        let location = started.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.url)
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let done = self
            .request(
                reqwest::Method::PUT,
                &format!("{location}{separator}digest={digest}"),
            )
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(done.status().as_u16(), 201, "{:?}", done.text().await);
    }

    pub async fn manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
        let response = self
            .request(
                reqwest::Method::PUT,
                &format!("{}/v2/{repo}/manifests/{reference}", self.url),
            )
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            201,
            "{:?}",
            response.text().await
        );
    }

    pub async fn image(&self, repo: &str, tag: &str, image: &TestImage) {
        for blob in image.blobs() {
            self.blob(repo, &blob).await;
        }
        self.manifest(repo, tag, image.manifest_type, &image.manifest)
            .await;
    }
}

// ---- berth's registry, in process ----

pub struct BerthRegistry {
    pub url: String,
    pub host: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl BerthRegistry {
    pub async fn start() -> BerthRegistry {
        let dir = tempfile::tempdir().unwrap();
        let config = RegistryConfig {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..RegistryConfig::default()
        };
        let settings = config.settings(dir.path().join("data")).unwrap();
        let server = Server::bind(&settings).await.unwrap();
        let url = server.url();
        let host = server.local_addr().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        BerthRegistry {
            url,
            host,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }
}

impl Drop for BerthRegistry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// ---- Debian's docker-registry with htpasswd auth ----

pub struct DockerRegistry {
    pub host: String,
    pub url: String,
    child: Child,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl DockerRegistry {
    /// Starts `docker-registry` on a free loopback port with one htpasswd user.
    pub fn start(user: &str, password: &str) -> DockerRegistry {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash_with_result(password, 5)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {data}\n\
                     http:\n  addr: 127.0.0.1:{port}\n\
                     auth:\n  htpasswd:\n    realm: berth-test\n    path: {htpasswd}\n",
                    data = dir.path().join("data").display(),
                    htpasswd = dir.path().join("htpasswd").display(),
                ),
            )
            .unwrap();
            let log = fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve").arg(&config);
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(name);
                }
            }
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            let mut child = cmd
                .spawn()
                .expect("docker-registry (scripts/install-deps.sh installs it)");
            let host = format!("127.0.0.1:{port}");
            match wait_ready(&mut child, &host, &dir.path().join("registry.log")) {
                Ok(()) => {
                    return DockerRegistry {
                        url: format!("http://{host}"),
                        host,
                        child,
                        dir,
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = e;
                }
            }
        }
        panic!("docker-registry did not start: {last}");
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

fn wait_ready(child: &mut Child, host: &str, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(log).unwrap_or_default();
            return Err(format!("exited with {status}: {log}"));
        }
        if std::net::TcpStream::connect(host).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("not listening after 15 s".to_owned())
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- docker-registry log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- a fake registry for faults ----

/// What the fake registry does.
#[derive(Default)]
pub struct FakeBehaviour {
    /// Require `Authorization: Bearer <token>` obtained from `/token` with these Basic creds.
    pub bearer: Option<(String, String)>,
    /// Close the connection after this many bytes of this blob, on the first request only.
    pub cut: Option<(Digest, usize)>,
    /// Answer 200 with the whole blob even when a Range is asked for.
    pub ignore_range: bool,
    /// At the cut, hang instead of closing the connection (a pull that is killed there).
    pub stall: bool,
}

#[derive(Default)]
pub struct FakeState {
    pub manifests: Mutex<HashMap<String, (String, Vec<u8>)>>,
    pub blobs: Mutex<HashMap<String, Vec<u8>>>,
    pub behaviour: Mutex<FakeBehaviour>,
    /// (path, Range header) of every blob request.
    pub blob_requests: Mutex<Vec<(String, Option<String>)>>,
    pub token_requests: Mutex<Vec<String>>,
    pub addr: Mutex<Option<SocketAddr>>,
}

pub struct FakeRegistry {
    pub host: String,
    pub state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

const TOKEN: &str = "fake-token-123";

impl FakeRegistry {
    pub async fn start(behaviour: FakeBehaviour) -> FakeRegistry {
        let state = Arc::new(FakeState {
            behaviour: Mutex::new(behaviour),
            ..FakeState::default()
        });
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .route(
                "/v2/{repo}/manifests/{reference}",
                axum::routing::get(manifest),
            )
            .route("/v2/{repo}/blobs/{digest}", axum::routing::get(blob))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *state.addr.lock().unwrap() = Some(addr);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeRegistry {
            host: addr.to_string(),
            state,
            task,
        }
    }

    /// Serves `image` as `repo:tag` (the fake ignores the repository name).
    pub fn add(&self, tag: &str, image: &TestImage) {
        let mut manifests = self.state.manifests.lock().unwrap();
        for reference in [tag.to_owned(), image.id().to_string()] {
            manifests.insert(
                reference,
                (image.manifest_type.to_owned(), image.manifest.clone()),
            );
        }
        let mut blobs = self.state.blobs.lock().unwrap();
        for blob in image.blobs() {
            blobs.insert(Digest::sha256(&blob).to_string(), blob);
        }
    }

    pub fn replace_blob(&self, digest: &Digest, data: Vec<u8>) {
        self.state
            .blobs
            .lock()
            .unwrap()
            .insert(digest.to_string(), data);
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn challenge(state: &FakeState, headers: &HeaderMap) -> Option<Response> {
    let behaviour = state.behaviour.lock().unwrap();
    behaviour.bearer.as_ref()?;
    let ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    if ok {
        return None;
    }
    let addr = state.addr.lock().unwrap().unwrap();
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                format!(
                    r#"Bearer realm="http://{addr}/token",service="fake",scope="repository:app:pull""#
                ),
            )],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        )
            .into_response(),
    )
}

async fn token(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    use base64::Engine as _;
    state
        .token_requests
        .lock()
        .unwrap()
        .push(query.unwrap_or_default());
    let expected = state.behaviour.lock().unwrap().bearer.clone();
    let Some((user, password)) = expected else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let wanted = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(wanted.as_str())
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    axum::Json(serde_json::json!({"token": TOKEN})).into_response()
}

async fn manifest(
    State(state): State<Arc<FakeState>>,
    UrlPath((_repo, reference)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = challenge(&state, &headers) {
        return denied;
    }
    let found = state.manifests.lock().unwrap().get(&reference).cloned();
    match found {
        Some((media_type, body)) => ([(header::CONTENT_TYPE, media_type)], body).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
            .into_response(),
    }
}

async fn blob(
    State(state): State<Arc<FakeState>>,
    UrlPath((_repo, digest)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = challenge(&state, &headers) {
        return denied;
    }
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state
        .blob_requests
        .lock()
        .unwrap()
        .push((digest.clone(), range.clone()));
    let Some(data) = state.blobs.lock().unwrap().get(&digest).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut behaviour = state.behaviour.lock().unwrap();
    let start = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) if !behaviour.ignore_range => r
            .trim_end_matches('-')
            .parse::<usize>()
            .unwrap_or(0)
            .min(data.len()),
        _ => 0,
    };
    let cut = match &behaviour.cut {
        Some((d, at)) if d.to_string() == digest => Some(*at),
        _ => None,
    };
    if cut.is_some() {
        behaviour.cut = None;
    }
    let status = if start > 0 {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let total = data.len();
    let mut response_headers = HeaderMap::new();
    response_headers.insert(
        header::CONTENT_LENGTH,
        (total - start).to_string().parse().unwrap(),
    );
    if start > 0 {
        response_headers.insert(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{total}", total - 1)
                .parse()
                .unwrap(),
        );
    }
    let body = match cut {
        Some(at) => {
            // Send the first `at` bytes, then fail the stream: hyper drops the connection
            // short of Content-Length.
            let first = bytes::Bytes::from(data[start..at.max(start)].to_vec());
            // The pause lets hyper flush the headers and the first bytes before the cut.
            let pause = if behaviour.stall {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(100)
            };
            let stream =
                futures::stream::iter([Ok(first)]).chain(futures::stream::once(async move {
                    tokio::time::sleep(pause).await;
                    Err(std::io::Error::other("cut by the test"))
                }));
            Body::from_stream(stream)
        }
        None => Body::from(data[start..].to_vec()),
    };
    (status, response_headers, body).into_response()
}

// ---- progress recorder ----

#[derive(Default)]
pub struct Recorder {
    pub outcomes: Mutex<Vec<(Digest, LayerOutcome)>>,
    pub started: Mutex<Vec<(Digest, u64, u64)>>,
}

impl PullProgress for Recorder {
    fn layer_started(&self, digest: &Digest, total: u64, already: u64) {
        self.started
            .lock()
            .unwrap()
            .push((digest.clone(), total, already));
    }

    fn layer_done(&self, digest: &Digest, outcome: LayerOutcome) {
        self.outcomes
            .lock()
            .unwrap()
            .push((digest.clone(), outcome));
    }
}

/// Every path under `dir`, relative, sorted (hidden entries included).
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(base).unwrap().to_owned());
            if entry.file_type().unwrap().is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
