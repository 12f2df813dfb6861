//! Secret versions in the state store, sealed.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_store::{CasOutcome, Expect, Store};
use serde::Serialize;

use super::{check_app, check_name, open, seal, SealedSecret, Secret, SecretError, SecretKey};

/// How often [`SecretStore::set`] retries when another writer takes the same version.
const SET_ATTEMPTS: usize = 16;

/// A secret's name and versions, without any value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SecretInfo {
    /// The secret's name.
    pub name: String,
    /// Its versions, oldest first.
    pub versions: Vec<u64>,
}

/// The apps' secrets in a [`Store`], each version sealed with the node's [`SecretKey`] under
/// `/secrets/<app>/<name>/<version>`. Setting a secret adds a version; old versions are kept
/// (a rollback to an older release can still use the value it was deployed with) until the
/// secret is deleted.
pub struct SecretStore {
    store: Arc<dyn Store>,
    key: SecretKey,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn name_prefix(app: &str, name: &str) -> String {
    format!("/secrets/{app}/{name}/")
}

fn version_key(app: &str, name: &str, version: u64) -> String {
    format!("/secrets/{app}/{name}/{version}")
}

impl SecretStore {
    /// Secrets in `store`, sealed with `key`.
    pub fn new(store: Arc<dyn Store>, key: SecretKey) -> SecretStore {
        SecretStore { store, key }
    }

    /// Seals `plaintext` as a new version of `app`'s secret `name`; the version (1 for a new
    /// secret).
    pub async fn set(&self, app: &str, name: &str, plaintext: &[u8]) -> Result<u64, SecretError> {
        check_app(app)?;
        check_name(name)?;
        for _ in 0..SET_ATTEMPTS {
            let version = self.versions(app, name).await?.last().map_or(1, |v| v + 1);
            let key = version_key(app, name, version);
            let sealed = seal(&self.key, app, name, version, plaintext)?;
            match self
                .store
                .cas(&key, Expect::Absent, Some(sealed.to_bytes()), None)
                .await?
            {
                CasOutcome::Applied { .. } => {
                    tracing::info!(
                        app,
                        secret = name,
                        version,
                        key_id = self.key.id(),
                        "secret set"
                    );
                    return Ok(version);
                }
                CasOutcome::Conflict { .. } => continue,
            }
        }
        Err(berth_store::StoreError::Backend(format!(
            "secret {app}/{name}: {SET_ATTEMPTS} concurrent writers took the next version first; try again"
        ))
        .into())
    }

    /// Version `version` of `app`'s secret `name`.
    pub async fn get(&self, app: &str, name: &str, version: u64) -> Result<Secret, SecretError> {
        check_app(app)?;
        check_name(name)?;
        let key = version_key(app, name, version);
        let entry = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| SecretError::NotFound(format!("{app}/{name}@{version}")))?;
        let sealed = SealedSecret::from_bytes(&entry.value).map_err(|e| SecretError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        open(&self.key, app, name, version, &sealed)
    }

    /// The newest version of `app`'s secret `name`, and its number.
    pub async fn latest(&self, app: &str, name: &str) -> Result<(u64, Secret), SecretError> {
        check_app(app)?;
        check_name(name)?;
        let version = self
            .versions(app, name)
            .await?
            .last()
            .copied()
            .ok_or_else(|| SecretError::NotFound(format!("{app}/{name}")))?;
        Ok((version, self.get(app, name, version).await?))
    }

    /// `app`'s secrets and their versions, by name; no value is read.
    pub async fn list(&self, app: &str) -> Result<Vec<SecretInfo>, SecretError> {
        check_app(app)?;
        let prefix = format!("/secrets/{app}/");
        let listing = self.store.list(&prefix).await?;
        let mut secrets: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for entry in &listing.entries {
            let (name, version) =
                parse_key(&entry.key[prefix.len()..]).ok_or_else(|| SecretError::Corrupt {
                    key: entry.key.clone(),
                    reason: "the key is not <name>/<version>".into(),
                })?;
            secrets.entry(name.to_string()).or_default().push(version);
        }
        Ok(secrets
            .into_iter()
            .map(|(name, mut versions)| {
                versions.sort_unstable();
                SecretInfo { name, versions }
            })
            .collect())
    }

    /// Deletes every version of `app`'s secret `name`; how many there were.
    pub async fn delete(&self, app: &str, name: &str) -> Result<u64, SecretError> {
        check_app(app)?;
        check_name(name)?;
        let deleted = self.store.delete_prefix(&name_prefix(app, name)).await?;
        tracing::info!(app, secret = name, versions = deleted, "secret deleted");
        Ok(deleted)
    }

    /// The versions of `app`'s secret `name`, oldest first.
    async fn versions(&self, app: &str, name: &str) -> Result<Vec<u64>, SecretError> {
        let prefix = name_prefix(app, name);
        let listing = self.store.list(&prefix).await?;
        let mut versions = listing
            .entries
            .iter()
            .map(|entry| {
                entry.key[prefix.len()..]
                    .parse::<u64>()
                    .map_err(|_| SecretError::Corrupt {
                        key: entry.key.clone(),
                        reason: "the version is not a number".into(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        versions.sort_unstable();
        Ok(versions)
    }
}

/// `<name>/<version>`, split.
fn parse_key(rest: &str) -> Option<(&str, u64)> {
    let (name, version) = rest.split_once('/')?;
    Some((name, version.parse().ok()?))
}
