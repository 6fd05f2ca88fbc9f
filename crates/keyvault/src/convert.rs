//! Key Vault objects → file contents, exactly as the upstream provider writes them (`pkg/provider/provider.go` of the upstream Azure provider):
//! secret encodings; certificate-backed secrets as PEM (PKCS#8 keys first, then every certificate,
//! the chain rebuilt leaf → root by AKI/SKI: see the `pfx` crate) or PFX; `cert` as the leaf PEM;
//! `key` as an SPKI `PUBLIC KEY` PEM for RSA and EC.

use crate::params::{Encoding, Format};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// `application/x-pkcs12`.
pub const PKCS12: &str = "application/x-pkcs12";
/// `application/x-pem-file`.
pub const PEM_FILE: &str = "application/x-pem-file";

use pfx::pem_block;

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

/// Base64 PFX (empty password) → every private key (PKCS#8 PEM), then every certificate: leaf →
/// intermediates → root with `construct_chain` and the others after them, else the stored order.
/// Never an empty file: a PFX without a key or a certificate is an error.
pub fn pfx_to_pem(value: &str, construct_chain: bool) -> Result<String, String> {
    let bundle = pfx::Bundle::from_base64(value, "").map_err(|e| format!("failed to decode pfx: {e}"))?;
    bundle.to_pem(construct_chain).map_err(|e| format!("failed to decode pfx: {e}"))
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
pub fn jwk_to_pem(jwk: &crate::model::JsonWebKey) -> Result<String, String> {
    let s = |k: &str| match k {
        "n" => jwk.n.as_deref(),
        "e" => jwk.e.as_deref(),
        "x" => jwk.x.as_deref(),
        "y" => jwk.y.as_deref(),
        _ => jwk.crv.as_deref(),
    };
    match jwk.kty.as_str() {
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
                other => return Err(format!("curve {} is not supported", known_name(other, KEY_CURVES))),
            };
            pem.map_err(|e| format!("failed to get key: {e}"))
        }
        other => Err(format!("failed to get key. key type '{}' currently not supported", known_name(other, KEY_TYPES))),
    }
}

/// Key Vault's key types and curves (JsonWebKeyType, JsonWebKeyCurveName).
const KEY_TYPES: &[&str] = &["EC", "EC-HSM", "RSA", "RSA-HSM", "oct", "oct-HSM", "OKP", "OKP-HSM"];
const KEY_CURVES: &[&str] = &["P-256", "P-384", "P-521", "P-256K", "Ed25519"];

/// `value` for an error message when it is one of Key Vault's own names (upstream quotes it); any other
/// text came from the response and is described, never quoted: an error reaches events and logs.
fn known_name<'a>(value: &'a str, names: &[&str]) -> std::borrow::Cow<'a, str> {
    if names.contains(&value) { value.into() } else { format!("<not a Key Vault name, {} bytes>", value.len()).into() }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(kty: &str, crv: Option<&str>) -> crate::model::JsonWebKey {
        serde_json::from_value(serde_json::json!({"kty": kty, "crv": crv, "x": "AA", "y": "AA"})).unwrap()
    }

    #[test]
    fn only_key_vaults_own_names_are_quoted_in_errors() {
        assert_eq!(
            jwk_to_pem(&jwk("oct", None)).unwrap_err(),
            "failed to get key. key type 'oct' currently not supported"
        );
        let e = jwk_to_pem(&jwk("from-the-response", None)).unwrap_err();
        assert_eq!(e, "failed to get key. key type '<not a Key Vault name, 17 bytes>' currently not supported");
        assert_eq!(jwk_to_pem(&jwk("EC", Some("P-256K"))).unwrap_err(), "curve P-256K is not supported");
        let e = jwk_to_pem(&jwk("EC", Some("secret-ish"))).unwrap_err();
        assert_eq!(e, "curve <not a Key Vault name, 10 bytes> is not supported");
    }
}
