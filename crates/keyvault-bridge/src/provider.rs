//! The in-process Azure Key Vault provider behind the driver's [`Provider`] interface: the one place
//! where its types meet the driver's (requests, files, and the one map of error kinds).

use std::sync::Arc;

use async_trait::async_trait;
use secrets_store::provider::{ErrorKind, File, MountRequest, MountResponse, Provider, ProviderError};

/// The Azure provider behind the driver's `Provider` interface: the one place where its types meet
/// the driver's (requests, files, and the one map of error kinds).
pub struct AzureProvider {
    /// The provider.
    pub provider: Arc<keyvault::Provider>,
    /// Where `grpc_request` is recorded for in-process calls (as if the call had crossed the upstream
    /// socket); `None` when the v1alpha1 server records it.
    pub metrics: Option<keyvault::metrics::ProviderMetrics>,
}

/// The driver's kind of a Key Vault failure (which decides the gRPC status code).
fn driver_kind(kind: keyvault::ErrorKind) -> ErrorKind {
    match kind {
        keyvault::ErrorKind::InvalidInput => ErrorKind::InvalidArgument,
        keyvault::ErrorKind::NotFound => ErrorKind::NotFound,
        keyvault::ErrorKind::Forbidden => ErrorKind::PermissionDenied,
        keyvault::ErrorKind::Throttled => ErrorKind::ResourceExhausted,
        keyvault::ErrorKind::Unavailable => ErrorKind::Unavailable,
        keyvault::ErrorKind::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        keyvault::ErrorKind::Internal => ErrorKind::Internal,
    }
}

#[async_trait]
impl Provider for AzureProvider {
    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        let req = keyvault::MountRequest {
            attributes: request.attributes,
            secrets: request.secrets.unwrap_or_default(),
            default_mode: request.permission,
            deadline: request.deadline,
            priority: if request.background { keyvault::Priority::Background } else { keyvault::Priority::Mount },
            cycle: request.cycle,
            fresh: request.fresh,
        };
        let started = std::time::Instant::now();
        let result = self.provider.mount(req).await;
        let result = match result {
            Ok(r) => Ok(MountResponse {
                files: r.files.into_iter().map(|f| File { path: f.path, mode: f.mode, contents: f.contents }).collect(),
                object_versions: r.object_versions,
                served: r
                    .served
                    .into_iter()
                    .map(|s| secrets_store::provider::Served {
                        id: s.id,
                        version: s.version,
                        source: s.vault,
                        failover: s.failover,
                        cache_hit: s.cache_hit,
                        stale_seconds: s.stale.map(|d| d.as_secs()),
                    })
                    .collect(),
                requester: secrets_store::provider::Requester {
                    identity: r.identity.kind.to_string(),
                    client_id: r.identity.client_id,
                },
            }),
            Err(e) => Err(provider_error(&e)),
        };
        if let Some(metrics) = &self.metrics {
            let code = result.as_ref().err().map_or(tonic::Code::Ok, |e| e.kind.grpc_code());
            metrics.grpc("/v1alpha1.CSIDriverProvider/Mount", &format!("{code:?}"), started.elapsed());
        }
        result
    }
}

/// What the driver receives for a failed Key Vault mount: the kind that picks the gRPC code, upstream's
/// `ProviderError` metric label and [`mount_failure`]'s text.
pub fn provider_error(e: &keyvault::Error) -> ProviderError {
    ProviderError::new(driver_kind(e.kind), "ProviderError", mount_failure(e))
}

/// The upstream Azure provider's wrapper text for a failed mount, so messages read as they did with
/// two DaemonSets.
pub fn mount_failure(e: &keyvault::Error) -> String {
    format!("failed to mount objects, error: {}", e.message)
}

#[cfg(test)]
mod tests {
    //! Where the driver's and the provider's types meet, so one test can print them all.

    use std::collections::BTreeMap;

    use csi_proto::csi::{NodePublishVolumeRequest, VolumeCapability};
    use secrets_store::volume_context::PublishParams;

    /// A service-account JWT (`iss`, `sub`, `exp` in 2100); its signature is the marker searched for.
    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL29pZGMvIiwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50Om5zOnNhIiwiZXhwIjo0MTAyNDQ0ODAwfQ.sig-TOKEN-VALUE";
    /// The same, expired in 1970.
    const EXPIRED: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL29pZGMvIiwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50Om5zOnNhIiwiZXhwIjoxMDAwfQ.sig-TOKEN-VALUE";
    const CLIENT_SECRET: &str = "client-secret-VALUE";
    const FILE: &str = "file-contents-VALUE";

    fn tokens_json(token: &str) -> String {
        format!(
            r#"{{"api://AzureADTokenExchange":{{"token":"{token}","expirationTimestamp":"2100-01-01T00:00:00Z"}}}}"#
        )
    }

    fn assert_clean(what: &str, debug: String) {
        for secret in [TOKEN, "sig-TOKEN-VALUE", CLIENT_SECRET, FILE] {
            assert!(!debug.contains(secret), "{what} prints a secret in its Debug output: {debug}");
        }
    }

    #[test]
    fn no_debug_output_of_a_request_params_volume_or_error_holds_a_secret() {
        let context: BTreeMap<String, String> = [
            ("secretProviderClass", "spc"),
            ("csi.storage.k8s.io/pod.name", "web"),
            ("csi.storage.k8s.io/pod.namespace", "ns"),
            ("csi.storage.k8s.io/serviceAccount.tokens", &tokens_json(TOKEN)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let request = NodePublishVolumeRequest {
            volume_id: "csi-1".into(),
            target_path: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount".into(),
            volume_capability: Some(VolumeCapability::default()),
            readonly: true,
            volume_context: context.into_iter().collect(),
            secrets: [("clientid".to_string(), "id".to_string()), ("clientsecret".to_string(), CLIENT_SECRET.into())]
                .into(),
            ..Default::default()
        };
        let params = PublishParams::parse(request).unwrap();
        assert_clean("PublishParams", format!("{params:?}"));
        let volume = driver::registry::Volume::fresh(params.clone(), "azure".into(), BTreeMap::new());
        assert_clean("Volume", format!("{volume:?}"));

        let spc_parameters: BTreeMap<String, String> = [
            ("keyvaultName", "kv1"),
            ("tenantId", "t"),
            ("clientID", "c"),
            ("objects", "array:\n  - |\n    objectName: a\n    objectType: secret\n"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let driver_request = secrets_store::provider::MountRequest {
            attributes: params.attributes(&spc_parameters),
            secrets: params.secrets.clone(),
            target_path: params.target_path.clone(),
            permission: 0o644,
            current_object_versions: BTreeMap::new(),
            deadline: None,
            background: false,
            cycle: None,
            fresh: false,
        };
        assert_clean("driver MountRequest", format!("{driver_request:?}"));
        let file = secrets_store::provider::File::new("a", 0o644, FILE.as_bytes().to_vec());
        assert_clean("driver File", format!("{file:?}"));

        let kv_request = keyvault::MountRequest {
            attributes: driver_request.attributes.clone(),
            secrets: driver_request.secrets.clone().unwrap_or_default(),
            default_mode: 0o644,
            ..Default::default()
        };
        assert_clean("keyvault MountRequest", format!("{kv_request:?}"));
        // Workload identity (the token) and a service principal (the client secret).
        let wi =
            keyvault::params::parse(&kv_request.attributes, &Default::default(), 0o644, &Default::default(), false);
        let mut sp_attributes = kv_request.attributes.clone();
        sp_attributes.remove("clientID");
        let sp = keyvault::params::parse(&sp_attributes, &kv_request.secrets, 0o644, &Default::default(), false);
        for parsed in [wi, sp] {
            let parsed = parsed.expect("a class that parses");
            assert_clean("MountParams", format!("{parsed:?}"));
            assert_clean("Identity", format!("{:?}", parsed.identity));
        }

        // Errors a mount can fail with, as kubelet and the logs see them.
        let provider_error = secrets_store::provider::ProviderError::new(
            secrets_store::provider::ErrorKind::PermissionDenied,
            "ProviderError",
            "failed to mount objects, error: 403",
        );
        let publish_error = driver::error::PublishError::Provider { pod: "ns/web".into(), source: provider_error };
        assert_clean("PublishError", format!("{publish_error:?} {publish_error} {:?}", publish_error.to_status()));
        let mut expired = kv_request.attributes.clone();
        expired.insert("csi.storage.k8s.io/serviceAccount.tokens".into(), tokens_json(EXPIRED));
        let e = keyvault::params::parse(&expired, &Default::default(), 0o644, &Default::default(), false).unwrap_err();
        assert!(e.message.contains("expired"), "{e}");
        assert_clean("keyvault Error", format!("{e:?} {e}"));
    }
}
