//! The provider interface: what the node service asks of a secrets provider, in plain Rust types.
//!
//! Two adapters implement [`Provider`]: the in-process Azure Key Vault provider (wired by the binary)
//! and [`crate::external::ExternalProvider`], which speaks the upstream v1alpha1 protocol over a Unix
//! socket so that any upstream provider keeps working.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::external::{ExternalProviders, LookupError};
use crate::redact::{ExposeSecret, SecretMap, SecretSlice, sanitized_map};

/// Everything a provider needs for one mount.
#[derive(Clone)]
pub struct MountRequest {
    /// SecretProviderClass parameters overlaid with the volume context (and the service-account tokens).
    pub attributes: BTreeMap<String, String>,
    /// Node-publish secrets (`nodePublishSecretRef` contents, and tokens on Kubernetes ≥ 1.35).
    /// `None` when kubelet sent none: the v1alpha1 wire form is then the JSON `null`, as upstream.
    pub secrets: Option<SecretMap>,
    /// Where the files will be written. Providers must not write there themselves.
    pub target_path: PathBuf,
    /// Default file mode (0o644).
    pub permission: u32,
    /// Versions of the objects currently mounted (`id` → version); empty on a first mount.
    pub current_object_versions: BTreeMap<String, String>,
    /// When kubelet gives up on the call, if it said.
    pub deadline: Option<std::time::Instant>,
    /// A rotation refresh rather than a mount a pod is waiting for (providers may deprioritise it).
    pub background: bool,
    /// The rotation cycle this refresh belongs to: identical fetches of one cycle may share results.
    pub cycle: Option<u64>,
    /// A refresh-now request: only fetches of its own cycle may be shared, never a result that
    /// finished before the request (which may predate the change the user wants).
    pub fresh: bool,
}

impl fmt::Debug for MountRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountRequest")
            .field("attributes", &sanitized_map(&self.attributes))
            .field("secrets", &self.secrets.as_ref().map(|s| s.keys().collect::<Vec<_>>()))
            .field("target_path", &self.target_path)
            .field("permission", &format_args!("{:o}", self.permission))
            .field("current_object_versions", &self.current_object_versions)
            .field("deadline", &self.deadline)
            .field("background", &self.background)
            .finish()
    }
}

/// One file of a mount: a relative path, a mode and the contents (secret).
#[derive(Clone)]
pub struct File {
    /// Path relative to the volume root, validated by the atomic writer.
    pub path: String,
    /// Permission bits (e.g. 0o644).
    pub mode: u32,
    /// File contents.
    pub contents: SecretSlice<u8>,
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("len", &self.contents.expose_secret().len())
            .finish()
    }
}

impl File {
    /// A file with `contents`.
    pub fn new(path: impl Into<String>, mode: u32, contents: Vec<u8>) -> Self {
        Self { path: path.into(), mode, contents: SecretSlice::from(contents) }
    }
}

impl PartialEq for File {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.mode == other.mode
            && self.contents.expose_secret() == other.contents.expose_secret()
    }
}

/// A provider's answer.
#[derive(Clone, Debug, Default)]
pub struct MountResponse {
    /// Files to write. Empty means a legacy provider wrote the files itself (the upstream driver's legacy path, deprecated).
    pub files: Vec<File>,
    /// Object id (`secret/db-password`) → version. Duplicate ids collapse, as upstream.
    pub object_versions: BTreeMap<String, String>,
    /// Where each object version came from (in-process providers; external ones report nothing).
    pub served: Vec<Served>,
    /// The identity the provider used (in-process providers).
    pub requester: Requester,
}

/// The object name in a pod-status object id (`<type>/<name>`, with history `<type>/<name>/<i>`).
pub fn object_name(id: &str) -> Option<&str> {
    id.split('/').nth(1)
}

impl MountResponse {
    /// (vault in lowercase, object name) of every object served: what a Key Vault change event is
    /// matched against (see [`crate::invalidation`]).
    pub fn sources(&self) -> std::collections::BTreeSet<(String, String)> {
        self.served
            .iter()
            .filter_map(|s| Some((s.source.to_ascii_lowercase(), object_name(&s.id)?.to_string())))
            .collect()
    }

    /// Where objects not served fresh by the class's vault came from: failover vaults, and the node's
    /// last known good.
    pub fn provenance(&self) -> Provenance {
        Provenance {
            failover: self.served.iter().filter(|s| s.failover).map(|s| (s.id.clone(), s.source.clone())).collect(),
            stale: self
                .served
                .iter()
                .filter_map(|s| Some((s.id.clone(), (s.source.clone(), s.stale_seconds?))))
                .collect(),
        }
    }
}

/// Where a mount's objects came from when not fresh from the class's vault (shown on the pod status
/// and in events).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    /// Object id → the failover vault that served it.
    pub failover: BTreeMap<String, String>,
    /// Object id → (vault, seconds since it was fetched): served from the node's last known good while
    /// the vault could not be reached (`maxStaleness`, keyvault-csi's Azure provider).
    pub stale: BTreeMap<String, (String, u64)>,
}

/// One object version a provider served.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Served {
    /// Object id, as in the pod status.
    pub id: String,
    /// Version.
    pub version: String,
    /// Where it came from (the vault's name).
    pub source: String,
    /// From a failover source, not the class's own.
    pub failover: bool,
    /// Shared with another caller's fetch: no backend request of its own.
    pub cache_hit: bool,
    /// Served from the node's last known good, fetched this many seconds ago (not fresh).
    pub stale_seconds: Option<u64>,
}

/// The identity a provider used for a mount: kind and client id, never a credential.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Requester {
    /// `workload`, `service-principal`, `managed-identity`, `identity-binding`, `pod-identity`.
    pub identity: String,
    /// Client id ("" when none).
    pub client_id: String,
}

/// The broad class of a provider failure: decides the gRPC status code kubelet sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The class or request is wrong; retrying will not help.
    InvalidArgument,
    /// An object does not exist.
    NotFound,
    /// The identity may not read an object.
    PermissionDenied,
    /// Throttled; retry later.
    ResourceExhausted,
    /// The backend or the provider is unreachable.
    Unavailable,
    /// The deadline passed.
    DeadlineExceeded,
    /// Anything else.
    Internal,
}

/// A provider failure. `message` names the object and the cause and never holds a secret value.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    /// Status class.
    pub kind: ErrorKind,
    /// Stable, bounded label for the `error_type` metric (e.g. `GRPCProviderError`, or a provider's code).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ProviderError {
    /// Builds an error.
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self { kind, code, message: message.into() }
    }
}

/// At most this many distinct error codes from external providers become metric labels.
const MAX_PROVIDER_CODES: usize = 32;

/// An external provider's error code as a metric label: upstream reports it as `error_type`, but it is
/// the provider's free text, so only short identifier-like codes are kept, and only the first
/// [`MAX_PROVIDER_CODES`] distinct ones; anything else is `GRPCProviderError`.
pub fn provider_code_label(code: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static CODES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    const FALLBACK: &str = "GRPCProviderError";
    if code.is_empty() || code.len() > 64 || !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return FALLBACK;
    }
    let mut codes = CODES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = codes.get(code) {
        return known;
    }
    if codes.len() >= MAX_PROVIDER_CODES {
        return FALLBACK;
    }
    // Leaked once per distinct code, and the set is bounded: at most 32 short strings per process.
    let interned: &'static str = Box::leak(code.to_string().into_boxed_str());
    codes.insert(interned);
    interned
}

/// A secrets provider.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Fetches the objects described by the request and returns them as files.
    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError>;
}

/// The `objects` parameter (the `array:` list of Azure's provider and upstream's test provider) with
/// the one entry `item`: how one object is fetched on its own (`check --live`, partial SecretSync).
pub fn one_object(item: &str) -> String {
    // YAML reads JSON: the same list with one entry.
    serde_json::json!({ "array": [item] }).to_string()
}

/// The `objects` parameter of `attributes` as one parameter per object ([`one_object`]); `None` when
/// it is not such a list.
pub fn split_objects(attributes: &BTreeMap<String, String>) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Objects {
        array: Vec<String>,
    }
    let objects: Objects = serde_saphyr::from_str(attributes.get("objects")?).ok()?;
    Some(objects.array.iter().map(|o| one_object(o)).collect())
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 7] = [
        Self::InvalidArgument,
        Self::NotFound,
        Self::PermissionDenied,
        Self::ResourceExhausted,
        Self::Unavailable,
        Self::DeadlineExceeded,
        Self::Internal,
    ];

    /// The gRPC code of a provider failure: the one map from kinds to codes, used for kubelet's status
    /// and for the provider protocol alike.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::InvalidArgument => tonic::Code::InvalidArgument,
            Self::NotFound => tonic::Code::NotFound,
            Self::PermissionDenied => tonic::Code::PermissionDenied,
            Self::ResourceExhausted => tonic::Code::ResourceExhausted,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// The kind of an external provider's status code: the inverse of [`Self::grpc_code`], plus the
    /// codes it never produces folded into their nearest kind.
    pub fn from_grpc_code(code: tonic::Code) -> Self {
        if let Some(kind) = Self::ALL.into_iter().find(|k| k.grpc_code() == code) {
            return kind;
        }
        match code {
            tonic::Code::FailedPrecondition | tonic::Code::OutOfRange => Self::InvalidArgument,
            tonic::Code::Unauthenticated => Self::PermissionDenied,
            tonic::Code::Aborted => Self::Unavailable,
            tonic::Code::Cancelled => Self::DeadlineExceeded,
            _ => Self::Internal,
        }
    }
}

/// Providers by name: in-process ones first, else an external provider's socket.
pub struct Providers {
    builtin: HashMap<String, Arc<dyn Provider>>,
    external: ExternalProviders,
}

impl Providers {
    /// Only external providers.
    pub fn new(external: ExternalProviders) -> Self {
        Self { builtin: HashMap::new(), external }
    }

    /// Serves `name` in-process instead of over a socket.
    pub fn with_builtin(mut self, name: &str, provider: Arc<dyn Provider>) -> Self {
        self.builtin.insert(name.to_string(), provider);
        self
    }

    /// The provider serving `name`: in-process, else its socket.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Provider>, LookupError> {
        if let Some(p) = self.builtin.get(name) {
            return Ok(p.clone());
        }
        Ok(Arc::new(self.external.lookup(name)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_grpc_code() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_grpc_code(kind.grpc_code()), kind);
        }
        assert_eq!(ErrorKind::from_grpc_code(tonic::Code::Unauthenticated), ErrorKind::PermissionDenied);
        assert_eq!(ErrorKind::from_grpc_code(tonic::Code::Unknown), ErrorKind::Internal);
    }

    #[test]
    fn a_class_objects_list_splits_into_one_list_per_object_and_anything_else_does_not() {
        let objects =
            "array:\n  - |\n    objectName: a\n    objectType: secret\n  - |\n    objectName: b\n    objectType: key\n";
        let attrs = BTreeMap::from([("objects".to_string(), objects.to_string())]);
        let parts = split_objects(&attrs).unwrap();
        assert_eq!(parts.len(), 2);
        #[derive(serde::Deserialize)]
        struct Objects {
            array: Vec<String>,
        }
        let b: Objects = serde_saphyr::from_str(&parts[1]).unwrap();
        assert_eq!(b.array, vec!["objectName: b\nobjectType: key\n".to_string()], "the entry, verbatim");
        assert_eq!(split_objects(&BTreeMap::new()), None);
        let other = BTreeMap::from([("objects".to_string(), "a,b".to_string())]);
        assert_eq!(split_objects(&other), None, "not the array: list");
    }

    #[test]
    fn provider_codes_become_bounded_labels() {
        assert_eq!(provider_code_label("ProviderBinaryNotFound"), "ProviderBinaryNotFound");
        assert_eq!(provider_code_label("with spaces: and the secret value"), "GRPCProviderError");
        assert_eq!(provider_code_label(&"X".repeat(65)), "GRPCProviderError");
        let distinct: std::collections::HashSet<&str> =
            (0..100).map(|i| provider_code_label(&format!("Code{i}"))).collect();
        assert!(distinct.len() <= MAX_PROVIDER_CODES + 1, "{} labels", distinct.len());
        assert!(distinct.contains("GRPCProviderError"));
    }
}
