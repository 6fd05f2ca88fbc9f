//! [`Cluster`] on a real API server: pod statuses, Secret sync with upstream's ownership rules, and
//! events on the pod. Pods on this node come from a watch filtered by `spec.nodeName` (for their
//! owners and phase); Secrets are read on demand, only when a volume's files change, so nothing
//! cluster-sized is held in memory.

use kube_bridge::credentials;
use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::runtime::watcher;

use crate::atomic_writer::mounted_files;
use crate::node::{Cluster, SyncReport, blocking};
use kube_bridge::cache::Cache;
use kube_bridge::events::{EventType, MOUNT_COMPONENT, ROTATION_COMPONENT, Recorder, SYNC_COMPONENT};
use kube_bridge::podstatus::{KubePodStatus, PodStatusError};
use kube_bridge::secrets::{SecretWriter, Synced, secret_data};
use secrets_store::annotations::{REFRESH_NOW, ROTATION_INTERVAL, RefreshMarks, VolumeHints};
use secrets_store::class::SecretProviderClassSpec;
use secrets_store::provider::File;
use secrets_store::redact::ExposeSecret;
use secrets_store::volume_context::{PodInfo, PublishParams};

/// The driver's view of the cluster.
#[derive(Clone)]
pub struct KubeCluster {
    client: kube::Client,
    node: String,
    driver_name: String,
    statuses: KubePodStatus,
    secrets: SecretWriter,
    events: Recorder,
    pods: Cache<Pod>,
    classes: Option<Cache<kube_bridge::crd::v1::SecretProviderClass>>,
    invalidations: Option<(Cache<k8s_openapi::api::core::v1::ConfigMap>, String)>,
    /// Mint the CSIDriver's tokens for volumes adopted after a restart (TokenRequest, which needs
    /// `serviceaccounts/token create`); without, their rotation waits for kubelet's next republish.
    restart_tokens: bool,
}

impl KubeCluster {
    /// Starts the pod watch for `node`; `driver_name` is the CSIDriver whose `tokenRequests` adopted
    /// volumes get their tokens for.
    pub fn new(client: kube::Client, node: &str, driver_name: &str) -> Self {
        let pods = Cache::start(
            "pods",
            Api::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            |p: &mut Pod| {
                // Keep owners, deletion and phase; a pod's spec and status are most of its size.
                p.metadata.managed_fields = None;
                secrets_store::annotations::retain_ours(&mut p.metadata.annotations);
                p.spec = None;
                if let Some(s) = p.status.as_mut() {
                    *s = k8s_openapi::api::core::v1::PodStatus { phase: s.phase.take(), ..Default::default() };
                }
            },
        );
        Self {
            statuses: KubePodStatus::new(client.clone(), node),
            secrets: SecretWriter::new(client.clone()),
            events: Recorder::new(client.clone(), node),
            client,
            node: node.to_string(),
            driver_name: driver_name.to_string(),
            pods,
            classes: None,
            invalidations: None,
            restart_tokens: false,
        }
    }

    /// Mints tokens for adopted volumes after a restart (`--restart-token-requests`).
    pub fn with_restart_tokens(mut self, on: bool) -> Self {
        self.restart_tokens = on;
        self
    }

    /// Watches the change-event invalidations ConfigMap in `namespace` (one object, by name: see
    /// [`secrets_store::invalidation`]).
    pub fn with_invalidations(mut self, namespace: &str) -> Self {
        let cache = Cache::start(
            "invalidations",
            Api::namespaced(self.client.clone(), namespace),
            watcher::Config::default().fields(&format!("metadata.name={}", secrets_store::invalidation::CONFIGMAP)),
            |c: &mut k8s_openapi::api::core::v1::ConfigMap| c.metadata.managed_fields = None,
        );
        self.invalidations = Some((cache, namespace.to_string()));
        self
    }

    /// Reads class annotations (refresh-now, rotation interval) from `classes`, the class watch.
    pub fn with_classes(mut self, classes: Cache<kube_bridge::crd::v1::SecretProviderClass>) -> Self {
        self.classes = Some(classes);
        self
    }

    /// The pod watch.
    pub fn pods(&self) -> &Cache<Pod> {
        &self.pods
    }

    async fn pod(&self, pod: &PodInfo) -> Option<Pod> {
        if let Some(p) = self.pods.get(&pod.namespace, &pod.name) {
            return Some((*p).clone());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        match api.get_opt(&pod.name).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %kube_bridge::describe(&e), "failed to read the pod");
                None
            }
        }
    }

    /// What kubelet sent when it published the volume of a pod status, rebuilt from the pod: the
    /// volume whose name is in the target path (`.../volumes/kubernetes.io~csi/<name>/mount`), its
    /// attributes and kubelet's pod attributes. Service-account tokens are not known until kubelet's
    /// next republish.
    async fn volume_params(
        &self,
        ns: &str,
        s: &kube_bridge::crd::PodStatusStatus,
        token_requests: &[credentials::CsiTokenRequest],
    ) -> Option<PublishParams> {
        use secrets_store::volume_context as vc;
        let pod = Api::<Pod>::namespaced(self.client.clone(), ns).get_opt(&s.pod_name).await.ok()??;
        let target = std::path::PathBuf::from(&s.target_path);
        let volume_name = target.parent()?.file_name()?.to_string_lossy().into_owned();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !s.target_path.contains(&format!("/pods/{uid}/")) {
            return None; // Another pod of the same name.
        }
        let spec = pod.spec?;
        let csi = spec.volumes?.into_iter().find(|v| v.name == volume_name)?.csi?;
        let mut ctx: BTreeMap<String, String> = csi.volume_attributes.unwrap_or_default();
        if ctx.get(vc::CLASS_KEY).is_none_or(|c| *c != s.secret_provider_class_name) {
            return None;
        }
        ctx.insert(vc::POD_NAME_KEY.into(), s.pod_name.clone());
        ctx.insert(vc::POD_NAMESPACE_KEY.into(), ns.into());
        ctx.insert(vc::POD_UID_KEY.into(), uid.clone());
        let sa = spec.service_account_name.unwrap_or_else(|| "default".into());
        ctx.insert(vc::SERVICE_ACCOUNT_KEY.into(), sa.clone());
        ctx.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
        // kubelet's credentials are never persisted; get them back the way kubelet got them, so the
        // poller can rotate before kubelet's next republish (up to its sync period, a minute or more).
        let secrets = match csi.node_publish_secret_ref.map(|r| r.name).filter(|n| !n.is_empty()) {
            Some(name) => credentials::publish_secret(&self.client, ns, &name).await,
            None => None,
        };
        let tokens = credentials::pod_tokens(&self.client, token_requests, ns, &sa, &s.pod_name, &uid).await;
        Some(PublishParams {
            volume_id: String::new(),
            target_path: target,
            readonly: true,
            class_name: s.secret_provider_class_name.clone(),
            pod: PodInfo { name: s.pod_name.clone(), namespace: ns.into(), uid, service_account: sa },
            volume_context: ctx,
            secrets,
            tokens,
        })
    }

    /// Upstream's owners for synced Secrets: the pod's owners (e.g. its ReplicaSet), or the pod status
    /// for a bare pod. `None` when they cannot be determined (the Secret is then left unowned rather
    /// than tied to the wrong lifetime).
    async fn owners(&self, params: &PublishParams) -> Option<Vec<OwnerReference>> {
        let pod = self.pod(&params.pod).await?;
        if !params.pod.uid.is_empty() && pod.metadata.uid.as_deref().is_some_and(|u| u != params.pod.uid) {
            return None; // A newer pod of the same name: not the one that mounted this volume.
        }
        let owners: Vec<_> = pod
            .metadata
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .map(|o| OwnerReference {
                api_version: o.api_version,
                kind: o.kind,
                name: o.name,
                uid: o.uid,
                ..Default::default()
            })
            .collect();
        if !owners.is_empty() {
            return Some(owners);
        }
        let name = kube_bridge::podstatus::status_name(params).ok()?;
        let uid = self
            .statuses
            .uid(params)
            .await
            .map_err(|e| tracing::warn!(error = %e, "failed to read the pod status"))
            .ok()?;
        Some(vec![OwnerReference {
            api_version: format!("{}/v1", kube_bridge::GROUP),
            kind: "SecretProviderClassPodStatus".into(),
            name,
            uid,
            ..Default::default()
        }])
    }
}

#[async_trait]
impl Cluster for KubeCluster {
    fn invalidations(&self) -> Option<BTreeMap<String, String>> {
        let (cache, ns) = self.invalidations.as_ref()?;
        Some(cache.get(ns, secrets_store::invalidation::CONFIGMAP).and_then(|c| c.data.clone()).unwrap_or_default())
    }

    async fn record(
        &self,
        params: &PublishParams,
        versions: &BTreeMap<String, String>,
        provenance: &secrets_store::provider::Provenance,
        refresh: bool,
    ) -> Result<(), PodStatusError> {
        self.statuses.record(params, versions, provenance, refresh).await?;
        if !provenance.stale.is_empty() {
            let list: Vec<String> =
                provenance.stale.iter().map(|(id, (vault, age))| format!("{id} from {vault} ({age}s old)")).collect();
            let msg = format!(
                "Key Vault could not be reached; served the last known good fetched on this node by the same identity: {} (maxStaleness; replaced at the next successful round)",
                list.join(", ")
            );
            let (component, kind) = (MOUNT_COMPONENT, EventType::Warning);
            self.events.pod_event(&params.pod, component, kind, "StaleObjectServed", &msg).await;
        }
        let failover = &provenance.failover;
        if !failover.is_empty() {
            let list: Vec<String> = failover.iter().map(|(id, vault)| format!("{id} from {vault}")).collect();
            let msg = format!(
                "the class's vault is unavailable; served by failover vaults: {} (the class's vault is used again once it answers)",
                list.join(", ")
            );
            let (component, kind) = (MOUNT_COMPONENT, EventType::Warning);
            self.events.pod_event(&params.pod, component, kind, "ServedByFailoverVault", &msg).await;
        }
        // A provider reports a missing optional object as an empty version (keyvault-csi's Azure
        // provider does; upstream providers never send one): say which, on the pod.
        for id in versions.iter().filter(|(_, v)| v.is_empty()).map(|(id, _)| id) {
            let msg = format!(
                "optional object {id} was not found; the volume is mounted without its file, which appears once the object exists (with rotation enabled)"
            );
            let (component, kind) = (MOUNT_COMPONENT, EventType::Warning);
            self.events.pod_event(&params.pod, component, kind, "OptionalObjectNotFound", &msg).await;
        }
        Ok(())
    }

    async fn remove(&self, params: &PublishParams) -> Result<(), PodStatusError> {
        self.statuses.remove(params).await
    }

    async fn written(
        &self,
        params: &PublishParams,
        spec: &SecretProviderClassSpec,
        rotated: bool,
        written: &[File],
    ) -> SyncReport {
        let pod = &params.pod;
        let class = format!("{}/{}", pod.namespace, params.class_name);
        if rotated {
            let msg = format!("successfully rotated mounted contents for spc {class}");
            self.events.pod_event(pod, ROTATION_COMPONENT, EventType::Normal, "MountRotationComplete", &msg).await;
        }
        if spec.secret_objects.is_empty() {
            return SyncReport::default();
        }
        let (reason, component) = if rotated {
            ("SecretRotationFailed", ROTATION_COMPONENT)
        } else {
            ("FailedToCreateSecret", SYNC_COMPONENT)
        };
        // What was just written, from memory: no second read of the volume, no symlink followed.
        let files = if written.is_empty() {
            let target = params.target_path.clone();
            match blocking(move || mounted_files(&target)).await {
                Ok(f) => f,
                Err(e) => {
                    let msg = format!("failed to get mounted files, err: {e}");
                    self.events.pod_event(pod, component, EventType::Warning, reason, &msg).await;
                    return SyncReport::default();
                }
            }
        } else {
            written.iter().map(|f| (f.path.clone(), f.contents.expose_secret().to_vec())).collect()
        };
        let owners = self.owners(params).await;
        if owners.is_none() {
            tracing::warn!("cannot determine the owners of the synced Secrets; they are synced without new owners");
        }
        let mut report = SyncReport::default();
        for object in &spec.secret_objects {
            let name = object.secret_name.trim();
            let result = match secret_data(object, &files) {
                Err(message) => Err(kube_bridge::secrets::SyncError::Data {
                    namespace: pod.namespace.clone(),
                    class: params.class_name.clone(),
                    secret: name.to_string(),
                    message,
                }),
                Ok(data) => self.secrets.apply(&pod.namespace, object, data, owners.as_deref().unwrap_or(&[])).await,
            };
            match result {
                Ok(outcome) => {
                    report.synced += 1;
                    tracing::info!(secret = name, ?outcome, "secret synced");
                    if rotated && outcome != Synced::Unchanged {
                        let msg = format!("successfully rotated K8s secret {name}");
                        self.events
                            .pod_event(pod, ROTATION_COMPONENT, EventType::Normal, "SecretRotationComplete", &msg)
                            .await;
                    }
                }
                Err(e) => {
                    // Unreachable, timed out, throttled or a server error: the writer retries the sync.
                    if let kube_bridge::secrets::SyncError::Api { code: None | Some(429 | 500..), .. } = &e {
                        report.retry = true;
                    }
                    if let kube_bridge::secrets::SyncError::Api { code: Some(403), .. } = &e {
                        tracing::warn!(secret = name, error = %e, "forbidden: the driver's service account cannot write Secrets; ensure syncSecret.enabled=true is set");
                    } else {
                        tracing::warn!(secret = name, error = %e, "secret sync failed");
                    }
                    self.events.pod_event(pod, component, EventType::Warning, reason, &e.to_string()).await;
                }
            }
        }
        report
    }

    fn check(&self, params: &PublishParams) -> Result<(), PodStatusError> {
        kube_bridge::podstatus::status_name(params).map(drop)
    }

    async fn rediscover(&self) -> Vec<crate::node::Rediscovered> {
        let api: Api<kube_bridge::crd::v1::SecretProviderClassPodStatus> = Api::all(self.client.clone());
        let lp = kube::api::ListParams::default().labels(&format!("{}={}", kube_bridge::NODE_LABEL, self.node));
        let statuses = match api.list(&lp).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %kube_bridge::describe(&e), "cannot list this node's pod statuses; volumes come back with kubelet's republish");
                return Vec::new();
            }
        };
        // Without the grant, no TokenRequest is tried: the volumes' rotation waits for kubelet's next
        // republish, which brings fresh tokens (requiresRepublish).
        let token_requests = if self.restart_tokens {
            credentials::token_requests(&self.client, &self.driver_name).await
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        for st in statuses {
            let Some(s) = st.status.filter(|s| s.mounted && !s.target_path.is_empty()) else { continue };
            let ns = st.metadata.namespace.clone().unwrap_or_default();
            match self.volume_params(&ns, &s, &token_requests).await {
                Some(p) => out.push((p, s.objects.iter().map(|o| (o.id.clone(), o.version.clone())).collect())),
                None => {
                    tracing::debug!(pod = %s.pod_name, namespace = %ns, "pod status without a matching pod volume; skipped")
                }
            }
        }
        out
    }

    async fn rotation_failed(&self, params: &PublishParams, message: &str) {
        self.events
            .pod_event(&params.pod, ROTATION_COMPONENT, EventType::Warning, "MountRotationFailed", message)
            .await;
    }

    fn hints(&self, params: &PublishParams) -> VolumeHints {
        let annotation = |a: Option<&BTreeMap<String, String>>, key: &str| a.and_then(|a| a.get(key)).cloned();
        let pod = self.pods.get(&params.pod.namespace, &params.pod.name);
        let pod = pod.as_ref().and_then(|p| p.metadata.annotations.as_ref());
        let class = self.classes.as_ref().and_then(|c| c.get(&params.pod.namespace, &params.class_name));
        let class = class.as_ref().and_then(|c| c.metadata.annotations.as_ref());
        VolumeHints {
            refresh: RefreshMarks { pod: annotation(pod, REFRESH_NOW), class: annotation(class, REFRESH_NOW) },
            class_interval: annotation(class, ROTATION_INTERVAL),
        }
    }

    async fn refreshed(&self, params: &PublishParams, message: &str) {
        self.events.pod_event(&params.pod, ROTATION_COMPONENT, EventType::Normal, "RefreshedOnRequest", message).await;
    }

    async fn class_interval_invalid(&self, params: &PublishParams, message: &str) {
        self.events
            .pod_event(&params.pod, ROTATION_COMPONENT, EventType::Warning, "InvalidRotationInterval", message)
            .await;
    }

    async fn certificate_expiring(&self, params: &PublishParams, message: &str) {
        self.events.pod_event(&params.pod, MOUNT_COMPONENT, EventType::Warning, "CertificateExpiring", message).await;
    }

    fn pod_active(&self, pod: &PodInfo) -> bool {
        let Some(p) = self.pods.get(&pod.namespace, &pod.name) else { return true };
        let finished =
            p.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
        !(finished || p.metadata.deletion_timestamp.is_some())
    }
}
