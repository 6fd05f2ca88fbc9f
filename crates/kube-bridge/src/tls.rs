//! `kubernetes.io/tls` Secrets from a mounted certificate file (as upstream's `pkg/util/secretutil`): `tls.crt` is every
//! PEM `CERTIFICATE` block (or, for a PKCS#12 file, its certificates); `tls.key` is the last other PEM
//! block (or the PKCS#12 private key) re-encoded as `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY`
//! (SEC1), which is what ingress controllers expect.

use pkcs8::der::Decode;
use sec1::der::Encode;

/// The value of `key` in a `kubernetes.io/tls` Secret built from `file`.
pub fn tls_value(key: &str, file: &[u8]) -> Result<Vec<u8>, String> {
    match key {
        "tls.crt" => certificates(file),
        "tls.key" => private_key(file),
        other => Err(format!("key '{other}' is not supported. Only 'tls.key' and 'tls.crt' are supported")),
    }
}

use pfx::pem_block;

/// PEM blocks of the file, or `None` when it holds none.
fn pem_blocks(file: &[u8]) -> Option<Vec<pem::Pem>> {
    pem::parse_many(file).ok().filter(|b| !b.is_empty())
}

/// A PKCS#12 file (raw DER or base64, empty password), every bag kept.
fn pkcs12(file: &[u8]) -> Result<pfx::Bundle, String> {
    let text = std::str::from_utf8(file).ok();
    let bundle = match text.map(|t| pfx::Bundle::from_base64(t, "")) {
        Some(Ok(b)) => b,
        _ => pfx::Bundle::from_der(file, "").map_err(|e| format!("the file is neither PEM nor PKCS#12: {e}"))?,
    };
    Ok(bundle)
}

fn certificates(file: &[u8]) -> Result<Vec<u8>, String> {
    let certs: Vec<Vec<u8>> = match pem_blocks(file) {
        Some(blocks) => blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE").map(|b| b.into_contents()).collect(),
        None => {
            // The leaf (the certificate of the file's key) first, then its issuers, then the rest.
            let bundle = pkcs12(file)?;
            bundle.ordered_certs(true).map_err(|e| e.to_string())?.into_iter().map(<[u8]>::to_vec).collect()
        }
    };
    if certs.is_empty() {
        return Err("no certificate found in the file".into());
    }
    Ok(certs.into_iter().map(|c| pem_block("CERTIFICATE", &c)).collect::<String>().into_bytes())
}

fn private_key(file: &[u8]) -> Result<Vec<u8>, String> {
    let (tag, der) = match pem_blocks(file) {
        Some(blocks) => {
            let b = blocks
                .into_iter()
                .rev()
                .find(|b| b.tag() != "CERTIFICATE")
                .ok_or("no private key found in the file")?;
            (b.tag().to_string(), b.into_contents())
        }
        None => {
            let bundle = pkcs12(file)?;
            let key = bundle.leaf_key().ok_or("no private key found in the PKCS#12 file")?;
            ("PRIVATE KEY".to_string(), key.pkcs8.clone())
        }
    };
    let pem = match tag.as_str() {
        "RSA PRIVATE KEY" | "EC PRIVATE KEY" => pem_block(&tag, &der),
        "PRIVATE KEY" => {
            let (tag, der) = from_pkcs8(&der)?;
            pem_block(tag, &der)
        }
        other => return Err(format!("unsupported private key block {other:?}")),
    };
    Ok(pem.into_bytes())
}

/// RSA → PKCS#1, EC → SEC1 with the named curve; other key types are refused (as upstream).
fn from_pkcs8(der: &[u8]) -> Result<(&'static str, Vec<u8>), String> {
    const RSA: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    const EC: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    let info = pkcs8::PrivateKeyInfo::from_der(der).map_err(|e| format!("malformed PKCS#8 private key: {e}"))?;
    match info.algorithm.oid {
        RSA => Ok(("RSA PRIVATE KEY", info.private_key.to_vec())),
        EC => {
            let curve = info.algorithm.parameters_oid().map_err(|e| format!("EC key without a named curve: {e}"))?;
            let mut key =
                sec1::EcPrivateKey::from_der(info.private_key).map_err(|e| format!("malformed EC private key: {e}"))?;
            key.parameters = Some(sec1::EcParameters::NamedCurve(curve));
            Ok(("EC PRIVATE KEY", key.to_der().map_err(|e| e.to_string())?))
        }
        oid => Err(format!("unsupported private key type (algorithm {oid})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emulator::model::{CertMaterial, KeySpec};

    fn pem_bundle(m: &CertMaterial) -> Vec<u8> {
        m.secret_value("application/x-pem-file").unwrap().into_bytes()
    }

    fn tags(pem: &[u8]) -> Vec<String> {
        pem::parse_many(pem).unwrap().iter().map(|b| b.tag().to_string()).collect()
    }

    #[test]
    fn pem_rsa_key_becomes_pkcs1_and_all_certificates_are_kept() {
        let m = CertMaterial::generate("CN=web", KeySpec::Rsa(2048)).unwrap();
        let file = pem_bundle(&m);
        let crt = tls_value("tls.crt", &file).unwrap();
        assert_eq!(tags(&crt), ["CERTIFICATE"; 3]);
        assert_eq!(pem::parse_many(&crt).unwrap()[0].contents(), m.certs[0].as_slice());
        let key = tls_value("tls.key", &file).unwrap();
        let block = pem::parse(&key).unwrap();
        assert_eq!(block.tag(), "RSA PRIVATE KEY");
        let info = pkcs8::PrivateKeyInfo::from_der(&m.key_pkcs8).unwrap();
        assert_eq!(block.contents(), info.private_key, "PKCS#1 is the PKCS#8 payload");
    }

    #[test]
    fn pem_ec_key_becomes_sec1_with_its_curve() {
        let m = CertMaterial::generate("CN=web", KeySpec::P384).unwrap();
        let key = tls_value("tls.key", &pem_bundle(&m)).unwrap();
        let block = pem::parse(&key).unwrap();
        assert_eq!(block.tag(), "EC PRIVATE KEY");
        let ec = sec1::EcPrivateKey::from_der(block.contents()).unwrap();
        assert_eq!(
            ec.parameters.and_then(|p| p.named_curve()),
            Some(pkcs8::ObjectIdentifier::new_unwrap("1.3.132.0.34")),
            "P-384"
        );
    }

    #[test]
    fn pkcs12_files_give_certificates_and_key() {
        let m = CertMaterial::generate("CN=web", KeySpec::P256).unwrap();
        let pfx_b64 = m.secret_value("application/x-pkcs12").unwrap();
        for file in [pfx_b64.clone().into_bytes(), {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(&pfx_b64).unwrap()
        }] {
            assert_eq!(tags(&tls_value("tls.crt", &file).unwrap()), ["CERTIFICATE"; 3]);
            assert_eq!(tags(&tls_value("tls.key", &file).unwrap()), ["EC PRIVATE KEY"]);
        }
    }

    #[test]
    fn pkcs12_without_local_key_ids_in_any_order_gives_leaf_first_and_the_key() {
        let m = CertMaterial::generate("CN=web", KeySpec::P256).unwrap();
        let (leaf, int, root) = (&m.certs[0], &m.certs[1], &m.certs[2]);
        let der = pfx::Writer::new("").cert(root, None).cert(leaf, None).cert(int, None).key(&m.key_pkcs8, None);
        let crt = tls_value("tls.crt", &der.to_der().unwrap()).unwrap();
        let blocks: Vec<Vec<u8>> = pem::parse_many(&crt).unwrap().into_iter().map(|b| b.into_contents()).collect();
        assert_eq!(&blocks, &[leaf.clone(), int.clone(), root.clone()]);
        assert_eq!(tags(&tls_value("tls.key", &der.to_der().unwrap()).unwrap()), ["EC PRIVATE KEY"]);
    }

    #[test]
    fn bad_keys_and_files_are_named() {
        assert_eq!(
            tls_value("ca.crt", b"x").unwrap_err(),
            "key 'ca.crt' is not supported. Only 'tls.key' and 'tls.crt' are supported"
        );
        assert!(tls_value("tls.crt", b"not a certificate").unwrap_err().contains("neither PEM nor PKCS#12"));
        let m = CertMaterial::generate("CN=web", KeySpec::P256).unwrap();
        let bundle = String::from_utf8(pem_bundle(&m)).unwrap();
        let only_certs = &bundle.as_bytes()[bundle.find("-----BEGIN CERTIFICATE").unwrap()..];
        assert_eq!(tls_value("tls.key", only_certs).unwrap_err(), "no private key found in the file");
    }
}
