//! TLS with rustls (ring): to `https://` servers, verified against the public web PKI roots
//! plus an optional CA file (`tls_ca_file`, for a private CA), and, optionally, for clients on
//! the router's own listener (`tls_cert_file` + `tls_key_file`).
//!
//! Files are read when the config is validated, so a missing or unreadable certificate is a
//! config error with its location, not a failure at the first request.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a certificate, key or CA file could not be used; the text names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {file}: {why}")]
    Unreadable { file: String, why: String },
    #[error("{file}: not a PEM certificate file: {why}")]
    NotPem { file: String, why: String },
    #[error("{file}: no certificate in it")]
    NoCertificate { file: String },
    #[error("{file}: unusable CA certificate: {why}")]
    BadCa { file: String, why: String },
    #[error("{file}: no usable private key: {why}")]
    NoKey { file: String, why: String },
    #[error("{file}: does not match the certificate: {why}")]
    KeyMismatch { file: String, why: String },
    /// The crypto provider refused its own default protocol versions (a build problem).
    #[error("{0}")]
    Provider(String),
}

/// The certificates in a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = || path.display().to_string();
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Unreadable {
            file: file(),
            why: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NotPem {
            file: file(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { file: file() });
    }
    Ok(certs)
}

/// How the router checks the servers it connects to over `https://`.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|e| TlsError::BadCa {
                file: path.display().to_string(),
                why: e.to_string(),
            })?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Provider(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The router's own TLS listener, from a certificate chain and its private key (PEM).
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let certs = read_certs(cert_file)?;
    let key_name = || key_file.display().to_string();
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::NoKey {
        file: key_name(),
        why: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Provider(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::KeyMismatch {
            file: key_name(),
            why: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
