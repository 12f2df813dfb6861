//! The catalog: which instances of which service are registered (healthy and not stopping),
//! where they listen, and a change index that readers can block on.
//!
//! The controller registers an instance when its health check passes and deregisters it
//! before stopping it. Every change (or batch of changes, see [`Catalog::apply`]) makes a new
//! immutable [`Snapshot`] with a higher index, so a reader never sees half a change: a
//! blue/green switch that registers the green set and deregisters the blue one in one
//! `apply` is seen by DNS, the HTTP catalog and the proxy as one step.
//!
//! Names: an instance belongs to service `SERVICE` of app `APP`. Its catalog name (the name
//! the Consul-compatible API shows, and the DNS name `SERVICE.APP.berth`) is `SERVICE.APP`;
//! see [`Endpoint::name`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// One registered instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The instance's id (its container id); unique in the catalog.
    pub id: String,
    /// The app it belongs to.
    pub app: String,
    /// The service it is an instance of.
    pub service: String,
    /// The release it runs.
    pub release: u64,
    /// The address it is reached at (its container address on the node's bridge).
    pub address: IpAddr,
    /// Its container ports, by name (from `ports` in berth.toml).
    pub ports: BTreeMap<String, u16>,
    /// Tags from berth.toml.
    pub tags: Vec<String>,
    /// Metadata from berth.toml.
    pub meta: BTreeMap<String, String>,
    /// The node it runs on.
    pub node: String,
}

impl Endpoint {
    /// The catalog name of its service: `SERVICE.APP`.
    pub fn name(&self) -> String {
        service_name(&self.app, &self.service)
    }

    /// The port to show where one port is expected (Consul's `ServicePort`, SRV records
    /// without a port name): the port named `http` if there is one, else the first by name,
    /// else 0.
    pub fn main_port(&self) -> u16 {
        self.ports
            .get("http")
            .or_else(|| self.ports.values().next())
            .copied()
            .unwrap_or(0)
    }
}

/// The catalog name of service `service` of app `app`: `SERVICE.APP`.
pub fn service_name(app: &str, service: &str) -> String {
    format!("{service}.{app}")
}

/// One change to the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Add an instance, or replace the one with the same id.
    Register(Endpoint),
    /// Remove the instance with this id (nothing happens when it is not registered).
    Deregister(String),
}

/// The catalog at one index. Cheap to share: readers hold an `Arc<Snapshot>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The index of the last change; it only grows.
    pub index: u64,
    /// Every registered instance, by id.
    endpoints: BTreeMap<String, Endpoint>,
    /// For each catalog name that has (or had) instances: the index at which its set of
    /// instances last changed. Names stay after their last instance leaves, so a blocking
    /// query on them can see that they emptied.
    modified: BTreeMap<String, u64>,
}

impl Snapshot {
    /// Every registered instance, ordered by id.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// The instance with this id.
    pub fn endpoint(&self, id: &str) -> Option<&Endpoint> {
        self.endpoints.get(id)
    }

    /// The instances of the service with this catalog name (`SERVICE.APP`), ordered by id.
    pub fn service(&self, name: &str) -> Vec<&Endpoint> {
        self.endpoints
            .values()
            .filter(|endpoint| endpoint.name() == name)
            .collect()
    }

    /// The instances of service `service` of app `app`, ordered by id.
    pub fn instances(&self, app: &str, service: &str) -> Vec<&Endpoint> {
        self.endpoints
            .values()
            .filter(|endpoint| endpoint.app == app && endpoint.service == service)
            .collect()
    }

    /// The catalog names that have at least one instance, with the union of their tags.
    pub fn services(&self) -> BTreeMap<String, Vec<String>> {
        let mut services: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for endpoint in self.endpoints.values() {
            let tags = services.entry(endpoint.name()).or_default();
            for tag in &endpoint.tags {
                if !tags.contains(tag) {
                    tags.push(tag.clone());
                }
            }
        }
        services
    }

    /// Whether a service of this catalog name has ever been registered since the server
    /// started (DNS answers an empty NOERROR, not NXDOMAIN, for a known name with no
    /// instances).
    pub fn knows(&self, name: &str) -> bool {
        self.modified.contains_key(name)
    }

    /// Every catalog name this snapshot knows (see [`Snapshot::knows`]), ordered, including
    /// names whose instances all left.
    pub fn known_names(&self) -> impl Iterator<Item = &str> {
        self.modified.keys().map(String::as_str)
    }

    /// The index at which the instances of this catalog name last changed, if ever.
    pub fn modified(&self, name: &str) -> Option<u64> {
        self.modified.get(name).copied()
    }
}

/// The live catalog. Cloning is cheap and every clone sees the same catalog.
#[derive(Clone, Debug)]
pub struct Catalog {
    sender: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new()
    }
}

impl Catalog {
    /// An empty catalog. Its first index is the current time in milliseconds, so that the
    /// index keeps growing across restarts of the server and blocking clients (which reset
    /// when an index goes backwards) are not confused.
    pub fn new() -> Catalog {
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(1));
        let snapshot = Snapshot {
            index: start,
            ..Snapshot::default()
        };
        Catalog {
            sender: Arc::new(watch::channel(Arc::new(snapshot)).0),
        }
    }

    /// Registers an instance (or replaces the one with its id).
    pub fn register(&self, endpoint: Endpoint) -> u64 {
        self.apply([Change::Register(endpoint)])
    }

    /// Deregisters an instance; returns the index after the change.
    pub fn deregister(&self, id: &str) -> u64 {
        self.apply([Change::Deregister(id.to_owned())])
    }

    /// Applies changes as one step: readers see all of them or none. Returns the index
    /// after the step; when nothing actually changed, the index stays and no reader wakes.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) -> u64 {
        let mut result = 0;
        self.sender.send_if_modified(|current| {
            let mut next = Snapshot::clone(current);
            let index = current.index + 1;
            let mut changed = false;
            for change in changes {
                match change {
                    Change::Register(endpoint) => {
                        if next.endpoints.get(&endpoint.id) == Some(&endpoint) {
                            continue;
                        }
                        if let Some(old) = next.endpoints.get(&endpoint.id) {
                            next.modified.insert(old.name(), index);
                        }
                        next.modified.insert(endpoint.name(), index);
                        next.endpoints.insert(endpoint.id.clone(), endpoint);
                        changed = true;
                    }
                    Change::Deregister(id) => {
                        if let Some(old) = next.endpoints.remove(&id) {
                            next.modified.insert(old.name(), index);
                            changed = true;
                        }
                    }
                }
            }
            if changed {
                next.index = index;
                *current = Arc::new(next);
            }
            result = current.index;
            changed
        });
        result
    }

    /// The catalog now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.sender.borrow().clone()
    }

    /// A receiver that sees every new snapshot (for the proxy's route table).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.sender.subscribe()
    }

    /// Waits until the catalog's index is above `index`, or `wait` has passed, and returns
    /// the catalog then (Consul's blocking queries; the caller checks whether what it looks
    /// at changed, and may wait again).
    pub async fn wait_past(&self, index: u64, wait: Duration) -> Arc<Snapshot> {
        let mut receiver = self.sender.subscribe();
        let _ = tokio::time::timeout(wait, receiver.wait_for(|s| s.index > index)).await;
        let snapshot = receiver.borrow().clone();
        snapshot
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn endpoint(id: &str, service: &str) -> Endpoint {
        Endpoint {
            id: id.to_owned(),
            app: "shop".to_owned(),
            service: service.to_owned(),
            release: 1,
            address: "10.88.0.2".parse().unwrap(),
            ports: BTreeMap::from([("http".to_owned(), 8080)]),
            tags: vec!["v1".to_owned()],
            meta: BTreeMap::new(),
            node: "node1".to_owned(),
        }
    }

    #[test]
    fn register_and_deregister_move_the_index_and_the_service_index() {
        let catalog = Catalog::new();
        let start = catalog.snapshot().index;
        let i1 = catalog.register(endpoint("a", "web"));
        assert_eq!(i1, start + 1);
        let i2 = catalog.register(endpoint("b", "db"));
        let snapshot = catalog.snapshot();
        assert_eq!(snapshot.modified("web.shop"), Some(i1));
        assert_eq!(snapshot.modified("db.shop"), Some(i2));
        assert_eq!(snapshot.service("web.shop").len(), 1);
        assert_eq!(snapshot.instances("shop", "db")[0].id, "b");

        // Registering the same endpoint again changes nothing.
        assert_eq!(catalog.register(endpoint("a", "web")), i2);
        // Deregistering an unknown id changes nothing.
        assert_eq!(catalog.deregister("zzz"), i2);

        let i3 = catalog.deregister("a");
        assert_eq!(i3, i2 + 1);
        let snapshot = catalog.snapshot();
        assert!(snapshot.service("web.shop").is_empty());
        assert!(snapshot.knows("web.shop"), "an emptied service stays known");
        assert!(!snapshot.knows("nope.shop"));
        assert_eq!(
            snapshot.known_names().collect::<Vec<_>>(),
            vec!["db.shop", "web.shop"]
        );
        assert_eq!(snapshot.modified("web.shop"), Some(i3));
        assert_eq!(snapshot.modified("db.shop"), Some(i2));
        assert_eq!(
            snapshot.services().keys().collect::<Vec<_>>(),
            vec!["db.shop"]
        );
    }

    #[test]
    fn a_batch_is_one_step() {
        let catalog = Catalog::new();
        catalog.register(endpoint("blue1", "web"));
        catalog.register(endpoint("blue2", "web"));
        let before = catalog.snapshot().index;
        let mut receiver = catalog.subscribe();
        receiver.mark_unchanged();
        let after = catalog.apply([
            Change::Register(endpoint("green1", "web")),
            Change::Register(endpoint("green2", "web")),
            Change::Deregister("blue1".to_owned()),
            Change::Deregister("blue2".to_owned()),
        ]);
        assert_eq!(after, before + 1);
        assert!(receiver.has_changed().unwrap());
        let ids: Vec<_> = catalog
            .snapshot()
            .service("web.shop")
            .iter()
            .map(|e| e.id.clone())
            .collect();
        assert_eq!(ids, vec!["green1", "green2"]);
    }

    #[tokio::test]
    async fn wait_past_returns_on_a_change_or_after_the_wait() {
        let catalog = Catalog::new();
        let index = catalog.snapshot().index;
        let started = std::time::Instant::now();
        let snapshot = catalog.wait_past(index, Duration::from_millis(100)).await;
        assert_eq!(snapshot.index, index);
        assert!(started.elapsed() >= Duration::from_millis(100));

        let writer = catalog.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.register(endpoint("a", "web"));
        });
        let snapshot = catalog.wait_past(index, Duration::from_secs(10)).await;
        assert_eq!(snapshot.index, index + 1);
        assert_eq!(snapshot.service("web.shop").len(), 1);
    }

    #[test]
    fn main_port_prefers_http() {
        let mut e = endpoint("a", "web");
        e.ports = BTreeMap::from([("admin".to_owned(), 9000), ("http".to_owned(), 8080)]);
        assert_eq!(e.main_port(), 8080);
        e.ports.remove("http");
        assert_eq!(e.main_port(), 9000);
        e.ports.clear();
        assert_eq!(e.main_port(), 0);
    }
}
