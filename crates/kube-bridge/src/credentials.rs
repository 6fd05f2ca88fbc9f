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

use secrets_store::redact::{ExposeSecret, SecretMap, SecretString, secret_map};

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

/// A service-account token minted by a TokenRequest.
pub struct MintedToken {
    /// The token (secret).
    pub token: SecretString,
    /// When it expires.
    pub expires: k8s_openapi::jiff::Timestamp,
}

/// The one TokenRequest of the project: a token of `service_account` for `audience`, lasting
/// `expiration_seconds` (the API server's default when `None`), bound to `pod` (name, uid) when given,
/// as kubelet binds the tokens it passes to a CSI driver.
pub async fn mint_token(
    client: &kube::Client,
    namespace: &str,
    service_account: &str,
    audience: &str,
    expiration_seconds: Option<i64>,
    pod: Option<(&str, &str)>,
) -> Result<MintedToken, MintError> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_string()],
            expiration_seconds,
            bound_object_ref: pod.map(|(name, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
            }),
        },
        ..Default::default()
    };
    let answer = api.create_token_request(service_account, &PostParams::default(), &req).await?;
    match answer.status {
        Some(st) if !st.token.is_empty() => {
            Ok(MintedToken { token: SecretString::from(st.token), expires: st.expiration_timestamp.0 })
        }
        _ => Err(MintError::NoToken),
    }
}

/// Why no token was minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The API server refused (its status code tells RBAC from a missing service account).
    #[error("{}", super::describe(.0))]
    Api(#[from] kube::Error),
    /// It answered without a token.
    #[error("the API server returned no token")]
    NoToken,
}

impl MintError {
    /// The API server's status code, if it answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Api(e) => super::api_code(e),
            Self::NoToken => None,
        }
    }
}

/// kubelet's service-account tokens attribute (`csi.storage.k8s.io/serviceAccount.tokens`):
/// `{"<audience>": {"token": ..., "expirationTimestamp": ...}}`, the form the provider reads.
pub fn tokens_json<'a>(tokens: impl IntoIterator<Item = (&'a str, &'a MintedToken)>) -> SecretString {
    let map: serde_json::Map<String, serde_json::Value> = tokens
        .into_iter()
        .map(|(audience, t)| {
            let entry = serde_json::json!({
                "token": t.token.expose_secret(),
                "expirationTimestamp": t.expires.to_string(),
            });
            (audience.to_string(), entry)
        })
        .collect();
    SecretString::from(serde_json::Value::Object(map).to_string())
}

/// Tokens for `requests`, for the pod's service account and bound to the pod, in kubelet's JSON form.
/// `None` when there are no requests or a token cannot be had.
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
    let mut minted = Vec::new();
    for r in requests {
        let bound = Some((pod, pod_uid));
        match mint_token(client, namespace, service_account, &r.audience, r.expiration_seconds, bound).await {
            Ok(t) => minted.push((r.audience.as_str(), t)),
            Err(e) => {
                tracing::warn!(service_account, namespace, error = %e,
                    "cannot request the pod's service-account tokens; its rotation waits for kubelet's republish");
                return None;
            }
        }
    }
    Some(tokens_json(minted.iter().map(|(a, t)| (*a, t))))
}
