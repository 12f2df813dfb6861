//! Registry credentials: given as `user:pass`, or found in an auth file in the
//! `~/.docker/config.json` format (`{"auths": {"host:port": {"auth": base64("user:pass")}}}`),
//! which podman, skopeo and docker all write.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use serde::Deserialize;

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl FromStr for Credentials {
    type Err = String;

    /// Parses `user:pass`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Credentials {
                username: user.to_owned(),
                password: password.to_owned(),
            }),
            _ => Err("credentials must be written as user:password".to_owned()),
        }
    }
}

/// The auth files consulted by default: `$REGISTRY_AUTH_FILE`, then `~/.docker/config.json`.
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(file) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|f| !f.is_empty()) {
        files.push(PathBuf::from(file));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        files.push(Path::new(&home).join(".docker/config.json"));
    }
    files
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// `https://host:port/v1/` → `host:port`, the way docker normalises `auths` keys.
fn registry_of_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// Looks `registry` (`host[:port]`) up in `files`; the first file with an entry wins.
/// Unreadable or malformed files are skipped with a warning: they must not stop a pull from a
/// registry that needs no credentials.
pub(crate) fn lookup(files: &[PathBuf], registry: &str) -> Option<Credentials> {
    for file in files {
        let Ok(text) = std::fs::read(file) else {
            continue;
        };
        let parsed: AuthFile = match serde_json::from_slice(&text) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "auth file ignored: not valid JSON");
                continue;
            }
        };
        for (key, entry) in parsed.auths {
            if registry_of_key(&key) != registry {
                continue;
            }
            if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
                return Some(Credentials {
                    username: username.clone(),
                    password: password.clone(),
                });
            }
            let decoded = entry
                .auth
                .as_deref()
                .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|pair| pair.parse::<Credentials>().ok());
            match decoded {
                Some(credentials) => return Some(credentials),
                None => {
                    tracing::warn!(file = %file.display(), registry, "auth entry ignored: `auth` is not base64 of user:password")
                }
            }
        }
    }
    None
}
