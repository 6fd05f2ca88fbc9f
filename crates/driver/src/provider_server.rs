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
        let result = async {
            let request = decode(req.into_inner(), deadline)?;
            let resp = self.provider.mount(request).await.map_err(|e| Status::new(e.kind.grpc_code(), e.message))?;
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
        result.map(Response::new)
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
}
