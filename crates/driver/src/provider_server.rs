//! Any [`Provider`] served on the upstream v1alpha1 protocol (`/v1alpha1.CSIDriverProvider/{Version,Mount}`),
//! so the upstream Secrets Store CSI driver can use it: the server side of [`secrets_store::external`].
//!
//! The wire rules are upstream's: attributes and secrets are JSON objects of strings (secrets may be
//! JSON `null`), the permission is a decimal string, and the upstream driver sends current object
//! versions only from its rotation reconciler (so a request with versions is background work).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_proto::provider::{self as pb, csi_driver_provider_server::CsiDriverProvider};
use tonic::{Request, Response, Status};

use secrets_store::external::ext;
use secrets_store::provider::{MountRequest, Provider};
use secrets_store::redact::{ExposeSecret, secret_map};

/// Called after each `Mount` with the status code and the time it took.
pub type Observer = Arc<dyn Fn(tonic::Code, Duration) + Send + Sync>;

/// The v1alpha1 service of one provider.
pub struct ProviderService {
    provider: Arc<dyn Provider>,
    runtime_name: String,
    observer: Option<Observer>,
}

impl ProviderService {
    /// Serves `provider`, reporting `runtime_name` in `Version`.
    pub fn new(provider: Arc<dyn Provider>, runtime_name: &str) -> Self {
        Self { provider, runtime_name: runtime_name.into(), observer: None }
    }

    /// Reports every `Mount` to `observer` (e.g. the `grpc_request` histogram).
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }
}

/// Decodes a v1alpha1 `MountRequest` with upstream's error texts.
pub fn decode(r: pb::MountRequest, deadline: Option<Instant>) -> Result<MountRequest, Status> {
    let attributes: BTreeMap<String, String> = serde_json::from_str(&r.attributes)
        .map_err(|e| Status::invalid_argument(format!("failed to unmarshal attributes, error: {e}")))?;
    // The driver sends JSON `null` when the pod has no node-publish secrets. The error never quotes
    // the payload: it is secret.
    let secrets: Option<BTreeMap<String, String>> = serde_json::from_str(&r.secrets)
        .map_err(|_| Status::invalid_argument("failed to unmarshal secrets, error: not a JSON object of strings"))?;
    let permission: u32 = r
        .permission
        .trim()
        .parse()
        .map_err(|e| Status::invalid_argument(format!("failed to unmarshal file permission, error: {e}")))?;
    let current: BTreeMap<String, String> = r.current_object_version.into_iter().map(|v| (v.id, v.version)).collect();
    Ok(MountRequest {
        attributes,
        secrets: secrets.map(secret_map),
        target_path: r.target_path.into(),
        permission,
        background: !current.is_empty(),
        current_object_versions: current,
        deadline,
        cycle: None,
        fresh: false,
    })
}

#[tonic::async_trait]
impl CsiDriverProvider for ProviderService {
    async fn version(&self, _: Request<pb::VersionRequest>) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: "v1alpha1".into(),
            runtime_name: self.runtime_name.clone(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn mount(&self, req: Request<pb::MountRequest>) -> Result<Response<pb::MountResponse>, Status> {
        let started = Instant::now();
        let deadline = crate::grpc::deadline_of(&req);
        let mut served = None;
        let result = async {
            let hints = Hints::of(req.metadata());
            let mut request = decode(req.into_inner(), deadline)?;
            hints.apply(&mut request);
            let resp = self.provider.mount(request).await.map_err(|e| {
                let mut status = Status::new(e.kind.grpc_code(), e.message);
                if let Ok(code) = e.code.parse() {
                    status.metadata_mut().insert(ext::ERROR_CODE, code);
                }
                status
            })?;
            served = Some((resp.served.clone(), resp.requester.clone()));
            Ok(pb::MountResponse {
                object_version: resp
                    .object_versions
                    .into_iter()
                    .map(|(id, version)| pb::ObjectVersion { id, version })
                    .collect(),
                error: None,
                files: resp
                    .files
                    .into_iter()
                    .map(|f| pb::File {
                        path: f.path,
                        mode: f.mode as i32,
                        contents: f.contents.expose_secret().to_vec(),
                    })
                    .collect(),
            })
        }
        .await;
        let code = result.as_ref().err().map(Status::code).unwrap_or(tonic::Code::Ok);
        if let Some(observe) = &self.observer {
            observe(code, started.elapsed());
        }
        match &result {
            Ok(resp) => {
                tracing::info!(files = resp.files.len(), duration_s = started.elapsed().as_secs_f64(), "mount served")
            }
            Err(s) => tracing::error!(code = ?s.code(), error = %s.message(), "mount failed"),
        }
        result.map(|body| {
            let mut response = Response::new(body);
            if let Some((served, requester)) = served {
                // Where each version came from and who asked (no values): what a driver speaking
                // `ext` records in the pod status, the audit trail and change-event matching.
                let md = response.metadata_mut();
                if let Ok(json) = serde_json::to_vec(&served) {
                    md.insert_bin(ext::SERVED, tonic::metadata::MetadataValue::from_bytes(&json));
                }
                if let Ok(json) = serde_json::to_vec(&requester) {
                    md.insert_bin(ext::REQUESTER, tonic::metadata::MetadataValue::from_bytes(&json));
                }
            }
            response
        })
    }
}

/// What a driver speaking [`ext`] says about a call that v1alpha1 cannot: only root can reach a
/// provider socket (0600), so the caller is the node's driver.
#[derive(Debug, Default, PartialEq, Eq)]
struct Hints {
    cycle: Option<u64>,
    fresh: Option<bool>,
    background: Option<bool>,
}

impl Hints {
    fn of(md: &tonic::metadata::MetadataMap) -> Self {
        let text = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
        let flag = |k: &str| text(k).map(|v| v == "1");
        Self {
            cycle: text(ext::CYCLE).and_then(|v| v.parse().ok()),
            fresh: flag(ext::FRESH),
            background: flag(ext::BACKGROUND),
        }
    }

    fn apply(&self, r: &mut MountRequest) {
        r.cycle = self.cycle;
        if let Some(f) = self.fresh {
            r.fresh = f;
        }
        if let Some(b) = self.background {
            r.background = b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(attributes: &str, secrets: &str, permission: &str) -> pb::MountRequest {
        pb::MountRequest {
            attributes: attributes.into(),
            secrets: secrets.into(),
            target_path: "/t".into(),
            permission: permission.into(),
            current_object_version: vec![],
        }
    }

    #[test]
    fn decodes_upstreams_wire_form_and_refuses_the_rest_without_quoting_secrets() {
        let r = decode(wire(r#"{"a":"b"}"#, "null", "420"), None).unwrap();
        assert_eq!((r.attributes["a"].as_str(), r.permission, r.secrets.is_none()), ("b", 0o644, true));
        assert!(!r.background);
        let r = decode(wire("{}", r#"{"clientsecret":"hunter2"}"#, "420"), None).unwrap();
        assert_eq!(r.secrets.unwrap()["clientsecret"].expose_secret(), "hunter2");
        let e = decode(wire("{}", r#"{"clientsecret":hunter2}"#, "420"), None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(!e.message().contains("hunter2"), "{}", e.message());
        assert!(
            decode(wire("[]", "null", "420"), None)
                .unwrap_err()
                .message()
                .starts_with("failed to unmarshal attributes")
        );
        assert!(
            decode(wire("{}", "null", "rw"), None)
                .unwrap_err()
                .message()
                .starts_with("failed to unmarshal file permission")
        );
        let mut w = wire("{}", "null", "420");
        w.current_object_version = vec![pb::ObjectVersion { id: "secret/a".into(), version: "1".into() }];
        assert!(decode(w, None).unwrap().background, "versions mean rotation");
    }

    /// Records what it was asked; answers with one object served by a failover vault, or an error.
    #[derive(Default)]
    struct Recorder {
        seen: std::sync::Mutex<Vec<(Option<u64>, bool, bool)>>,
        fail: bool,
    }

    #[async_trait::async_trait]
    impl Provider for Recorder {
        async fn mount(
            &self,
            r: MountRequest,
        ) -> Result<secrets_store::provider::MountResponse, secrets_store::provider::ProviderError> {
            use secrets_store::provider::{ErrorKind, File, MountResponse, ProviderError, Requester, Served};
            self.seen.lock().unwrap().push((r.cycle, r.fresh, r.background));
            if self.fail {
                return Err(ProviderError::new(ErrorKind::NotFound, "SecretNotFound", "secret a not found in kv1"));
            }
            let served = |id: &str| Served {
                id: id.into(),
                version: "v1".into(),
                source: "kv2".into(),
                failover: true,
                cache_hit: false,
                stale_seconds: Some(42),
            };
            Ok(MountResponse {
                files: vec![File::new("a", 0o644, b"value".to_vec())],
                object_versions: [("secret/a".to_string(), "v1".to_string())].into(),
                // An entry the response does not version: never believed.
                served: vec![served("secret/a"), served("secret/forged")],
                requester: Requester { identity: "workload".into(), client_id: "wi-client".into() },
            })
        }
    }

    async fn serve(provider: Arc<Recorder>, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("azure.sock");
        let (listener, socket) = crate::socket::bind_private(&path, "--endpoint").unwrap();
        let service =
            pb::csi_driver_provider_server::CsiDriverProviderServer::new(ProviderService::new(provider, "test"));
        tokio::spawn(async move {
            let _socket = socket;
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(crate::socket::incoming(listener))
                .await
                .unwrap();
        });
        path
    }

    fn request(cycle: Option<u64>, fresh: bool) -> MountRequest {
        MountRequest {
            attributes: Default::default(),
            secrets: None,
            target_path: "/t".into(),
            permission: 0o644,
            current_object_versions: Default::default(),
            deadline: Some(Instant::now() + Duration::from_secs(10)),
            background: cycle.is_some(),
            cycle,
            fresh,
        }
    }

    /// The driver and its own provider process over a real socket: the cycle, the refresh kind and the
    /// failover source cross it as they do in process; an upstream-style client sends and reads none.
    #[tokio::test]
    async fn the_internal_extension_carries_what_v1alpha1_cannot_and_nothing_else_does() {
        use secrets_store::external::ExternalProvider;
        let dir = tempfile::tempdir().unwrap();
        let provider = Arc::new(Recorder::default());
        let path = serve(provider.clone(), dir.path()).await;
        let internal = ExternalProvider::new("azure", &path, 1 << 20).internal();
        let resp = internal.mount(request(Some(7), true)).await.unwrap();
        assert_eq!(resp.served.len(), 1, "only what the response versions: {:?}", resp.served);
        assert_eq!((resp.served[0].source.as_str(), resp.served[0].failover), ("kv2", true));
        assert_eq!(resp.requester.client_id, "wi-client");
        let provenance = resp.provenance();
        assert_eq!(provenance.failover.get("secret/a").map(String::as_str), Some("kv2"));
        assert_eq!(provenance.stale.get("secret/a"), Some(&("kv2".to_string(), 42)), "staleness crosses too");
        let plain = ExternalProvider::new("azure", &path, 1 << 20);
        let resp = plain.mount(request(Some(8), true)).await.unwrap();
        assert!(resp.served.iter().all(|s| s.source.is_empty()), "upstream's client reads versions only");
        assert_eq!(
            *provider.seen.lock().unwrap(),
            [(Some(7), true, true), (None, false, false)],
            "upstream infers background from versions"
        );

        let failing = Arc::new(Recorder { fail: true, ..Default::default() });
        let dir2 = tempfile::tempdir().unwrap();
        let path = serve(failing, dir2.path()).await;
        let e =
            ExternalProvider::new("azure", &path, 1 << 20).internal().mount(request(None, false)).await.unwrap_err();
        assert_eq!((e.code, e.kind), ("SecretNotFound", secrets_store::provider::ErrorKind::NotFound));
        assert_eq!(e.message, "secret a not found in kv1");
        let e = ExternalProvider::new("azure", &path, 1 << 20).mount(request(None, false)).await.unwrap_err();
        assert_eq!(e.code, "GRPCProviderError", "upstream's label for an external provider's error");
    }
}
