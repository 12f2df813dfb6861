//! App secrets, sealed at rest. Values are encrypted with XChaCha20-Poly1305 under a
//! [`SecretKey`] that lives outside the state store (a key file or `BERTH_SECRET_KEY`), so a
//! copy of the store's data file reveals no secret. Each seal binds the app, the secret's name
//! and its version, so a ciphertext moved to another secret fails to open. [`SecretStore`]
//! keeps every version under `/secrets/<app>/<name>/<version>`; [`env_vars`] and
//! [`files`] hand them to a container. Values travel as [`Secret`], which never prints
//! its contents. See `docs/secrets.md`.

mod inject;
mod key;
mod seal;
mod store;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

use serde::{Serialize, Serializer};
use zeroize::Zeroizing;

pub use inject::{env_vars, files};
pub use key::{KeySource, SecretKey};
pub use seal::{open, seal, SealedSecret};
pub use store::{SecretInfo, SecretStore};

/// What a [`Secret`] shows instead of its value.
pub const REDACTED: &str = "<redacted>";

/// A secret value. Its `Debug`, `Display` and `Serialize` show `<redacted>`; only
/// [`Secret::expose`] gives the value, and the memory is zeroed when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<Vec<u8>>) -> Secret {
        Secret(Zeroizing::new(value.into()))
    }

    /// The value itself: every use of it is a place where it can leak.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as text, if it is UTF-8.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// What went wrong with a secret or the secret key. No message ever contains a secret's value
/// or the key.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file cannot be read or created.
    #[error("secret key file {path}: {source}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The key file can be read by other users.
    #[error("secret key file {path} is readable by group or others (mode {mode:o}): run `chmod 600 {path}`")]
    KeyFileMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key is not 32 bytes of base64.
    #[error(
        "the secret key from {origin} is invalid: {reason}; it must be 32 random bytes in base64"
    )]
    InvalidKey {
        /// Where it came from (a file or the environment variable).
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A secret was sealed with another key.
    #[error("the secret key does not match the one the secrets were sealed with: secret {secret} was sealed with key {sealed_with}, this node has key {key}; restore that key (key file or BERTH_SECRET_KEY) or set the secret again")]
    KeyMismatch {
        /// Which secret (`app/name@version`).
        secret: String,
        /// The id of the key it was sealed with.
        sealed_with: String,
        /// The id of the key at hand.
        key: String,
    },
    /// A sealed secret fails authentication.
    #[error("secret {secret} fails authentication: its stored record was altered or copied from another secret; set it again")]
    Tampered {
        /// Which secret (`app/name@version`).
        secret: String,
    },
    /// The system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
    /// An app or secret name that cannot be used.
    #[error("invalid {what} {name:?}: {rule}")]
    InvalidName {
        /// `app name` or `secret name`.
        what: &'static str,
        /// The name.
        name: String,
        /// What a valid one looks like.
        rule: &'static str,
    },
    /// No such secret or version.
    #[error("secret {0} not found")]
    NotFound(String),
    /// A stored record does not decode.
    #[error("stored secret {key} is unreadable ({reason}): the store is corrupt or was written by a newer berth")]
    Corrupt {
        /// The store key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A secret cannot be an environment variable.
    #[error("secret {0} cannot be an environment variable: it is not UTF-8 or contains a NUL byte; mount it as a file instead")]
    NotEnvSafe(String),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
}

/// Checks an app name: a DNS label, as the app spec requires.
fn check_app(app: &str) -> Result<(), SecretError> {
    let valid = !app.is_empty()
        && app.len() <= 63
        && app
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !app.starts_with('-')
        && !app.ends_with('-');
    valid.then_some(()).ok_or_else(|| SecretError::InvalidName {
        what: "app name",
        name: app.to_string(),
        rule: "use lowercase letters, digits and inner dashes, at most 63",
    })
}

/// Checks a secret name: an environment variable name, as the app spec requires. It is also
/// a safe file name and store key segment.
fn check_name(name: &str) -> Result<(), SecretError> {
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 255;
    valid.then_some(()).ok_or_else(|| SecretError::InvalidName {
        what: "secret name",
        name: name.to_string(),
        rule: "use letters, digits and underscores, not starting with a digit",
    })
}
