//! The client for external providers: the upstream v1alpha1 protocol over `<dir>/<provider>.sock`.
//!
//! Matches the upstream driver (`pkg/secrets-store/provider_client.go`): the socket is searched in `--additional-provider-volume-paths`
//! first, then `--provider-volume`; the name must match `^[a-zA-Z0-9_-]{0,30}$`; HTTP/2 `:authority` is
//! `localhost`; responses are capped at `--max-call-recv-msg-size`; `UNAVAILABLE` is retried 3 times
//! (1 s backoff × 1.1, at most 10 s) within the caller's deadline; one client per provider per process.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use csi_proto::provider::{self as pb, csi_driver_provider_client::CsiDriverProviderClient};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::provider::{ErrorKind, File, MountRequest, MountResponse, Provider, ProviderError};
use crate::redact::expose_map;

const RETRY_ATTEMPTS: u32 = 3;
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const BACKOFF_MULTIPLIER: f64 = 1.1;
const LARGE_RESPONSE: usize = 1 << 20;

/// keyvault-csi's extension of v1alpha1, spoken only with the providers in the driver's *internal*
/// socket directories (its own provider process in the same pod, `--internal-provider-dir`): gRPC
/// metadata carries what an in-process call passes directly. Metadata, not attributes: a tenant writes
/// attributes (class parameters, volume attributes), never metadata. An upstream driver or provider
/// ignores these keys.
pub mod ext {
    /// Request: the rotation cycle (identical fetches of one cycle share results).
    pub const CYCLE: &str = "keyvault-csi-cycle";
    /// Request: `1` for a refresh-now or change-event refresh (share nothing from before it).
    pub const FRESH: &str = "keyvault-csi-fresh";
    /// Request: `1` for a background refresh, `0` for a mount a pod waits for (upstream infers it
    /// from the current versions).
    pub const BACKGROUND: &str = "keyvault-csi-background";
    /// Response: JSON of the [`crate::provider::Served`] list (vault, failover, cache hit; no values).
    pub const SERVED: &str = "keyvault-csi-served-bin";
    /// Response: JSON of the [`crate::provider::Requester`] (identity kind and client id).
    pub const REQUESTER: &str = "keyvault-csi-requester-bin";
    /// Error: the provider's bounded error code (`error_type` label).
    pub const ERROR_CODE: &str = "keyvault-csi-error-code";
    /// Largest served/requester document read back (the response cap bounds the rest).
    pub const MAX_DOC: usize = 256 * 1024;
}

/// Why no client could be made for a provider name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The name is not a valid socket basename.
    #[error("invalid provider")]
    Invalid,
    /// No socket in any provider directory.
    #[error("provider not found: provider \"{0}\"")]
    NotFound(String),
}

/// True for names upstream accepts: `^[a-zA-Z0-9_-]{0,30}$`.
pub fn valid_provider_name(name: &str) -> bool {
    name.len() <= 30 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Finds and caches clients for external providers.
pub struct ExternalProviders {
    dirs: Vec<PathBuf>,
    /// Searched before `dirs`; their providers speak [`ext`].
    internal: Vec<PathBuf>,
    max_recv: usize,
    clients: RwLock<HashMap<String, ExternalProvider>>,
}

impl ExternalProviders {
    /// `additional` dirs are searched before `provider_volume`, as upstream.
    pub fn new(additional: Vec<PathBuf>, provider_volume: PathBuf, max_recv: usize) -> Self {
        let mut dirs = additional;
        dirs.push(provider_volume);
        Self { dirs, internal: Vec::new(), max_recv, clients: RwLock::new(HashMap::new()) }
    }

    /// Searches `dir` first, and speaks [`ext`] with the providers found there: the driver's own
    /// provider process, behind a directory only the two share.
    pub fn with_internal(mut self, dir: PathBuf) -> Self {
        self.internal.push(dir);
        self
    }

    /// Returns the client for `name`, creating it on first use.
    pub fn lookup(&self, name: &str) -> Result<ExternalProvider, LookupError> {
        if !valid_provider_name(name) {
            return Err(LookupError::Invalid);
        }
        if let Some(c) = self.clients.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(c.clone());
        }
        let found = |dirs: &[PathBuf]| dirs.iter().map(|d| d.join(format!("{name}.sock"))).find(|p| p.exists());
        let (socket, internal) = match found(&self.internal) {
            Some(s) => (s, true),
            None => (found(&self.dirs).ok_or_else(|| LookupError::NotFound(name.to_string()))?, false),
        };
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        let client = clients.entry(name.to_string()).or_insert_with(|| {
            let c = ExternalProvider::new(name, &socket, self.max_recv);
            if internal { c.internal() } else { c }
        });
        Ok(client.clone())
    }
}

/// One external provider.
#[derive(Clone)]
pub struct ExternalProvider {
    name: String,
    socket: Arc<Path>,
    client: CsiDriverProviderClient<Channel>,
    /// Speaks [`ext`].
    internal: bool,
}

impl ExternalProvider {
    /// A lazily connecting client for the socket at `path`.
    pub fn new(name: &str, path: &Path, max_recv: usize) -> Self {
        let path: Arc<Path> = Arc::from(path);
        let socket = path.clone();
        // The URI only sets `:authority`; the connector ignores it and dials the socket.
        let channel =
            Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(&*path).await?)) }
            }));
        let client = CsiDriverProviderClient::new(channel).max_decoding_message_size(max_recv);
        Self { name: name.to_string(), socket, client, internal: false }
    }

    /// The same client, speaking [`ext`] (the driver's own provider process).
    pub fn internal(mut self) -> Self {
        self.internal = true;
        self
    }

    /// The request as sent: with [`ext`]'s metadata and kubelet's deadline to an internal provider.
    fn request(&self, wire: &pb::MountRequest, req: &MountRequest) -> tonic::Request<pb::MountRequest> {
        let mut r = tonic::Request::new(wire.clone());
        if !self.internal {
            return r;
        }
        let md = r.metadata_mut();
        if let Some(cycle) = req.cycle {
            md.insert(ext::CYCLE, cycle.into());
        }
        md.insert(ext::FRESH, if req.fresh { "1" } else { "0" }.parse().expect("ascii"));
        md.insert(ext::BACKGROUND, if req.background { "1" } else { "0" }.parse().expect("ascii"));
        if let Some(d) = req.deadline {
            r.set_timeout(d.saturating_duration_since(std::time::Instant::now()));
        }
        r
    }

    /// `Version` RPC, for health checks.
    pub async fn version(&self) -> Result<pb::VersionResponse, tonic::Status> {
        let mut c = self.client.clone();
        c.version(pb::VersionRequest { version: "v1alpha1".into() }).await.map(|r| r.into_inner())
    }
}

fn to_wire(req: &MountRequest) -> pb::MountRequest {
    pb::MountRequest {
        // serde_json on a BTreeMap sorts keys, as Go's encoding/json does for maps.
        attributes: serde_json::to_string(&req.attributes).unwrap_or_else(|_| "{}".into()),
        secrets: match &req.secrets {
            Some(s) => serde_json::to_string(&expose_map(s)).unwrap_or_else(|_| "{}".into()),
            None => "null".into(),
        },
        target_path: req.target_path.to_string_lossy().into_owned(),
        permission: req.permission.to_string(),
        current_object_version: req
            .current_object_versions
            .iter()
            .map(|(id, version)| pb::ObjectVersion { id: id.clone(), version: version.clone() })
            .collect(),
    }
}

/// Reads [`ext`]'s response metadata into `out` (served only for objects the response versions: the
/// provider cannot add entries the files do not back). Public for the fuzz harness: this is where the
/// privileged process reads what the unprivileged one wrote.
pub fn read_ext(md: &tonic::metadata::MetadataMap, out: &mut MountResponse) {
    let doc = |key: &str| {
        let bytes = md.get_bin(key)?.to_bytes().ok()?;
        (bytes.len() <= ext::MAX_DOC).then_some(bytes)
    };
    if let Some(served) = doc(ext::SERVED).and_then(|b| serde_json::from_slice::<Vec<crate::provider::Served>>(&b).ok())
    {
        let served: Vec<_> = served.into_iter().filter(|s| out.object_versions.contains_key(&s.id)).collect();
        if !served.is_empty() {
            out.served = served;
        }
    }
    if let Some(r) = doc(ext::REQUESTER).and_then(|b| serde_json::from_slice(&b).ok()) {
        out.requester = r;
    }
}

/// Turns a provider's response into files and versions (as the upstream driver's provider client does).
/// Public for the fuzz harness: a provider's answer is untrusted input to the privileged process.
pub fn from_wire(provider: &str, resp: pb::MountResponse) -> Result<MountResponse, ProviderError> {
    if let Some(code) = resp.error.as_ref().map(|e| e.code.as_str()).filter(|c| !c.is_empty()) {
        return Err(ProviderError::new(
            ErrorKind::Internal,
            crate::provider::provider_code_label(code),
            format!("mount request failed with provider error code {code}"),
        ));
    }
    // An empty repeated field is indistinguishable from an absent one on the wire; upstream (Go) sees
    // both as nil and fails, so do we.
    if resp.object_version.is_empty() {
        return Err(ProviderError::new(ErrorKind::Internal, "GRPCProviderError", "missing object versions"));
    }
    let size: usize = resp.files.iter().map(|f| f.contents.len()).sum();
    if size > LARGE_RESPONSE {
        tracing::warn!(provider, bytes = size, "provider response is larger than 1 MiB; secret sync may fail");
    }
    let files = resp
        .files
        .into_iter()
        .map(|f| {
            let mode = u32::try_from(f.mode).ok().filter(|m| *m <= 0o7777).ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::Internal,
                    "GRPCProviderError",
                    format!("file {:?} has invalid mode {}", f.path, f.mode),
                )
            })?;
            Ok(File::new(f.path, mode, f.contents))
        })
        .collect::<Result<Vec<_>, ProviderError>>()?;
    let object_versions: std::collections::BTreeMap<String, String> =
        resp.object_version.into_iter().map(|v| (v.id, v.version)).collect();
    // An external provider names versions only: the audit trail shows them without a source.
    let served = object_versions
        .iter()
        .map(|(id, version): (&String, &String)| crate::provider::Served {
            id: id.clone(),
            version: version.clone(),
            ..Default::default()
        })
        .collect();
    Ok(MountResponse { files, object_versions, served, requester: Default::default() })
}

#[async_trait]
impl Provider for ExternalProvider {
    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        let wire = to_wire(&request);
        let mut backoff = INITIAL_BACKOFF;
        let mut attempt = 1;
        loop {
            let mut client = self.client.clone();
            match client.mount(self.request(&wire, &request)).await {
                Ok(resp) => {
                    let (md, body, _) = resp.into_parts();
                    let mut out = from_wire(&self.name, body)?;
                    if self.internal {
                        read_ext(&md, &mut out);
                    }
                    return Ok(out);
                }
                Err(status) if status.code() == Code::Unavailable && attempt < RETRY_ATTEMPTS => {
                    tracing::debug!(provider = %self.name, attempt, error = %status.message(), "provider unavailable, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.mul_f64(BACKOFF_MULTIPLIER).min(MAX_BACKOFF);
                    attempt += 1;
                }
                Err(status) => {
                    if status.code() == Code::ResourceExhausted && status.message().contains("message length too large")
                    {
                        tracing::warn!(provider = %self.name, "provider response exceeds --max-call-recv-msg-size; raise it");
                    }
                    let kind = ErrorKind::from_grpc_code(status.code());
                    if status.code() == Code::Unavailable && std::error::Error::source(&status).is_some() {
                        // The transport failed, not the provider (which answers UNAVAILABLE itself when
                        // its backend is down): nobody answers on the socket (the provider's container
                        // restarting, or gone). Say which provider, and where the driver looked.
                        let message = format!(
                            "provider {:?} is unavailable: nothing answers on {} ({})",
                            self.name,
                            self.socket.display(),
                            status.message()
                        );
                        return Err(ProviderError::new(kind, "GRPCProviderError", message));
                    }
                    let code = match status.metadata().get(ext::ERROR_CODE).and_then(|v| v.to_str().ok()) {
                        Some(code) if self.internal => crate::provider::provider_code_label(code),
                        _ => "GRPCProviderError",
                    };
                    return Err(ProviderError::new(kind, code, status.message().to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn provider_names_follow_upstreams_pattern() {
        assert!(valid_provider_name("azure"));
        assert!(valid_provider_name("e2e-provider_1"));
        assert!(!valid_provider_name("../azure"));
        assert!(!valid_provider_name("a.b"));
        assert!(!valid_provider_name(&"a".repeat(31)));
    }

    #[tokio::test]
    async fn sockets_in_additional_dirs_win_and_missing_ones_say_so() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("p.sock"), "").unwrap();
        let providers = ExternalProviders::new(vec![a.path().into()], b.path().into(), 4 << 20);
        assert!(providers.lookup("p").is_ok());
        assert_eq!(providers.lookup("q").err().unwrap().to_string(), "provider not found: provider \"q\"");
        assert_eq!(providers.lookup("a/b").err().unwrap(), LookupError::Invalid);
    }

    #[test]
    fn wire_request_matches_upstream() {
        let req = MountRequest {
            attributes: BTreeMap::from([("b".into(), "2".into()), ("a".into(), "1".into())]),
            secrets: None,
            target_path: "/t".into(),
            permission: 0o644,
            current_object_versions: BTreeMap::new(),
            deadline: None,
            background: false,
            cycle: None,
            fresh: false,
        };
        let w = to_wire(&req);
        assert_eq!(w.attributes, r#"{"a":"1","b":"2"}"#);
        assert_eq!(w.secrets, "null");
        assert_eq!(w.permission, "420");
        assert!(w.current_object_version.is_empty());
    }

    #[test]
    fn response_errors_follow_upstream() {
        let err = from_wire(
            "p",
            pb::MountResponse {
                error: Some(pb::Error { code: "ProviderBinaryNotFound".into() }),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "mount request failed with provider error code ProviderBinaryNotFound");
        assert_eq!(err.code, "ProviderBinaryNotFound");
        let err = from_wire("p", pb::MountResponse::default()).unwrap_err();
        assert_eq!(err.to_string(), "missing object versions");
    }
}
