//! Random sequences of writes give the same results from `RedbStore` (and `MemoryStore`)
//! as from a plain `BTreeMap` model of etcd's semantics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use berth_store::{
    CasOutcome, Entry, Expect, MemoryStore, Op, RedbStore, Store, StoreError, TxnOutcome,
};
use proptest::prelude::*;

const KEYS: [&str; 6] = ["/a", "/ab", "/a/1", "/a/2", "/b", "/b/1"];
const PREFIXES: [&str; 5] = ["", "/a", "/a/", "/b", "/c"];

/// What a compare expects, relative to the model's state when it runs.
#[derive(Debug, Clone, Copy)]
enum Want {
    Absent,
    Any,
    /// The key's current mod revision (0 when absent).
    Current,
    /// A revision some distance before the current one.
    Stale(u8),
}

#[derive(Debug, Clone)]
enum Step {
    Put(usize, u8),
    Delete(usize),
    DeletePrefix(usize),
    Cas(usize, Want, Option<u8>),
    Txn(Vec<(usize, Want)>, Vec<(usize, Option<u8>)>),
}

fn want() -> impl Strategy<Value = Want> {
    prop_oneof![
        Just(Want::Absent),
        Just(Want::Any),
        Just(Want::Current),
        (1u8..4).prop_map(Want::Stale),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let key = 0..KEYS.len();
    prop_oneof![
        3 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        1 => key.clone().prop_map(Step::Delete),
        1 => (0..PREFIXES.len()).prop_map(Step::DeletePrefix),
        3 => (key.clone(), want(), proptest::option::of(any::<u8>()))
            .prop_map(|(k, w, v)| Step::Cas(k, w, v)),
        2 => (
            proptest::collection::vec((key.clone(), want()), 0..3),
            proptest::collection::vec((key, proptest::option::of(any::<u8>())), 0..4),
        )
            .prop_map(|(c, o)| Step::Txn(c, o)),
    ]
}

/// etcd's semantics over a map, written independently of the store's engine.
#[derive(Default)]
struct Model {
    entries: BTreeMap<String, Entry>,
    revision: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Applied(u64),
    Conflict(Vec<Option<Entry>>),
    Refused,
}

impl Model {
    fn expect(&self, key: &str, want: Want) -> Expect {
        let current = self.entries.get(key).map_or(0, |e| e.mod_revision);
        match want {
            Want::Absent => Expect::Absent,
            Want::Any => Expect::Any,
            Want::Current => Expect::ModRevision(current),
            Want::Stale(back) => Expect::ModRevision(current.saturating_sub(u64::from(back))),
        }
    }

    fn holds(&self, key: &str, expect: Expect) -> bool {
        let entry = self.entries.get(key);
        match expect {
            Expect::Any => true,
            Expect::Absent => entry.is_none(),
            Expect::ModRevision(r) => entry.map_or(0, |e| e.mod_revision) == r,
        }
    }

    fn txn(&mut self, compares: &[(String, Expect)], ops: &[Op]) -> Outcome {
        let keys: BTreeSet<&str> = ops.iter().map(Op::key).collect();
        if keys.len() != ops.len() {
            return Outcome::Refused;
        }
        if !compares.iter().all(|(k, e)| self.holds(k, *e)) {
            return Outcome::Conflict(
                compares
                    .iter()
                    .map(|(k, _)| self.entries.get(k).cloned())
                    .collect(),
            );
        }
        let revision = self.revision + 1;
        let mut changed = false;
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let create = self
                        .entries
                        .get(key)
                        .map_or(revision, |e| e.create_revision);
                    self.entries.insert(
                        key.clone(),
                        Entry {
                            key: key.clone(),
                            value: value.clone(),
                            mod_revision: revision,
                            create_revision: create,
                            lease: *lease,
                        },
                    );
                    changed = true;
                }
                Op::Delete { key } => changed |= self.entries.remove(key).is_some(),
            }
        }
        if changed {
            self.revision = revision;
        }
        Outcome::Applied(self.revision)
    }

    fn list(&self, prefix: &str) -> Vec<Entry> {
        self.entries
            .values()
            .filter(|e| e.key.starts_with(prefix))
            .cloned()
            .collect()
    }
}

fn ops_of(writes: &[(usize, Option<u8>)]) -> Vec<Op> {
    writes
        .iter()
        .map(|(k, v)| match v {
            Some(v) => Op::Put {
                key: KEYS[*k].to_owned(),
                value: vec![*v],
                lease: None,
            },
            None => Op::Delete {
                key: KEYS[*k].to_owned(),
            },
        })
        .collect()
}

async fn check(store: &dyn Store, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut model = Model {
        revision: store.revision().await.expect("revision"),
        ..Model::default()
    };
    for step in steps {
        match step {
            Step::Put(k, v) => {
                let got = store.put(KEYS[k], vec![v], None).await.expect("put");
                let ops = ops_of(&[(k, Some(v))]);
                prop_assert_eq!(Outcome::Applied(got), model.txn(&[], &ops));
            }
            Step::Delete(k) => {
                let existed = model.entries.contains_key(KEYS[k]);
                prop_assert_eq!(store.delete(KEYS[k]).await.expect("delete"), existed);
                model.txn(&[], &ops_of(&[(k, None)]));
            }
            Step::DeletePrefix(p) => {
                let doomed = model.list(PREFIXES[p]);
                let count = store.delete_prefix(PREFIXES[p]).await.expect("delete");
                prop_assert_eq!(count, doomed.len() as u64);
                let ops: Vec<Op> = doomed
                    .into_iter()
                    .map(|e| Op::Delete { key: e.key })
                    .collect();
                model.txn(&[], &ops);
            }
            Step::Cas(k, want, value) => {
                let expect = model.expect(KEYS[k], want);
                let got = store
                    .cas(KEYS[k], expect, value.map(|v| vec![v]), None)
                    .await
                    .expect("cas");
                let got = match got {
                    CasOutcome::Applied { revision } => Outcome::Applied(revision),
                    CasOutcome::Conflict { current } => Outcome::Conflict(vec![current]),
                };
                let compares = [(KEYS[k].to_owned(), expect)];
                prop_assert_eq!(got, model.txn(&compares, &ops_of(&[(k, value)])));
            }
            Step::Txn(compares, writes) => {
                let compares: Vec<(String, Expect)> = compares
                    .into_iter()
                    .map(|(k, w)| (KEYS[k].to_owned(), model.expect(KEYS[k], w)))
                    .collect();
                let ops = ops_of(&writes);
                let got = match store.txn(compares.clone(), ops.clone()).await {
                    Ok(TxnOutcome::Applied { revision }) => Outcome::Applied(revision),
                    Ok(TxnOutcome::Conflict { current }) => Outcome::Conflict(current),
                    Err(StoreError::DuplicateKey(_)) => Outcome::Refused,
                    Err(e) => panic!("txn: {e}"),
                };
                prop_assert_eq!(got, model.txn(&compares, &ops));
            }
        }
        prop_assert_eq!(store.revision().await.expect("revision"), model.revision);
        for prefix in PREFIXES {
            let listing = store.list(prefix).await.expect("list");
            prop_assert_eq!(listing.revision, model.revision);
            prop_assert_eq!(listing.entries, model.list(prefix));
        }
        for key in KEYS {
            prop_assert_eq!(
                store.get(key).await.expect("get"),
                model.entries.get(key).cloned()
            );
        }
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn redb_matches_the_model(steps in proptest::collection::vec(step(), 1..40)) {
        runtime().block_on(async {
            let dir = tempfile::TempDir::new().expect("temp dir");
            let store = RedbStore::open(dir.path().join("state.redb")).await.expect("open");
            check(&store, steps).await
        })?;
    }

    #[test]
    fn memory_matches_the_model(steps in proptest::collection::vec(step(), 1..40)) {
        runtime().block_on(async {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            check(store.as_ref(), steps).await
        })?;
    }
}
