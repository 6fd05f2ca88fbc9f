//! Key Vault objects → file contents, exactly as the upstream provider writes them (reference §2):
//! secret encodings; certificate-backed secrets as PEM (PKCS#8 keys first, then the chain rebuilt
//! leaf → root by AKI/SKI, falling back to the original order) or PFX; `cert` as the leaf PEM; `key`
//! as an SPKI `PUBLIC KEY` PEM for RSA and EC.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::params::{Encoding, Format};

/// `application/x-pkcs12`.
pub const PKCS12: &str = "application/x-pkcs12";
/// `application/x-pem-file`.
pub const PEM_FILE: &str = "application/x-pem-file";

fn pem_block(tag: &str, der: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new(tag, der.to_vec()), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

/// Applies `objectEncoding` to the final content of a secret.
pub fn decode(content: Vec<u8>, encoding: Encoding) -> Result<Vec<u8>, String> {
    match encoding {
        Encoding::Utf8 => Ok(content),
        Encoding::Base64 => {
            STANDARD.decode(&content).map_err(|e| format!("failed to base64 decode secret content: {e}"))
        }
        Encoding::Hex => hex::decode(&content).map_err(|e| format!("failed to hex decode secret content: {e}")),
    }
}

/// Content of a certificate-backed secret (the bundle had a `kid`).
pub fn cert_secret(value: &str, content_type: &str, format: Format, construct_chain: bool) -> Result<String, String> {
    match content_type {
        PEM_FILE => Ok(value.to_string()),
        PKCS12 if format == Format::Pfx => Ok(value.to_string()),
        PKCS12 => pfx_to_pem(value, construct_chain),
        other => Err(format!("failed to get certificate. unknown content type '{other}'")),
    }
}

/// Base64 PFX (empty password) → private keys (PKCS#8 PEM) followed by certificates.
pub fn pfx_to_pem(value: &str, construct_chain: bool) -> Result<String, String> {
    let der = STANDARD.decode(value.trim()).map_err(|e| format!("failed to decode pfx: {e}"))?;
    let ks = p12_keystore::KeyStore::from_pkcs12(&der, "", p12_keystore::Pkcs12ImportPolicy::Relaxed)
        .map_err(|e| format!("failed to decode pfx: {e}"))?;
    let mut keys = Vec::new();
    let mut certs: Vec<Vec<u8>> = Vec::new();
    for (_, entry) in ks.entries() {
        match entry {
            p12_keystore::KeyStoreEntry::PrivateKeyChain(chain) => {
                keys.push(chain.key().as_der().to_vec());
                certs.extend(chain.certs().iter().map(|c| c.as_der().to_vec()));
            }
            p12_keystore::KeyStoreEntry::Certificate(c) => certs.push(c.as_der().to_vec()),
            _ => {}
        }
    }
    let certs = if construct_chain { build_chain(certs)? } else { certs };
    let mut out = String::new();
    for k in &keys {
        out.push_str(&pem_block("PRIVATE KEY", k));
    }
    for c in &certs {
        out.push_str(&pem_block("CERTIFICATE", c));
    }
    Ok(out)
}

/// (Authority Key Identifier, Subject Key Identifier) of a certificate.
type KeyIds = (Option<Vec<u8>>, Option<Vec<u8>>);

fn key_ids(der: &[u8]) -> Result<KeyIds, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("failed to parse certificate: {e}"))?;
    let (mut aki, mut ski) = (None, None);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => aki = a.key_identifier.as_ref().map(|k| k.0.to_vec()),
            ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(k.0.to_vec()),
            _ => {}
        }
    }
    Ok((aki, ski))
}

/// Orders certificates leaf → intermediates → root by AKI/SKI (upstream §2.3). An incomplete chain
/// keeps the original order; a set without a leaf or with a cycle is an error, as upstream.
pub fn build_chain(certs: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, String> {
    if certs.len() < 2 {
        return Ok(certs);
    }
    let ids = certs.iter().map(|c| key_ids(c)).collect::<Result<Vec<_>, _>>()?;
    let n = certs.len();
    let mut parent = vec![None; n];
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let (aki, _) = &ids[i];
            let (_, ski) = &ids[j];
            if aki.is_none() && ski.is_none() {
                continue;
            }
            if aki == ski {
                parent[i] = Some(j);
                break;
            }
        }
    }
    let is_parent: Vec<bool> = (0..n).map(|j| parent.contains(&Some(j))).collect();
    let leaf = (0..n).find(|i| !is_parent[*i]).ok_or("no leaf found")?;
    let mut order = vec![leaf];
    let mut cur = leaf;
    while let Some(p) = parent[cur] {
        if order.len() > n {
            return Err("constructing chain resulted in cycle".into());
        }
        if p == cur || order.contains(&p) {
            // A self-signed root names itself as parent: the walk ends there.
            if p == cur {
                break;
            }
            return Err("constructing chain resulted in cycle".into());
        }
        order.push(p);
        cur = p;
    }
    if order.len() != n {
        tracing::warn!(chained = order.len(), total = n, "certificate chain is incomplete; keeping the original order");
        return Ok(certs);
    }
    Ok(order.into_iter().map(|i| certs[i].clone()).collect())
}

/// `cert` objects: the `cer` (standard base64 DER of the leaf) as one PEM block.
pub fn cer_to_pem(cer: &str) -> Result<String, String> {
    let der = STANDARD.decode(cer).map_err(|e| format!("failed to decode certificate: {e}"))?;
    Ok(pem_block("CERTIFICATE", &der))
}

fn b64u(field: &str, v: Option<&str>) -> Result<Vec<u8>, String> {
    let v = v.ok_or_else(|| format!("key {field} is nil"))?;
    URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).map_err(|e| format!("failed to decode key {field}: {e}"))
}

/// `key` objects: the public key as an SPKI `PUBLIC KEY` PEM, from the JWK.
pub fn jwk_to_pem(jwk: &serde_json::Value) -> Result<String, String> {
    let s = |k: &str| jwk.get(k).and_then(|v| v.as_str());
    let kty = s("kty").unwrap_or("");
    match kty {
        "RSA" | "RSA-HSM" => {
            use rsa::pkcs8::EncodePublicKey;
            let n = rsa::BigUint::from_bytes_be(&b64u("n", s("n"))?);
            let e = rsa::BigUint::from_bytes_be(&b64u("e", s("e"))?);
            let key = rsa::RsaPublicKey::new(n, e).map_err(|e| format!("failed to get key: {e}"))?;
            key.to_public_key_pem(rsa::pkcs8::LineEnding::LF).map_err(|e| format!("failed to get key: {e}"))
        }
        "EC" | "EC-HSM" => {
            let crv = s("crv").unwrap_or("");
            let mut point = vec![4u8];
            point.extend(b64u("x", s("x"))?);
            point.extend(b64u("y", s("y"))?);
            let pem = match crv {
                "P-256" => p256::PublicKey::from_sec1_bytes(&point).map_err(|e| e.to_string()).and_then(|k| {
                    p256::pkcs8::EncodePublicKey::to_public_key_pem(&k, p256::pkcs8::LineEnding::LF)
                        .map_err(|e| e.to_string())
                }),
                "P-384" => p384::PublicKey::from_sec1_bytes(&point).map_err(|e| e.to_string()).and_then(|k| {
                    p384::pkcs8::EncodePublicKey::to_public_key_pem(&k, p384::pkcs8::LineEnding::LF)
                        .map_err(|e| e.to_string())
                }),
                "P-521" => p521::PublicKey::from_sec1_bytes(&point).map_err(|e| e.to_string()).and_then(|k| {
                    p521::pkcs8::EncodePublicKey::to_public_key_pem(&k, p521::pkcs8::LineEnding::LF)
                        .map_err(|e| e.to_string())
                }),
                other => return Err(format!("curve {other} is not supported")),
            };
            pem.map_err(|e| format!("failed to get key: {e}"))
        }
        other => Err(format!("failed to get key. key type '{other}' currently not supported")),
    }
}

/// Splits PEM content into (all CERTIFICATE blocks, all other blocks), for `.crt`/`.key` files.
pub fn split_cert_and_key(content: &str) -> (String, String) {
    let (mut crt, mut key) = (String::new(), String::new());
    if let Ok(blocks) = pem::parse_many(content) {
        for b in blocks {
            let text = pem_block(b.tag(), b.contents());
            if b.tag() == "CERTIFICATE" { crt.push_str(&text) } else { key.push_str(&text) }
        }
    }
    (crt, key)
}
