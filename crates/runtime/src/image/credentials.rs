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

#[derive(Deserialize, serde::Serialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, serde::Serialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

impl AuthEntry {
    fn credentials(&self) -> Option<Credentials> {
        if let (Some(username), Some(password)) = (&self.username, &self.password) {
            return Some(Credentials {
                username: username.clone(),
                password: password.clone(),
            });
        }
        self.auth
            .as_deref()
            .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|pair| pair.parse::<Credentials>().ok())
    }
}

/// Writes `credentials` for each of `registries` (`host:port`) to `path`, in the auth-file
/// format podman, skopeo, buildah (`--authfile`) and docker read: atomically, and readable by
/// its owner only (mode 0600) from the start.
pub fn write_auth_file<'a>(
    path: &Path,
    registries: impl IntoIterator<Item = &'a str>,
    credentials: &Credentials,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let pair = format!("{}:{}", credentials.username, credentials.password);
    let auth = base64::engine::general_purpose::STANDARD.encode(pair);
    let file = AuthFile {
        auths: registries
            .into_iter()
            .map(|registry| {
                let entry = AuthEntry {
                    auth: Some(auth.clone()),
                    username: None,
                    password: None,
                };
                (registry.to_owned(), entry)
            })
            .collect(),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    let temp = path.with_extension("json.tmp");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    out.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    out.write_all(&text)?;
    out.sync_all()?;
    std::fs::rename(&temp, path)
}

/// The credentials of `username` in the auth file at `path`, from whichever entry has them;
/// `None` when the file does not exist or has none.
pub fn read_auth_file_user(path: &Path, username: &str) -> std::io::Result<Option<Credentials>> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let file: AuthFile = serde_json::from_slice(&text).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    Ok(file
        .auths
        .values()
        .filter_map(AuthEntry::credentials)
        .find(|c| c.username == username))
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
pub fn lookup(files: &[PathBuf], registry: &str) -> Option<Credentials> {
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
            match entry.credentials() {
                Some(credentials) => return Some(credentials),
                None => {
                    tracing::warn!(file = %file.display(), registry, "auth entry ignored: `auth` is not base64 of user:password")
                }
            }
        }
    }
    None
}
