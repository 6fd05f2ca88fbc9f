//! kubelet's per-volume credentials, recovered after a driver restart for the volumes it adopts: the
//! `nodePublishSecretRef` Secret and the CSIDriver's `tokenRequests` tokens, obtained as kubelet
//! obtains them (a GET of the Secret; a TokenRequest bound to the pod). Neither is ever persisted by
//! the driver. Upstream's rotation reconciler did the same (and its chart grants the same verbs).
//! Any failure (RBAC not granted, Secret gone) leaves the volume without them: its rotation then
//! waits for kubelet's next republish, as before.

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret as KubeSecret, ServiceAccount};
use k8s_openapi::api::storage::v1::CSIDriver;
/// One of the CSIDriver's `tokenRequests` (audience, lifetime).
pub use k8s_openapi::api::storage::v1::TokenRequest as CsiTokenRequest;
use kube::Api;
use kube::api::PostParams;

use crate::redact::{SecretMap, SecretString, secret_map};

/// The data of Secret `namespace/name`, as kubelet passes it in `NodePublishVolumeRequest.secrets`.
pub async fn publish_secret(client: &kube::Client, namespace: &str, name: &str) -> Option<SecretMap> {
    let api: Api<KubeSecret> = Api::namespaced(client.clone(), namespace);
    match api.get(name).await {
        Ok(s) => Some(secret_map(
            s.data
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
                .collect(),
        )),
        Err(e) => {
            tracing::warn!(secret = name, namespace, error = %super::describe(&e),
                "cannot read the volume's nodePublishSecretRef; its rotation waits for kubelet's republish");
            None
        }
    }
}

/// The CSIDriver's `tokenRequests` (audiences and lifetimes): read once per rediscovery, not once per
/// volume. Empty when the driver requests no tokens or the CSIDriver cannot be read.
pub async fn token_requests(client: &kube::Client, driver: &str) -> Vec<CsiTokenRequest> {
    match Api::<CSIDriver>::all(client.clone()).get_opt(driver).await {
        Ok(d) => d.and_then(|d| d.spec.token_requests).unwrap_or_default(),
        Err(e) => {
            tracing::debug!(error = %super::describe(&e), "cannot read the CSIDriver's tokenRequests");
            Vec::new()
        }
    }
}

/// Tokens for `requests`, for the pod's service account and bound to the pod, in kubelet's JSON form
/// (`{"<audience>": {"token": ..., "expirationTimestamp": ...}}`). `None` when there are no requests
/// or a token cannot be had.
pub async fn pod_tokens(
    client: &kube::Client,
    requests: &[CsiTokenRequest],
    namespace: &str,
    service_account: &str,
    pod: &str,
    pod_uid: &str,
) -> Option<SecretString> {
    if requests.is_empty() {
        return None;
    }
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let mut out = serde_json::Map::new();
    for r in requests {
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![r.audience.clone()],
                expiration_seconds: r.expiration_seconds,
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.into()),
                    uid: Some(pod_uid.into()),
                }),
            },
            ..Default::default()
        };
        match api.create_token_request(service_account, &PostParams::default(), &req).await {
            Ok(TokenRequest { status: Some(st), .. }) => {
                out.insert(
                    r.audience.clone(),
                    serde_json::json!({ "token": st.token, "expirationTimestamp": st.expiration_timestamp.0 }),
                );
            }
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(service_account, namespace, error = %super::describe(&e),
                    "cannot request the pod's service-account tokens; its rotation waits for kubelet's republish");
                return None;
            }
        }
    }
    Some(SecretString::from(serde_json::Value::Object(out).to_string()))
}
