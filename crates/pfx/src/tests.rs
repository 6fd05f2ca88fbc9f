//! Every PFX shape the provider meets, built here with [`Writer`] from certificates made with rcgen.
//!
//! Expected output is derived from the fixture's own inputs by upstream's rule (the upstream Azure provider's rule: keys
//! as PKCS#8 first, then certificates; the AKI/SKI chain for the order), never from this crate's reader; where
//! the order differs from upstream's, the test says so. `stored_order_matches_openssl` cross-checks
//! the reader against an independent parser (the OpenSSL CLI).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::{Bundle, Encryption, Error, Mac, Writer, pem_block};

struct Pki {
    leaf: Vec<u8>,
    leaf_key: Vec<u8>,
    intermediate: Vec<u8>,
    root: Vec<u8>,
    /// The intermediate's subject and key, signed by another root (what CA bundles ship).
    cross_signed: Vec<u8>,
}

fn ca(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    p.use_authority_key_identifier_extension = true;
    p
}

fn pki() -> Pki {
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca("Root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let old_root_key = KeyPair::generate().unwrap();
    let old_root = Issuer::new(ca("Old Root"), old_root_key);
    let int_key = KeyPair::generate().unwrap();
    let int_params = ca("Intermediate");
    let intermediate = int_params.signed_by(&int_key, &root_issuer).unwrap();
    let cross_signed = int_params.signed_by(&int_key, &old_root).unwrap();
    let int_issuer = Issuer::new(int_params, int_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["app.example.com".to_string()]).unwrap();
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf = leaf_params.signed_by(&leaf_key, &int_issuer).unwrap();
    Pki {
        leaf: leaf.der().to_vec(),
        leaf_key: leaf_key.serialize_der(),
        intermediate: intermediate.der().to_vec(),
        root: root.der().to_vec(),
        cross_signed: cross_signed.der().to_vec(),
    }
}

/// Upstream's output for keys `keys` then certificates `certs`, in that order.
fn expected(keys: &[&[u8]], certs: &[&[u8]]) -> String {
    let mut s: String = keys.iter().map(|k| pem_block("PRIVATE KEY", k)).collect();
    s.extend(certs.iter().map(|c| pem_block("CERTIFICATE", c)));
    s
}

fn read(w: &Writer) -> Bundle {
    Bundle::from_base64(&w.to_base64().unwrap(), "").unwrap()
}

#[test]
fn key_vault_shape_gives_key_then_leaf_intermediate_root() {
    let p = pki();
    // Stored leaf-first, as Key Vault stores a generated certificate.
    let w = Writer::key_vault(&p.leaf_key, &[p.leaf.clone(), p.intermediate.clone(), p.root.clone()], 0);
    let want = expected(&[&p.leaf_key], &[&p.leaf, &p.intermediate, &p.root]);
    assert_eq!(read(&w).to_pem(true).unwrap(), want);
    assert_eq!(read(&w).to_pem(false).unwrap(), want);
}

#[test]
fn root_first_is_reordered_only_with_chain_construction() {
    let p = pki();
    let w = Writer::key_vault(&p.leaf_key, &[p.root.clone(), p.intermediate.clone(), p.leaf.clone()], 2);
    let b = read(&w);
    // Upstream (complete chain): leaf → intermediate → root.
    assert_eq!(b.to_pem(true).unwrap(), expected(&[&p.leaf_key], &[&p.leaf, &p.intermediate, &p.root]));
    // `--construct-pem-chain=false`: the PFX's own order, as upstream.
    assert_eq!(b.to_pem(false).unwrap(), expected(&[&p.leaf_key], &[&p.root, &p.intermediate, &p.leaf]));
}

#[test]
fn a_cross_signed_intermediate_is_never_dropped_whatever_the_order() {
    let p = pki();
    let all = [&p.leaf, &p.intermediate, &p.root, &p.cross_signed];
    // Every stored order of the four certificates.
    let orders: Vec<Vec<usize>> = (0..24)
        .map(|mut n| {
            let mut pool = vec![0, 1, 2, 3];
            let mut out = Vec::new();
            for radix in (1..=4).rev() {
                out.push(pool.remove(n % radix));
                n /= radix;
            }
            out
        })
        .collect();
    for order in orders {
        let stored: Vec<Vec<u8>> = order.iter().map(|&i| all[i].clone()).collect();
        let leaf_at = order.iter().position(|&i| i == 0).unwrap();
        let b = read(&Writer::key_vault(&p.leaf_key, &stored, leaf_at));
        let out = b.ordered_certs(true).unwrap();
        let mut sorted: Vec<&[u8]> = out.clone();
        sorted.sort();
        let mut want: Vec<&[u8]> = all.iter().map(|c| c.as_slice()).collect();
        want.sort();
        assert_eq!(sorted, want, "order {order:?}: every certificate written once");
        assert_eq!(out[0], p.leaf.as_slice(), "order {order:?}: the leaf first");
        // Both intermediates carry the same SKI; upstream takes the first stored as the leaf's
        // issuer, and so do we. The real intermediate is always followed by its root.
        let int_at = out.iter().position(|c| *c == p.intermediate.as_slice()).unwrap();
        let root_at = out.iter().position(|c| *c == p.root.as_slice()).unwrap();
        assert!(int_at < root_at || out[1] == p.cross_signed.as_slice(), "order {order:?}: {int_at} {root_at}");
        assert_eq!(b.ordered_certs(false).unwrap(), stored.iter().map(|c| c.as_slice()).collect::<Vec<_>>());
    }
}

#[test]
fn bags_without_local_key_id_still_give_key_and_every_certificate() {
    let p = pki();
    let w = Writer::new("").key(&p.leaf_key, None).cert(&p.root, None).cert(&p.leaf, None).cert(&p.intermediate, None);
    let b = read(&w);
    // Upstream writes the key and all three certificates (x/crypto/pkcs12 ignores localKeyId).
    assert_eq!(b.to_pem(true).unwrap(), expected(&[&p.leaf_key], &[&p.leaf, &p.intermediate, &p.root]));
    assert_eq!(b.to_pem(false).unwrap(), expected(&[&p.leaf_key], &[&p.root, &p.leaf, &p.intermediate]));
}

#[test]
fn every_mac_and_bag_encryption_reads() {
    let p = pki();
    let encryptions = [Encryption::None, Encryption::TripleDes, Encryption::Rc2_40, Encryption::Aes256];
    for mac in [Mac::None, Mac::Sha1, Mac::Sha256] {
        for key_enc in encryptions {
            for cert_enc in encryptions {
                for keys_first in [true, false] {
                    let w = Writer::key_vault(&p.leaf_key, &[p.leaf.clone(), p.intermediate.clone()], 0)
                        .mac(mac)
                        .key_encryption(key_enc)
                        .cert_encryption(cert_enc)
                        .keys_first(keys_first);
                    let got = read(&w).to_pem(true).unwrap();
                    assert_eq!(
                        got,
                        expected(&[&p.leaf_key], &[&p.leaf, &p.intermediate]),
                        "{mac:?} {key_enc:?} {cert_enc:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn incomplete_chain_puts_the_leaf_first_and_keeps_the_rest() {
    let p = pki();
    let w = Writer::key_vault(&p.leaf_key, &[p.root.clone(), p.leaf.clone()], 1);
    // Upstream falls back to the stored order (root, leaf), which puts the root where nginx wants the
    // leaf; we write the leaf's chain (just the leaf: its issuer is missing) then the rest.
    assert_eq!(read(&w).to_pem(true).unwrap(), expected(&[&p.leaf_key], &[&p.leaf, &p.root]));
}

#[test]
fn two_keys_are_both_written_first() {
    let p = pki();
    let other = KeyPair::generate().unwrap().serialize_der();
    let w = Writer::key_vault(&p.leaf_key, std::slice::from_ref(&p.leaf), 0).key(&other, None);
    assert_eq!(read(&w).to_pem(true).unwrap(), expected(&[&p.leaf_key, &other], &[&p.leaf]));
}

#[test]
fn no_key_no_certificate_and_garbage_are_errors_not_empty_files() {
    let p = pki();
    let certs_only = read(&Writer::new("").cert(&p.leaf, None));
    assert!(matches!(certs_only.to_pem(true), Err(Error::NoKey)));
    let key_only = read(&Writer::new("").key(&p.leaf_key, None));
    assert!(matches!(key_only.to_pem(true), Err(Error::NoCertificate)));
    assert!(matches!(Bundle::from_base64("not base64!", ""), Err(Error::Base64(_))));
    assert!(matches!(Bundle::from_base64("aGVsbG8=", ""), Err(Error::Pkcs12(_))));
    let w = Writer::new("secret").key(&p.leaf_key, None).cert(&p.leaf, None);
    let err = Bundle::from_base64(&w.to_base64().unwrap(), "").unwrap_err();
    assert!(matches!(err, Error::Pkcs12(_)), "{err}");
}

#[test]
fn key_material_is_not_in_debug_output() {
    let p = pki();
    let b = read(&Writer::key_vault(&p.leaf_key, std::slice::from_ref(&p.leaf), 0));
    let text = format!("{b:?}");
    assert!(text.contains("<redacted>"));
    assert!(!text.contains(&format!("{:?}", &p.leaf_key[..8])));
}

/// The reader's stored order and contents agree with OpenSSL's, for the legacy Key Vault shape
/// (needs `-legacy` for RC2) and for OpenSSL 3's own AES/SHA-256 shape.
#[test]
fn stored_order_matches_openssl() {
    let Ok(version) = std::process::Command::new("openssl").arg("version").output() else {
        panic!("the openssl CLI is needed as the independent PKCS#12 parser (apt-get install openssl)");
    };
    assert!(version.status.success());
    let p = pki();
    let dir = tempdir();
    for (name, w) in [
        ("kv.pfx", Writer::key_vault(&p.leaf_key, &[p.root.clone(), p.leaf.clone(), p.cross_signed.clone()], 1)),
        (
            "aes.pfx",
            Writer::new("")
                .key(&p.leaf_key, None)
                .cert(&p.intermediate, None)
                .cert(&p.leaf, None)
                .key_encryption(Encryption::Aes256)
                .cert_encryption(Encryption::Aes256)
                .mac(Mac::Sha256),
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, w.to_der().unwrap()).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkcs12", "-legacy", "-nodes", "-passin", "pass:", "-in"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let blocks = pem::parse_many(&out.stdout).unwrap();
        let openssl_certs: Vec<&[u8]> =
            blocks.iter().filter(|b| b.tag() == "CERTIFICATE").map(|b| b.contents()).collect();
        let openssl_keys: Vec<&[u8]> =
            blocks.iter().filter(|b| b.tag() == "PRIVATE KEY").map(|b| b.contents()).collect();
        let ours = Bundle::from_der(&std::fs::read(&path).unwrap(), "").unwrap();
        assert_eq!(ours.ordered_certs(false).unwrap(), openssl_certs, "{name}");
        assert_eq!(ours.keys.iter().map(|k| k.pkcs8.as_slice()).collect::<Vec<_>>(), openssl_keys, "{name}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Key Vault's shape, as OpenSSL describes it: SHA-1 MAC, 3DES-shrouded key, RC2-40 certificates,
/// 2000 iterations — the algorithms Go's `x/crypto/pkcs12` (upstream's decoder) supports.
#[test]
fn key_vault_shape_uses_the_legacy_algorithms_go_reads() {
    let p = pki();
    let dir = tempdir();
    let path = dir.join("kv.pfx");
    std::fs::write(&path, Writer::key_vault(&p.leaf_key, std::slice::from_ref(&p.leaf), 0).to_der().unwrap()).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["pkcs12", "-info", "-legacy", "-noout", "-passin", "pass:", "-in"])
        .arg(&path)
        .output()
        .expect("the openssl CLI");
    let info = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{info}");
    for line in [
        "MAC: sha1, Iteration 2000",
        "Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2000",
        "PKCS7 Encrypted data: pbeWithSHA1And40BitRC2-CBC, Iteration 2000",
    ] {
        assert!(info.contains(line), "{line:?} not in:\n{info}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pfx-test-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
