//! A TLS server configuration from one certificate chain and key in PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::TlsAcceptor;

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFilesError {
    /// The certificate file cannot be read or holds no certificate.
    #[error("cannot read a certificate chain from {}: {reason}", path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file cannot be read or holds no usable key.
    #[error("cannot read a private key from {}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("cannot use the certificate and key: {0}")]
    Config(#[from] rustls::Error),
}

/// A server configuration presenting the chain in `cert` (PEM, leaf first) with the key in
/// `key` (PEM: PKCS#8, PKCS#1 or SEC1), offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsFilesError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| TlsFilesError::Cert {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsFilesError::Cert {
            path: cert.to_owned(),
            reason: "no CERTIFICATE block in the file".to_owned(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsFilesError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, private_key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config`] as an acceptor for [`HttpServer::serve`](crate::http::HttpServer::serve).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsFilesError> {
    server_config(cert, key).map(TlsAcceptor::from)
}
