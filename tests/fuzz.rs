//! Fuzzing of everything a namespace user (or a vault, or a token service) can hand the driver, on
//! stable Rust, inside `make test`: a mutation fuzzer over the checked-in corpora in `tests/fuzz/<target>/`
//! with a bounded budget per target (`FUZZ_SECS`, default 3; `FUZZ_SEED` to replay a run).
//!
//! Each target asserts more than "no panic": what a tenant writes is never echoed past a bound, and a
//! value planted as a secret (a client secret, a service-account token, a secret's value) never
//! appears in an error. A failing input is saved under `target/fuzz-failures/` and printed; fix the
//! bug, then check the input into the target's corpus so it stays a regression test.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A value planted wherever a secret can go; no error may contain it.
const CANARY: &str = "CANARYsecretVALUE";

/// Tokens the mutator splices in: the syntax of every format the targets read.
const DICTIONARY: &[&str] = &[
    "array:",
    "- |",
    "objectName:",
    "objectType:",
    "objectAlias:",
    "objectVersion:",
    "objectVersionHistory:",
    "objectEncoding:",
    "objectFormat:",
    "filePermission:",
    "secret",
    "key",
    "cert",
    "pfx",
    "pem",
    "base64",
    "hex",
    "utf-8",
    "../",
    "/",
    "..",
    "\0",
    "\n",
    "\"",
    "'",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "0777",
    "99999999999999999999",
    "-1",
    "NaN",
    "1e400",
    "2562047h",
    "9999999h",
    "1.5s",
    "ms",
    "µs",
    "h",
    "true",
    "false",
    "null",
    "AzureStackCloud",
    "cloudEnvFileName",
    "/etc/passwd",
    "clientID",
    "tenantId",
    "keyvaultName",
    "usePodIdentity",
    "useVMManagedIdentity",
    "userAssignedIdentityID",
    "token",
    "expirationTimestamp",
    "api://AzureADTokenExchange",
    "\u{202e}",
    "\u{feff}",
    "value",
    "contentType",
    "application/x-pkcs12",
    "application/x-pem-file",
    "kid",
    "kty",
    "RSA",
    "EC",
    "crv",
    "P-256",
    "n",
    "e",
    "x",
    "y",
    "access_token",
    "expires_in",
    "Bearer authorization=\"",
    "resource=\"",
    "scope=\"",
    "&",
];

/// A small deterministic RNG (xorshift64*), so a seed replays a run exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

fn mutate(input: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    for _ in 0..=rng.below(6) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = [0u8, 0xff, 0x7f, 0x80, b'0', b'9', b' ', b'\n'][rng.below(8)];
            }
            2 => {
                let i = rng.below(len + 1);
                let bytes: Vec<u8> = (0..rng.below(16) + 1).map(|_| rng.next() as u8).collect();
                input.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(64)) + 1;
                input.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(256)) + 1;
                let copy = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, copy);
            }
            5 | 6 => {
                let i = rng.below(len + 1);
                let word = DICTIONARY[rng.below(DICTIONARY.len())].as_bytes().to_vec();
                input.splice(i..i, word);
            }
            7 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let (i, j) = (rng.below(len + 1), rng.below(other.len() + 1));
                input.truncate(i);
                input.extend_from_slice(&other[j..]);
            }
            _ if len > 4096 => input.truncate(4096),
            _ => {}
        }
    }
    input.truncate(64 * 1024);
}

/// Runs `target` on every corpus entry, then on mutations of them until the budget is spent.
fn fuzz(name: &str, target: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz").join(name);
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!corpus.is_empty(), "corpus {} is empty", dir.display());
    corpus.sort();
    let secs: f64 = std::env::var("FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_cafe);
    let mut rng =
        Rng(seed ^ name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)));
    let run = |input: &[u8]| {
        if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| target(input))) {
            let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
            std::fs::create_dir_all(&out).unwrap();
            let file =
                out.join(format!("{name}-{:016x}", input.iter().fold(0u64, |h, b| h.rotate_left(5) ^ *b as u64)));
            std::fs::write(&file, input).unwrap();
            let why = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("fuzz target {name} failed on {} (seed {seed}): {}", file.display(), why.unwrap_or_default());
        }
    };
    for entry in &corpus {
        run(entry);
    }
    let started = Instant::now();
    let mut execs = 0u64;
    // Checked after every execution: one input may be slow (a PFX asking for a million PBKDF2 rounds).
    while started.elapsed() < Duration::from_secs_f64(secs) {
        let mut input = corpus[rng.below(corpus.len())].clone();
        mutate(&mut input, &corpus, &mut rng);
        run(&input);
        execs += 1;
    }
    corpus.dedup();
    let took = started.elapsed().as_secs_f64();
    println!("fuzz {name}: {execs} executions in {took:.1} s, corpus {}, seed {seed}, 0 failures", corpus.len());
}

fn text(input: &[u8]) -> String {
    String::from_utf8_lossy(input).into_owned()
}

fn no_canary(what: &str, message: &str) {
    assert!(!message.contains(CANARY), "{what} quotes a planted secret: {message}");
}

/// A workload-identity token whose claims parse (the provider reads `iss` and `sub` from it).
fn token_json() -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let jwt = format!(
        "{}.{}.{CANARY}",
        b64(r#"{"alg":"RS256"}"#),
        b64(r#"{"iss":"https://issuer","sub":"system:serviceaccount:ns:sa","exp":4102444800}"#)
    );
    serde_json::json!({"api://AzureADTokenExchange": {"token": jwt, "expirationTimestamp": "2100-01-01T00:00:00Z"}})
        .to_string()
}

fn base_attributes() -> BTreeMap<String, String> {
    [
        ("csi.storage.k8s.io/pod.name", "web"),
        ("csi.storage.k8s.io/pod.namespace", "ns"),
        ("csi.storage.k8s.io/serviceAccount.name", "sa"),
        ("keyvaultName", "kv1"),
        ("tenantId", "tenant"),
        ("clientID", "client"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([("csi.storage.k8s.io/serviceAccount.tokens".to_string(), token_json())])
    .collect()
}

fn mount_parse(attrs: &BTreeMap<String, String>, secrets: &keyvault::params::SecretMap) -> Result<(), String> {
    let clouds =
        keyvault::cloud::Clouds { env_dir: std::env::temp_dir().join("kv-fuzz-no-such-dir"), ..Default::default() };
    match keyvault::params::parse(attrs, secrets, 0o644, &clouds, false) {
        Ok(p) => {
            for o in &p.objects {
                for path in keyvault::params::output_paths(o, true) {
                    assert!(
                        !path.starts_with('/') && !path.split('/').any(|c| c == ".."),
                        "escaping file name {path:?}"
                    );
                }
            }
            Ok(())
        }
        Err(e) => Err(e.message),
    }
}

/// The class parameter reader: `objects` YAML (names, aliases, paths, versions, encodings, formats), or
/// a whole parameters map; the mount's reader and `check`'s linter.
#[test]
fn class_parameters() {
    fuzz("class_parameters", |input| {
        let mut attrs = base_attributes();
        match serde_saphyr::from_slice::<BTreeMap<String, String>>(input) {
            Ok(map) if !map.is_empty() => {
                attrs.extend(map.into_iter().filter(|(k, _)| !k.starts_with("csi.storage.k8s.io/")));
            }
            _ => {
                attrs.insert("objects".into(), text(input));
            }
        }
        let secrets =
            [("clientid".to_string(), "id".into()), ("clientsecret".to_string(), CANARY.into())].into_iter().collect();
        if let Err(e) = mount_parse(&attrs, &secrets) {
            no_canary("a class parameter error", &e);
        }
        let lint = keyvault::lint::lint(&attrs, false);
        no_canary("check", &format!("{lint:?}"));
    });
}

/// Annotations and Go durations (`keyvault-csi.io/rotation-poll-interval` on classes and SecretSyncs).
#[test]
fn annotations_and_durations() {
    fuzz("durations", |input| {
        let s = text(input);
        let _ = secrets_store::duration::parse_go_duration(&s);
        match secrets_store::annotations::class_interval(Some(&s), Duration::from_secs(30)) {
            Ok(Some(c)) => {
                assert!(
                    c.interval >= Duration::from_secs(30)
                        && c.interval <= secrets_store::annotations::MAX_CLASS_INTERVAL
                );
                // What the poller computes from it must not panic.
                let now = tokio::time::Instant::now();
                let _ = secrets_store::duration::later(now, c.interval);
                let _ = driver::rotation::backoff(c.interval, u32::MAX);
            }
            Ok(None) => unreachable!(),
            Err(e) => assert!(e.len() < 400, "an annotation error is bounded: {} bytes", e.len()),
        }
        assert!(secrets_store::annotations::shown(&s).chars().count() <= 65);
    });
}

/// The volume context kubelet passes (with the pod's `volumeAttributes`) and the tokens JSON, through
/// to the provider's reader.
#[test]
fn volume_context_and_tokens() {
    fuzz("volume_context", |input| {
        let mut context: std::collections::HashMap<String, String> =
            base_attributes().into_iter().filter(|(k, _)| !k.ends_with("tokens")).collect();
        context.insert("secretProviderClass".into(), "spc".into());
        context.insert("objects".into(), "array:\n  - |\n    objectName: s\n    objectType: secret\n".into());
        let tokens = match serde_saphyr::from_slice::<BTreeMap<String, String>>(input) {
            Ok(map) => {
                context.extend(map);
                token_json()
            }
            Err(_) => text(input).replace("TOKEN", CANARY),
        };
        let req = csi_proto::csi::NodePublishVolumeRequest {
            volume_id: "csi-1".into(),
            target_path: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount".into(),
            volume_capability: Some(Default::default()),
            readonly: true,
            volume_context: context,
            secrets: [("csi.storage.k8s.io/serviceAccount.tokens".to_string(), tokens)].into_iter().collect(),
            ..Default::default()
        };
        match secrets_store::volume_context::PublishParams::parse(req) {
            Ok(p) => {
                for (v, kind) in [
                    (&p.pod.namespace, secrets_store::volume_context::NameKind::Label),
                    (&p.pod.name, secrets_store::volume_context::NameKind::Subdomain),
                ] {
                    assert!(v.is_empty() || kind.accepts(v), "{v:?} passed validation");
                }
                let attrs = p.attributes(&BTreeMap::new());
                if let Err(e) = mount_parse(&attrs, &Default::default()) {
                    no_canary("a tokens error", &e);
                }
            }
            Err(e) => no_canary("a volume context error", &e.to_string()),
        }
    });
}

/// The PFX reader (certificates Key Vault returns as `application/x-pkcs12`).
#[test]
fn pfx_reader() {
    fuzz("pfx", |input| {
        if let Ok(b) = pfx::Bundle::from_der(input, "") {
            let _ = b.to_pem(true);
            let _ = b.to_pem(false);
        }
        use base64::Engine;
        let _ = keyvault::convert::pfx_to_pem(&base64::engine::general_purpose::STANDARD.encode(input), true);
    });
}

/// Key Vault and token-service responses: bundles, version pages, errors, challenges, `Retry-After`,
/// token responses, and the conversions applied to a bundle's value.
#[test]
fn service_responses() {
    fuzz("responses", |input| {
        let body = secrecy::SecretSlice::from(input.to_vec());
        let url = "https://kv1.vault.azure.net/secrets/s";
        let planted = secrecy::SecretSlice::from(text(input).replace("TOKEN", CANARY).into_bytes());
        if let Err(e) = keyvault::vault::parse::<keyvault::model::SecretBundle>(url, &planted) {
            no_canary("a Key Vault parse error", &e.message);
        }
        if let Ok(k) = keyvault::vault::parse::<keyvault::model::KeyBundle>(url, &body)
            && let Some(jwk) = &k.key
        {
            let _ = keyvault::convert::jwk_to_pem(jwk);
        }
        let _ = keyvault::vault::parse::<keyvault::model::CertificateBundle>(url, &body);
        let _ = keyvault::vault::parse::<keyvault::model::VersionPage>(url, &body);
        let s = text(input);
        for format in [keyvault::params::Format::Pem, keyvault::params::Format::Pfx] {
            for ct in ["application/x-pkcs12", "application/x-pem-file", ""] {
                let _ = keyvault::convert::cert_secret(&s, ct, format, true);
            }
        }
        let _ = keyvault::convert::cer_to_pem(&s);
        for enc in
            [keyvault::params::Encoding::Base64, keyvault::params::Encoding::Hex, keyvault::params::Encoding::Utf8]
        {
            let _ = keyvault::convert::decode(input.to_vec(), enc);
        }
        let _ = keyvault::vault::challenge_scope(&s, "kv1.vault.azure.net");
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(v) = reqwest::header::HeaderValue::from_bytes(input.get(..input.len().min(64)).unwrap_or_default()) {
            for k in ["retry-after", "retry-after-ms", "x-ms-retry-after-ms"] {
                headers.insert(k, v.clone());
                assert!(
                    keyvault::transport::retry_after(&headers)
                        .is_none_or(|d| d <= keyvault::transport::MAX_RETRY_AFTER)
                );
            }
        }
        let planted = s.replace("TOKEN", CANARY);
        if let Err(e) = keyvault::identity::parse_token(planted.as_bytes(), "token") {
            no_canary("a token response error", &e.message);
        }
    });
}

/// Key Vault change events as they come off the queue (whoever can write to the queue writes them),
/// the queue's message list, and the invalidations ConfigMap the nodes read.
#[test]
fn change_events() {
    fuzz("events", |input| {
        let s = text(input).replace("TOKEN", CANARY);
        match keyvault::events::parse(&s) {
            Ok(c) => {
                assert!(c.vault.len() <= 24 && c.name.len() <= 127 && c.version.len() <= 64);
                let key = secrets_store::invalidation::ObjectKey {
                    vault: c.vault.clone(),
                    kind: c.kind.class_type().into(),
                    name: c.name.clone(),
                };
                assert_eq!(
                    secrets_store::invalidation::ObjectKey::parse(&key.key()),
                    Some(key),
                    "every parsed event is a valid key"
                );
            }
            Err(e) => no_canary("an event error", &e.to_string()),
        }
        if let Ok(messages) = keyvault::events::parse_messages(&s) {
            assert!(messages.iter().all(|m| m.text.len() <= keyvault::events::MAX_MESSAGE_BYTES * 4));
        }
        if let Ok(data) = serde_json::from_slice::<std::collections::BTreeMap<String, String>>(input) {
            let mut seen = secrets_store::invalidation::Seen::default();
            seen.news(&data);
            assert!(seen.news(&data).is_empty());
            let _ = secrets_store::invalidation::healthy(&data, std::time::SystemTime::now());
            let board = secrets_store::invalidation::Board::resume(&data);
            assert!(board.len() <= data.len());
        }
    });
}

/// The SecretSync spec (`secret-sync.x-k8s.io`), as `check` and the controller read it.
#[test]
fn secretsync_spec() {
    fuzz("secretsync", |input| {
        if let Ok(ss) = serde_saphyr::from_slice::<sync::api::SecretSync>(input) {
            let findings = sync::lint::lint_sync(&ss, None);
            let _ = format!("{findings:?}");
            let _ = sync::decide::check_metadata(&ss.spec.secret_object);
        }
    });
}

/// The gRPC header-block rewriter on our Unix sockets (`driver::uds_authority`): whatever a client
/// sends after the preface, it never panics, and its output (or its refusal) does not depend on how
/// the reads split the bytes.
#[test]
fn grpc_frames() {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    fn rewrite(chunks: &[&[u8]]) -> Result<Vec<u8>, ()> {
        let mut r = driver::uds_authority::Rewriter::new();
        let mut pending = Vec::new();
        for chunk in chunks {
            pending.extend_from_slice(chunk);
            let n = r.feed(&pending).map_err(|_| ())?;
            assert!(n <= pending.len(), "consumed more than it was given");
            pending.drain(..n);
        }
        Ok(r.take_output())
    }
    fuzz("grpc_frames", |input| {
        let stream = [PREFACE, input].concat();
        let whole = rewrite(&[&stream]);
        let (a, b) = (input.first().copied().unwrap_or(0) as usize, input.last().copied().unwrap_or(0) as usize);
        let (i, j) = ((a * 131) % (stream.len() + 1), (b * 257) % (stream.len() + 1));
        let (i, j) = (i.min(j), i.max(j));
        let split = rewrite(&[&stream[..i], &stream[i..j], &stream[j..]]);
        assert_eq!(whole.is_ok(), split.is_ok(), "refused in one chunking and not in another (split at {i}, {j})");
        if let (Ok(w), Ok(s)) = (&whole, &split) {
            assert!(w == s, "the output depends on how the reads split the bytes (split at {i}, {j})");
        }
    });
}
