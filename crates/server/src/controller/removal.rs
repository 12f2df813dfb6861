//! `berth app rm`: an app whose state says `removing` is taken apart by the controller. Each
//! pass stops (drained first) whatever of it still runs, takes its routes, DNS and catalog
//! entries and its pins away at once, and once nothing of it is left on the node deletes its
//! releases, events and state (and its named volumes when asked). Its secrets stay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use berth_core::plan::ReleaseId;
use berth_core::AppSpec;
use berth_runtime::container::Status;
use berth_store::{Expect, Op, TxnOutcome};

use super::{Controller, Seen, Work};
use crate::events::{events_prefix, Event, EventKind};
use crate::releases::{releases_prefix, state_key, AppState};
use crate::traffic::sync_catalog;
use crate::ServerError;

impl Controller {
    /// One pass of `app`'s removal (see the module).
    pub(super) async fn remove_app(
        self: Arc<Self>,
        app: &str,
        state: &AppState,
        mod_revision: u64,
        seen: &[Seen],
        work: &HashMap<String, Work>,
        specs: &BTreeMap<ReleaseId, AppSpec>,
    ) -> Result<(), ServerError> {
        let removal = state.removing.clone().unwrap_or_default();
        // Out of traffic and discovery first, so nothing new reaches what is about to stop.
        sync_catalog(self.catalog(), app, &[]);
        if self.lock().routes.remove(app).is_some() {
            self.traffic().set_routes(app, Vec::new());
        }
        self.registry_pins.want(app, BTreeSet::new());
        self.set_node_pins(app, BTreeSet::new());

        let mine: Vec<&Seen> = seen.iter().filter(|s| s.name.app == app).collect();
        let busy = |container: &str| work.contains_key(container);
        for container in &mine {
            if busy(&container.container) {
                continue;
            }
            let grace = specs
                .get(&container.name.release)
                .and_then(|spec| spec.services.get(&container.name.service))
                .map_or(Duration::from_secs(10), |service| service.stop_grace);
            let address = if container.status == Status::Running {
                container.address.as_deref().and_then(|a| a.parse().ok())
            } else {
                None
            };
            self.event(
                Event::new(
                    app,
                    EventKind::InstanceStopping,
                    format!("stop {}: {app} is being removed", container.name.instance),
                )
                .service(&container.name.service)
                .instance(&container.name.instance)
                .release(container.name.release),
            );
            self.clone()
                .stop_with_grace(app, &container.name.instance, address, grace);
        }
        // Starts, stops and removals of ours still under way (their events not yet recorded).
        let prefix = format!("{app}.");
        let underway = work.iter().any(|(container, w)| {
            container.starts_with(&prefix)
                || matches!(w, Work::Starting { app: of, .. } | Work::Failed { app: of, .. } if of == app)
        });
        if !mine.is_empty() || underway {
            return Ok(());
        }

        // Nothing of it runs any more: its records go, the state last (and only if nobody
        // changed it meanwhile), so a crash in between leaves an app that is still removing.
        self.store.delete_prefix(&releases_prefix(app)).await?;
        let outcome = self
            .store
            .txn(
                vec![(state_key(app), Expect::ModRevision(mod_revision))],
                vec![Op::Delete {
                    key: state_key(app),
                }],
            )
            .await?;
        if let TxnOutcome::Conflict { .. } = outcome {
            self.wake();
            return Ok(());
        }
        self.store.delete_prefix(&events_prefix(app)).await?;
        if removal.volumes {
            let dir = self.node.root().join("volumes").join(app);
            let _volumes = self.volumes.write().await;
            match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Ok(Err(e)) => tracing::warn!(app, error = %e, "removing the app's volumes"),
                Err(e) => tracing::warn!(app, error = %e, "removing the app's volumes"),
            }
        }
        {
            let mut inner = self.lock();
            inner.events.remove(app);
            inner.pinned.remove(app);
            inner.watch_until.retain(|(of, _, _), _| of != app);
        }
        self.views
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(app);
        tracing::info!(
            app,
            volumes = removal.volumes,
            releases = state.latest,
            "app removed"
        );
        Ok(())
    }
}
