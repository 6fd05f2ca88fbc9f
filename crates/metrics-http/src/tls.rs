//! The metrics server's certificate: PEM files (a cert-manager or `kubernetes.io/tls` Secret, reloaded
//! when they change) or, without them, a self-signed one made at start (as controller-runtime does;
//! scrapers then skip verification or pin it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;

/// How often the certificate files are checked for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// Where the certificate comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// PEM files: the chain, and its private key.
    Files {
        /// The certificate chain (PEM).
        cert: PathBuf,
        /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// A self-signed certificate for these DNS names or IP addresses.
    SelfSigned(Vec<String>),
}

/// A certificate that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The PEM holds no certificate or no key, or they do not match.
    #[error("{0}")]
    Invalid(String),
}

fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid("certificate: no CERTIFICATE block".into()));
    }
    // The key's bytes are never shown: rustls's PEM errors name the section, not its content.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Invalid(format!("private key: {e}")))?;
    // The provider is named: the process links one (aws-lc-rs), and the default would panic if the
    // dependency graph ever enabled a second.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Watches certificate files and swaps a changed pair in; a pair that fails to load is logged and
/// the previous one kept.
pub struct Reload {
    config: RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
    seen: (Option<SystemTime>, Option<SystemTime>),
}

impl Reload {
    /// Checks every [`RELOAD_EVERY`], forever.
    pub async fn run(mut self) {
        let mut every = tokio::time::interval(RELOAD_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            self.check();
        }
    }

    /// Reloads when either file's modification time changed; true when a new pair was loaded.
    pub fn check(&mut self) -> bool {
        let now = (modified(&self.cert), modified(&self.key));
        if now == self.seen {
            return false;
        }
        self.seen = now;
        match read(&self.cert).and_then(|c| read(&self.key).and_then(|k| server_config(&c, &k))) {
            Ok(config) => {
                self.config.reload_from_config(config);
                tracing::info!(cert = %self.cert.display(), "metrics TLS certificate reloaded");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "metrics TLS certificate not reloaded; serving the previous one");
                false
            }
        }
    }
}

/// The TLS configuration for `source`, and its reloader when it comes from files.
pub async fn config(source: &Source) -> Result<(RustlsConfig, Option<Reload>), TlsError> {
    match source {
        Source::Files { cert, key } => {
            let seen = (modified(cert), modified(key));
            let config = RustlsConfig::from_config(server_config(&read(cert)?, &read(key)?)?);
            let reload = Reload { config: config.clone(), cert: cert.clone(), key: key.clone(), seen };
            Ok((config, Some(reload)))
        }
        Source::SelfSigned(names) => {
            let names = if names.is_empty() { vec!["localhost".to_string()] } else { names.clone() };
            let certified = rcgen::generate_simple_self_signed(names)
                .map_err(|e| TlsError::Invalid(format!("self-signed certificate: {e}")))?;
            let config =
                server_config(certified.cert.pem().as_bytes(), certified.signing_key.serialize_pem().as_bytes())?;
            Ok((RustlsConfig::from_config(config), None))
        }
    }
}
