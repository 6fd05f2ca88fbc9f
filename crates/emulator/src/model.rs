//! Vault contents: secrets, keys and certificates with their versions, and how they are made.
//!
//! Objects are created the way Key Vault creates them: a certificate brings a managed key and a
//! managed secret of the same name and version (the secret holds the PFX or PEM with the private key).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ECDSA_P521_SHA512, PKCS_RSA_SHA256, RsaKeySize,
};
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// `application/x-pkcs12`: the certificate's secret holds a base64 PFX.
pub const PKCS12: &str = "application/x-pkcs12";
/// `application/x-pem-file`: the certificate's secret holds PEM (key, then chain).
pub const PEM: &str = "application/x-pem-file";

/// A new Key Vault version id: 32 lowercase hex characters.
pub fn new_version() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Object attributes as Key Vault returns them.
#[derive(Clone, Debug, Serialize)]
pub struct Attributes {
    /// Whether the version can be read.
    pub enabled: bool,
    /// Creation time (Unix seconds).
    pub created: i64,
    /// Last update (Unix seconds).
    pub updated: i64,
    /// Not before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Recovery level.
    #[serde(rename = "recoveryLevel")]
    pub recovery_level: &'static str,
    /// Soft-delete retention.
    #[serde(rename = "recoverableDays")]
    pub recoverable_days: u32,
}

impl Attributes {
    /// Enabled, created now.
    pub fn new(enabled: bool) -> Self {
        Self::at(enabled, now())
    }

    /// Enabled or not, created at `created`.
    pub fn at(enabled: bool, created: i64) -> Self {
        Self {
            enabled,
            created,
            updated: created,
            nbf: None,
            exp: None,
            recovery_level: "Recoverable+Purgeable",
            recoverable_days: 90,
        }
    }
}

/// One version of a secret.
#[derive(Clone, Debug)]
pub struct SecretVersion {
    /// Version id.
    pub version: String,
    /// The value.
    pub value: String,
    /// Optional content type.
    pub content_type: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Attributes.
    pub attributes: Attributes,
    /// Set when the secret backs a certificate: the key's name (same version).
    pub managed_key: bool,
}

/// A JSON Web Key, public part, as Key Vault returns it.
#[derive(Clone, Debug, Serialize)]
pub struct Jwk {
    /// Key type: RSA, RSA-HSM, EC, EC-HSM, oct.
    pub kty: String,
    /// Permitted operations.
    pub key_ops: Vec<String>,
    /// RSA modulus (base64url).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA exponent (base64url).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// EC curve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// EC x (base64url).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y (base64url).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// One version of a key.
#[derive(Clone, Debug)]
pub struct KeyVersion {
    /// Version id.
    pub version: String,
    /// Public key.
    pub jwk: Jwk,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Attributes.
    pub attributes: Attributes,
    /// True when the key backs a certificate.
    pub managed: bool,
}

/// One version of a certificate.
#[derive(Clone, Debug)]
pub struct CertVersion {
    /// Version id (shared with the backing key and secret).
    pub version: String,
    /// DER of the leaf.
    pub cer: Vec<u8>,
    /// Content type of the backing secret.
    pub content_type: String,
    /// Subject, e.g. `CN=example.com`.
    pub subject: String,
    /// Key type and size of the policy.
    pub key_spec: KeySpec,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Attributes.
    pub attributes: Attributes,
}

/// Objects of one kind, by name, versions oldest first.
pub type Versions<T> = BTreeMap<String, Vec<T>>;

/// The kind of key to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySpec {
    /// RSA with this many bits (2048, 3072, 4096).
    Rsa(u32),
    /// P-256.
    P256,
    /// P-384.
    P384,
    /// P-521.
    P521,
    /// secp256k1 (Key Vault supports it; the CSI provider does not, which exercises its error path).
    P256K,
}

impl KeySpec {
    /// Parses `RSA`/`RSA-HSM` with a size, or `EC` with a curve name.
    pub fn parse(kty: &str, size: Option<u32>, curve: Option<&str>) -> Result<Self, String> {
        match kty {
            "RSA" | "RSA-HSM" => match size.unwrap_or(2048) {
                s @ (2048 | 3072 | 4096) => Ok(Self::Rsa(s)),
                s => Err(format!("The specified key size {s} is not supported. Supported sizes: 2048, 3072, 4096.")),
            },
            "EC" | "EC-HSM" => match curve.unwrap_or("P-256") {
                "P-256" => Ok(Self::P256),
                "P-384" => Ok(Self::P384),
                "P-521" => Ok(Self::P521),
                "P-256K" | "SECP256K1" => Ok(Self::P256K),
                c => Err(format!("The specified curve {c} is not supported.")),
            },
            k => Err(format!("The specified key type {k} is not supported.")),
        }
    }

    /// `kty` of the JWK.
    pub fn kty(&self) -> &'static str {
        match self {
            Self::Rsa(_) => "RSA",
            _ => "EC",
        }
    }

    /// Curve name for EC keys.
    pub fn curve(&self) -> Option<&'static str> {
        match self {
            Self::Rsa(_) => None,
            Self::P256 => Some("P-256"),
            Self::P384 => Some("P-384"),
            Self::P521 => Some("P-521"),
            Self::P256K => Some("P-256K"),
        }
    }
}

/// Generates a key pair usable by rcgen (not for P-256K).
fn keypair(spec: KeySpec) -> Result<KeyPair, String> {
    let r = match spec {
        KeySpec::Rsa(bits) => {
            let size = match bits {
                3072 => RsaKeySize::_3072,
                4096 => RsaKeySize::_4096,
                _ => RsaKeySize::_2048,
            };
            KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, size)
        }
        KeySpec::P256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
        KeySpec::P384 => KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384),
        KeySpec::P521 => KeyPair::generate_for(&PKCS_ECDSA_P521_SHA512),
        KeySpec::P256K => return Err("secp256k1 keys cannot sign certificates here".into()),
    };
    r.map_err(|e| e.to_string())
}

fn b64u(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWK of a SubjectPublicKeyInfo (DER).
pub fn jwk_from_spki(spki_der: &[u8], key_ops: &[&str]) -> Result<Jwk, String> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| e.to_string())?;
    let ops = key_ops.iter().map(|s| s.to_string()).collect();
    match spki.parsed().map_err(|e| e.to_string())? {
        PublicKey::RSA(rsa) => {
            let strip = |b: &[u8]| b.iter().skip_while(|x| **x == 0).copied().collect::<Vec<u8>>();
            Ok(Jwk {
                kty: "RSA".into(),
                key_ops: ops,
                n: Some(b64u(&strip(rsa.modulus))),
                e: Some(b64u(&strip(rsa.exponent))),
                crv: None,
                x: None,
                y: None,
            })
        }
        PublicKey::EC(point) => {
            let data = point.data();
            let coord = (data.len() - 1) / 2;
            let curve = match coord {
                32 => "P-256",
                48 => "P-384",
                66 => "P-521",
                _ => return Err(format!("unsupported EC point length {}", data.len())),
            };
            Ok(Jwk {
                kty: "EC".into(),
                key_ops: ops,
                n: None,
                e: None,
                crv: Some(curve.into()),
                x: Some(b64u(&data[1..1 + coord])),
                y: Some(b64u(&data[1 + coord..])),
            })
        }
        _ => Err("unsupported public key algorithm".into()),
    }
}

/// Generates a standalone key (Key Vault's "create key").
pub fn generate_key(spec: KeySpec) -> Result<Jwk, String> {
    let ops: &[&str] = match spec {
        KeySpec::Rsa(_) => &["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
        _ => &["sign", "verify"],
    };
    if spec == KeySpec::P256K {
        let secret = k256::SecretKey::random(&mut k256::elliptic_curve::rand_core::OsRng);
        let point = k256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
        return Ok(Jwk {
            kty: "EC".into(),
            key_ops: ops.iter().map(|s| s.to_string()).collect(),
            n: None,
            e: None,
            crv: Some("P-256K".into()),
            x: point.x().map(|x| b64u(x)),
            y: point.y().map(|y| b64u(y)),
        });
    }
    let kp = keypair(spec)?;
    jwk_from_spki(&rcgen::PublicKeyData::subject_public_key_info(&kp), ops)
}

/// A certificate with its chain and private key, as Key Vault stores it.
#[derive(Clone, Debug)]
pub struct CertMaterial {
    /// Every certificate, in the order the certificate's secret stores them.
    pub certs: Vec<Vec<u8>>,
    /// Index in `certs` of the certificate that belongs to the private key.
    pub leaf: usize,
    /// PKCS#8 DER of the leaf's private key.
    pub key_pkcs8: Vec<u8>,
}

/// A certificate policy's `x509_props` and `key_props`, for a self-signed certificate.
#[derive(Clone, Debug)]
pub struct SelfSignedPolicy {
    /// `subject`, e.g. `CN=example.com`.
    pub subject: String,
    /// `sans.dns_names`.
    pub dns_names: Vec<String>,
    /// `validity_months` (Key Vault's default is 12).
    pub validity_months: u32,
    /// Key type and size or curve.
    pub key: KeySpec,
}

fn ca_params(cn: &str) -> Result<CertificateParams, String> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

impl CertMaterial {
    /// Generates root → intermediate → leaf, each with SKI, and AKI on the issued ones; stored leaf first.
    pub fn generate(subject: &str, spec: KeySpec) -> Result<Self, String> {
        Self::generate_valid_for(subject, spec, None)
    }

    /// [`Self::generate`], with a leaf valid from now for `valid_days` (`None`: rcgen's default, decades).
    pub fn generate_valid_for(subject: &str, spec: KeySpec, valid_days: Option<u32>) -> Result<Self, String> {
        let e = |e: rcgen::Error| e.to_string();
        let root = CertifiedIssuer::self_signed(ca_params("Emulator Root CA")?, keypair(KeySpec::P256)?).map_err(e)?;
        let intermediate =
            CertifiedIssuer::signed_by(ca_params("Emulator Intermediate CA")?, keypair(KeySpec::P256)?, &root)
                .map_err(e)?;
        let cn = subject.strip_prefix("CN=").unwrap_or(subject);
        let mut leaf_params = CertificateParams::new(vec![cn.to_string()]).map_err(e)?;
        leaf_params.distinguished_name = dn(cn);
        leaf_params.use_authority_key_identifier_extension = true;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if let Some(days) = valid_days {
            leaf_params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
            leaf_params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(i64::from(days));
        }
        let leaf_key = keypair(spec)?;
        let leaf = leaf_params.signed_by(&leaf_key, &intermediate).map_err(e)?;
        Ok(Self {
            certs: vec![leaf.der().to_vec(), intermediate.der().to_vec(), root.der().to_vec()],
            leaf: 0,
            key_pkcs8: leaf_key.serialize_der(),
        })
    }

    /// A self-signed certificate from a policy whose issuer is `Self`, as `create` makes it.
    pub fn self_signed(policy: &SelfSignedPolicy) -> Result<(Self, Vec<u8>), String> {
        let e = |e: rcgen::Error| e.to_string();
        let cn = policy.subject.strip_prefix("CN=").unwrap_or(&policy.subject);
        let mut params = CertificateParams::new(policy.dns_names.clone()).map_err(e)?;
        params.distinguished_name = dn(cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.not_before = time::OffsetDateTime::now_utc();
        params.not_after = params.not_before + time::Duration::days(30 * i64::from(policy.validity_months.max(1)));
        let key = keypair(policy.key)?;
        let csr = params.serialize_request(&key).map_err(e)?.der().to_vec();
        let cert = params.self_signed(&key).map_err(e)?;
        Ok((Self { certs: vec![cert.der().to_vec()], leaf: 0, key_pkcs8: key.serialize_der() }, csr))
    }

    /// The certificate that belongs to the private key.
    pub fn leaf(&self) -> &[u8] {
        &self.certs[self.leaf]
    }

    /// Reads an imported PFX (DER or base64) or PEM bundle, keeping every certificate. Key Vault puts
    /// the leaf first unless `preserve_order` (`preserveCertOrder`), and keeps the others' order.
    pub fn import(value: &str, password: &str, preserve_order: bool) -> Result<Self, String> {
        let (mut certs, key_pkcs8) = match pem_text(value) {
            Some(text) => {
                let blocks = pem::parse_many(text).map_err(|e| e.to_string())?;
                let certs: Vec<Vec<u8>> =
                    blocks.iter().filter(|b| b.tag() == "CERTIFICATE").map(|b| b.contents().to_vec()).collect();
                let key = blocks.iter().find(|b| b.tag() == "PRIVATE KEY").ok_or(
                    "The specified PEM X.509 certificate content is in an unexpected format: no PKCS#8 PRIVATE KEY",
                )?;
                if certs.is_empty() {
                    return Err("The specified PEM X.509 certificate content has no certificate".into());
                }
                (certs, key.contents().to_vec())
            }
            None => {
                let bundle = pfx::Bundle::from_base64(value, password)
                    .map_err(|e| format!("The specified PKCS#12 X.509 certificate content can not be read: {e}"))?;
                let key = bundle.leaf_key().ok_or("The specified PKCS#12 content has no private key")?.pkcs8.clone();
                if bundle.certs.is_empty() {
                    return Err("The specified PKCS#12 content has no certificate".into());
                }
                (bundle.certs.into_iter().map(|c| c.der).collect(), key)
            }
        };
        let key = KeyPair::try_from(key_pkcs8.as_slice())
            .map_err(|e| format!("The specified private key can not be read: {e}"))?;
        let public = rcgen::PublicKeyData::subject_public_key_info(&key);
        let leaf = certs
            .iter()
            .position(|c| X509Certificate::from_der(c).is_ok_and(|(_, c)| c.public_key().raw == public.as_slice()))
            .ok_or("The private key does not match any certificate in the content")?;
        let leaf = if preserve_order || leaf == 0 {
            leaf
        } else {
            let l = certs.remove(leaf);
            certs.insert(0, l);
            0
        };
        Ok(Self { certs, leaf, key_pkcs8 })
    }

    /// The backing secret's value: a base64 PFX in Key Vault's shape (empty password, 3DES key, RC2
    /// certificates, HMAC-SHA1, which Go's `x/crypto/pkcs12` reads) or PEM (key, then certificates).
    pub fn secret_value(&self, content_type: &str) -> Result<String, String> {
        if content_type == PEM {
            let mut out = pfx::pem_block("PRIVATE KEY", &self.key_pkcs8);
            for c in &self.certs {
                out.push_str(&pfx::pem_block("CERTIFICATE", c));
            }
            return Ok(out);
        }
        pfx::Writer::key_vault(&self.key_pkcs8, &self.certs, self.leaf).to_base64().map_err(|e| e.to_string())
    }

    /// JWK of the leaf's public key.
    pub fn jwk(&self) -> Result<Jwk, String> {
        let (_, cert) = X509Certificate::from_der(self.leaf()).map_err(|e| e.to_string())?;
        jwk_from_spki(cert.public_key().raw, &["sign", "verify"])
    }

    /// The leaf's subject, e.g. `CN=example.com`.
    pub fn subject(&self) -> String {
        X509Certificate::from_der(self.leaf()).map(|(_, c)| c.subject().to_string()).unwrap_or_default()
    }

    /// Key type of the leaf, for the policy.
    pub fn key_spec(&self) -> KeySpec {
        match self.jwk() {
            Ok(j) if j.kty == "RSA" => KeySpec::Rsa(
                j.n.and_then(|n| URL_SAFE_NO_PAD.decode(n).ok()).map(|b| b.len() as u32 * 8).unwrap_or(2048),
            ),
            Ok(j) => KeySpec::parse("EC", None, j.crv.as_deref()).unwrap_or(KeySpec::P256),
            Err(_) => KeySpec::Rsa(2048),
        }
    }
}

/// The text of a PEM bundle: raw PEM, or PEM in base64 (what Azure's SDKs send for
/// `application/x-pem-file` imports).
fn pem_text(text: &str) -> Option<String> {
    if text.contains("-----BEGIN") {
        return Some(text.to_string());
    }
    let compact: String = text.split_whitespace().collect();
    let decoded = String::from_utf8(STANDARD.decode(compact).ok()?).ok()?;
    decoded.contains("-----BEGIN").then_some(decoded)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}

/// SHA-1 of `data` (certificate thumbprints, `x5t`).
pub fn sha1_digest(data: &[u8]) -> Vec<u8> {
    use sha1::Digest;
    sha1::Sha1::digest(data).to_vec()
}

/// `x5t`: base64url SHA-1 thumbprint of the leaf.
pub fn x5t(der: &[u8]) -> String {
    b64u(&sha1_digest(der))
}

#[cfg(test)]
mod tests;
