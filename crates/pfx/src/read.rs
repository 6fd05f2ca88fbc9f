//! Reading a PFX into its bags, in stored order, and writing them out as PEM.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::{Error, chain, pem_block};

/// A private key bag: PKCS#8 DER, and the `localKeyId` that ties it to its certificate, if any.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// PKCS#8 `PrivateKeyInfo` DER.
    pub pkcs8: Vec<u8>,
    /// The bag's `localKeyId` attribute.
    pub local_key_id: Option<Vec<u8>>,
}

// Key material never reaches a log line through `{:?}`.
impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry").field("pkcs8", &"<redacted>").field("local_key_id", &self.local_key_id).finish()
    }
}

/// A certificate bag: X.509 DER and its `localKeyId`, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertEntry {
    /// X.509 certificate DER.
    pub der: Vec<u8>,
    /// The bag's `localKeyId` attribute.
    pub local_key_id: Option<Vec<u8>>,
}

/// Every key and certificate a PFX holds, each list in stored (bag) order, duplicates kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bundle {
    /// Private keys.
    pub keys: Vec<KeyEntry>,
    /// Certificates.
    pub certs: Vec<CertEntry>,
}

impl Bundle {
    /// Reads a DER PFX. `password` is empty for Key Vault's secrets.
    pub fn from_der(der: &[u8], password: &str) -> Result<Self, Error> {
        let archive = p12_keystore::Pkcs12Archive::from_pkcs12(der, password)?;
        Ok(Self {
            keys: archive
                .keys
                .into_iter()
                .map(|k| KeyEntry { pkcs8: k.key.as_der().to_vec(), local_key_id: k.local_key_id.map(|id| id.0) })
                .collect(),
            certs: archive
                .certs
                .into_iter()
                .map(|c| CertEntry { der: c.cert.as_der().to_vec(), local_key_id: c.local_key_id })
                .collect(),
        })
    }

    /// Reads a base64 PFX, as a Key Vault secret's `value` holds it (whitespace ignored).
    pub fn from_base64(text: &str, password: &str) -> Result<Self, Error> {
        let compact: String = text.split_whitespace().collect();
        Self::from_der(&STANDARD.decode(compact)?, password)
    }

    /// The certificates' DER: with `construct_chain`, leaf → intermediates → root, then any
    /// certificate not on that chain in stored order; without it, stored order.
    pub fn ordered_certs(&self, construct_chain: bool) -> Result<Vec<&[u8]>, Error> {
        if !construct_chain {
            return Ok(self.certs.iter().map(|c| c.der.as_slice()).collect());
        }
        let key_ids: Vec<&[u8]> = self.keys.iter().filter_map(|k| k.local_key_id.as_deref()).collect();
        let order = chain::order(&self.certs, &key_ids)?;
        Ok(order.into_iter().map(|i| self.certs[i].der.as_slice()).collect())
    }

    /// What the upstream provider writes for a PFX-backed secret in PEM format: every key (PKCS#8
    /// `PRIVATE KEY`), then every certificate. A PFX without a key or without a certificate is an
    /// error rather than a partial or empty file.
    pub fn to_pem(&self, construct_chain: bool) -> Result<String, Error> {
        if self.keys.is_empty() {
            return Err(Error::NoKey);
        }
        if self.certs.is_empty() {
            return Err(Error::NoCertificate);
        }
        let mut out = String::new();
        for k in &self.keys {
            out.push_str(&pem_block("PRIVATE KEY", &k.pkcs8));
        }
        for c in self.ordered_certs(construct_chain)? {
            out.push_str(&pem_block("CERTIFICATE", c));
        }
        Ok(out)
    }

    /// The key that belongs to the leaf: the one whose `localKeyId` a certificate shares, else the first.
    pub fn leaf_key(&self) -> Option<&KeyEntry> {
        self.keys
            .iter()
            .find(|k| k.local_key_id.is_some() && self.certs.iter().any(|c| c.local_key_id == k.local_key_id))
            .or_else(|| self.keys.first())
    }
}
