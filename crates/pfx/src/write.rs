//! Building PKCS#12 files bag by bag, in the order given.
//!
//! [`Writer::key_vault`] is the shape Key Vault hands out for a certificate's secret and the one Go's
//! `x/crypto/pkcs12` (the upstream provider's decoder) accepts: the key in a 3DES-shrouded bag, the
//! certificates in an RC2-40-encrypted safe, an HMAC-SHA1 MAC, empty password. The other knobs exist
//! so tests can build every shape real PFX files come in.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cbc::cipher::{BlockModeEncrypt, KeyIvInit, block_padding::Pkcs7};
use cms::cert::x509::attr::{Attribute, Attributes};
use cms::cert::x509::spki::AlgorithmIdentifierOwned;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::encrypted_data::EncryptedData;
use cms::enveloped_data::EncryptedContentInfo;
use der::asn1::{ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Decode, Encode};
use hmac::{KeyInit, Mac as _};
use pkcs12::pbe_params::{EncryptedPrivateKeyInfo, Pkcs12PbeParams};
use pkcs12::pfx::{Pfx, Version};
use pkcs12::safe_bag::SafeBag;
use pkcs12::{CertBag, DigestInfo, MacData, kdf};

use crate::Error;

const DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ENCRYPTED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.6");
const KEY_BAG: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.1");
const SHROUDED_KEY_BAG: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.2");
const CERT_BAG: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.3");
const X509_CERT: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.22.1");
const LOCAL_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.21");
const PBE_SHA1_3DES: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.1.3");
const PBE_SHA1_RC2_40: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.1.6");
const PBES2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.13");
const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");

/// How a key bag or the certificate safe is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// Not encrypted (a plain key bag; a `data` certificate safe).
    None,
    /// `pbeWithSHAAnd3-KeyTripleDES-CBC` (Key Vault's and Windows' key encryption).
    TripleDes,
    /// `pbeWithSHAAnd40BitRC2-CBC` (Key Vault's and Windows' certificate encryption).
    Rc2_40,
    /// PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC (OpenSSL 3's default; Go's decoder refuses it).
    Aes256,
}

/// The integrity MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mac {
    /// No MAC.
    None,
    /// HMAC-SHA1 (the only MAC Go's `x/crypto/pkcs12` verifies).
    Sha1,
    /// HMAC-SHA256 (OpenSSL 3's default).
    Sha256,
}

#[derive(Clone)]
struct Bag {
    der: Vec<u8>,
    local_key_id: Option<Vec<u8>>,
}

/// A PKCS#12 file in the making: keys and certificates in the order they will be stored.
#[derive(Clone)]
pub struct Writer {
    password: String,
    iterations: u32,
    key_encryption: Encryption,
    cert_encryption: Encryption,
    mac: Mac,
    keys_first: bool,
    keys: Vec<Bag>,
    certs: Vec<Bag>,
}

impl Writer {
    /// An empty file with Key Vault's algorithms (3DES key, RC2-40 certificates, HMAC-SHA1, 2000
    /// iterations), the key safe first, and `password`.
    pub fn new(password: &str) -> Self {
        Self {
            password: password.to_string(),
            iterations: 2000,
            key_encryption: Encryption::TripleDes,
            cert_encryption: Encryption::Rc2_40,
            mac: Mac::Sha1,
            keys_first: true,
            keys: Vec::new(),
            certs: Vec::new(),
        }
    }

    /// A Key Vault certificate's secret: empty password, the key and `certs` in the given order, the
    /// leaf (`certs[leaf]`) and the key sharing a `localKeyId` (the leaf's SHA-1 thumbprint).
    pub fn key_vault(key_pkcs8: &[u8], certs: &[Vec<u8>], leaf: usize) -> Self {
        use sha1::Digest;
        let id = certs.get(leaf).map(|c| sha1::Sha1::digest(c).to_vec());
        let mut w = Self::new("").key(key_pkcs8, id.as_deref());
        for (i, c) in certs.iter().enumerate() {
            w = w.cert(c, if i == leaf { id.as_deref() } else { None });
        }
        w
    }

    /// Adds a private key (PKCS#8 DER) with an optional `localKeyId`.
    pub fn key(mut self, pkcs8: &[u8], local_key_id: Option<&[u8]>) -> Self {
        self.keys.push(Bag { der: pkcs8.to_vec(), local_key_id: local_key_id.map(<[u8]>::to_vec) });
        self
    }

    /// Adds a certificate (X.509 DER) with an optional `localKeyId`.
    pub fn cert(mut self, der: &[u8], local_key_id: Option<&[u8]>) -> Self {
        self.certs.push(Bag { der: der.to_vec(), local_key_id: local_key_id.map(<[u8]>::to_vec) });
        self
    }

    /// Key bag protection.
    pub fn key_encryption(mut self, e: Encryption) -> Self {
        self.key_encryption = e;
        self
    }

    /// Certificate safe protection.
    pub fn cert_encryption(mut self, e: Encryption) -> Self {
        self.cert_encryption = e;
        self
    }

    /// The MAC.
    pub fn mac(mut self, m: Mac) -> Self {
        self.mac = m;
        self
    }

    /// Whether the key safe comes before the certificate safe (Key Vault and Windows) or after it
    /// (OpenSSL).
    pub fn keys_first(mut self, first: bool) -> Self {
        self.keys_first = first;
        self
    }

    /// The DER-encoded PFX.
    pub fn to_der(&self) -> Result<Vec<u8>, Error> {
        self.build().map_err(|e| Error::Write(e.to_string()))
    }

    /// The PFX as standard base64, the way a Key Vault secret's `value` holds it.
    pub fn to_base64(&self) -> Result<String, Error> {
        Ok(STANDARD.encode(self.to_der()?))
    }

    fn build(&self) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let key_bags = self.keys.iter().map(|k| self.key_bag(k)).collect::<Result<Vec<_>, _>>()?;
        let cert_bags = self.certs.iter().map(cert_bag).collect::<Result<Vec<_>, _>>()?;
        let mut safes = Vec::new();
        let key_safe = (!key_bags.is_empty()).then(|| data(&key_bags.to_der()?));
        let cert_safe = (!cert_bags.is_empty()).then(|| self.protect(&cert_bags.to_der()?, self.cert_encryption));
        let (first, second) = if self.keys_first { (key_safe, cert_safe) } else { (cert_safe, key_safe) };
        for safe in [first, second].into_iter().flatten() {
            safes.push(safe?);
        }
        let auth_safe = data(&safes.to_der()?)?;
        let mac_data = self.mac_data(self.mac, auth_safe.content.value())?;
        Ok(Pfx { version: Version::V3, auth_safe, mac_data }.to_der()?)
    }

    fn key_bag(&self, k: &Bag) -> Result<SafeBag, Box<dyn std::error::Error>> {
        let (bag_id, bag_value) = match self.key_encryption {
            Encryption::None => (KEY_BAG, k.der.clone()),
            e => {
                let (encryption_algorithm, encrypted) = self.encrypt(&k.der, e)?;
                let info =
                    EncryptedPrivateKeyInfo { encryption_algorithm, encrypted_data: OctetString::new(encrypted)? };
                (SHROUDED_KEY_BAG, info.to_der()?)
            }
        };
        Ok(SafeBag { bag_id, bag_value, bag_attributes: attributes(k)? })
    }

    /// A certificate safe: plain `data`, or `encryptedData` under `e`.
    fn protect(&self, contents: &[u8], e: Encryption) -> Result<ContentInfo, Box<dyn std::error::Error>> {
        if e == Encryption::None {
            return data(contents);
        }
        let (content_enc_alg, encrypted) = self.encrypt(contents, e)?;
        let enc = EncryptedData {
            version: CmsVersion::V0,
            enc_content_info: EncryptedContentInfo {
                content_type: DATA,
                content_enc_alg,
                encrypted_content: Some(OctetString::new(encrypted)?),
            },
            unprotected_attrs: None,
        };
        Ok(ContentInfo { content_type: ENCRYPTED_DATA, content: Any::from_der(&enc.to_der()?)? })
    }

    fn encrypt(
        &self,
        plain: &[u8],
        e: Encryption,
    ) -> Result<(AlgorithmIdentifierOwned, Vec<u8>), Box<dyn std::error::Error>> {
        let salt: [u8; 8] = rand::random();
        let iterations = self.iterations as i32;
        let pbe1 = |oid: ObjectIdentifier, key_len: usize| -> Result<_, Box<dyn std::error::Error>> {
            use kdf::Pkcs12KeyType::{EncryptionKey, Iv};
            let key = kdf::derive_key_utf8::<sha1::Sha1>(&self.password, &salt, EncryptionKey, iterations, key_len)?;
            let iv = kdf::derive_key_utf8::<sha1::Sha1>(&self.password, &salt, Iv, iterations, 8)?;
            let encrypted = if oid == PBE_SHA1_3DES {
                cbc::Encryptor::<des::TdesEde3>::new_from_slices(&key, &iv)?.encrypt_padded_vec::<Pkcs7>(plain)
            } else {
                cbc::Encryptor::<rc2::Rc2>::new_from_slices(&key, &iv)?.encrypt_padded_vec::<Pkcs7>(plain)
            };
            let params = Pkcs12PbeParams { salt: OctetString::new(salt)?, iterations };
            Ok((AlgorithmIdentifierOwned { oid, parameters: Some(Any::from_der(&params.to_der()?)?) }, encrypted))
        };
        match e {
            Encryption::TripleDes => pbe1(PBE_SHA1_3DES, 24),
            Encryption::Rc2_40 => pbe1(PBE_SHA1_RC2_40, 5),
            Encryption::Aes256 => {
                let params = pkcs5::pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(
                    self.iterations,
                    &rand::random::<[u8; 16]>(),
                    rand::random(),
                )?;
                let encrypted = params.encrypt(self.password.as_bytes(), plain)?;
                Ok((
                    AlgorithmIdentifierOwned { oid: PBES2, parameters: Some(Any::from_der(&params.to_der()?)?) },
                    encrypted,
                ))
            }
            Encryption::None => Ok((AlgorithmIdentifierOwned { oid: DATA, parameters: None }, plain.to_vec())),
        }
    }

    fn mac_data(&self, mac: Mac, content: &[u8]) -> Result<Option<MacData>, Box<dyn std::error::Error>> {
        // One arm per digest: `Hmac<D>`'s bounds do not generalise over the `digest` 0.11 traits.
        macro_rules! hmac {
            ($digest:ty, $salt:expr) => {{
                let size = <$digest as sha1::digest::OutputSizeUser>::output_size();
                let key = kdf::derive_key_utf8::<$digest>(
                    &self.password,
                    $salt,
                    kdf::Pkcs12KeyType::Mac,
                    self.iterations as i32,
                    size,
                )?;
                let mut m = <hmac::Hmac<$digest> as KeyInit>::new_from_slice(&key)?;
                m.update(content);
                m.finalize().into_bytes().to_vec()
            }};
        }
        let salt: [u8; 8] = rand::random();
        let (oid, digest) = match mac {
            Mac::None => return Ok(None),
            Mac::Sha1 => (SHA1, hmac!(sha1::Sha1, &salt)),
            Mac::Sha256 => (SHA256, hmac!(sha2::Sha256, &salt)),
        };
        Ok(Some(MacData {
            mac: DigestInfo {
                algorithm: AlgorithmIdentifierOwned { oid, parameters: Some(Any::null()) },
                digest: OctetString::new(digest)?,
            },
            mac_salt: OctetString::new(salt)?,
            iterations: self.iterations as i32,
        }))
    }
}

fn data(contents: &[u8]) -> Result<ContentInfo, Box<dyn std::error::Error>> {
    Ok(ContentInfo { content_type: DATA, content: Any::from_der(&OctetString::new(contents)?.to_der()?)? })
}

fn cert_bag(c: &Bag) -> Result<SafeBag, Box<dyn std::error::Error>> {
    let bag = CertBag { cert_id: X509_CERT, cert_value: OctetString::new(c.der.clone())? };
    Ok(SafeBag { bag_id: CERT_BAG, bag_value: bag.to_der()?, bag_attributes: attributes(c)? })
}

fn attributes(b: &Bag) -> Result<Option<Attributes>, Box<dyn std::error::Error>> {
    let mut attrs = Attributes::new();
    if let Some(id) = &b.local_key_id {
        let value = Any::from_der(&OctetString::new(id.clone())?.to_der()?)?;
        attrs.insert(Attribute { oid: LOCAL_KEY_ID, values: SetOfVec::from_iter([value])? })?;
    }
    Ok((!attrs.is_empty()).then_some(attrs))
}
