//! What a release changes, service by service: which services must restart (their
//! containers would differ) and which keep their instances.
//!
//! A service's containers are made of its image (by digest), command, environment, the
//! versions of the secrets it reads (as variables or files) and where its secret files go,
//! its resources, ports, health check and volumes. When none of those differ, a new
//! release leaves the service's instances alone: it keeps running the instances of the
//! release that last changed it (its *revision*), whatever else the release changes
//! (replicas, routes, the deploy strategy, other services, secrets it does not read).

use std::collections::{BTreeMap, BTreeSet};

use berth_core::plan::ReleaseId;
use berth_core::spec::ServiceSpec;
use berth_core::AppSpec;
use serde::{Deserialize, Serialize};

use super::{Release, ResolvedImage};

/// What a release does to one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceAction {
    /// New in this release.
    Add,
    /// Gone from this release: its instances stop.
    Remove,
    /// Its containers differ: new instances replace the old ones.
    Restart,
    /// Its containers are the same: its instances keep running.
    Keep,
}

/// One service's part of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceChange {
    /// The service.
    pub service: String,
    /// What happens to it.
    pub action: ServiceAction,
    /// The release whose instances run it once this release is live (an older one when
    /// kept); `None` when removed.
    pub runs: Option<ReleaseId>,
    /// What differs (for `restart`, what makes its containers differ; for `keep`, the
    /// settings that change without a restart).
    pub reasons: Vec<String>,
}

/// How `new` (whose spec is `new_spec`) changes each service compared with `old`, the
/// release it replaces: removed services first, then every service of `new` by name.
pub fn service_changes(
    old: Option<(&Release, &AppSpec)>,
    new: &Release,
    new_spec: &AppSpec,
) -> Vec<ServiceChange> {
    let mut changes = Vec::new();
    if let Some((_, old_spec)) = old {
        for name in old_spec.services.keys() {
            if !new_spec.services.contains_key(name) {
                changes.push(ServiceChange {
                    service: name.clone(),
                    action: ServiceAction::Remove,
                    runs: None,
                    reasons: Vec::new(),
                });
            }
        }
    }
    for (name, service) in &new_spec.services {
        let Some((old_release, before)) = old.and_then(|(r, s)| Some((r, s.services.get(name)?)))
        else {
            changes.push(ServiceChange {
                service: name.clone(),
                action: ServiceAction::Add,
                runs: Some(new.number),
                reasons: Vec::new(),
            });
            continue;
        };
        let restart = restart_reasons(name, (old_release, before), (new, service));
        let settings = setting_reasons(before, service);
        let (action, runs) = if restart.is_empty() {
            (ServiceAction::Keep, old_release.revision(name))
        } else {
            (ServiceAction::Restart, new.number)
        };
        // People read the image first, then the scale, then the rest.
        let mut reasons = Vec::new();
        let (image, rest): (Vec<String>, Vec<String>) =
            restart.into_iter().partition(|r| r.starts_with("image "));
        reasons.extend(image);
        let (replicas, settings): (Vec<String>, Vec<String>) = settings
            .into_iter()
            .partition(|r| r.starts_with("replicas "));
        reasons.extend(replicas);
        reasons.extend(rest);
        reasons.extend(settings);
        changes.push(ServiceChange {
            service: name.clone(),
            action,
            runs: Some(runs),
            reasons,
        });
    }
    changes
}

/// Each service's revision in `new`: its own number for a service that restarts or is new,
/// the revision it had in `old` for one it keeps.
pub fn revisions(changes: &[ServiceChange]) -> BTreeMap<String, ReleaseId> {
    changes
        .iter()
        .filter_map(|change| Some((change.service.clone(), change.runs?)))
        .collect()
}

/// What makes `service`'s containers in `new` differ from those in `old` (empty: none).
fn restart_reasons(
    service: &str,
    (old_release, old): (&Release, &ServiceSpec),
    (new_release, new): (&Release, &ServiceSpec),
) -> Vec<String> {
    let mut reasons = Vec::new();
    let (old_image, new_image) = (
        old_release.images.get(service),
        new_release.images.get(service),
    );
    if old_image.map(|i| &i.digest) != new_image.map(|i| &i.digest) {
        let show = |image: Option<&ResolvedImage>| {
            image.map_or_else(String::new, |i| {
                format!("{} ({})", i.reference, short_digest(&i.digest))
            })
        };
        reasons.push(format!("image {} -> {}", show(old_image), show(new_image)));
    }
    if old.command != new.command {
        reasons.push("command changed".to_owned());
    }
    let changed = changed_keys(&old.env, &new.env);
    if !changed.is_empty() {
        reasons.push(format!("env {}", changed.join(", ")));
    }
    let used: BTreeSet<&str> = old
        .secret_names()
        .union(&new.secret_names())
        .copied()
        .collect();
    for name in used {
        let version = |release: &Release, spec: &ServiceSpec| {
            spec.secret_names()
                .contains(name)
                .then(|| release.secrets.get(name).copied())
                .flatten()
        };
        match (version(old_release, old), version(new_release, new)) {
            (Some(before), Some(after)) if before != after => {
                reasons.push(format!("secret {name} v{before} -> v{after}"));
            }
            (None, Some(after)) => reasons.push(format!("secret {name} v{after} added")),
            (Some(_), None) => reasons.push(format!("secret {name} removed")),
            _ => {}
        }
    }
    if old.secrets != new.secrets || old.secret_files != new.secret_files {
        reasons.push("secrets delivered differently (variables or file paths)".to_owned());
    }
    if old.resources != new.resources {
        reasons.push("resources changed".to_owned());
    }
    if old.ports != new.ports {
        reasons.push("ports changed".to_owned());
    }
    if old.health != new.health {
        reasons.push("health check changed".to_owned());
    }
    if old.volumes != new.volumes {
        reasons.push("volumes changed".to_owned());
    }
    reasons
}

/// Settings of `service` that change without touching its containers.
fn setting_reasons(old: &ServiceSpec, new: &ServiceSpec) -> Vec<String> {
    let mut reasons = Vec::new();
    if old.replicas != new.replicas {
        reasons.push(format!("replicas {} -> {}", old.replicas, new.replicas));
    }
    if old.route != new.route {
        reasons.push("route changed".to_owned());
    }
    if old.deploy != new.deploy {
        reasons.push("deploy settings changed".to_owned());
    }
    if old.depends_on != new.depends_on {
        reasons.push("dependencies changed".to_owned());
    }
    if old.restart != new.restart || old.stop_grace != new.stop_grace {
        reasons.push("restart policy or stop grace changed".to_owned());
    }
    if old.tags != new.tags || old.meta != new.meta {
        reasons.push("catalog tags or meta changed".to_owned());
    }
    reasons
}

fn changed_keys(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// What `new` changes compared with `old` (the release it replaces), one line per change,
/// for people: services added or removed, what changed in each (environment variables by
/// name only: values may be sensitive), secret versions.
pub fn changes(old: Option<&Release>, new: &Release) -> Vec<String> {
    let Some(old) = old else {
        return vec!["first release".to_owned()];
    };
    let (Ok(before), Ok(after)) = (old.app_spec(), new.app_spec()) else {
        return vec!["the spec changed".to_owned()];
    };
    let mut lines = Vec::new();
    for change in service_changes(Some((old, &before)), new, &after) {
        match change.action {
            ServiceAction::Remove => lines.push(format!("{}: removed", change.service)),
            ServiceAction::Add => lines.push(format!("{}: added", change.service)),
            ServiceAction::Restart | ServiceAction::Keep => lines.extend(
                change
                    .reasons
                    .iter()
                    .filter(|reason| !reason.starts_with("secret "))
                    .map(|reason| format!("{}: {reason}", change.service)),
            ),
        }
    }
    for (secret, version) in &new.secrets {
        match old.secrets.get(secret) {
            Some(before) if before != version => {
                lines.push(format!("secret {secret}: v{before} -> v{version}"));
            }
            None => lines.push(format!("secret {secret}: v{version}")),
            _ => {}
        }
    }
    if lines.is_empty() && (old.spec != new.spec || old.env != new.env) {
        lines.push("spec changed (settings that restart nothing)".to_owned());
    }
    if lines.is_empty() {
        lines.push("no changes: the same spec, images and secrets".to_owned());
    }
    lines
}

fn short_digest(digest: &str) -> &str {
    let end = digest.find(':').map_or(0, |i| i + 1) + 12;
    digest.get(..end).unwrap_or(digest)
}
