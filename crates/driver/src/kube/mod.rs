//! The Kubernetes side of the node driver: SecretProviderClasses read from the API, and the
//! `SecretProviderClassPodStatus` that records each mounted volume (how upstream tooling, and a
//! restarted driver, find a node's volumes).
//!
//! Both go through a `kube::Client` on dynamic objects, so the driver carries no generated CRD types;
//! the wire format is upstream's (reference §3).

mod classes;
mod podstatus;

pub use classes::KubeClassSource;
pub use podstatus::KubePodStatus;

use kube::core::{ApiResource, GroupVersionKind};

/// `secrets-store.csi.x-k8s.io`.
pub const GROUP: &str = "secrets-store.csi.x-k8s.io";
/// Node label on pod statuses.
pub const NODE_LABEL: &str = "internal.secrets-store.csi.k8s.io/node-name";

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, "v1", kind), plural)
}

/// The status code of a Kubernetes API error, if it is one.
fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// An API error as one line (the API server's message; transport errors with their cause).
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => {
            let mut msg = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            msg
        }
    }
}
