//! The provider against the emulator: every identity mode, object type and format, checked with an
//! independent parser against the emulator's own material, and the error paths.

use secrecy::ExposeSecret;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use emulator::{Emulator, Faults, Handle, Seed};
use keyvault::{Config, ErrorKind, MountRequest, NetworkConfig, Provider};
use x509_parser::prelude::{FromDer, X509Certificate};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const ISSUER: &str = "https://oidc.cluster.test/";
const TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";

fn seed() -> Seed {
    Seed::from_yaml(&format!(
        r#"
tenants:
  - id: {TENANT}
    applications:
      - {{ clientId: sp, objectId: sp-oid, clientSecret: sp-secret }}
      - {{ clientId: sp2, objectId: sp2-oid, clientSecret: sp2-secret }}
      - {{ clientId: denied, objectId: denied-oid, clientSecret: denied-secret }}
      - clientId: wi
        objectId: wi-oid
        federatedCredentials: [ {{ issuer: "{ISSUER}", subject: "system:serviceaccount:default:app" }} ]
managedIdentities:
  - {{ tenant: {TENANT}, clientId: uami, objectId: uami-oid }}
  - {{ tenant: {TENANT}, objectId: node-oid, systemAssigned: true }}
podIdentities:
  - {{ namespace: legacy, clientId: uami }}
issuers:
  - url: "{ISSUER}"
vaults:
  - name: kv1
    tenant: {TENANT}
    access:
      - {{ principal: sp-oid, secrets: [get, list], keys: [get, list], certificates: [get, list] }}
      - {{ principal: sp2-oid, secrets: [get], keys: [get], certificates: [get] }}
      - {{ principal: wi-oid, secrets: [get] }}
      - {{ principal: uami-oid, secrets: [get] }}
      - {{ principal: node-oid, secrets: [get] }}
    secrets:
      - {{ name: db-password, value: "s3cr3t-db" }}
      - {{ name: b64, value: "aGVsbG8gd29ybGQ=" }}
      - {{ name: hexed, value: "68656c6c6f" }}
      - {{ name: db-json, value: '{{"username":"app","db":{{"host":"db.internal","port":5432}}}}' }}
      - {{ name: not-json, value: "s3cr3t-plain" }}
      - {{ name: app-one, value: "one", tags: {{ team: payments, tier: gold }} }}
      - {{ name: app-two, value: "two", tags: {{ team: search }} }}
      - {{ name: app-off, value: "off", tags: {{ team: payments }} }}
      - name: staged
        versions:
          - {{ value: s1 }}
          - {{ value: s2-expired, exp: 1000000000 }}
          - {{ value: s3-not-yet, nbf: 4102444800 }}
          - {{ value: s4-disabled, enabled: false }}
      - name: history
        versions: [ {{ value: h1 }}, {{ value: h2 }}, {{ value: h3-disabled, enabled: false }}, {{ value: h4 }}, {{ value: h5 }} ]
    keys:
      - {{ name: rsa, kty: RSA, size: 2048 }}
      - {{ name: rotated, kty: EC, curve: P-256, versions: 3 }}
      - {{ name: ec256, kty: EC, curve: P-256 }}
      - {{ name: ec384, kty: EC, curve: P-384 }}
      - {{ name: ec521, kty: EC, curve: P-521 }}
      - {{ name: k1, kty: EC, curve: P-256K }}
    certificates:
      - {{ name: tls, subject: CN=tls.example.com }}
      - {{ name: tls-pem, contentType: application/x-pem-file, kty: EC, curve: P-256 }}
  - name: kv2
    tenant: {TENANT}
    access:
      - {{ principal: sp-oid, secrets: [get, list] }}
    secrets:
      - {{ name: db-password, value: "s3cr3t-db-replica" }}
      - {{ name: only-in-kv2, value: "replica-only" }}
"#
    ))
    .unwrap()
}

async fn setup(config: impl FnOnce(&mut Config)) -> (Handle, Provider) {
    let h = Emulator::builder().seed(seed()).start().await.unwrap();
    let mut c = Config {
        network: NetworkConfig {
            extra_ca_pem: Some(h.ca_pem.clone()),
            resolve_all_to: Some("127.0.0.1".parse().unwrap()),
            vault_port: Some(h.https_addr.port()),
            authority_override: Some(h.authority_url()),
            imds_url: Some(h.http_url()),
            nmi_url: Some(h.http_url()),
            ..NetworkConfig::default()
        },
        ..Config::default()
    };
    c.retry.base_delay = Duration::from_millis(50);
    config(&mut c);
    let p = Provider::new(c).unwrap();
    (h, p)
}

fn objects(items: &[&str]) -> String {
    let mut s = String::from("array:\n");
    for i in items {
        s.push_str("  - |\n");
        for line in i.lines() {
            s.push_str(&format!("    {line}\n"));
        }
    }
    s
}

fn request(objs: &str, extra: &[(&str, &str)], secrets: &[(&str, &str)]) -> MountRequest {
    let mut attributes: BTreeMap<String, String> = [
        ("csi.storage.k8s.io/pod.name", "web-0"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("keyvaultName", "kv1"),
        ("tenantID", TENANT),
        ("objects", objs),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        attributes.insert(k.to_string(), v.to_string());
    }
    MountRequest {
        attributes,
        secrets: secrets.iter().map(|(k, v)| (k.to_string(), v.to_string().into())).collect(),
        default_mode: 0o644,
        ..Default::default()
    }
}

const SP: &[(&str, &str)] = &[("clientid", "sp"), ("clientsecret", "sp-secret")];

fn file<'a>(r: &'a keyvault::MountResponse, path: &str) -> &'a keyvault::File {
    r.files.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("no file {path}: {:?}", r.files))
}

#[tokio::test]
async fn every_object_type_and_format_matches_the_emulators_material() {
    let (h, p) = setup(|_| {}).await;
    let objs = objects(&[
        "objectName: db-password\nobjectType: secret\nobjectAlias: db/password\nfilePermission: \"0440\"",
        "objectName: b64\nobjectType: secret\nobjectEncoding: base64",
        "objectName: hexed\nobjectType: secret\nobjectEncoding: hex",
        "objectName: rsa\nobjectType: key",
        "objectName: ec256\nobjectType: key",
        "objectName: ec384\nobjectType: key",
        "objectName: ec521\nobjectType: key",
        "objectName: tls\nobjectType: cert\nobjectAlias: tls-leaf.pem",
        "objectName: tls\nobjectType: secret",
        "objectName: tls\nobjectType: secret\nobjectFormat: pfx\nobjectAlias: tls.pfx.b64",
        "objectName: tls\nobjectType: secret\nobjectFormat: pfx\nobjectEncoding: base64\nobjectAlias: tls.pfx",
        "objectName: tls-pem\nobjectType: secret",
    ]);
    let r = p.mount(request(&objs, &[], SP)).await.unwrap();

    let pw = file(&r, "db/password");
    assert_eq!((pw.contents.expose_secret(), pw.mode), (&b"s3cr3t-db"[..], 0o440));
    assert_eq!(file(&r, "b64").contents.expose_secret(), b"hello world");
    assert_eq!(file(&r, "hexed").contents.expose_secret(), b"hello");

    // Keys: SPKI PEM, parsed independently and compared with the emulator's JWK.
    for (name, crv) in [("ec256", "P-256"), ("ec384", "P-384"), ("ec521", "P-521")] {
        let pem = pem::parse(file(&r, name).contents.expose_secret()).unwrap();
        assert_eq!(pem.tag(), "PUBLIC KEY");
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(pem.contents()).unwrap();
        let jwk = h.key_jwk("kv1", name).unwrap();
        let point = spki.subject_public_key.data.to_vec();
        let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        assert_eq!(&point[1..1 + x.len()], x.as_slice(), "{crv}");
    }
    let rsa_pem = pem::parse(file(&r, "rsa").contents.expose_secret()).unwrap();
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(rsa_pem.contents()).unwrap();
    match spki.parsed().unwrap() {
        x509_parser::public_key::PublicKey::RSA(k) => {
            let n = URL_SAFE_NO_PAD.decode(h.key_jwk("kv1", "rsa").unwrap()["n"].as_str().unwrap()).unwrap();
            assert_eq!(k.modulus.iter().skip_while(|b| **b == 0).copied().collect::<Vec<_>>(), n);
        }
        other => panic!("{other:?}"),
    }

    // cert: the leaf only.
    let leaf = pem::parse_many(file(&r, "tls-leaf.pem").contents.expose_secret()).unwrap();
    assert_eq!(leaf.len(), 1);
    assert_eq!(X509Certificate::from_der(leaf[0].contents()).unwrap().1.subject().to_string(), "CN=tls.example.com");

    // PFX-backed secret as PEM: the PKCS#8 key first, then leaf → intermediate → root.
    let (pfx_b64, ct) = h.certificate_secret("kv1", "tls").unwrap();
    assert_eq!(ct.as_deref(), Some("application/x-pkcs12"));
    let blocks = pem::parse_many(file(&r, "tls").contents.expose_secret()).unwrap();
    let tags: Vec<&str> = blocks.iter().map(|b| b.tag()).collect();
    assert_eq!(tags, ["PRIVATE KEY", "CERTIFICATE", "CERTIFICATE", "CERTIFICATE"]);
    let subjects: Vec<String> =
        blocks[1..].iter().map(|b| X509Certificate::from_der(b.contents()).unwrap().1.subject().to_string()).collect();
    assert_eq!(subjects, ["CN=tls.example.com", "CN=Emulator Intermediate CA", "CN=Emulator Root CA"]);
    // The key, as an independent PKCS#12 parser (the OpenSSL CLI) reads the vault's PFX.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.pfx");
    std::fs::write(&path, STANDARD.decode(&pfx_b64).unwrap()).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["pkcs12", "-legacy", "-nodes", "-nocerts", "-passin", "pass:", "-in"])
        .arg(&path)
        .output()
        .expect("the openssl CLI is needed as the independent PKCS#12 parser (apt-get install openssl)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let openssl_key = pem::parse_many(&out.stdout).unwrap().into_iter().find(|b| b.tag() == "PRIVATE KEY").unwrap();
    assert_eq!(blocks[0].contents(), openssl_key.contents(), "the key written is the vault's key");

    // PFX as stored (base64 text), and decoded to binary.
    assert_eq!(file(&r, "tls.pfx.b64").contents.expose_secret(), pfx_b64.as_bytes());
    assert_eq!(file(&r, "tls.pfx").contents.expose_secret(), STANDARD.decode(&pfx_b64).unwrap());

    // PEM-backed secret: exactly as stored.
    assert_eq!(
        file(&r, "tls-pem").contents.expose_secret(),
        h.certificate_secret("kv1", "tls-pem").unwrap().0.as_bytes()
    );

    // Versions: <type>/<name> → the vault's latest version ids.
    assert_eq!(r.object_versions["secret/db-password"], h.latest_version("kv1", "secrets", "db-password").unwrap());
    assert_eq!(r.object_versions["key/rsa"], h.latest_version("kv1", "keys", "rsa").unwrap());
    assert_eq!(r.object_versions["cert/tls"], h.latest_version("kv1", "certificates", "tls").unwrap());
}

#[tokio::test]
async fn split_cert_and_key_files_and_chain_order_flag() {
    let (_h, p) = setup(|c| {
        c.write_cert_and_key_in_separate_files = true;
        c.construct_pem_chain = false;
    })
    .await;
    let r = p.mount(request(&objects(&["objectName: tls\nobjectType: secret"]), &[], SP)).await.unwrap();
    let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["tls.crt", "tls.key", "tls"]);
    assert_eq!(pem::parse_many(file(&r, "tls.crt").contents.expose_secret()).unwrap().len(), 3);
    assert_eq!(pem::parse_many(file(&r, "tls.key").contents.expose_secret()).unwrap()[0].tag(), "PRIVATE KEY");
}

#[tokio::test]
async fn version_history_writes_exactly_n_enabled_versions_newest_first() {
    let (_h, p) = setup(|_| {}).await;
    let r = p
        .mount(request(&objects(&["objectName: history\nobjectType: secret\nobjectVersionHistory: 3"]), &[], SP))
        .await
        .unwrap();
    let got: Vec<(String, String)> = r
        .files
        .iter()
        .map(|f| (f.path.clone(), String::from_utf8(f.contents.expose_secret().to_vec()).unwrap()))
        .collect();
    assert_eq!(
        got,
        [("history/0".into(), "h5".into()), ("history/1".into(), "h4".into()), ("history/2".into(), "h2".into())]
    );
    assert_eq!(r.object_versions.len(), 3);
    assert!(r.object_versions.contains_key("secret/history/2"));
}

#[tokio::test]
async fn version_history_from_a_version_that_is_not_enabled_writes_nothing_and_succeeds() {
    let (_h, p) = setup(|_| {}).await;
    let r = p
        .mount(request(
            &objects(&[
                "objectName: history\nobjectType: secret\nobjectVersionHistory: 3\nobjectVersion: 00000000000000000000000000000000",
                "objectName: db-password\nobjectType: secret",
            ]),
            &[],
            SP,
        ))
        .await
        .unwrap();
    // Upstream: zero files for that object, no error; the other objects are written.
    let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["db-password"]);
    assert!(r.object_versions.keys().all(|k| !k.starts_with("secret/history")), "{:?}", r.object_versions);
}

#[tokio::test]
async fn workload_identity_exchanges_the_service_account_token() {
    let (h, p) = setup(|_| {}).await;
    let tokens = |sa: &str, ttl: i64| {
        let t = h.service_account_token(ISSUER, "default", sa, "api://AzureADTokenExchange", ttl).unwrap();
        serde_json::json!({ "api://AzureADTokenExchange": { "token": t, "expirationTimestamp": "2100-01-01T00:00:00Z" } }).to_string()
    };
    let objs = objects(&["objectName: db-password\nobjectType: secret"]);
    let ok = tokens("app", 3600);
    let r = p.mount(request(&objs, &[("clientID", "wi"), (TOKENS, &ok)], &[])).await.unwrap();
    assert_eq!(r.files[0].contents.expose_secret(), b"s3cr3t-db");
    let wrong = tokens("intruder", 3600);
    let e = p.mount(request(&objs, &[("clientID", "wi"), (TOKENS, &wrong)], &[])).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert!(
        e.message.contains("AADSTS700213")
            && e.message.contains("failed to get objectType:secret, objectName:db-password"),
        "{}",
        e.message
    );
    assert!(!e.message.contains(&wrong[20..60]), "no token in errors");
    let expired = tokens("app", -30);
    let e = p.mount(request(&objs, &[("clientID", "wi"), (TOKENS, &expired)], &[])).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(e.message.contains("expired"), "{}", e.message);
}

#[tokio::test]
async fn managed_and_pod_identities_through_imds_and_nmi() {
    let (_h, p) = setup(|_| {}).await;
    let objs = objects(&["objectName: db-password\nobjectType: secret"]);
    for extra in [
        vec![("useVMManagedIdentity", "true"), ("userAssignedIdentityID", "uami")],
        vec![("useVMManagedIdentity", "true")],
    ] {
        let r = p.mount(request(&objs, &extra, &[])).await.unwrap();
        assert_eq!(r.files[0].contents.expose_secret(), b"s3cr3t-db", "{extra:?}");
    }
    let e = p
        .mount(request(&objs, &[("useVMManagedIdentity", "true"), ("userAssignedIdentityID", "ghost")], &[]))
        .await
        .unwrap_err();
    assert!(e.message.contains("Identity not found"), "{}", e.message);
    let mut legacy = request(&objs, &[("usePodIdentity", "true")], &[]);
    legacy.attributes.insert("csi.storage.k8s.io/pod.namespace".into(), "legacy".into());
    assert_eq!(p.mount(legacy).await.unwrap().files[0].contents.expose_secret(), b"s3cr3t-db");
    let e = p.mount(request(&objs, &[("usePodIdentity", "true")], &[])).await.unwrap_err();
    assert!(e.message.contains("nmi response failed with status code: 404"), "{}", e.message);
}

#[tokio::test]
async fn key_vault_errors_name_the_object_and_the_cause() {
    let (h, p) = setup(|_| {}).await;
    let e = p.mount(request(&objects(&["objectName: nope\nobjectType: secret"]), &[], SP)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        e.message.starts_with(
            "failed to get objectType:secret, objectName:nope, objectVersion:: GET https://kv1.vault.azure.net:"
        ),
        "{}",
        e.message
    );
    assert!(e.message.contains("404 Not Found SecretNotFound"), "{}", e.message);
    let e = p
        .mount(request(
            &objects(&["objectName: db-password\nobjectType: secret"]),
            &[],
            &[("clientid", "denied"), ("clientsecret", "denied-secret")],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert!(e.message.contains("403 Forbidden Forbidden (AccessDenied)"), "{}", e.message);
    let e = p.mount(request(&objects(&["objectName: k1\nobjectType: key"]), &[], SP)).await.unwrap_err();
    assert!(e.message.ends_with("curve P-256K is not supported"), "{}", e.message);
    let e = p
        .mount(request(
            &objects(&["objectName: db-password\nobjectType: secret"]),
            &[],
            &[("clientid", "sp"), ("clientsecret", "bad")],
        ))
        .await
        .unwrap_err();
    assert!(e.message.contains("AADSTS7000215") && !e.message.contains("bad\""), "{}", e.message);
    assert!(!e.message.contains("s3cr3t"));
    let _ = h;
}

#[tokio::test]
async fn a_429_storm_is_retried_with_retry_after_then_reported_as_throttled() {
    let (h, p) = setup(|c| c.retry.max_attempts = 3).await;
    let objs = objects(&["objectName: db-password\nobjectType: secret"]);
    p.mount(request(&objs, &[], SP)).await.unwrap();
    h.set_throttle("kv1", 0, Duration::from_secs(1));
    let started = Instant::now();
    let mut req = request(&objs, &[], SP);
    req.deadline = Some(Instant::now() + Duration::from_secs(10));
    // A fresh object (no dedup) under a storm: retried after Retry-After (1 s), then Throttled.
    req.attributes.insert("objects".into(), objects(&["objectName: b64\nobjectType: secret"]));
    let e = p.mount(req).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled, "{}", e.message);
    assert!(started.elapsed() >= Duration::from_millis(1900), "honoured Retry-After twice: {:?}", started.elapsed());
    assert_eq!(h.count(|k| k.object == "b64" && k.status == 429), 3);
    h.set_throttle("kv1", 4000, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        p.mount(request(&objects(&["objectName: b64\nobjectType: secret"]), &[], SP)).await.is_ok(),
        "recovers when the vault does"
    );
}

#[tokio::test]
async fn after_a_429_the_waiters_go_out_a_few_at_a_time_not_into_the_next_window_all_at_once() {
    let (h, p) = setup(|_| {}).await;
    let names: Vec<String> = (0..12).map(|i| format!("storm-{i}")).collect();
    for n in &names {
        h.set_secret("kv1", n, &format!("value-of-{n}"));
    }
    p.mount(request(&objects(&["objectName: db-password\nobjectType: secret"]), &[], SP)).await.unwrap();
    h.reset_stats();
    // Three requests per 1 s window: 12 objects need four windows whatever we do.
    h.set_throttle("kv1", 3, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1100)).await; // a fresh window, nothing counted in it yet
    let items: Vec<String> = names.iter().map(|n| format!("objectName: {n}\nobjectType: secret")).collect();
    let mut req = request(&objects(&items.iter().map(String::as_str).collect::<Vec<_>>()), &[], SP);
    req.deadline = Some(Instant::now() + Duration::from_secs(20));
    let r = p.mount(req).await.expect("every object arrives once the windows allow it");
    assert_eq!(r.files.len(), 12);
    let refused = h.count(|k| k.vault == "kv1" && k.status == 429);
    // The first round (12 at once) is refused 9 times; without a shrinking window the 9 waiters
    // then go out together (6 refused, then 3: 18 in all). With it, each later window costs one.
    assert!(refused <= 12, "{refused} requests answered 429 for 12 objects");
    assert_eq!(h.count(|k| k.vault == "kv1" && k.status == 200), 12, "one success per object");
    h.set_throttle("kv1", 4000, Duration::from_secs(10));
}

#[tokio::test]
async fn outages_and_refused_connections_are_unavailable_within_the_deadline() {
    // Ten attempts with this back-off would take minutes: only the deadline ends them early.
    let (h, p) = setup(|c| {
        c.retry.max_attempts = 10;
        c.retry.base_delay = Duration::from_millis(400);
    })
    .await;
    let objs = objects(&["objectName: db-password\nobjectType: secret"]);
    p.mount(request(&objs, &[], SP)).await.unwrap();
    h.set_faults("kv1", Faults { outage: true, ..Default::default() });
    let mut req = request(&objects(&["objectName: hexed\nobjectType: secret"]), &[], SP);
    req.deadline = Some(Instant::now() + Duration::from_secs(5));
    let e = p.mount(req).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{}", e.message);
    assert!(e.message.contains("503"), "{}", e.message);
    h.clear_faults("kv1");
    h.stop_listening();
    let mut req = request(&objects(&["objectName: b64\nobjectType: secret"]), &[], SP);
    req.deadline = Some(Instant::now() + Duration::from_secs(3));
    let started = Instant::now();
    let e = p.mount(req).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Unavailable | ErrorKind::DeadlineExceeded), "{e:?}");
    // Generous for a loaded runner; without the deadline the retries would go on for minutes.
    assert!(started.elapsed() < Duration::from_secs(3 + 5), "the deadline bounds retries: {:?}", started.elapsed());
    h.resume_listening().await.unwrap();
}

#[tokio::test]
async fn twenty_objects_cost_one_round_of_parallel_requests_and_tokens_and_challenges_are_cached() {
    let (h, p) = setup(|_| {}).await;
    let names: Vec<String> = (0..20).map(|i| format!("par-{i}")).collect();
    for n in &names {
        h.set_secret("kv1", n, &format!("value-of-{n}"));
    }
    let items: Vec<String> = names.iter().map(|n| format!("objectName: {n}\nobjectType: secret")).collect();
    let objs = objects(&items.iter().map(String::as_str).collect::<Vec<_>>());
    p.mount(request(&objects(&["objectName: db-password\nobjectType: secret"]), &[], SP)).await.unwrap();
    h.reset_stats();
    h.set_faults("kv1", Faults { latency_ms: 300, ..Default::default() });
    let started = Instant::now();
    let r = p.mount(request(&objs, &[], SP)).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(r.files.len(), 20);
    // Sequentially this is 20 × 300 ms = 6 s; one parallel round is ~300 ms.
    assert!(elapsed < Duration::from_millis(2500), "20 objects took {elapsed:?}");
    assert_eq!(h.count(|k| k.vault == "kv1" && k.status == 200), 20, "one GET per object");
    assert_eq!(h.count(|k| k.vault == "kv1" && k.status == 401), 0, "the challenge scope is cached per vault");
    assert_eq!(h.count(|k| k.vault == "entra"), 0, "the token is cached");
}

#[tokio::test]
async fn concurrent_identical_fetches_share_requests_only_within_one_identity() {
    let (h, p) = setup(|_| {}).await;
    let p = Arc::new(p);
    h.set_faults("kv1", Faults { latency_ms: 100, ..Default::default() });
    let objs = objects(&["objectName: db-password\nobjectType: secret", "objectName: b64\nobjectType: secret"]);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (p, objs) = (p.clone(), objs.clone());
        let creds: &[(&str, &str)] =
            if i % 2 == 0 { SP } else { &[("clientid", "sp2"), ("clientsecret", "sp2-secret")] };
        let req = request(&objs, &[], creds);
        tasks.push(tokio::spawn(async move { p.mount(req).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // 2 identities × 2 objects, whatever the number of pods.
    assert_eq!(h.count(|k| k.vault == "kv1" && k.status == 200), 4);
    assert_eq!(h.count(|k| k.vault == "kv1" && k.status == 200 && k.identity == "sp2-oid"), 2);
    assert!(p.stats().dedup_hits.load(std::sync::atomic::Ordering::Relaxed) >= 16);
}

/// A refresh-now fetch never reuses a result that finished before it (within the dedup window a
/// mount would), but the volumes of its own cycle share its requests.
#[tokio::test]
async fn a_refresh_now_fetch_skips_the_dedup_window_and_shares_its_own_cycle() {
    let (h, p) = setup(|c| c.dedup_window = Duration::from_secs(60)).await;
    let objs = objects(&["objectName: db-password\nobjectType: secret"]);
    p.mount(request(&objs, &[], SP)).await.unwrap();
    h.set_secret("kv1", "db-password", "changed-just-now");
    let within_window = p.mount(request(&objs, &[], SP)).await.unwrap();
    assert_ne!(within_window.files[0].contents.expose_secret(), b"changed-just-now", "a mount shares the window");
    let forced = |cycle| MountRequest { cycle: Some(cycle), fresh: true, ..request(&objs, &[], SP) };
    let before = h.count(|k| k.vault == "kv1" && k.object == "db-password");
    let (a, b) = tokio::join!(p.mount(forced(7)), p.mount(forced(7)));
    assert_eq!(a.unwrap().files[0].contents.expose_secret(), b"changed-just-now");
    assert_eq!(b.unwrap().files[0].contents.expose_secret(), b"changed-just-now");
    assert_eq!(h.count(|k| k.vault == "kv1" && k.object == "db-password") - before, 1, "one request per cycle");
}

#[tokio::test]
async fn object_version_pins_a_version() {
    let (h, p) = setup(|_| {}).await;
    let v1 = h.set_secret("kv1", "pinned", "first").unwrap();
    h.set_secret("kv1", "pinned", "second").unwrap();
    let objs = objects(&[&format!("objectName: pinned\nobjectType: secret\nobjectVersion: {v1}")]);
    let r = p.mount(request(&objs, &[], SP)).await.unwrap();
    assert_eq!(r.files[0].contents.expose_secret(), b"first");
    assert_eq!(r.object_versions["secret/pinned"], v1);
    let latest = p.mount(request(&objects(&["objectName: pinned\nobjectType: secret"]), &[], SP)).await.unwrap();
    assert_eq!(latest.files[0].contents.expose_secret(), b"second");
}

/// `optional: "true"` (ours): a missing object lets the mount succeed without its file and with an
/// empty version; it appears once it exists; anything but a 404 still fails the mount.
#[tokio::test]
async fn a_missing_optional_object_is_skipped_and_appears_once_it_exists() {
    let (h, p) = setup(|c| c.dedup_window = Duration::ZERO).await;
    let objs = objects(&[
        "objectName: db-password\nobjectType: secret",
        "objectName: later\nobjectType: secret\noptional: \"true\"",
        "objectName: not-yet\nobjectType: key\noptional: true\nobjectVersionHistory: 2",
    ]);
    let r = p.mount(request(&objs, &[], SP)).await.expect("optional objects do not fail the mount");
    let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["db-password"]);
    assert_eq!(r.object_versions["secret/later"], "", "the pod status says what is missing");
    assert_eq!(r.object_versions["key/not-yet"], "");

    h.set_secret("kv1", "later", "here-now");
    let r = p.mount(request(&objs, &[], SP)).await.unwrap();
    assert_eq!(file(&r, "later").contents.expose_secret(), b"here-now");
    assert!(!r.object_versions["secret/later"].is_empty());

    // Not optional: the 404 fails the mount, naming the object.
    let strict = objects(&["objectName: missing\nobjectType: secret"]);
    let e = p.mount(request(&strict, &[], SP)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("objectName:missing"), "{}", e.message);
    // Optional, but forbidden: still an error (sp2 may not list versions, and `denied` may read nothing).
    let forbidden = objects(&["objectName: db-password\nobjectType: secret\noptional: \"true\""]);
    let e = p.mount(request(&forbidden, &[], &[("clientid", "denied"), ("clientsecret", "denied-secret")])).await;
    assert_eq!(e.unwrap_err().kind, ErrorKind::Forbidden);
}

#[path = "provider/policies.rs"]
mod policies;

#[tokio::test]
async fn json_keys_become_files_and_mismatches_name_the_key_not_the_value() {
    let (_h, p) = setup(|_| {}).await;
    let o = objects(&[
        "objectName: db-json\nobjectType: secret\nobjectFormat: json\njsonKeys:\n  - key: username\n    filePermission: \"0400\"\n  - key: db.host\n    objectAlias: host",
    ]);
    let r = p.mount(request(&o, &[], SP)).await.unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(r.files.len(), 2, "{:?}", r.files);
    assert_eq!((file(&r, "username").contents.expose_secret(), file(&r, "username").mode), (&b"app"[..], 0o400));
    assert_eq!(file(&r, "host").contents.expose_secret(), b"db.internal");
    assert_eq!(r.object_versions.keys().collect::<Vec<_>>(), ["secret/db-json"]);

    for (item, want) in [
        (
            "objectName: db-json\nobjectType: secret\nobjectFormat: json\njsonKeys:\n  - key: db.port",
            "jsonKeys \"db.port\": the value is a number, only strings are written",
        ),
        (
            "objectName: db-json\nobjectType: secret\nobjectFormat: json\njsonKeys:\n  - key: password",
            "jsonKeys \"password\": not in the document",
        ),
        (
            "objectName: not-json\nobjectType: secret\nobjectFormat: json\njsonKeys:\n  - key: a",
            "objectFormat json: the value is not valid JSON (line 1, column 1)",
        ),
    ] {
        let e = p.mount(request(&objects(&[item]), &[], SP)).await.unwrap_err();
        assert!(e.message.starts_with("failed to get objectType:secret, objectName:"), "{}", e.message);
        assert!(e.message.ends_with(want), "{}", e.message);
        assert!(!e.message.contains("s3cr3t") && !e.message.contains("db.internal"), "{}", e.message);
        assert_eq!(e.kind, keyvault::error::ErrorKind::InvalidInput);
    }
}

fn selected(selector: &str) -> MountRequest {
    let mut r = request("", &[], SP);
    r.attributes.remove("objects");
    r.attributes.insert("objectSelector".into(), selector.into());
    r
}

fn paths(r: &keyvault::MountResponse) -> Vec<&str> {
    r.files.iter().map(|f| f.path.as_str()).collect()
}

#[tokio::test]
async fn an_object_selector_mounts_the_matching_secrets_each_round() {
    // No dedup window: each mount below is its own round (a listing is shared like a GET otherwise).
    let (h, p) = setup(|c| c.dedup_window = Duration::ZERO).await;
    h.set_secret_enabled("kv1", "app-off", false);
    // By prefix: the enabled secrets starting with app-, sorted, with the selector's mode.
    let r = p.mount(selected("namePrefix: app-\nfilePermission: \"0440\"")).await.unwrap();
    assert_eq!(paths(&r), ["app-one", "app-two"]);
    assert!(r.files.iter().all(|f| f.mode == 0o440));
    assert_eq!(r.object_versions.keys().collect::<Vec<_>>(), ["secret/app-one", "secret/app-two"]);
    // By tag: key=value and key alone, all of them.
    let r = p.mount(selected("tags: [team=payments, tier]")).await.unwrap();
    assert_eq!(paths(&r), ["app-one"]);
    let r = p.mount(selected("tags: [team]")).await.unwrap();
    assert_eq!(paths(&r), ["app-one", "app-two"]);
    // All: every enabled secret the class can read, never a certificate's backing secret.
    let all = p.mount(selected("all: true\nmaxObjects: 50")).await.unwrap();
    assert!(paths(&all).contains(&"db-password") && !paths(&all).contains(&"app-off"), "{:?}", paths(&all));
    assert!(!paths(&all).contains(&"tls") && !paths(&all).contains(&"tls-pem"), "{:?}", paths(&all));
    // The next round sees a new secret and loses a disabled one.
    h.set_secret("kv1", "app-three", "three");
    h.set_secret_enabled("kv1", "app-two", false);
    let r = p.mount(MountRequest { cycle: Some(1), ..selected("namePrefix: app-") }).await.unwrap();
    assert_eq!(paths(&r), ["app-one", "app-three"]);
    // Explicit objects and a selection together: the same secret once; another object's file is refused.
    let mut both = selected("namePrefix: app-");
    both.attributes.insert("objects".into(), objects(&["objectName: app-one\nobjectType: secret"]));
    assert_eq!(paths(&p.mount(both).await.unwrap()), ["app-one", "app-three"]);
    let mut clash = selected("namePrefix: app-");
    clash
        .attributes
        .insert("objects".into(), objects(&["objectName: db-password\nobjectType: secret\nobjectAlias: app-three"]));
    let e = p.mount(clash).await.unwrap_err();
    assert_eq!(
        e.message,
        "objectSelector selects secret app-three, whose file \"app-three\" is also written by objects entry db-password (secret/db-password); give that object another objectAlias"
    );
}

#[tokio::test]
async fn a_selection_is_bounded_and_a_missing_list_permission_is_named() {
    let (h, p) = setup(|c| c.dedup_window = Duration::ZERO).await;
    let e = p.mount(selected("all: true\nmaxObjects: 2")).await.unwrap_err();
    assert!(e.message.starts_with("objectSelector (all secrets) matches "), "{}", e.message);
    assert!(e.message.ends_with("more than maxObjects 2; raise maxObjects (at most 1000) or narrow the selection"));
    // sp2 may get secrets but not list them.
    let mut r = selected("namePrefix: app-");
    r.secrets = [("clientid", "sp2"), ("clientsecret", "sp2-secret")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string().into()))
        .collect();
    let e = p.mount(r).await.unwrap_err();
    assert_eq!(e.kind, keyvault::error::ErrorKind::Forbidden);
    assert!(
        e.message.starts_with("objectSelector: listing the secrets of vault kv1 needs the list permission on secrets (an access policy with List, or the Key Vault Secrets User role): "),
        "{}",
        e.message
    );
    // Paging: 60 more matching secrets are read over three pages of 25, each page once per cycle.
    for i in 0..60 {
        h.set_secret("kv1", &format!("bulk-{i:02}"), "b");
    }
    h.reset_stats();
    let (a, b) = tokio::join!(
        p.mount(MountRequest { cycle: Some(9), ..selected("namePrefix: bulk-") }),
        p.mount(MountRequest { cycle: Some(9), ..selected("namePrefix: bulk-") })
    );
    assert_eq!(paths(&a.unwrap()).len(), 60);
    assert_eq!(paths(&b.unwrap()).len(), 60);
    let lists = h.count(|k| k.vault == "kv1" && k.method == "GET" && k.object.is_empty() && k.status == 200);
    let gets = h.count(|k| k.vault == "kv1" && k.object.starts_with("bulk-") && k.status == 200);
    assert_eq!((lists, gets), (3, 60), "one listing and one GET per secret for the cycle, whatever the volumes");
}

/// `maxStaleness` (ours): during an outage a new mount gets what the node fetched with the same
/// identity, marked stale; another identity, a class without the opt-in, a rotation round, an old entry
/// get the error, and a 403 forgets everything the identity was served.
#[tokio::test]
async fn the_last_known_good_serves_an_outage_only_to_the_identity_that_fetched_it() {
    let (h, p) = setup(|c| {
        c.dedup_window = Duration::ZERO;
        c.retry.max_attempts = 1;
    })
    .await;
    let objs = objects(&["objectName: db-password\nobjectType: secret"]);
    let opted = |secrets: &[(&str, &str)]| request(&objs, &[("maxStaleness", "1h")], secrets);
    let fresh = p.mount(opted(SP)).await.unwrap();
    assert_eq!(fresh.served[0].stale, None);
    h.set_faults("kv1", Faults { outage: true, ..Default::default() });

    let stale = p.mount(opted(SP)).await.unwrap();
    assert_eq!(stale.files[0].contents.expose_secret(), b"s3cr3t-db");
    assert!(stale.served[0].stale.is_some_and(|age| age < Duration::from_secs(60)), "{:?}", stale.served);
    assert_eq!(stale.object_versions, fresh.object_versions, "the version it was fetched at");
    // Not for another identity (sp2 may read the object, but was never proven for it on this node).
    let sp2 = [("clientid", "sp2"), ("clientsecret", "sp2-secret")];
    assert_eq!(p.mount(opted(&sp2)).await.unwrap_err().kind, ErrorKind::Unavailable);
    // Not for a class without maxStaleness, nor for a rotation round (its files stay as they are).
    assert_eq!(p.mount(request(&objs, &[], SP)).await.unwrap_err().kind, ErrorKind::Unavailable);
    assert!(p.mount(MountRequest { cycle: Some(3), ..opted(SP) }).await.is_err());
    // Not past maxStaleness.
    assert!(p.mount(request(&objs, &[("maxStaleness", "1s")], SP)).await.is_ok());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(p.mount(request(&objs, &[("maxStaleness", "1s")], SP)).await.is_err(), "older than 1s");

    // A 403 answer forgets everything the identity was served, in every vault.
    h.clear_faults("kv1");
    p.mount(opted(SP)).await.unwrap();
    let mut elsewhere = opted(SP);
    elsewhere.attributes.insert("keyvaultName".into(), "kv2".into());
    elsewhere.attributes.insert("objects".into(), objects(&["objectName: only-in-kv2\nobjectType: secret"]));
    p.mount(elsewhere.clone()).await.unwrap();
    assert_eq!(p.last_good_len(), 2);
    h.set_faults("kv1", Faults { error_status: Some(403), error_rate: 1.0, ..Default::default() });
    assert_eq!(p.mount(opted(SP)).await.unwrap_err().kind, ErrorKind::Forbidden);
    assert_eq!(p.last_good_len(), 0);
    h.set_faults("kv2", Faults { outage: true, ..Default::default() });
    assert!(p.mount(elsewhere).await.is_err(), "kv2's entry went with the identity's 403");
}
