//! The secret key: 32 random bytes kept outside the state store.

use std::fmt;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use chacha20poly1305::aead::Generate;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::SecretError;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Where the key came from (for logs; never the key itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The `BERTH_SECRET_KEY` environment variable.
    Env,
    /// An existing key file.
    File(PathBuf),
    /// A key file created just now, with a new key.
    Created(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => write!(f, "${}", SecretKey::ENV),
            KeySource::File(path) => write!(f, "key file {}", path.display()),
            KeySource::Created(path) => write!(f, "new key file {}", path.display()),
        }
    }
}

/// The 256-bit key secrets are sealed with. `Debug` shows only its [`id`](SecretKey::id);
/// the bytes are zeroed when it is dropped.
#[derive(Clone)]
pub struct SecretKey {
    bytes: Zeroizing<[u8; 32]>,
    id: String,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish()
    }
}

impl SecretKey {
    /// The environment variable that holds the key in base64 (it wins over the key file).
    pub const ENV: &'static str = "BERTH_SECRET_KEY";

    /// The key with these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        let bytes = Zeroizing::new(bytes);
        let digest = Sha256::new()
            .chain_update(b"berth secret key id\0")
            .chain_update(bytes.as_slice())
            .finalize();
        SecretKey {
            id: hex::encode(&digest[..8]),
            bytes,
        }
    }

    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<SecretKey, SecretError> {
        let bytes = <[u8; 32]>::try_generate().map_err(|e| SecretError::Random(e.to_string()))?;
        Ok(SecretKey::from_bytes(bytes))
    }

    /// The key in `text` (base64, surrounding whitespace ignored); `origin` names where it
    /// came from in errors.
    pub fn from_base64(text: &str, origin: &str) -> Result<SecretKey, SecretError> {
        let invalid = |reason: String| SecretError::InvalidKey {
            origin: origin.to_string(),
            reason,
        };
        let decoded = Zeroizing::new(
            BASE64
                .decode(text.trim())
                .map_err(|_| invalid("it is not base64".into()))?,
        );
        let bytes: [u8; 32] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| invalid(format!("it is {} bytes long", decoded.len())))?;
        Ok(SecretKey::from_bytes(bytes))
    }

    /// The key in base64, as the key file and `BERTH_SECRET_KEY` hold it.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.bytes.as_slice()))
    }

    /// The node's key: `BERTH_SECRET_KEY` if set, else the key file at `path`, created with
    /// a new key (mode 0600) if it does not exist.
    pub fn load(path: &Path) -> Result<(SecretKey, KeySource), SecretError> {
        let env = std::env::var(SecretKey::ENV).ok().map(Zeroizing::new);
        SecretKey::load_with(env.as_deref().map(String::as_str), path)
    }

    /// [`SecretKey::load`] with the environment variable's value given.
    pub(super) fn load_with(
        env: Option<&str>,
        path: &Path,
    ) -> Result<(SecretKey, KeySource), SecretError> {
        match env {
            Some(text) if !text.trim().is_empty() => {
                let origin = format!("${}", SecretKey::ENV);
                Ok((SecretKey::from_base64(text, &origin)?, KeySource::Env))
            }
            _ => SecretKey::load_or_create(path),
        }
    }

    /// The key in the file at `path`; if there is none, a new key written there with mode
    /// 0600 (its directory created with mode 0700). A key file others can read is refused.
    pub fn load_or_create(path: &Path) -> Result<(SecretKey, KeySource), SecretError> {
        let file_error = |source| SecretError::KeyFile {
            path: path.to_path_buf(),
            source,
        };
        match fs::metadata(path) {
            Ok(_) => return Ok((SecretKey::read_file(path)?, KeySource::File(path.into()))),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(file_error(e)),
        }
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(file_error)?;
        }
        let key = SecretKey::generate()?;
        let created = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        let mut file = match created {
            Ok(file) => file,
            // Another process created it first: use its key.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Ok((SecretKey::read_file(path)?, KeySource::File(path.into())));
            }
            Err(e) => return Err(file_error(e)),
        };
        let mut text = key.to_base64();
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(file_error)?;
        file.sync_all().map_err(file_error)?;
        Ok((key, KeySource::Created(path.into())))
    }

    fn read_file(path: &Path) -> Result<SecretKey, SecretError> {
        let file_error = |source| SecretError::KeyFile {
            path: path.to_path_buf(),
            source,
        };
        let mode = fs::metadata(path).map_err(file_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(SecretError::KeyFileMode {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(file_error)?);
        SecretKey::from_base64(&text, &format!("key file {}", path.display()))
    }

    /// A short public fingerprint of the key (the first 8 bytes of a SHA-256 of it, in hex),
    /// stored beside each sealed secret so a wrong key is recognised as such.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}
