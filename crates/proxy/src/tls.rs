//! HTTPS: certificates loaded from PEM files and chosen by the client's SNI host name.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// One certificate and the host names it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSpec {
    /// Host names (SNI) this certificate is chosen for; matched case-insensitively. A name
    /// `*.example.com` serves every direct subdomain of `example.com`.
    pub hosts: Vec<String>,
    /// PEM file with the certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// HTTPS listeners were configured without any certificate.
    #[error(
        "https listeners need at least one certificate: add a cert with its cert_path and key_path"
    )]
    NoCertificate,
    /// A certificate file could not be read or holds no certificate.
    #[error("cannot read certificates from {path}: {reason}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A key file could not be read, holds no key, or the key is of an unsupported type.
    #[error("cannot use the private key in {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Chooses a certificate by SNI: an exact name, then a `*.` wildcard for the parent
/// domain, then the default (the first configured certificate).
#[derive(Debug)]
pub struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// Loads every certificate; the first is the default for clients without SNI or with an
    /// unknown name.
    pub fn load(certs: &[CertSpec]) -> Result<Self, TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        let mut by_name = HashMap::new();
        let mut default = None;
        for spec in certs {
            let key = Arc::new(load_pair(spec, &provider)?);
            for host in &spec.hosts {
                by_name.insert(host.trim().to_ascii_lowercase(), Arc::clone(&key));
            }
            default.get_or_insert(key);
        }
        let default = default.ok_or(TlsError::NoCertificate)?;
        Ok(Self { by_name, default })
    }

    fn find(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        if let Some(key) = self.by_name.get(&name) {
            return Arc::clone(key);
        }
        let wildcard = name
            .split_once('.')
            .map(|(_, parent)| format!("*.{parent}"));
        wildcard
            .and_then(|w| self.by_name.get(&w))
            .map_or_else(|| Arc::clone(&self.default), Arc::clone)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.find(hello.server_name()))
    }
}

fn load_pair(
    spec: &CertSpec,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_error = |reason: String| TlsError::Cert {
        path: spec.cert_path.clone(),
        reason,
    };
    let key_error = |reason: String| TlsError::Key {
        path: spec.key_path.clone(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&spec.cert_path)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE block in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&spec.key_path).map_err(|e| key_error(e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(e.to_string()))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// A rustls server configuration with the SNI resolver, offering HTTP/2 and HTTP/1.1.
pub fn server_config(certs: &[CertSpec]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let resolver = SniResolver::load(certs)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
