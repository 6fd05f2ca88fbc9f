//! The Kubernetes side of the Secrets Store, shared by the node driver and the SecretSync controller:
//! SecretProviderClasses from a watch cache, the `SecretProviderClassPodStatus` that records each
//! mounted volume (how upstream tooling, and a restarted driver, find a node's volumes), Secrets
//! synced from `secretObjects`, events, TokenRequest credentials, and the supervision every watch and
//! controller task runs under ([`supervise`]).
//!
//! The wire formats are upstream's (the upstream driver's); the typed CRDs are in [`crd`]. Nothing
//! here mounts, writes files or speaks CSI: that is the node driver's.

pub mod access_review;
pub mod cache;
pub mod check;
pub mod classes;
pub mod crd;
pub mod credentials;
pub mod events;
pub mod podstatus;
pub mod secrets;
pub mod supervise;
pub mod tls;

pub use cache::{Cache, synced};
pub use classes::KubeClassSource;
pub use events::{EventType, Recorder};
pub use podstatus::{KubePodStatus, PodStatusError};
pub use tls::tls_value;

/// `secrets-store.csi.x-k8s.io`.
pub const GROUP: &str = "secrets-store.csi.x-k8s.io";
/// Node label on pod statuses.
pub const NODE_LABEL: &str = "internal.secrets-store.csi.k8s.io/node-name";

/// A Kubernetes client from `path` (a `--kubeconfig`), else `KUBECONFIG` or the in-cluster service
/// account; the error names where the configuration was looked for.
pub async fn client(path: Option<&std::path::Path>) -> Result<kube::Client, String> {
    let config = match path {
        Some(p) => {
            let kc =
                kube::config::Kubeconfig::read_from(p).map_err(|e| format!("--kubeconfig {}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", p.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration (in-cluster or KUBECONFIG): {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}

/// The status code of a Kubernetes API error, if it is one.
pub fn api_code(e: &kube::Error) -> Option<u16> {
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
