//! Sealing and opening one secret version with XChaCha20-Poly1305.

use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use super::{Secret, SecretError, SecretKey};

/// One secret version as stored: only ciphertext, never the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedSecret {
    /// The version it was sealed as (also bound into the ciphertext).
    pub version: u64,
    /// The [`SecretKey::id`] of the key it was sealed with.
    pub key_id: String,
    /// The 24-byte random nonce.
    #[serde(with = "base64_bytes")]
    pub nonce: Vec<u8>,
    /// The encrypted value with its 16-byte authentication tag.
    #[serde(with = "base64_bytes")]
    pub ciphertext: Vec<u8>,
}

/// The data authenticated with a secret: which app, name and version it is, each
/// length-prefixed so no two triples encode alike.
fn associated_data(app: &str, name: &str, version: u64) -> Vec<u8> {
    let mut aad = b"berth secret v1\0".to_vec();
    for part in [app.as_bytes(), name.as_bytes()] {
        aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn cipher(key: &SecretKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&Key::from(*key.bytes()))
}

/// Encrypts `plaintext` as version `version` of secret `name` of `app`.
pub fn seal(
    key: &SecretKey,
    app: &str,
    name: &str,
    version: u64,
    plaintext: &[u8],
) -> Result<SealedSecret, SecretError> {
    // 24-byte random nonces: collisions are negligible however many secrets one key seals.
    let nonce = XNonce::try_generate().map_err(|e| SecretError::Random(e.to_string()))?;
    let aad = associated_data(app, name, version);
    let ciphertext = cipher(key)
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| SecretError::Random("encryption failed".into()))?;
    Ok(SealedSecret {
        version,
        key_id: key.id().to_string(),
        nonce: nonce.to_vec(),
        ciphertext,
    })
}

/// Decrypts `sealed`, which must be version `version` of secret `name` of `app`: a record
/// sealed for another secret or version, or altered, fails with [`SecretError::Tampered`];
/// one sealed with another key with [`SecretError::KeyMismatch`].
pub fn open(
    key: &SecretKey,
    app: &str,
    name: &str,
    version: u64,
    sealed: &SealedSecret,
) -> Result<Secret, SecretError> {
    let secret = format!("{app}/{name}@{version}");
    if sealed.key_id != key.id() {
        return Err(SecretError::KeyMismatch {
            secret,
            sealed_with: sealed.key_id.clone(),
            key: key.id().to_string(),
        });
    }
    let tampered = || SecretError::Tampered {
        secret: secret.clone(),
    };
    let nonce = XNonce::try_from(sealed.nonce.as_slice()).map_err(|_| tampered())?;
    if sealed.version != version {
        return Err(tampered());
    }
    let aad = associated_data(app, name, version);
    let plaintext = cipher(key)
        .decrypt(
            &nonce,
            Payload {
                msg: &sealed.ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| tampered())?;
    Ok(Secret::new(plaintext))
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        BASE64.decode(text).map_err(serde::de::Error::custom)
    }
}

impl SealedSecret {
    /// The record as stored (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of strings and numbers serializes to JSON")
    }

    /// A stored record.
    pub fn from_bytes(bytes: &[u8]) -> Result<SealedSecret, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
