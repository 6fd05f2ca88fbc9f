//! Parses a CSI `NodePublishVolumeRequest` once, at the edge, into typed parameters, and makes the
//! provider attributes every caller (mounts, SecretSync, `check --live`, standalone mode) sends.

use std::collections::BTreeMap;
use std::path::PathBuf;

use csi_proto::csi::NodePublishVolumeRequest;

use crate::redact::{ExposeSecret, SecretMap, SecretString, TOKENS_KEY, secret_map};

/// Volume-context key naming the SecretProviderClass (user attribute, case-sensitive).
pub const CLASS_KEY: &str = "secretProviderClass";
/// Pod name attribute sent by kubelet (`podInfoOnMount`).
pub const POD_NAME_KEY: &str = "csi.storage.k8s.io/pod.name";
/// Pod namespace attribute.
pub const POD_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pod.namespace";
/// Pod UID attribute.
pub const POD_UID_KEY: &str = "csi.storage.k8s.io/pod.uid";
/// Prefix of the attributes kubelet sets; never taken from a class.
pub const RESERVED_PREFIX: &str = "csi.storage.k8s.io/";
/// Service account attribute.
pub const SERVICE_ACCOUNT_KEY: &str = "csi.storage.k8s.io/serviceAccount.name";

/// A `NodePublishVolumeRequest` kubelet must not send (the message is upstream's; the node maps it
/// to `InvalidArgument`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

/// The pod a volume belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod UID.
    pub uid: String,
    /// Service account name.
    pub service_account: String,
}

/// A validated publish request.
#[derive(Clone, Debug)]
pub struct PublishParams {
    /// kubelet's volume id (`csi-<hash>`).
    pub volume_id: String,
    /// Absolute target path.
    pub target_path: PathBuf,
    /// `readonly` flag (must be true, checked after class resolution as upstream).
    pub readonly: bool,
    /// SecretProviderClass name (may be empty: reported after the mount-state checks, as upstream).
    pub class_name: String,
    /// The pod.
    pub pod: PodInfo,
    /// The volume context without the tokens (they are in `tokens`); copied into provider attributes.
    pub volume_context: BTreeMap<String, String>,
    /// Node-publish secrets; `None` when kubelet sent none.
    pub secrets: Option<SecretMap>,
    /// Service-account tokens JSON: from `secrets` first (Kubernetes ≥ 1.35), else the volume context.
    pub tokens: Option<SecretString>,
}

/// The shapes of Kubernetes names the volume context carries.
#[derive(Clone, Copy, Debug)]
pub enum NameKind {
    /// RFC 1123 label (namespaces): at most 63 of `a-z0-9-`, alphanumeric at both ends.
    Label,
    /// RFC 1123 subdomain (pods, service accounts, classes): at most 253, parts joined by dots.
    Subdomain,
    /// A UID: at most 64 of `a-zA-Z0-9-`.
    Uid,
}

impl NameKind {
    /// Whether `s` has this shape.
    pub fn accepts(self, s: &str) -> bool {
        // Kubernetes' own checks: a label is at most 63; a subdomain's parts are not limited
        // (IsDNS1123Subdomain checks the whole against 253 only).
        let part = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        match self {
            NameKind::Label => s.len() <= 63 && part(s),
            NameKind::Subdomain => s.len() <= 253 && s.split('.').all(part),
            NameKind::Uid => {
                !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            NameKind::Label => "Kubernetes name (RFC 1123 label)",
            NameKind::Subdomain => "Kubernetes name (RFC 1123 subdomain)",
            NameKind::Uid => "UID",
        }
    }
}

impl PublishParams {
    /// Validates the request with upstream's messages.
    pub fn parse(req: NodePublishVolumeRequest) -> Result<Self, InvalidRequest> {
        if req.volume_capability.is_none() {
            return Err(InvalidRequest("Volume capability missing in request".into()));
        }
        if req.volume_id.is_empty() {
            return Err(InvalidRequest("Volume ID missing in request".into()));
        }
        if req.target_path.is_empty() {
            return Err(InvalidRequest("Target path missing in request".into()));
        }
        if req.volume_context.is_empty() {
            return Err(InvalidRequest("Volume attributes missing in request".into()));
        }
        let target_path = PathBuf::from(&req.target_path);
        if !target_path.is_absolute() {
            return Err(InvalidRequest(format!("Target path {} is not absolute", req.target_path)));
        }
        let mut volume_context: BTreeMap<String, String> = req.volume_context.into_iter().collect();
        let secrets: BTreeMap<String, String> = req.secrets.into_iter().collect();
        // Tokens leave the plain-text map at once: `volume_context` is stored, logged and debug-printed.
        let context_tokens = volume_context.remove(TOKENS_KEY);
        let tokens =
            secrets.get(TOKENS_KEY).cloned().or(context_tokens).filter(|t| !t.is_empty()).map(SecretString::from);
        let get = |k: &str| volume_context.get(k).cloned().unwrap_or_default();
        // These become paths, API calls, label values and event targets: only Kubernetes names pass.
        for (key, kind) in [
            (POD_NAMESPACE_KEY, NameKind::Label),
            (POD_NAME_KEY, NameKind::Subdomain),
            (SERVICE_ACCOUNT_KEY, NameKind::Subdomain),
            (CLASS_KEY, NameKind::Subdomain),
            (POD_UID_KEY, NameKind::Uid),
        ] {
            let value = get(key);
            if !value.is_empty() && !kind.accepts(&value) {
                return Err(InvalidRequest(format!(
                    "volume attribute {key} {:?} is not a valid {}",
                    crate::annotations::shown(&value),
                    kind.describe()
                )));
            }
        }
        Ok(Self {
            volume_id: req.volume_id,
            target_path,
            readonly: req.readonly,
            class_name: get(CLASS_KEY),
            pod: PodInfo {
                name: get(POD_NAME_KEY),
                namespace: get(POD_NAMESPACE_KEY),
                uid: get(POD_UID_KEY),
                service_account: get(SERVICE_ACCOUNT_KEY),
            },
            secrets: if secrets.is_empty() { None } else { Some(secret_map(secrets)) },
            volume_context,
            tokens,
        })
    }

    /// Provider attributes: class parameters overlaid by the volume context (the volume context wins),
    /// plus the tokens. Builds a new map: the class (possibly a shared cache entry) is never mutated.
    ///
    /// Class parameters under `csi.storage.k8s.io/` are dropped: those keys carry kubelet's pod identity
    /// (pod name, namespace, service-account tokens), and a class author must not be able to forge them.
    pub fn attributes(&self, parameters: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        provider_attributes(parameters, &self.volume_context, self.tokens.as_ref())
    }
}

/// The one place provider attributes are made (mounts, SecretSync, `check --live`): class parameters
/// without the reserved `csi.storage.k8s.io/` keys, overlaid by `context` (what kubelet puts in the
/// volume context, or its stand-in), plus the service-account tokens JSON.
pub fn provider_attributes(
    parameters: &BTreeMap<String, String>,
    context: &BTreeMap<String, String>,
    tokens: Option<&SecretString>,
) -> BTreeMap<String, String> {
    let mut attrs: BTreeMap<String, String> = parameters
        .iter()
        .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    attrs.extend(context.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(t) = tokens {
        attrs.insert(TOKENS_KEY.to_string(), t.expose_secret().to_string());
    }
    attrs
}

/// Who a provider call is for, as kubelet's volume context names it: a pod, or what stands in for one
/// (a SecretSync, `check --live`, standalone mode).
pub struct Caller<'a> {
    /// Pod name (or the stand-in's name).
    pub pod: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Pod UID ("" when none).
    pub uid: &'a str,
    /// Service account.
    pub service_account: &'a str,
}

impl Caller<'_> {
    /// The volume-context keys kubelet sets for a pod.
    pub fn context(&self) -> BTreeMap<String, String> {
        [
            (POD_NAME_KEY, self.pod),
            (POD_NAMESPACE_KEY, self.namespace),
            (POD_UID_KEY, self.uid),
            (SERVICE_ACCOUNT_KEY, self.service_account),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_proto::csi::VolumeCapability;

    fn request() -> NodePublishVolumeRequest {
        NodePublishVolumeRequest {
            volume_id: "csi-1".into(),
            target_path: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount".into(),
            volume_capability: Some(VolumeCapability::default()),
            readonly: true,
            volume_context: [
                (CLASS_KEY, "spc"),
                (POD_NAME_KEY, "web"),
                (POD_NAMESPACE_KEY, "ns"),
                ("keyvaultName", "from-volume"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn pod_and_class_names_must_be_kubernetes_names_before_any_use() {
        let long = "a".repeat(254);
        for (key, bad) in [
            (POD_NAMESPACE_KEY, "../kube-system"),
            (POD_NAMESPACE_KEY, "ns/other"),
            (POD_NAMESPACE_KEY, "Upper"),
            (POD_NAME_KEY, "web\nforged log line"),
            (POD_NAME_KEY, long.as_str()),
            (CLASS_KEY, "spc/../../x"),
            (SERVICE_ACCOUNT_KEY, "sa name"),
            (POD_UID_KEY, "u/../.."),
        ] {
            let mut r = request();
            r.volume_context.insert(key.into(), bad.into());
            let e = PublishParams::parse(r).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
            assert!(e.to_string().len() < 200, "the value is shown bounded: {e}");
        }
        let mut r = request();
        r.volume_context.insert(POD_NAME_KEY.into(), format!("web-7d9f.b-x2{}", "p".repeat(200)));
        r.volume_context.insert(POD_UID_KEY.into(), "0c6f3b8e-3f3a-4d4e-9c1e-2a7e5f6b8d90".into());
        assert!(PublishParams::parse(r).is_ok());
    }

    #[test]
    fn missing_fields_get_upstreams_messages() {
        let mut r = request();
        r.volume_capability = None;
        assert_eq!(PublishParams::parse(r).unwrap_err().to_string(), "Volume capability missing in request");
        let mut r = request();
        r.volume_id.clear();
        assert_eq!(PublishParams::parse(r).unwrap_err().to_string(), "Volume ID missing in request");
        let mut r = request();
        r.target_path.clear();
        assert_eq!(PublishParams::parse(r).unwrap_err().to_string(), "Target path missing in request");
        let mut r = request();
        r.volume_context.clear();
        assert_eq!(PublishParams::parse(r).unwrap_err().to_string(), "Volume attributes missing in request");
    }

    #[test]
    fn volume_context_overrides_parameters_without_touching_them() {
        let p = PublishParams::parse(request()).unwrap();
        let params: BTreeMap<String, String> = [("keyvaultName".to_string(), "from-class".to_string())].into();
        let attrs = p.attributes(&params);
        assert_eq!(attrs["keyvaultName"], "from-volume");
        assert_eq!(params["keyvaultName"], "from-class");
    }

    #[test]
    fn a_class_cannot_forge_kubelets_pod_attributes_or_tokens() {
        let p = PublishParams::parse(request()).unwrap();
        let params: BTreeMap<String, String> = [
            (TOKENS_KEY.to_string(), "forged".to_string()),
            ("csi.storage.k8s.io/pod.namespace".to_string(), "kube-system".to_string()),
            ("csi.storage.k8s.io/pod.uid".to_string(), "someone-else".to_string()),
        ]
        .into();
        let attrs = p.attributes(&params);
        assert!(!attrs.contains_key(TOKENS_KEY));
        assert_eq!(attrs[POD_NAMESPACE_KEY], "ns");
        assert!(!attrs.contains_key(POD_UID_KEY));
    }

    #[test]
    fn tokens_come_from_secrets_before_the_volume_context() {
        let mut r = request();
        r.volume_context.insert(TOKENS_KEY.into(), "from-context".into());
        r.secrets.insert(TOKENS_KEY.into(), "from-secrets".into());
        let p = PublishParams::parse(r).unwrap();
        assert_eq!(p.tokens.as_ref().unwrap().expose_secret(), "from-secrets");
        assert_eq!(p.attributes(&BTreeMap::new())[TOKENS_KEY], "from-secrets");
        assert!(!p.volume_context.contains_key(TOKENS_KEY), "the stored context holds no token");
        let debug = format!("{p:?}");
        assert!(!debug.contains("from-secrets") && !debug.contains("from-context"), "no token in Debug output");
    }
}
