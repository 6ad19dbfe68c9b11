//! The portal's TLS: its certificate chain and key, loaded once, for every node connection.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Why the portal cannot serve TLS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file is missing, unreadable or holds no PEM certificate.
    #[error("{path}: no certificate: {reason}")]
    Certificate {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The key file is missing, unreadable or holds no PEM private key.
    #[error("{path}: no private key: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The key does not go with the certificate, or rustls refuses them.
    #[error("certificate and key refused: {0}")]
    Config(#[from] rustls::Error),
}

/// An acceptor serving the chain in `cert` (PEM, leaf first) with the key in `key` (PEM).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.display().to_string(),
            reason: "the file holds none".to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    // ring, as the nodes use (see their connector for why not the default provider).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
