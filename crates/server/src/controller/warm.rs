//! Warm instances: a deploy parks the instances it replaces instead of stopping them (out of
//! traffic and drained, then frozen with the cgroup freezer: memory kept, no CPU), and a
//! rollback to their release thaws them, healthy at once, so that going back is a route
//! switch rather than a new rollout. The planner decides (`Action::Park`, `Action::Unpark`)
//! and stops them once `keep_warm` has passed.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_core::AppSpec;

use super::{Controller, Seen, Work};
use crate::events::{Event, EventKind};
use crate::releases::InstanceName;

impl Controller {
    /// Parks `instance` in the background: it left the catalog and the proxy's rotation in
    /// this pass; its requests in flight finish (within its `stop_grace`), then it is frozen.
    pub(super) fn park(
        self: Arc<Self>,
        app: &str,
        instance: &str,
        reason: &str,
        address: Option<IpAddr>,
        spec: &AppSpec,
    ) {
        let container = InstanceName::container(app, instance);
        let name = InstanceName::parse(&container);
        let grace = name
            .as_ref()
            .and_then(|name| spec.services.get(&name.service).map(|s| s.stop_grace))
            .unwrap_or(Duration::from_secs(10));
        self.lock().work.insert(container.clone(), Work::Parking);
        let (app, reason) = (app.to_owned(), reason.to_owned());
        tokio::spawn(async move {
            if let Some(address) = address {
                let left = self.traffic().drain(address, grace).await;
                if left > 0 {
                    tracing::warn!(container, left, "parking with requests still in flight");
                }
            }
            // Its health check stops before it freezes (a frozen instance answers no probe);
            // a healthy verdict is kept for a thaw.
            let id = self.node.get(&container).ok().map(|c| c.record.id);
            if let Some(id) = &id {
                let mut inner = self.lock();
                if let Some(entry) = inner.health.remove(id) {
                    if let (Some(true), Some(since)) = (entry.healthy, entry.since) {
                        inner.warm_health.insert(id.clone(), since);
                    }
                }
            }
            let node = self.node.clone();
            let target = container.clone();
            let paused = tokio::task::spawn_blocking(move || node.pause(&target)).await;
            let event = |kind, message: String| {
                let mut event = Event::new(&app, kind, message);
                if let Some(name) = &name {
                    event = event
                        .service(&name.service)
                        .instance(&name.instance)
                        .release(name.release);
                }
                event
            };
            match paused {
                Ok(Ok(_)) => {
                    self.event(event(EventKind::InstanceParked, format!("park {reason}")));
                }
                // It could not be frozen (it exited meanwhile, say): it goes as a stop would.
                Ok(Err(e)) => {
                    tracing::warn!(container, error = %e, "parking failed: stopping it");
                    let node = self.node.clone();
                    let target = container.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        node.stop(&target, grace)?;
                        node.remove(&target, true)
                    })
                    .await;
                    self.event(event(
                        EventKind::InstanceStopped,
                        format!("{container} could not be kept warm ({e}): stopped and removed"),
                    ));
                }
                Err(e) => tracing::warn!(container, error = %e, "parking"),
            }
            self.lock().work.remove(&container);
            self.wake();
        });
    }

    /// Thaws `instance` now (a rollback to its release): it is healthy again at once, and the
    /// next pass lists it.
    pub(super) async fn unpark(&self, app: &str, instance: &str, reason: &str, seen: &[Seen]) {
        let Some(found) = seen
            .iter()
            .find(|s| s.name.app == app && s.name.instance == instance)
        else {
            return;
        };
        let node = self.node.clone();
        let target = found.container.clone();
        match tokio::task::spawn_blocking(move || node.resume(&target)).await {
            Ok(Ok(_)) => {
                self.event(
                    Event::new(app, EventKind::InstanceUnparked, format!("unpark {reason}"))
                        .service(&found.name.service)
                        .instance(&found.name.instance)
                        .release(found.name.release),
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(container = found.container, error = %e, "thawing a warm instance");
                self.lock().warm_health.remove(&found.id);
            }
            Err(e) => tracing::warn!(container = found.container, error = %e, "thawing"),
        }
        self.wake();
    }
}
