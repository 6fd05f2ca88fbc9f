//! The decisions of one SecretSync reconcile, without I/O: the Secret's data from the provider's
//! files, a keyed hash of what would be written, whether to write, and the conditions.
//!
//! Conditions: upstream's current types and reasons (`SecretCreated`, `SecretUpdated`;
//! `CreateSuccessful`, `SecretUpToDate`, `ProviderError`, ...) plus `Ready`, recomputed in full on
//! every outcome, so a success after a failure clears it (upstream keeps a stale failure).

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use sha2::Sha256;

use crate::api::{MANAGED_LABEL, SecretObject};

/// Condition types.
pub const SECRET_CREATED: &str = "SecretCreated";
/// See [`SECRET_CREATED`].
pub const SECRET_UPDATED: &str = "SecretUpdated";
/// The roll-up (ours).
pub const READY: &str = "Ready";

/// Why a sync failed: upstream's reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The provider (Key Vault) failed.
    ProviderError,
    /// The class is missing or unusable.
    SecretProviderClassMisconfigured,
    /// A `sourcePath` is not among the provider's files, or a TLS key cannot be built.
    RemoteSecretStoreFetchFailed,
    /// Labels use the reserved prefix.
    InvalidClusterSecretLabelError,
    /// Annotations use the reserved prefix.
    InvalidClusterSecretAnnotationError,
    /// The token, or anything else on the controller's side.
    ControllerSyncError,
    /// The API server refused the Secret.
    ControllerPatchError,
    /// Partial sync (Azure's extension): some objects failed, the Secret got the rest.
    PartialSync,
}

impl FailureReason {
    /// Every reason.
    pub const ALL: [FailureReason; 8] = [
        Self::ProviderError,
        Self::SecretProviderClassMisconfigured,
        Self::RemoteSecretStoreFetchFailed,
        Self::InvalidClusterSecretLabelError,
        Self::InvalidClusterSecretAnnotationError,
        Self::ControllerSyncError,
        Self::ControllerPatchError,
        Self::PartialSync,
    ];

    /// Upstream's reason text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProviderError => "ProviderError",
            Self::SecretProviderClassMisconfigured => "SecretProviderClassMisconfigured",
            Self::RemoteSecretStoreFetchFailed => "RemoteSecretStoreFetchFailed",
            Self::InvalidClusterSecretLabelError => "InvalidClusterSecretLabelError",
            Self::InvalidClusterSecretAnnotationError => "InvalidClusterSecretAnnotationError",
            Self::ControllerSyncError => "ControllerSyncError",
            Self::ControllerPatchError => "ControllerPatchError",
            Self::PartialSync => "PartialSync",
        }
    }
}

/// A failed step: the reason and a message naming the object and the cause (never a value).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Upstream's reason.
    pub reason: FailureReason,
    /// What went wrong.
    pub message: String,
    /// The vault throttled (429): retry later than for other failures.
    pub throttled: bool,
}

impl Failure {
    /// A failure with `reason`.
    pub fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into(), throttled: false }
    }

    /// Marks a throttling failure.
    pub fn with_throttled(mut self, throttled: bool) -> Self {
        self.throttled = throttled;
        self
    }
}

/// Refuses labels and annotations under the reserved prefix (the CRD's CEL rules say the same; an
/// object written before they existed, or with them off, is caught here).
pub fn check_metadata(object: &SecretObject) -> Result<(), Failure> {
    if let Some(k) = object.labels.keys().find(|k| k.starts_with(MANAGED_LABEL)) {
        return Err(Failure::new(
            FailureReason::InvalidClusterSecretLabelError,
            format!("label {k:?} uses the reserved prefix {MANAGED_LABEL}"),
        ));
    }
    if let Some(k) = object.annotations.keys().find(|k| k.starts_with(MANAGED_LABEL)) {
        return Err(Failure::new(
            FailureReason::InvalidClusterSecretAnnotationError,
            format!("annotation {k:?} uses the reserved prefix {MANAGED_LABEL}"),
        ));
    }
    Ok(())
}

/// The service-account annotation that lets SecretSyncs use the account: a comma-separated list of
/// SecretSync names in its namespace, or `*` for all of them (ours: upstream mints a token for any
/// account a SecretSync names, its open issue #221).
pub const OPT_IN_ANNOTATION: &str = "keyvault-csi.io/allow-secret-syncs";

/// A SecretSync's choice of partial sync (`true`/`false`), over the controller's `--partial-sync`.
pub const PARTIAL_SYNC_ANNOTATION: &str = "keyvault-csi.io/partial-sync";

/// Whether the service account (its annotations) lets SecretSync `sync` use it.
pub fn check_opt_in(
    annotations: &BTreeMap<String, String>,
    namespace: &str,
    service_account: &str,
    sync: &str,
) -> Result<(), Failure> {
    let allowed = annotations.get(OPT_IN_ANNOTATION).map(String::as_str).unwrap_or("");
    if allowed.split(',').map(str::trim).any(|n| n == "*" || n == sync) {
        return Ok(());
    }
    Err(Failure::new(
        FailureReason::ControllerSyncError,
        format!(
            "service account {namespace}/{service_account} has not opted in to SecretSync {sync:?}: annotate it \
             {OPT_IN_ANNOTATION}={sync} (a comma-separated list of SecretSync names, or *)"
        ),
    ))
}

/// The Secret's data from the provider's files (path → contents). `kubernetes.io/tls` keys are built
/// as the mount path's secret sync builds them; every other type copies the bytes.
pub fn secret_data(
    object: &SecretObject,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<BTreeMap<String, Vec<u8>>, Failure> {
    partial_data(object, files, None).map(|p| p.data)
}

/// A Secret's data when some objects could not be fetched.
#[derive(Debug, PartialEq, Eq)]
pub struct Partial {
    /// The data to write.
    pub data: BTreeMap<String, Vec<u8>>,
    /// Keys whose `sourcePath` was not fetched and that keep the live Secret's value.
    pub kept: Vec<String>,
}

/// [`secret_data`], except that with `previous` (the live Secret's data) a key whose file is missing
/// keeps its earlier value instead of failing the sync. A key with no earlier value still fails: a
/// Secret never gains a key without a value, nor loses one.
pub fn partial_data(
    object: &SecretObject,
    files: &BTreeMap<String, Vec<u8>>,
    previous: Option<&BTreeMap<String, Vec<u8>>>,
) -> Result<Partial, Failure> {
    let tls = object.type_.trim() == "kubernetes.io/tls";
    let mut data = BTreeMap::new();
    let mut kept = Vec::new();
    for d in &object.data {
        let (path, key) = (d.source_path.trim(), d.target_key.trim());
        let Some(file) = files.get(path) else {
            if let Some(old) = previous.and_then(|p| p.get(key)) {
                data.insert(key.to_string(), old.clone());
                kept.push(key.to_string());
                continue;
            }
            let known: Vec<&str> = files.keys().map(String::as_str).collect();
            return Err(Failure::new(
                FailureReason::RemoteSecretStoreFetchFailed,
                format!("sourcePath {path:?} is not among the class's files ({})", known.join(", ")),
            ));
        };
        let value = if tls {
            kube_bridge::tls_value(key, file).map_err(|e| {
                Failure::new(FailureReason::RemoteSecretStoreFetchFailed, format!("targetKey {key:?}: {e}"))
            })?
        } else {
            file.clone()
        };
        data.insert(key.to_string(), value);
    }
    Ok(Partial { data, kept })
}

/// The `PartialSync` failure: a JSON summary of which keys were synced, which kept their earlier
/// value, and the fetch errors (object names and causes, never values).
pub fn partial_failure(p: &Partial, errors: &[String]) -> Failure {
    let synced: Vec<&String> = p.data.keys().filter(|k| !p.kept.contains(k)).collect();
    let summary = serde_json::json!({ "synced": synced, "kept": p.kept, "errors": errors });
    Failure::new(FailureReason::PartialSync, summary.to_string())
}

/// What a Secret write depends on, besides its data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance<'a> {
    /// The class's uid and generation.
    pub class: (&'a str, i64),
    /// The SecretSync's uid and generation.
    pub sync: (&'a str, i64),
    /// `spec.forceSynchronization`.
    pub force: &'a str,
    /// The Secret's type, labels and annotations, as JSON.
    pub shape: String,
}

/// `v1:` + hex HMAC-SHA256 under the controller's key of everything the Secret depends on. Keyed, so
/// the status reveals nothing about low-entropy values; one MAC instead of upstream's 100,000 PBKDF2
/// rounds per reconcile. Every field is length-prefixed, so no two inputs collide.
pub fn sync_hash(key: &[u8], data: &BTreeMap<String, Vec<u8>>, p: &Provenance<'_>) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    let mut field = |b: &[u8]| {
        mac.update(&(b.len() as u64).to_be_bytes());
        mac.update(b);
    };
    for (k, v) in data {
        field(k.as_bytes());
        field(v);
    }
    field(b"|");
    field(p.class.0.as_bytes());
    field(&p.class.1.to_be_bytes());
    field(p.sync.0.as_bytes());
    field(&p.sync.1.to_be_bytes());
    field(p.shape.as_bytes());
    field(p.force.as_bytes());
    format!("v1:{}", hex::encode(mac.finalize().into_bytes()))
}

/// The conditions after an outcome, all three recomputed (`created`: the Secret existed before).
pub fn conditions(
    previous: &[Condition],
    generation: i64,
    now: &Time,
    outcome: Result<Written, &Failure>,
) -> Vec<Condition> {
    let had_secret = previous.iter().any(|c| c.type_ == SECRET_CREATED && c.status == "True");
    let mut out = Vec::new();
    let mut set = |type_: &str, ok: Option<bool>, reason: &str, message: &str| {
        let status = match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        };
        let old = previous.iter().find(|c| c.type_ == type_);
        let since = match old {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => now.clone(),
        };
        out.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(generation),
            last_transition_time: since,
        });
    };
    match outcome {
        Ok(_) => {
            // After a successful sync the Secret exists, whoever created it.
            set(SECRET_CREATED, Some(true), "CreateSuccessful", "Secret created successfully.");
            set(SECRET_UPDATED, Some(true), "SecretUpToDate", "Secret contains last observed values.");
            set(READY, Some(true), "SecretUpToDate", "Secret contains last observed values.");
        }
        Err(f) => {
            if had_secret {
                set(SECRET_CREATED, Some(true), "CreateSuccessful", "Secret created successfully.");
            } else {
                set(SECRET_CREATED, Some(false), f.reason.as_str(), &f.message);
            }
            set(SECRET_UPDATED, Some(false), f.reason.as_str(), &f.message);
            set(READY, Some(false), f.reason.as_str(), &f.message);
        }
    }
    out
}

/// What a successful sync did to the Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The Secret did not exist and was created.
    Created,
    /// It existed and was updated (or found up to date).
    Updated,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SecretObjectData;

    fn object(type_: &str, pairs: &[(&str, &str)]) -> SecretObject {
        SecretObject {
            type_: type_.into(),
            data: pairs
                .iter()
                .map(|(s, t)| SecretObjectData { source_path: s.to_string(), target_key: t.to_string() })
                .collect(),
            ..Default::default()
        }
    }

    fn files(pairs: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect()
    }

    fn at(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn data_comes_from_the_files_and_a_missing_path_names_what_exists() {
        let f = files(&[("db-password", b"s3cret"), ("api/0", b"v2"), ("api/1", b"v1")]);
        let d = secret_data(&object("Opaque", &[("db-password", "password"), ("api/1", "previous")]), &f).unwrap();
        assert_eq!(d["password"], b"s3cret");
        assert_eq!(d["previous"], b"v1");
        let e = secret_data(&object("Opaque", &[("nope", "x")]), &f).unwrap_err();
        assert_eq!(e.reason, FailureReason::RemoteSecretStoreFetchFailed);
        assert_eq!(e.message, r#"sourcePath "nope" is not among the class's files (api/0, api/1, db-password)"#);
        let e = secret_data(&object("kubernetes.io/tls", &[("db-password", "password")]), &f).unwrap_err();
        assert!(e.message.contains("Only 'tls.key' and 'tls.crt' are supported"), "{e}");
        assert!(!e.message.contains("s3cret"));
    }

    #[test]
    fn partial_data_keeps_earlier_values_only_for_keys_the_secret_already_has() {
        let f = files(&[("db-password", b"new")]);
        let o = object("Opaque", &[("db-password", "password"), ("api", "api")]);
        let previous = files(&[("password", b"old"), ("api", b"old-api")]);
        let p = partial_data(&o, &f, Some(&previous)).unwrap();
        assert_eq!(p.data["password"], b"new", "what was fetched is updated");
        assert_eq!(p.data["api"], b"old-api", "what failed keeps its value");
        assert_eq!(p.kept, vec!["api".to_string()]);
        let failure = partial_failure(&p, &["failed to get objectType:secret, objectName:api: 403".into()]);
        assert_eq!(failure.reason, FailureReason::PartialSync);
        let summary: serde_json::Value = serde_json::from_str(&failure.message).unwrap();
        assert_eq!(summary["synced"], serde_json::json!(["password"]));
        assert_eq!(summary["kept"], serde_json::json!(["api"]));
        assert!(!failure.message.contains("old") && !failure.message.contains("new"), "no values");
        // A key the Secret never had cannot be kept: all or nothing for it.
        let e = partial_data(&o, &f, Some(&files(&[("password", b"old")]))).unwrap_err();
        assert_eq!(e.reason, FailureReason::RemoteSecretStoreFetchFailed);
        assert!(e.message.contains("\"api\""), "{e}");
        assert_eq!(partial_data(&o, &f, None).unwrap_err().reason, FailureReason::RemoteSecretStoreFetchFailed);
    }

    #[test]
    fn a_service_account_is_used_only_by_the_secret_syncs_it_names() {
        let ann = |v: &str| BTreeMap::from([(OPT_IN_ANNOTATION.to_string(), v.to_string())]);
        assert!(check_opt_in(&ann("db, api"), "ns", "sa", "api").is_ok());
        assert!(check_opt_in(&ann("*"), "ns", "sa", "anything").is_ok());
        let e = check_opt_in(&ann("db"), "ns", "sa", "api").unwrap_err();
        assert_eq!(e.reason, FailureReason::ControllerSyncError);
        assert!(e.message.starts_with("service account ns/sa has not opted in to SecretSync \"api\""), "{e}");
        assert!(check_opt_in(&BTreeMap::new(), "ns", "sa", "api").is_err());
        assert!(check_opt_in(&ann("apis"), "ns", "sa", "api").is_err(), "names, not prefixes");
    }

    #[test]
    fn reserved_metadata_is_refused_with_upstreams_reasons() {
        let mut o = object("Opaque", &[("a", "a")]);
        o.labels.insert("secrets-store.sync.x-k8s.io/x".into(), "y".into());
        assert_eq!(check_metadata(&o).unwrap_err().reason, FailureReason::InvalidClusterSecretLabelError);
        o.labels.clear();
        o.annotations.insert("secrets-store.sync.x-k8s.io".into(), "".into());
        assert_eq!(check_metadata(&o).unwrap_err().reason, FailureReason::InvalidClusterSecretAnnotationError);
    }

    #[test]
    fn the_hash_is_keyed_and_covers_data_provenance_and_force() {
        let d = files(&[("password", b"1234")]);
        let p = Provenance { class: ("spc-uid", 1), sync: ("ss-uid", 1), force: "", shape: "{}".into() };
        let h = sync_hash(b"key-a", &d, &p);
        assert!(h.starts_with("v1:") && h.len() == 3 + 64);
        assert_eq!(h, sync_hash(b"key-a", &d, &p), "deterministic");
        assert_ne!(h, sync_hash(b"key-b", &d, &p), "keyed: another controller key, another hash");
        assert_ne!(h, sync_hash(b"key-a", &files(&[("password", b"1235")]), &p));
        for changed in [
            Provenance { class: ("spc-uid", 2), ..p.clone() },
            Provenance { sync: ("ss-uid", 2), ..p.clone() },
            Provenance { force: "now", ..p.clone() },
            Provenance { shape: r#"{"type":"Opaque"}"#.into(), ..p.clone() },
        ] {
            assert_ne!(h, sync_hash(b"key-a", &d, &changed), "{changed:?}");
        }
        // Length prefixes: moving a byte between key and value changes the hash.
        assert_ne!(sync_hash(b"k", &files(&[("ab", b"c")]), &p), sync_hash(b"k", &files(&[("a", b"bc")]), &p));
    }

    #[test]
    fn a_success_after_a_failure_clears_every_condition_and_times_move_only_on_transitions() {
        let provider = Failure::new(FailureReason::ProviderError, "secret db-password: 403 Forbidden");
        let first = conditions(&[], 1, &at(100), Err(&provider));
        let by = |c: &[Condition], t: &str| c.iter().find(|x| x.type_ == t).cloned().unwrap();
        assert_eq!(by(&first, SECRET_CREATED).status, "False");
        assert_eq!(by(&first, READY).reason, "ProviderError");
        assert_eq!(by(&first, READY).message, "secret db-password: 403 Forbidden");
        let ok = conditions(&first, 1, &at(200), Ok(Written::Created));
        for t in [SECRET_CREATED, SECRET_UPDATED, READY] {
            assert_eq!(by(&ok, t).status, "True", "{t}");
            assert_eq!(by(&ok, t).last_transition_time, at(200));
        }
        assert_eq!(by(&ok, SECRET_CREATED).reason, "CreateSuccessful");
        // Later failure: the Secret still exists (SecretCreated stays True since 200), Updated/Ready go False.
        let again = conditions(&ok, 2, &at(300), Err(&provider));
        assert_eq!(by(&again, SECRET_CREATED).status, "True");
        assert_eq!(by(&again, SECRET_CREATED).last_transition_time, at(200));
        assert_eq!(by(&again, SECRET_UPDATED).status, "False");
        assert_eq!(by(&again, READY).observed_generation, Some(2));
    }
}
