//! The driver without a cluster (`keyvault-csi mount`): one SecretProviderClass read from a file, one
//! volume at a directory, published through the same path as `NodePublishVolume` (validation, atomic
//! writer, keep-on-error) and kept fresh by the same rotation poller.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use secrets_store::class::{ClassError, ClassSource, SecretProviderClassSpec};
use secrets_store::redact::{SecretString, TOKENS_KEY, secret_map};
use secrets_store::volume_context::{self as vc, PodInfo, PublishParams};

use crate::Config;

/// The one class a standalone mount knows; any other name is not found.
pub struct OneClass {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its spec.
    pub spec: SecretProviderClassSpec,
}

#[async_trait]
impl ClassSource for OneClass {
    async fn get(&self, namespace: &str, name: &str) -> Result<SecretProviderClassSpec, ClassError> {
        if namespace == self.namespace && name == self.name {
            Ok(self.spec.clone())
        } else {
            Err(ClassError::NotFound { namespace: namespace.into(), name: name.into() })
        }
    }
}

/// The driver's settings for a standalone mount (`rotation`: re-fetch every interval).
pub fn config(vendor_version: String, rotation: Option<Duration>) -> Config {
    Config {
        driver_name: "secrets-store.csi.k8s.io".into(),
        node_id: "standalone".into(),
        vendor_version,
        rotation_interval: rotation,
        min_class_interval: secrets_store::annotations::DEFAULT_MIN_CLASS_INTERVAL,
        cert_expiry_warning: Some(crate::node::DEFAULT_CERT_EXPIRY_WARNING),
        events_poll_interval: None,
    }
}

/// Who the standalone mount says it is, as kubelet would state a pod.
pub struct Caller {
    /// Pod name reported to the provider.
    pub pod_name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
}

/// The volume kubelet would ask for: `class` for `caller` at `target`, with a service principal's
/// `secrets` (as a nodePublishSecretRef) and service-account `tokens` (as kubelet's TokenRequests).
pub fn params(
    class: &str,
    caller: &Caller,
    target: PathBuf,
    secrets: BTreeMap<String, String>,
    tokens: Option<SecretString>,
) -> PublishParams {
    let volume_context: BTreeMap<String, String> = [
        (vc::CLASS_KEY, class),
        (vc::POD_NAME_KEY, caller.pod_name.as_str()),
        (vc::POD_NAMESPACE_KEY, caller.namespace.as_str()),
        (vc::POD_UID_KEY, "standalone"),
        (vc::SERVICE_ACCOUNT_KEY, caller.service_account.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    debug_assert!(!volume_context.contains_key(TOKENS_KEY));
    PublishParams {
        volume_id: "standalone".into(),
        target_path: target,
        readonly: true,
        class_name: class.into(),
        pod: PodInfo {
            name: caller.pod_name.clone(),
            namespace: caller.namespace.clone(),
            uid: "standalone".into(),
            service_account: caller.service_account.clone(),
        },
        volume_context,
        secrets: (!secrets.is_empty()).then(|| secret_map(secrets)),
        tokens,
    }
}
