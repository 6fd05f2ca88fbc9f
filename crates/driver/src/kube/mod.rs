//! The Kubernetes side of the node driver: SecretProviderClasses from a watch cache, the
//! `SecretProviderClassPodStatus` that records each mounted volume (how upstream tooling, and a
//! restarted driver, find a node's volumes), Secrets synced from `secretObjects`, and events.
//!
//! The wire formats are upstream's (the upstream driver's); the typed CRDs are in [`crd`].

mod cache;
mod classes;
mod cluster;
pub mod crd;
pub mod credentials;
mod events;
mod podstatus;
pub mod secrets;
mod tls;

pub use cache::{Cache, synced};
pub use classes::KubeClassSource;
pub use cluster::KubeCluster;
pub use events::{EventType, Recorder};
pub use podstatus::{KubePodStatus, PodStatusError};
pub use tls::tls_value;

/// `secrets-store.csi.x-k8s.io`.
pub const GROUP: &str = "secrets-store.csi.x-k8s.io";
/// Node label on pod statuses.
pub const NODE_LABEL: &str = "internal.secrets-store.csi.k8s.io/node-name";

/// The status code of a Kubernetes API error, if it is one.
fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// An API error as one line (the API server's message; transport errors with their cause).
pub fn describe(e: &kube::Error) -> String {
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
