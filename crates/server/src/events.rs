//! Every state change of an app as a named [`Event`], kept in the state store for
//! `berth events` and `GET /v1/apps/{app}/events`.
//!
//! Keys: `events/<app>/<seq>` (twenty digits, so keys sort by sequence number), the last
//! [`EVENTS_KEPT`] per app; older ones are deleted in the same transaction that writes a
//! new one. One writer task assigns the sequence numbers, so they are dense and increasing
//! per app, also across restarts (it continues from the highest stored one). The store's
//! `watch` on [`EVENTS_PREFIX`] gives the streaming form.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use berth_core::plan::ReleaseId;
use berth_store::{Op, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{now, ServerError};

/// The prefix under which every app's events live.
pub const EVENTS_PREFIX: &str = "events/";

/// How many events the store keeps per app.
pub const EVENTS_KEPT: usize = 1000;

/// The prefix of one app's events.
pub fn events_prefix(app: &str) -> String {
    format!("{EVENTS_PREFIX}{app}/")
}

/// The key of one event.
pub fn event_key(app: &str, seq: u64) -> String {
    format!("{}{seq:020}", events_prefix(app))
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// `berth deploy` made a new release desired.
    ReleaseCreated,
    /// `berth rollback` made an older release desired.
    RollbackRequested,
    /// `berth scale` changed a service's replicas.
    Scaled,
    /// `berth promote` let a paused canary step go on.
    Promoted,
    /// `berth pause` held a deploy.
    Paused,
    /// `berth resume` let a held deploy go on.
    Resumed,
    /// A service's deploy began.
    DeployBegun,
    /// A deploy moved to its next step.
    StepAdvanced,
    /// A deploy is complete.
    DeployFinished,
    /// A deploy failed.
    DeployFailed,
    /// After a failed deploy, the release it came from is desired again.
    RolledBack,
    /// The proxy saw a new release cross its `auto_rollback` limits (5xx rate, p99) in the
    /// watch window; the release it came from is desired again.
    AutoRolledBack,
    /// An instance is being created and started.
    InstanceStarting,
    /// An instance's process runs.
    InstanceStarted,
    /// An instance's health check passes.
    InstanceHealthy,
    /// An instance's health check fails.
    InstanceUnhealthy,
    /// An instance could not be started.
    InstanceFailed,
    /// An instance's process exited.
    InstanceExited,
    /// An instance of an older release is stopped because a newer one replaces it.
    InstanceReplaced,
    /// An instance is being stopped (scale down, unhealthy, removed service).
    InstanceStopping,
    /// An instance is stopped and removed.
    InstanceStopped,
    /// A replaced instance left traffic and was frozen, kept warm for a rollback.
    InstanceParked,
    /// A warm instance was thawed: a rollback to its release.
    InstanceUnparked,
    /// `berth secret set` stored a new version of a secret.
    SecretSet,
    /// `berth secret rm` deleted a secret.
    SecretDeleted,
    /// `berth volume rm` removed a named volume.
    VolumeRemoved,
    /// An image a rollback may need is in a registry berth cannot pin it in.
    ImageNotPinned,
    /// `berth app rm` is removing the app.
    AppRemoving,
}

/// One state change of an app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its number within the app, from 1 (0 until stored).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    /// The app.
    pub app: String,
    /// What happened.
    pub kind: EventKind,
    /// The service, when about one.
    pub service: Option<String>,
    /// The instance (e.g. `web-7-a`), when about one.
    pub instance: Option<String>,
    /// The release, when about one.
    pub release: Option<ReleaseId>,
    /// What happened and why, for people.
    pub message: String,
}

impl Event {
    /// An event of `app` happening now.
    pub fn new(app: &str, kind: EventKind, message: impl Into<String>) -> Event {
        Event {
            seq: 0,
            at: now().as_millis(),
            app: app.to_owned(),
            kind,
            service: None,
            instance: None,
            release: None,
            message: message.into(),
        }
    }

    /// About `service`.
    pub fn service(mut self, service: &str) -> Event {
        self.service = Some(service.to_owned());
        self
    }

    /// About `instance`.
    pub fn instance(mut self, instance: &str) -> Event {
        self.instance = Some(instance.to_owned());
        self
    }

    /// About `release`.
    pub fn release(mut self, release: ReleaseId) -> Event {
        self.release = Some(release);
        self
    }
}

/// Which of an app's stored sequence numbers (oldest first) go when `adding` more are
/// written and only `keep` may stay.
pub fn to_trim(stored: &VecDeque<u64>, adding: usize, keep: usize) -> Vec<u64> {
    let excess = (stored.len() + adding).saturating_sub(keep);
    stored.iter().take(excess).copied().collect()
}

/// Hands events to the task that stores them, in order.
pub struct EventLog {
    sender: mpsc::UnboundedSender<Event>,
}

impl EventLog {
    /// A log writing to `store`, keeping `keep` events per app. Its writer runs on the
    /// current tokio runtime; without one, events are only traced.
    pub fn new(store: Arc<dyn Store>, keep: usize) -> EventLog {
        let (sender, receiver) = mpsc::unbounded_channel();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(write_events(store, receiver, keep));
        }
        EventLog { sender }
    }

    /// Queues `event` for the store.
    pub fn record(&self, event: Event) {
        let _ = self.sender.send(event);
    }
}

async fn write_events(
    store: Arc<dyn Store>,
    mut receiver: mpsc::UnboundedReceiver<Event>,
    keep: usize,
) {
    let mut stored: BTreeMap<String, VecDeque<u64>> = BTreeMap::new();
    while let Some(event) = receiver.recv().await {
        let app = event.app.clone();
        if let Err(e) = write_event(store.as_ref(), &mut stored, event, keep).await {
            tracing::warn!(app, error = %e, "storing an event");
            // Read the app's keys again next time rather than trust what we had.
            stored.remove(&app);
        }
    }
}

async fn write_event(
    store: &dyn Store,
    stored: &mut BTreeMap<String, VecDeque<u64>>,
    mut event: Event,
    keep: usize,
) -> Result<(), ServerError> {
    if !stored.contains_key(&event.app) {
        let listing = store.list(&events_prefix(&event.app)).await?;
        let seqs = listing
            .entries
            .iter()
            .filter_map(|entry| entry.key.rsplit('/').next()?.parse().ok())
            .collect();
        stored.insert(event.app.clone(), seqs);
    }
    let seqs = stored.entry(event.app.clone()).or_default();
    event.seq = seqs.back().map_or(1, |last| last + 1);
    let trimmed = to_trim(seqs, 1, keep);
    let mut ops = vec![Op::Put {
        key: event_key(&event.app, event.seq),
        value: serde_json::to_vec(&event)
            .map_err(|e| ServerError::Internal(format!("encoding an event: {e}")))?,
        lease: None,
    }];
    ops.extend(trimmed.iter().map(|seq| Op::Delete {
        key: event_key(&event.app, *seq),
    }));
    store.txn(Vec::new(), ops).await?;
    seqs.drain(..trimmed.len());
    seqs.push_back(event.seq);
    Ok(())
}

/// The stored events of `app` with a sequence number above `since`, oldest first, and the
/// store revision they were read at (to watch from).
pub async fn list(
    store: &dyn Store,
    app: &str,
    since: u64,
) -> Result<(Vec<Event>, u64), ServerError> {
    let listing = store.list(&events_prefix(app)).await?;
    let events = listing
        .entries
        .iter()
        .filter_map(|entry| serde_json::from_slice::<Event>(&entry.value).ok())
        .filter(|event| event.seq > since)
        .collect();
    Ok((events, listing.revision))
}
