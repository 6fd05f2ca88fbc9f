//! `SecretProviderClassPodStatus` `<pod>-<namespace>-<class>`: created (or taken over from another
//! node, e.g. a StatefulSet pod that moved) on publish with the node label, the pod as owner (so the
//! API server garbage-collects it with the pod) and the object versions sorted by id; deleted on
//! unpublish.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};

use super::crd::v1::SecretProviderClassPodStatus;
use super::crd::{ObjectVersion, PodStatusStatus};
use secrets_store::volume_context::PublishParams;

/// Longest object name Kubernetes accepts.
const MAX_NAME: usize = 253;

/// Why a pod status could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PodStatusError {
    /// `<pod>-<namespace>-<class>` is longer than Kubernetes allows.
    #[error(
        "the SecretProviderClassPodStatus name {prefix:?}… is {len} characters, more than Kubernetes' {MAX_NAME}; shorten the pod, namespace or class name"
    )]
    NameTooLong {
        /// The name's first 40 characters.
        prefix: String,
        /// Its length.
        len: usize,
    },
    /// The API server refused or could not be reached.
    #[error("{}", super::describe(.0))]
    Api(#[source] kube::Error),
    /// The stored status has no uid.
    #[error("pod status {0} has no uid")]
    NoUid(String),
}

/// Writes pod statuses through the API.
#[derive(Clone)]
pub struct KubePodStatus {
    client: kube::Client,
    node: String,
}

/// Pod-status annotation: object id → the failover vault that served it (JSON), while any did.
pub const SERVED_FROM: &str = "keyvault-csi.io/served-from";
/// Pod-status annotation: object id → `{"vault", "ageSeconds"}` of what was served from the node's
/// last known good (JSON), while any was.
pub const STALE_OBJECTS: &str = "keyvault-csi.io/stale-objects";

impl KubePodStatus {
    /// Writes statuses labelled with `node`.
    pub fn new(client: kube::Client, node: &str) -> Self {
        Self { client, node: node.to_string() }
    }

    /// The pod status's uid (to own the Secrets of a bare pod).
    pub async fn uid(&self, p: &PublishParams) -> Result<String, PodStatusError> {
        let name = status_name(p)?;
        let obj = self.api(&p.pod.namespace).get(&name).await.map_err(PodStatusError::Api)?;
        obj.metadata.uid.ok_or(PodStatusError::NoUid(name))
    }

    fn api(&self, namespace: &str) -> Api<SecretProviderClassPodStatus> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

/// `<pod>-<namespace>-<class>`, refused when Kubernetes would refuse it.
pub fn status_name(p: &PublishParams) -> Result<String, PodStatusError> {
    let name = format!("{}-{}-{}", p.pod.name, p.pod.namespace, p.class_name);
    if name.len() > MAX_NAME {
        let prefix = name.chars().take(40).collect();
        return Err(PodStatusError::NameTooLong { prefix, len: name.len() });
    }
    Ok(name)
}

impl KubePodStatus {
    /// Creates (or takes over) the pod status of a published volume; with `refresh` (new versions of a
    /// volume this driver published), replaces it in one request.
    pub async fn record(
        &self,
        p: &PublishParams,
        versions: &BTreeMap<String, String>,
        provenance: &secrets_store::provider::Provenance,
        refresh: bool,
    ) -> Result<(), PodStatusError> {
        let name = status_name(p)?;
        // Which objects a failover vault served (ours): an annotation, because the status schema is
        // upstream's. `null` in the merge patch removes it once the class's vault serves again.
        let failover = &provenance.failover;
        let served_from = (!failover.is_empty()).then(|| serde_json::to_string(failover).unwrap_or_default());
        let stale: BTreeMap<&String, serde_json::Value> = provenance
            .stale
            .iter()
            .map(|(id, (vault, age))| (id, serde_json::json!({ "vault": vault, "ageSeconds": age })))
            .collect();
        let stale = (!stale.is_empty()).then(|| serde_json::to_string(&stale).unwrap_or_default());
        let ours = [(SERVED_FROM, served_from), (STALE_OBJECTS, stale)];
        let present: BTreeMap<String, String> =
            ours.iter().filter_map(|(k, v)| Some((k.to_string(), v.clone()?))).collect();
        let api = self.api(&p.pod.namespace);
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: p.pod.name.clone(),
            uid: p.pod.uid.clone(),
            ..Default::default()
        };
        let status = PodStatusStatus {
            pod_name: p.pod.name.clone(),
            secret_provider_class_name: p.class_name.clone(),
            mounted: true,
            target_path: p.target_path.to_string_lossy().into_owned(),
            objects: versions.iter().map(|(id, v)| ObjectVersion { id: id.clone(), version: v.clone() }).collect(),
        };
        let obj = SecretProviderClassPodStatus::new(
            ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(p.pod.namespace.clone()),
                labels: Some([(super::NODE_LABEL.to_string(), self.node.clone())].into()),
                annotations: (!present.is_empty()).then(|| present.clone()),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            status.clone(),
        );
        if refresh {
            // Our own status with new versions: one merge patch per rotated volume (labels merged, owner
            // and status replaced) instead of create, conflict, get and update.
            let patch = serde_json::json!({
                "metadata": {
                    "labels": obj.metadata.labels,
                    "annotations": { SERVED_FROM: ours[0].1, STALE_OBJECTS: ours[1].1 },
                    "ownerReferences": obj.metadata.owner_references,
                },
                "status": obj.status,
            });
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(()),
                Err(e) if super::api_code(&e) == Some(404) => {} // deleted meanwhile: create it below
                Err(e) => return Err(PodStatusError::Api(e)),
            }
        }
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => Ok(()),
            Err(e) if super::api_code(&e) == Some(409) => {
                // It exists (a republish, or the pod moved here from another node): take it over.
                let mut current = api.get(&name).await.map_err(PodStatusError::Api)?;
                let meta = &mut current.metadata;
                meta.labels.get_or_insert_with(Default::default).insert(super::NODE_LABEL.into(), self.node.clone());
                meta.owner_references = Some(vec![owner]);
                let annotations = meta.annotations.get_or_insert_with(Default::default);
                for (key, value) in &ours {
                    match value {
                        Some(v) => annotations.insert(key.to_string(), v.clone()),
                        None => annotations.remove(*key),
                    };
                }
                current.status = Some(status);
                api.replace(&name, &PostParams::default(), &current).await.map(|_| ()).map_err(PodStatusError::Api)
            }
            Err(e) => Err(PodStatusError::Api(e)),
        }
    }

    /// Deletes the pod status of an unpublished volume.
    pub async fn remove(&self, p: &PublishParams) -> Result<(), PodStatusError> {
        let name = status_name(p)?;
        match self.api(&p.pod.namespace).delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if super::api_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(PodStatusError::Api(e)),
        }
    }
}
