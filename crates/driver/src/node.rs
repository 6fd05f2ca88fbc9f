//! The node service: its settings, its collaborators and the [`Driver`] that holds them.
//!
//! The work itself lives in two rooms: [`crate::publish`] (kubelet's `NodePublishVolume` and
//! `NodeUnpublishVolume`: a pure [`crate::publish::plan`] of what a call must do, then one executor)
//! and [`crate::rotation`] (a pure planner of rotation cycles and the poller that runs them).
//! Kubelet's calls always win over the poller: see [`crate::registry`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::PublishError;
use crate::metrics::Metrics;
use crate::mounter::Mounter;
use crate::registry::VolumeRegistry;
use kube_bridge::PodStatusError;
use secrets_store::class::{ClassSource, SecretProviderClassSpec};
use secrets_store::provider::Providers;
use secrets_store::volume_context::PublishParams;

/// A volume found in a pod status after a restart, with its recorded object versions (so adopting it
/// changes nothing the status says: Reloader's CSI mode watches those versions).
pub type Rediscovered = (PublishParams, std::collections::BTreeMap<String, String>);

/// Default file mode handed to providers (upstream's `"420"`).
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// Node service settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// CSI driver name (`--drivername`).
    pub driver_name: String,
    /// Node id (`--nodeid`).
    pub node_id: String,
    /// Version reported by `GetPluginInfo`.
    pub vendor_version: String,
    /// `Some(interval)` when `--enable-secret-rotation` is on.
    pub rotation_interval: Option<Duration>,
    /// The shortest interval a class may ask for (`--min-rotation-poll-interval`).
    pub min_class_interval: Duration,
    /// Warn on the pod this long before a mounted certificate expires (`--cert-expiry-warning`;
    /// `None`: never).
    pub cert_expiry_warning: Option<Duration>,
    /// `--events-poll-interval`: while Key Vault change events flow (see [`secrets_store::invalidation`]),
    /// volumes are polled this rarely instead (never more often than their own interval).
    pub events_poll_interval: Option<Duration>,
}

/// `--cert-expiry-warning`'s default: 30 days.
pub const DEFAULT_CERT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// What the driver tells the cluster about its volumes: the `SecretProviderClassPodStatus`, synced
/// Secrets (`secretObjects`) and events. Only the pod status can fail a mount, as upstream.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// A volume was published (or, with `refresh`, a published volume got new versions). `provenance`:
    /// objects served by a failover vault or from the last known good (shown on the pod status and in
    /// events).
    async fn record(
        &self,
        params: &PublishParams,
        versions: &BTreeMap<String, String>,
        provenance: &secrets_store::provider::Provenance,
        refresh: bool,
    ) -> Result<(), PodStatusError>;
    /// A volume was unpublished.
    async fn remove(&self, params: &PublishParams) -> Result<(), PodStatusError>;
    /// The volume's `files` were written: on its first publish, or by a rotation that changed them
    /// (`rotated`). Syncs the class's `secretObjects` from `files` (empty: a legacy provider wrote the
    /// volume itself, read it back) and reports events; failures are reported there, never returned.
    /// Says how many Secrets were synced, and whether one failed on an API error worth retrying.
    async fn written(
        &self,
        params: &PublishParams,
        spec: &SecretProviderClassSpec,
        rotated: bool,
        files: &[secrets_store::provider::File],
    ) -> SyncReport;
    /// Whether the volume's pod status can be written at all (its name fits): checked before a publish
    /// returns, because the write itself happens later, in the background.
    fn check(&self, _params: &PublishParams) -> Result<(), PodStatusError> {
        Ok(())
    }
    /// A rotation of the volume failed; its files were kept.
    async fn rotation_failed(&self, params: &PublishParams, message: &str);
    /// The volumes this node had published before a restart (from its pod statuses), with the
    /// object versions recorded for them, for [`Driver::adopt`].
    async fn rediscover(&self) -> Vec<Rediscovered> {
        Vec::new()
    }
    /// Whether the pod still runs: a terminating or finished pod's volume is not rotated.
    fn pod_active(&self, _pod: &secrets_store::volume_context::PodInfo) -> bool {
        true
    }
    /// What the volume's pod and class annotations ask right now (see [`secrets_store::annotations`]).
    fn hints(&self, _params: &PublishParams) -> secrets_store::annotations::VolumeHints {
        Default::default()
    }
    /// A refresh-now request was served (`message` says which and what changed).
    async fn refreshed(&self, _params: &PublishParams, _message: &str) {}
    /// A class's rotation-interval annotation cannot be used (reported once per class and value).
    async fn class_interval_invalid(&self, _params: &PublishParams, _message: &str) {}
    /// A certificate the volume mounts expires soon, or has expired.
    async fn certificate_expiring(&self, _params: &PublishParams, _message: &str) {}
    /// The invalidations ConfigMap's data as last watched (see [`secrets_store::invalidation`]); `None` when
    /// change events are not configured.
    fn invalidations(&self) -> Option<BTreeMap<String, String>> {
        None
    }
}

/// What a Secret sync did (see [`Cluster::written`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Secrets synced.
    pub synced: usize,
    /// A Secret failed on an API error that may pass (unreachable, timeout, 429, 5xx): retry the sync.
    pub retry: bool,
}

/// What a successful `NodePublishVolume` did.
#[derive(Debug)]
pub enum PublishOutcome {
    /// Mounted (or refreshed) and wrote the files.
    Published {
        /// Provider used.
        provider: String,
        /// Number of files.
        files: usize,
        /// Whether the volume's contents changed.
        changed: bool,
        /// Whether this was a republish of a live volume (a rotation).
        remount: bool,
    },
    /// A republish within the poll interval, or with rotation off, or a refresh that kubelet
    /// overtook or that found its volume gone: nothing to do.
    Skipped,
    /// A republish of a healthy volume failed; the old files stay and kubelet is told "success".
    KeptAfterError(PublishError),
}

/// The node service.
pub struct Driver {
    pub(crate) config: Config,
    pub(crate) mounter: Arc<dyn Mounter>,
    pub(crate) classes: Arc<dyn ClassSource>,
    pub(crate) providers: Providers,
    pub(crate) volumes: Arc<VolumeRegistry>,
    pub(crate) metrics: Metrics,
    pub(crate) cycles: std::sync::atomic::AtomicU64,
    pub(crate) cluster: Option<Arc<dyn Cluster>>,
    /// Bounds the API calls unpublish leaves to the background (pod-status deletes).
    /// Writes what publishes owe the API server (set with the cluster).
    pub(crate) writer: Option<crate::api_writes::ApiWriter>,
    /// Class intervals already warned about, by (namespace, class, value): bounded, so a tenant
    /// editing the annotation in a loop cannot grow it.
    pub(crate) invalid_intervals: crate::bounded::SeenOnce<(String, String, String)>,
    /// The node-wide background tasks (rotation, refresh-now, expiry warnings), supervised.
    pub(crate) tasks: kube_bridge::supervise::Tasks,
    /// The audit trail (`--audit-log`), off by default.
    pub(crate) audit: secrets_store::audit::Audit,
    /// The change-event entries this node has acted on.
    pub(crate) invalidations_seen: std::sync::Mutex<secrets_store::invalidation::Seen>,
    /// Whether the event consumer's heartbeat was fresh at the last look (polls on the long interval).
    pub(crate) events_healthy: std::sync::atomic::AtomicBool,
}

impl Driver {
    /// Builds the node service.
    pub fn new(config: Config, mounter: Arc<dyn Mounter>, classes: Arc<dyn ClassSource>, providers: Providers) -> Self {
        Self {
            config,
            mounter,
            classes,
            providers,
            volumes: Arc::new(VolumeRegistry::default()),
            metrics: Metrics::default(),
            cycles: std::sync::atomic::AtomicU64::new(1),
            cluster: None,
            writer: None,
            invalid_intervals: Default::default(),
            tasks: kube_bridge::supervise::Tasks::global().clone(),
            audit: secrets_store::audit::Audit::off(),
            invalidations_seen: Default::default(),
            events_healthy: Default::default(),
        }
    }

    /// Writes the audit trail to `audit`.
    pub fn with_audit(mut self, audit: secrets_store::audit::Audit) -> Self {
        self.audit = audit;
        self
    }

    /// Records every published volume in `cluster` (the pod status in a cluster), through a
    /// background writer with the default settings (see [`crate::api_writes`]). Needs a Tokio runtime.
    pub fn with_cluster(self, cluster: Arc<dyn Cluster>) -> Self {
        self.with_cluster_writes(cluster, Default::default())
    }

    /// [`Driver::with_cluster`] with the writer's `settings`.
    pub fn with_cluster_writes(
        mut self,
        cluster: Arc<dyn Cluster>,
        settings: crate::api_writes::WriterSettings,
    ) -> Self {
        self.writer = Some(crate::api_writes::ApiWriter::start(cluster.clone(), settings, self.metrics.clone()));
        self.cluster = Some(cluster);
        self
    }

    /// The background writer of pod statuses and synced Secrets (`None` without a cluster).
    pub fn writer(&self) -> Option<&crate::api_writes::ApiWriter> {
        self.writer.as_ref()
    }

    /// Records into `metrics` (register them with [`Metrics::register`]).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The supervised background tasks (register their metric, read their health).
    pub fn tasks(&self) -> &kube_bridge::supervise::Tasks {
        &self.tasks
    }

    /// The metrics this driver records.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The volume registry.
    pub fn volumes(&self) -> &Arc<VolumeRegistry> {
        &self.volumes
    }

    /// Registers every metric the driver exports: its own, the supervised tasks' and the API writer's
    /// (idle families without a cluster, so dashboards see the same series either way).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry, self.volumes.clone());
        self.tasks.register(registry);
        match &self.writer {
            Some(writer) => writer.register(registry),
            None => crate::api_writes::ApiWriter::register_idle(registry),
        }
    }

    /// Readiness: each supervised loop is healthy (not restarting after a panic), with what `/readyz`
    /// shows while it is not.
    pub fn readiness(&self) -> Vec<(&'static str, ReadyCheck)> {
        [
            (crate::rotation::ROTATION_TASK, "rotation task restarting after a panic"),
            (crate::rotation::REFRESH_TASK, "refresh_now task restarting after a panic"),
        ]
        .into_iter()
        .map(|(task, shown)| {
            let tasks = self.tasks.clone();
            (shown, Box::new(move || !tasks.unhealthy().contains(&task)) as ReadyCheck)
        })
        .collect()
    }

    /// After a restart: takes back this node's volumes (from its pod statuses and the mount table) in
    /// the background, so rotation resumes without waiting for kubelet.
    pub fn spawn_rediscovery(self: &Arc<Self>) {
        let Some(cluster) = self.cluster.clone() else { return };
        let driver = self.clone();
        tokio::spawn(async move {
            let found = cluster.rediscover().await;
            let (listed, adopted) = (found.len(), driver.adopt(found).await);
            tracing::info!(listed, adopted, "volumes rediscovered from this node's pod statuses");
        });
    }
}

/// A readiness condition: true while ready.
pub type ReadyCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// Runs blocking filesystem and mount syscalls off the async workers. A panic in `f` is re-raised.
pub(crate) async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
