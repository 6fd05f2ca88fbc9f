use super::*;

#[test]
fn generated_chain_links_by_aki_and_ski() {
    let m = CertMaterial::generate("CN=example.com", KeySpec::Rsa(2048)).unwrap();
    assert_eq!(m.certs.len(), 3);
    let certs: Vec<_> = m.certs.iter().map(|d| X509Certificate::from_der(d).unwrap().1).collect();
    let ski = |c: &X509Certificate| {
        c.extensions().iter().find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
    };
    let aki = |c: &X509Certificate| {
        c.extensions().iter().find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
    };
    assert_eq!(aki(&certs[0]), ski(&certs[1]), "leaf → intermediate");
    assert_eq!(aki(&certs[1]), ski(&certs[2]), "intermediate → root");
    assert_eq!(m.subject(), "CN=example.com");
}

#[test]
fn pfx_and_pem_round_trip_through_import() {
    let m = CertMaterial::generate("CN=a", KeySpec::P256).unwrap();
    for ct in [PKCS12, PEM] {
        let v = m.secret_value(ct).unwrap();
        let back = CertMaterial::import(&v, "", false).unwrap();
        assert_eq!(back.certs, m.certs, "{ct}");
        assert_eq!(back.key_pkcs8, m.key_pkcs8, "{ct}");
    }
}

#[test]
fn import_keeps_every_certificate_and_puts_the_leaf_first_unless_told_to_preserve_order() {
    let m = CertMaterial::generate("CN=a", KeySpec::P256).unwrap();
    let (leaf, int, root) = (m.certs[0].clone(), m.certs[1].clone(), m.certs[2].clone());
    let other = CertMaterial::generate("CN=b", KeySpec::P256).unwrap().certs[2].clone();
    let given = [root.clone(), other.clone(), leaf.clone(), int.clone()];
    let pfx = pfx::Writer::new("pw").key(&m.key_pkcs8, None);
    let pfx = given.iter().fold(pfx, |w, c| w.cert(c, None)).to_base64().unwrap();
    let moved = CertMaterial::import(&pfx, "pw", false).unwrap();
    assert_eq!(moved.certs, [leaf.clone(), root.clone(), other.clone(), int.clone()]);
    assert_eq!(moved.leaf, 0);
    let kept = CertMaterial::import(&pfx, "pw", true).unwrap();
    assert_eq!(kept.certs, given);
    assert_eq!(kept.leaf(), leaf.as_slice());
    // The stored PFX keeps that order too, as an independent parser (the OpenSSL CLI) reads it.
    let der =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, kept.secret_value(PKCS12).unwrap()).unwrap();
    let path = std::env::temp_dir().join(format!("emulator-kept-{}.pfx", std::process::id()));
    std::fs::write(&path, der).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["pkcs12", "-legacy", "-nokeys", "-passin", "pass:", "-in"])
        .arg(&path)
        .output()
        .expect("the openssl CLI is needed as the independent PKCS#12 parser (apt-get install openssl)");
    std::fs::remove_file(&path).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let certs: Vec<Vec<u8>> = pem::parse_many(&out.stdout)
        .unwrap()
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.contents().to_vec())
        .collect();
    assert_eq!(certs, given);
}

#[test]
fn pem_import_accepts_raw_and_base64_pem_as_the_sdks_send_it() {
    let m = CertMaterial::generate("CN=a", KeySpec::P256).unwrap();
    let pem_text = m.secret_value(PEM).unwrap();
    for value in [pem_text.clone(), STANDARD.encode(&pem_text)] {
        let back = CertMaterial::import(&value, "", false).unwrap();
        assert_eq!(back.certs, m.certs);
    }
    let wrong_key = CertMaterial::generate("CN=b", KeySpec::P256).unwrap().key_pkcs8;
    let mismatched =
        format!("{}{}", pfx::pem_block("PRIVATE KEY", &wrong_key), pfx::pem_block("CERTIFICATE", &m.certs[0]));
    assert!(CertMaterial::import(&mismatched, "", false).unwrap_err().contains("does not match"));
}

#[test]
fn keys_of_every_supported_kind_have_jwk_coordinates() {
    let rsa = generate_key(KeySpec::Rsa(2048)).unwrap();
    assert_eq!(URL_SAFE_NO_PAD.decode(rsa.n.unwrap()).unwrap().len(), 256);
    assert_eq!(rsa.e.as_deref(), Some("AQAB"));
    for (spec, len) in [(KeySpec::P256, 32), (KeySpec::P384, 48), (KeySpec::P521, 66), (KeySpec::P256K, 32)] {
        let k = generate_key(spec).unwrap();
        assert_eq!(k.crv.as_deref(), spec.curve());
        assert_eq!(URL_SAFE_NO_PAD.decode(k.x.unwrap()).unwrap().len(), len);
        assert_eq!(URL_SAFE_NO_PAD.decode(k.y.unwrap()).unwrap().len(), len);
    }
}
