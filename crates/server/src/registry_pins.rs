//! Rollback safety on the registry side: the manifests of the releases a rollback may need are
//! pinned in the registry they come from when that registry is berth's own (`berth server
//! --registry-listen`), so that no tag deletion, retention rule or garbage collection there
//! removes them. The window is the node's (`AppState::pinned_releases`: the desired release,
//! the previously desired one, the rollback target and the release an unfinished deploy
//! replaces), and images that fall out of it are unpinned, as on the node.
//!
//! A pin is the registry's, keyed by digest; the reason of the pins made here names the app
//! ([`pin_reason`]), so after a restart the server recognises its own pins and never touches
//! pins an administrator made. The server's pins are owned ([`PIN_OWNER`]): the registry
//! refuses to remove them without `force`, and the server re-asserts the pins it wants on
//! every pass, so one removed anyway comes back at once. An image in another registry cannot
//! be pinned: an `image_not_pinned` event says so (once per app and image), and the deploy
//! goes on.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use berth_core::plan::ReleaseId;

use crate::events::{Event, EventKind};
use crate::releases::{AppState, Release};

/// The owner of the pins the server makes: the registry removes them only with `force`.
pub const PIN_OWNER: &str = "berth server";

/// The start of the reason of every pin the server makes.
const REASON_PREFIX: &str = "berth server: kept for rollback, app ";

/// The reason a pin made for `app` carries.
pub fn pin_reason(app: &str) -> String {
    format!("{REASON_PREFIX}{app}")
}

/// The app a pin was made for by the server, if `reason` is one of its reasons.
fn app_of(reason: &str) -> Option<&str> {
    reason.strip_prefix(REASON_PREFIX)
}

/// Pins in a registry: what the server needs of its registry's admin API.
#[async_trait]
pub trait PinStore: Send + Sync {
    /// Every pin: digest -> reason.
    async fn pins(&self) -> Result<BTreeMap<String, String>, String>;
    /// Pins a manifest digest as the server's own ([`PIN_OWNER`]).
    async fn pin(&self, digest: &str, reason: &str) -> Result<(), String>;
    /// Removes the server's pin of a digest (none is fine).
    async fn unpin(&self, digest: &str) -> Result<(), String>;
}

/// The registry this process serves, used in-process (no HTTP, no credentials, nothing that
/// can fail over the network).
pub struct LocalRegistry(pub Arc<berth_registry::api::Registry>);

fn parse_digest(digest: &str) -> Result<berth_oci::Digest, String> {
    digest
        .parse()
        .map_err(|e| format!("invalid digest {digest}: {e}"))
}

#[async_trait]
impl PinStore for LocalRegistry {
    async fn pins(&self) -> Result<BTreeMap<String, String>, String> {
        let pins = self.0.pins().await.map_err(|e| e.message)?;
        Ok(pins
            .into_iter()
            .map(|(digest, record)| (digest.to_string(), record.reason))
            .collect())
    }

    async fn pin(&self, digest: &str, reason: &str) -> Result<(), String> {
        self.0
            .pin(&parse_digest(digest)?, reason, Some(PIN_OWNER))
            .await
            .map_err(|e| e.message)
    }

    async fn unpin(&self, digest: &str) -> Result<(), String> {
        self.0
            .unpin(&parse_digest(digest)?, true)
            .await
            .map(|_| ())
            .map_err(|e| e.message)
    }
}

/// The names clients may use for a registry listening on `listen`, as they appear in image
/// references (`host:port`): the address itself, and for a loopback or any-address listener
/// `localhost`, `127.0.0.1` and `[::1]` with its port.
pub fn registry_hosts(listen: SocketAddr) -> BTreeSet<String> {
    let mut hosts = BTreeSet::from([listen.to_string()]);
    if listen.ip().is_loopback() || listen.ip().is_unspecified() {
        let port = listen.port();
        hosts.extend([
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ]);
    }
    hosts
}

/// The registry host of a `registry/repository@digest` reference, if it names one (a first
/// component with a `.` or `:`, or `localhost`, as for every OCI client).
pub fn registry_of(reference: &str) -> Option<&str> {
    let (first, _) = reference.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

/// An image a release a rollback may need runs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WantedImage {
    /// The manifest digest.
    pub digest: String,
    /// `registry/repository@digest`.
    pub pinned_reference: String,
    /// The release.
    pub release: ReleaseId,
}

/// The images of the releases of an app that a rollback may need (the window the node pins).
pub fn window(
    state: &AppState,
    releases: &BTreeMap<ReleaseId, Release>,
    numbers: &[ReleaseId],
) -> BTreeSet<WantedImage> {
    state
        .pinned_releases(numbers)
        .iter()
        .filter_map(|number| releases.get(number))
        .flat_map(|release| {
            release.images.values().map(|image| WantedImage {
                digest: image.digest.clone(),
                pinned_reference: image.pinned_reference.clone(),
                release: release.number,
            })
        })
        .collect()
}

/// What a sync does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PinPlan {
    /// Digests to pin, with the reason.
    pub pin: Vec<(String, String)>,
    /// Digests to unpin.
    pub unpin: Vec<String>,
    /// Images that are in another registry: (app, image, its registry if named).
    pub foreign: Vec<(String, WantedImage, Option<String>)>,
}

/// Decides the pins: every wanted image of our registry pinned (unless already pinned, for
/// whatever reason), and every pin of ours that no app wants any more unpinned, but only
/// when its app has said what it wants since this process started (an app not reconciled
/// yet keeps its pins). `pins` is the registry's current pins (digest -> reason); `hosts`
/// the names of our registry (empty: we serve none).
pub fn plan(
    wanted: &BTreeMap<String, BTreeSet<WantedImage>>,
    pins: &BTreeMap<String, String>,
    hosts: &BTreeSet<String>,
) -> PinPlan {
    let mut plan = PinPlan::default();
    let mut ours_wanted: BTreeSet<&str> = BTreeSet::new();
    for (app, images) in wanted {
        for image in images {
            let host = registry_of(&image.pinned_reference);
            let local = host.is_some_and(|host| hosts.contains(&host.to_ascii_lowercase()));
            if !local {
                plan.foreign
                    .push((app.clone(), image.clone(), host.map(str::to_owned)));
                continue;
            }
            if ours_wanted.insert(&image.digest) && !pins.contains_key(&image.digest) {
                plan.pin.push((image.digest.clone(), pin_reason(app)));
            }
        }
    }
    for (digest, reason) in pins {
        let Some(app) = app_of(reason) else { continue };
        if wanted.contains_key(app) && !ours_wanted.contains(digest.as_str()) {
            plan.unpin.push(digest.clone());
        }
    }
    plan
}

/// The controller's registry pins: what each app wants, applied at the end of each pass.
#[derive(Default)]
pub struct RegistryPins {
    registry: OnceLock<(Arc<dyn PinStore>, BTreeSet<String>)>,
    state: Mutex<PinState>,
}

#[derive(Default)]
struct PinState {
    wanted: BTreeMap<String, BTreeSet<WantedImage>>,
    /// (app, digest) already reported as not pinnable.
    reported: BTreeSet<(String, String)>,
}

impl RegistryPins {
    /// Uses `store` for the pins of images whose registry is one of `hosts` (see
    /// [`registry_hosts`]). Set once, before the controller runs; false if already set.
    pub fn attach(&self, store: Arc<dyn PinStore>, hosts: BTreeSet<String>) -> bool {
        let hosts = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        self.registry.set((store, hosts)).is_ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PinState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the images `app`'s rollback window needs now.
    pub fn want(&self, app: &str, images: BTreeSet<WantedImage>) {
        self.lock().wanted.insert(app.to_owned(), images);
    }

    /// Makes the registry's pins what the apps want, whatever happened to them since the
    /// last sync (a pin removed by force comes back); returns the events to record (images
    /// that cannot be pinned). Runs on every pass; failures are logged and retried at the
    /// next one, and never stop a deploy.
    pub async fn sync(&self) -> Vec<Event> {
        let wanted = self.lock().wanted.clone();
        let (pins, hosts) = match self.registry.get() {
            Some((store, hosts)) => match store.pins().await {
                Ok(pins) => (pins, hosts.clone()),
                Err(error) => {
                    tracing::warn!(%error, "listing the registry's pins");
                    return Vec::new();
                }
            },
            None => (BTreeMap::new(), BTreeSet::new()),
        };
        let plan = plan(&wanted, &pins, &hosts);
        if let Some((store, _)) = self.registry.get() {
            for (digest, reason) in &plan.pin {
                match store.pin(digest, reason).await {
                    Ok(()) => tracing::info!(%digest, reason, "pinned in the registry"),
                    Err(error) => tracing::warn!(%digest, %error, "pinning in the registry"),
                }
            }
            for digest in &plan.unpin {
                match store.unpin(digest).await {
                    Ok(()) => tracing::debug!(%digest, "unpinned in the registry"),
                    Err(error) => tracing::warn!(%digest, %error, "unpinning in the registry"),
                }
            }
        }
        let mut state = self.lock();
        let own = if hosts.is_empty() {
            "this server serves no registry (berth server --registry-listen)".to_owned()
        } else {
            format!(
                "berth's own registry is {}",
                hosts.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        let mut events = Vec::new();
        for (app, image, host) in plan.foreign {
            if !state.reported.insert((app.clone(), image.digest.clone())) {
                continue;
            }
            let place = host.map_or("a default registry".to_owned(), |h| format!("registry {h}"));
            events.push(
                Event::new(
                    &app,
                    EventKind::ImageNotPinned,
                    format!(
                        "image {} of release {} is in {place}, which berth cannot pin ({own}): a cleanup there may delete it; this node keeps its copy",
                        image.pinned_reference, image.release
                    ),
                )
                .release(image.release),
            );
        }
        events
    }
}
