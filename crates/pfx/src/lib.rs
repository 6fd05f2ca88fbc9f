//! PKCS#12 (PFX) the way Key Vault stores certificates and the upstream Azure provider writes them.
//!
//! * [`Bundle::from_der`] reads **every** key and certificate bag in stored order, with or without
//!   `localKeyId`, under SHA-1 or SHA-2 MACs and 3DES, RC2 or AES (PBES2) bag encryption.
//! * [`Bundle::to_pem`] writes them as the upstream provider does (`pkg/provider/provider.go` of the upstream Azure provider): all private
//!   keys first (PKCS#8 `PRIVATE KEY`), then the certificates, either in stored order or with the chain
//!   rebuilt leaf → intermediates → root by AKI/SKI. Unlike upstream, certificates that are not on the
//!   leaf's chain (a cross-signed intermediate, an unrelated CA) follow the chain in stored order
//!   instead of making the whole chain fall back to stored order or fail with `no leaf found`.
//! * `Writer` (feature `writer`: the emulator and tests) builds PKCS#12 files bag by bag: the emulator's Key Vault-shaped PFX (3DES key, RC2
//!   certificates, SHA-1 MAC, as Go's `x/crypto/pkcs12` reads) and every fixture shape the tests need.
//!
//! Used by the provider (PFX-backed secrets), the driver (`kubernetes.io/tls` Secrets) and the
//! emulator (what it stores), so the three agree on what a PFX holds.

mod chain;
mod read;
#[cfg(feature = "writer")]
mod write;

#[cfg(test)]
mod tests;

pub use chain::order as chain_order;
pub use read::{Bundle, CertEntry, KeyEntry};
#[cfg(feature = "writer")]
pub use write::{Encryption, Mac, Writer};

/// Why a PKCS#12 file could not be read or written. Messages name the cause, never key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not base64.
    #[error("the PFX is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The DER, MAC or encryption could not be processed.
    #[error("the PKCS#12 content cannot be read: {0}")]
    Pkcs12(String),
    /// A certificate bag holds something that is not an X.509 certificate.
    #[error("certificate {index} of the PFX cannot be parsed: {reason}")]
    Certificate {
        /// Position of the certificate bag, in stored order, from 0.
        index: usize,
        /// The parser's message.
        reason: String,
    },
    /// The PFX holds no private key where one is expected (a Key Vault certificate's secret).
    #[error("the PFX holds no private key")]
    NoKey,
    /// The PFX holds no certificate.
    #[error("the PFX holds no certificate")]
    NoCertificate,
    /// Building a PKCS#12 file failed.
    #[error("cannot write the PKCS#12 file: {0}")]
    Write(String),
}

impl From<p12_keystore::error::Error> for Error {
    fn from(e: p12_keystore::error::Error) -> Self {
        Error::Pkcs12(e.to_string())
    }
}

/// One PEM block with LF line endings and 64-character lines, as Go's `pem.Encode` writes it.
pub fn pem_block(tag: &str, der: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new(tag, der.to_vec()), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}
