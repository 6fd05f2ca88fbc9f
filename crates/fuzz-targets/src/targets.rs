//! The bodies. Each names the secret-bearing fields it plants; a target whose input has none says so.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::boundary::{keyvault_edge, publish_edge};
use crate::{MARKER, no_marker, planted, planted_bytes, text};

/// A workload-identity token whose claims parse (the provider reads `iss` and `sub` from it); its
/// signature is the marker.
fn token_json() -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let jwt = format!(
        "{}.{}.{MARKER}",
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

/// The nodePublishSecretRef a service principal mounts with: the client secret is the marker.
fn publish_secrets() -> keyvault::params::SecretMap {
    [("clientid".to_string(), "id".into()), ("clientsecret".to_string(), MARKER.into())].into_iter().collect()
}

/// The mount's reader; an accepted class never names a file outside the target.
fn mount_parse(attrs: &BTreeMap<String, String>, secrets: &keyvault::params::SecretMap) {
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
        }
        Err(e) => keyvault_edge(&e),
    }
}

/// A conversion failure (the text the provider puts in its error for that object).
fn conversion_edge(message: String) {
    keyvault_edge(&keyvault::Error::new(keyvault::ErrorKind::Internal, message));
}

/// The class parameter reader (`objects` YAML, or a whole parameters map) and `check`'s linter.
/// Planted: the client secret and the workload-identity token.
pub(crate) fn class_parameters(input: &[u8]) {
    let mut attrs = base_attributes();
    match serde_saphyr::from_str::<BTreeMap<String, String>>(&text(input)) {
        Ok(map) if !map.is_empty() => {
            attrs.extend(map.into_iter().filter(|(k, _)| !k.starts_with("csi.storage.k8s.io/")));
        }
        _ => {
            attrs.insert("objects".into(), text(input));
        }
    }
    mount_parse(&attrs, &publish_secrets());
    let lint = keyvault::lint::lint(&attrs, false);
    no_marker("check", &format!("{lint:?}"));
}

/// Annotations and Go durations (`keyvault-csi.io/rotation-poll-interval` on classes and SecretSyncs).
/// No secret-bearing field: an annotation is the tenant's own text (bounded when echoed).
pub(crate) fn durations(input: &[u8]) {
    let s = text(input);
    let _ = secrets_store::duration::parse_go_duration(&s);
    match secrets_store::annotations::class_interval(Some(&s), Duration::from_secs(30)) {
        Ok(Some(c)) => {
            assert!(
                c.interval >= Duration::from_secs(30) && c.interval <= secrets_store::annotations::MAX_CLASS_INTERVAL
            );
            // What the poller computes from it must not panic.
            let now = tokio::time::Instant::now();
            let _ = secrets_store::duration::later(now, c.interval);
            let _ = driver::rotation::backoff(c.interval, u32::MAX);
        }
        Ok(None) => unreachable!(),
        // Bounded by an event's 1 KiB note: the value is shown as 64 characters, each escaped to at most
        // 10 bytes (`\u{10ffff}`), after a fixed prefix.
        Err(e) => assert!(e.len() < 1024, "an annotation error is bounded: {} bytes", e.len()),
    }
    assert!(secrets_store::annotations::shown(&s).chars().count() <= 65);
}

/// The volume context kubelet passes (with the pod's `volumeAttributes`) and the tokens JSON, through
/// to the provider's reader. Planted: the tokens (the input's `TOKEN`s, or a valid token's signature)
/// and a nodePublishSecretRef client secret.
pub(crate) fn volume_context(input: &[u8]) {
    let mut context: std::collections::HashMap<String, String> =
        base_attributes().into_iter().filter(|(k, _)| !k.ends_with("tokens")).collect();
    context.insert("secretProviderClass".into(), "spc".into());
    context.insert("objects".into(), "array:\n  - |\n    objectName: s\n    objectType: secret\n".into());
    let tokens = match serde_saphyr::from_str::<BTreeMap<String, String>>(&text(input)) {
        Ok(map) => {
            context.extend(map);
            token_json()
        }
        Err(_) => planted(input),
    };
    let req = csi_proto::csi::NodePublishVolumeRequest {
        volume_id: "csi-1".into(),
        target_path: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount".into(),
        volume_capability: Some(Default::default()),
        readonly: true,
        volume_context: context,
        secrets: [
            ("csi.storage.k8s.io/serviceAccount.tokens".to_string(), tokens),
            ("clientsecret".to_string(), MARKER.to_string()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    match secrets_store::volume_context::PublishParams::parse(req) {
        Ok(p) => {
            use secrets_store::volume_context::NameKind;
            for (v, kind) in [(&p.pod.namespace, NameKind::Label), (&p.pod.name, NameKind::Subdomain)] {
                assert!(v.is_empty() || kind.accepts(v), "{v:?} passed validation");
            }
            no_marker("the publish parameters' Debug", &format!("{p:?}"));
            let attrs = p.attributes(&BTreeMap::new());
            mount_parse(&attrs, &publish_secrets());
        }
        Err(e) => publish_edge(e.into()),
    }
}

/// The PFX reader (certificates Key Vault returns as `application/x-pkcs12`). Planted: the PFX
/// password, and the value itself (the input's `TOKEN`s).
pub(crate) fn pfx(input: &[u8]) {
    let value = planted_bytes(input);
    for password in ["", MARKER] {
        match pfx::Bundle::from_der(&value, password) {
            Ok(b) => {
                for chain in [true, false] {
                    if let Err(e) = b.to_pem(chain) {
                        no_marker("a PFX conversion error", &e.to_string());
                    }
                }
            }
            Err(e) => no_marker("a PFX error", &e.to_string()),
        }
    }
    use base64::Engine;
    if let Err(e) = keyvault::convert::pfx_to_pem(&base64::engine::general_purpose::STANDARD.encode(&value), true) {
        conversion_edge(e);
    }
}

/// Key Vault and token-service responses: bundles, version pages, errors, challenges, `Retry-After`,
/// token responses, and the conversions applied to a bundle's value. Planted: every bundle's value,
/// and the access token.
pub(crate) fn responses(input: &[u8]) {
    let url = "https://kv1.vault.azure.net/secrets/s";
    let planted_body = secrecy::SecretSlice::from(planted_bytes(input));
    if let Err(e) = keyvault::vault::parse::<keyvault::model::SecretBundle>(url, &planted_body) {
        keyvault_edge(&e);
    }
    match keyvault::vault::parse::<keyvault::model::KeyBundle>(url, &planted_body) {
        Ok(k) => {
            if let Some(jwk) = &k.key
                && let Err(e) = keyvault::convert::jwk_to_pem(jwk)
            {
                conversion_edge(e);
            }
        }
        Err(e) => keyvault_edge(&e),
    }
    for r in [
        keyvault::vault::parse::<keyvault::model::CertificateBundle>(url, &planted_body).map(drop),
        keyvault::vault::parse::<keyvault::model::VersionPage>(url, &planted_body).map(drop),
    ] {
        if let Err(e) = r {
            keyvault_edge(&e);
        }
    }
    let value = planted(input);
    for format in [keyvault::params::Format::Pem, keyvault::params::Format::Pfx] {
        for ct in ["application/x-pkcs12", "application/x-pem-file", ""] {
            if let Err(e) = keyvault::convert::cert_secret(&value, ct, format, true) {
                conversion_edge(e);
            }
        }
    }
    if let Err(e) = keyvault::convert::cer_to_pem(&value) {
        conversion_edge(e);
    }
    for enc in [keyvault::params::Encoding::Base64, keyvault::params::Encoding::Hex, keyvault::params::Encoding::Utf8] {
        if let Err(e) = keyvault::convert::decode(planted_bytes(input), enc) {
            conversion_edge(e);
        }
    }
    // A challenge is the vault's own text (a resource URL), quoted when refused: unplanted.
    let _ = keyvault::vault::challenge_scope(&text(input), "kv1.vault.azure.net");
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(v) = reqwest::header::HeaderValue::from_bytes(input.get(..input.len().min(64)).unwrap_or_default()) {
        for k in ["retry-after", "retry-after-ms", "x-ms-retry-after-ms"] {
            headers.insert(k, v.clone());
            assert!(
                keyvault::transport::retry_after(&headers).is_none_or(|d| d <= keyvault::transport::MAX_RETRY_AFTER)
            );
        }
    }
    if let Err(e) = keyvault::identity::parse_token(value.as_bytes(), "token") {
        keyvault_edge(&e);
    }
}

/// Key Vault change events as they come off the queue (whoever can write to the queue writes them),
/// the queue's message list, and the invalidations ConfigMap the nodes read. No secret-bearing field:
/// Key Vault's events name objects and versions, never values (a refused event type is quoted, bounded).
pub(crate) fn events(input: &[u8]) {
    let s = text(input);
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
        Err(e) => assert!(e.to_string().len() < 512, "an event error is bounded: {e}"),
    }
    if let Ok(messages) = keyvault::events::parse_messages(&s) {
        assert!(messages.iter().all(|m| m.text.len() <= keyvault::events::MAX_MESSAGE_BYTES * 4));
    }
    if let Ok(data) = serde_json::from_slice::<BTreeMap<String, String>>(input) {
        let mut seen = secrets_store::invalidation::Seen::default();
        seen.news(&data);
        assert!(seen.news(&data).is_empty());
        let _ = secrets_store::invalidation::healthy(&data, std::time::SystemTime::now());
        let board = secrets_store::invalidation::Board::resume(&data);
        assert!(board.len() <= data.len());
    }
}

/// Files the provider returned, as a Secret sync reads them: the marker is in every file, and in a
/// certificate-shaped file and a key-shaped one (for `kubernetes.io/tls`).
fn planted_files(input: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let pem = |label: &str| format!("-----BEGIN {label}-----\n{MARKER}\n-----END {label}-----\n").into_bytes();
    [
        ("s".to_string(), [MARKER.as_bytes(), &planted_bytes(input)].concat()),
        ("cert".to_string(), [pem("CERTIFICATE"), pem("PRIVATE KEY")].concat()),
        ("key".to_string(), pem("PRIVATE KEY")),
        ("chain".to_string(), [pem("CERTIFICATE"), pem("CERTIFICATE")].concat()),
    ]
    .into_iter()
    .collect()
}

/// The SecretSync spec (`secret-sync.x-k8s.io`), as `check` and the controller read it, and the Secret
/// data the controller builds from the provider's files. Planted: every file's contents (the live
/// Secret's previous data too).
pub(crate) fn secretsync(input: &[u8]) {
    if let Ok(ss) = serde_saphyr::from_str::<sync::api::SecretSync>(&text(input)) {
        let findings = sync::lint::lint_sync(&ss, None);
        no_marker("check", &format!("{findings:?}"));
        if let Err(f) = sync::decide::check_metadata(&ss.spec.secret_object) {
            no_marker("a SecretSync condition", &f.message);
        }
        let files = planted_files(input);
        let previous: BTreeMap<String, Vec<u8>> = [("kept".to_string(), MARKER.as_bytes().to_vec())].into();
        for prev in [None, Some(&previous)] {
            match sync::decide::partial_data(&ss.spec.secret_object, &files, prev) {
                Ok(p) => {
                    let failure = sync::decide::partial_failure(&p, &["object s: not found".into()]);
                    no_marker("a PartialSync condition", &failure.message);
                    let hash = sync::decide::sync_hash(b"key", &p.data, &Default::default());
                    no_marker("the sync hash", &hash);
                }
                Err(f) => no_marker("a SecretSync condition (and its event)", &f.message),
            }
        }
    }
}

/// A class's `secretObjects` (YAML list, as in the class spec) against the mounted files: the
/// `FailedToCreateSecret` / `SecretRotationFailed` event text. Planted: every file's contents.
pub(crate) fn secret_objects(input: &[u8]) {
    let Ok(objects) = serde_saphyr::from_str::<Vec<secrets_store::class::SecretObject>>(&text(input)) else {
        return;
    };
    let files = planted_files(input);
    for object in objects.iter().take(16) {
        if let Err(message) = kube_bridge::secrets::secret_data(object, &files) {
            let e = kube_bridge::secrets::SyncError::Data {
                namespace: "ns".into(),
                class: "spc".into(),
                secret: object.secret_name.clone(),
                message,
            };
            no_marker("a Secret sync event", &e.to_string());
        }
    }
}

/// The gRPC header-block rewriter on our Unix sockets (`driver::uds_authority`): whatever a client
/// sends after the preface, it never panics, and its output (or its refusal) does not depend on how
/// the reads split the bytes. Planted: the input's `TOKEN`s (a CSI request's secrets travel in DATA
/// frames, which the rewriter passes through; a refusal names none of it).
pub(crate) fn grpc_frames(input: &[u8]) {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    fn rewrite(chunks: &[&[u8]]) -> Result<Vec<u8>, String> {
        let mut r = driver::uds_authority::Rewriter::new();
        let mut pending = Vec::new();
        for chunk in chunks {
            pending.extend_from_slice(chunk);
            let n = r.feed(&pending).map_err(|e| e.to_string())?;
            assert!(n <= pending.len(), "consumed more than it was given");
            pending.drain(..n);
        }
        Ok(r.take_output())
    }
    let input = planted_bytes(input);
    let stream = [PREFACE, &input].concat();
    let whole = rewrite(&[&stream]);
    let (a, b) = (input.first().copied().unwrap_or(0) as usize, input.last().copied().unwrap_or(0) as usize);
    let (i, j) = ((a * 131) % (stream.len() + 1), (b * 257) % (stream.len() + 1));
    let (i, j) = (i.min(j), i.max(j));
    let split = rewrite(&[&stream[..i], &stream[i..j], &stream[j..]]);
    assert_eq!(whole.is_ok(), split.is_ok(), "refused in one chunking and not in another (split at {i}, {j})");
    match (&whole, &split) {
        (Ok(w), Ok(s)) => assert!(w == s, "the output depends on how the reads split the bytes (split at {i}, {j})"),
        (Err(e), _) => no_marker("a connection error", e),
        _ => {}
    }
}

/// `objectFormat: json` (ours): the first line lists the keys (the class's, comma-separated), the rest
/// is the secret's value. Planted: the value. Errors name keys, never the document.
pub(crate) fn json_keys(input: &[u8]) {
    let split = input.iter().position(|&b| b == b'\n').unwrap_or(input.len());
    let keys: Vec<keyvault::params::JsonKey> = text(&input[..split])
        .split(',')
        .take(keyvault::json_keys::MAX_KEYS)
        .map(|k| keyvault::params::JsonKey { key: k.to_string(), alias: String::new(), mode: 0o644 })
        .collect();
    let value = planted_bytes(input.get(split + 1..).unwrap_or_default());
    match keyvault::json_keys::extract(&value, &keys) {
        Ok(files) => {
            assert_eq!(files.len(), keys.len(), "one file per key");
            for (file, key) in files.iter().zip(&keys) {
                assert_eq!(file.file, key.key);
                assert!(file.value.len() <= value.len(), "a member is part of its document");
            }
        }
        Err(message) => {
            assert!(message.len() < 2048, "a JSON key error is bounded: {} bytes", message.len());
            keyvault_edge(&keyvault::Error::new(keyvault::ErrorKind::InvalidInput, message));
        }
    }
}
