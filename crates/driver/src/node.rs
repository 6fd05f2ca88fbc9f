//! The node service's logic: `NodePublishVolume` and `NodeUnpublishVolume` as plain async functions.
//!
//! The algorithm follows the upstream driver (reference §1.5, §1.9) with its known bugs fixed:
//! * the rotation skip uses this driver's record of the last *successful fetch* of a *live, published*
//!   mount, not the target directory's mtime (which let a retry after a failed first publish return
//!   success for an empty, unmounted directory, and which re-fetched on every republish once the content
//!   was older than the interval);
//! * the class's parameters are copied, never mutated in place;
//! * any failure on a republish of a healthy, populated volume keeps the files and reports success,
//!   because kubelet deletes the mount directory when a republish fails (kubernetes#121271).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::atomic_writer::{self, WriteError, WriteOutcome};
use crate::class::{ClassSource, SecretProviderClassSpec};
use crate::error::{PublishError, UnpublishError};
use crate::external::{ExternalProviders, LookupError};
use crate::metrics::Metrics;
use crate::mounter::Mounter;
use crate::provider::{ErrorKind, MountRequest, Provider, ProviderError};
use crate::registry::{Volume, VolumeRegistry};
use crate::volume_context::PublishParams;
use futures_util::StreamExt;
use tracing::Instrument;

/// Volumes refreshed at once by the poller.
const ROTATION_CONCURRENCY: usize = 64;

/// How often the poller looks for due volumes.
fn poll_tick(interval: Duration) -> Duration {
    (interval / 10).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// Volumes fetched at least this long ago join a rotation cycle (half an interval, minus one tick so
/// that volumes refreshed by the previous half-interval cycle are not left out by a few milliseconds).
fn cycle_join_age(interval: Duration) -> Duration {
    (interval / 2).saturating_sub(poll_tick(interval))
}

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
}

/// Providers by name: in-process ones first, else an external provider's socket.
pub struct Providers {
    builtin: HashMap<String, Arc<dyn Provider>>,
    external: ExternalProviders,
}

impl Providers {
    /// Only external providers.
    pub fn new(external: ExternalProviders) -> Self {
        Self { builtin: HashMap::new(), external }
    }

    /// Serves `name` in-process instead of over a socket.
    pub fn with_builtin(mut self, name: &str, provider: Arc<dyn Provider>) -> Self {
        self.builtin.insert(name.to_string(), provider);
        self
    }

    fn get(&self, name: &str) -> Result<Arc<dyn Provider>, LookupError> {
        if let Some(p) = self.builtin.get(name) {
            return Ok(p.clone());
        }
        Ok(Arc::new(self.external.lookup(name)?))
    }
}

/// What the driver tells the cluster about its volumes: the `SecretProviderClassPodStatus`, synced
/// Secrets (`secretObjects`) and events. Only the pod status can fail a mount, as upstream.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// A volume was published (or, with `refresh`, a published volume got new versions).
    async fn record(
        &self,
        params: &PublishParams,
        versions: &BTreeMap<String, String>,
        refresh: bool,
    ) -> Result<(), String>;
    /// A volume was unpublished.
    async fn remove(&self, params: &PublishParams) -> Result<(), String>;
    /// The volume's files were written: on its first publish, or by a rotation that changed them
    /// (`rotated`). Syncs the class's `secretObjects` and reports events; failures are reported there,
    /// never returned. Returns the number of Secrets synced.
    async fn written(&self, params: &PublishParams, spec: &SecretProviderClassSpec, rotated: bool) -> usize;
    /// A rotation of the volume failed; its files were kept.
    async fn rotation_failed(&self, params: &PublishParams, message: &str);
    /// The volumes this node had published before a restart (from its pod statuses), for
    /// [`Driver::adopt`].
    async fn rediscover(&self) -> Vec<PublishParams> {
        Vec::new()
    }
    /// Whether the pod still runs: a terminating or finished pod's volume is not rotated.
    fn pod_active(&self, _pod: &crate::volume_context::PodInfo) -> bool {
        true
    }
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
    /// A republish within the poll interval, or with rotation off: nothing to do.
    Skipped,
    /// A republish of a healthy volume failed; the old files stay and kubelet is told "success".
    KeptAfterError(PublishError),
}

/// The node service.
pub struct Driver {
    config: Config,
    mounter: Arc<dyn Mounter>,
    classes: Arc<dyn ClassSource>,
    providers: Providers,
    volumes: Arc<VolumeRegistry>,
    metrics: Metrics,
    cycles: std::sync::atomic::AtomicU64,
    cluster: Option<Arc<dyn Cluster>>,
    /// Bounds the API calls unpublish leaves to the background (pod-status deletes).
    background_api: Arc<tokio::sync::Semaphore>,
}

enum TargetState {
    NotMounted,
    Mounted { populated: bool },
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
            background_api: Arc::new(tokio::sync::Semaphore::new(4)),
        }
    }

    /// Records every published volume in `sink` (the pod status in a cluster).
    pub fn with_cluster(mut self, cluster: Arc<dyn Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Records into `metrics` (register them with [`Metrics::register`]).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
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

    /// `NodePublishVolume`. `deadline` is kubelet's (from `grpc-timeout`), applied to the provider call.
    /// Records `node_publish*` and `rotation_reconcile*` metrics.
    pub async fn publish(
        &self,
        params: PublishParams,
        deadline: Option<Instant>,
    ) -> Result<PublishOutcome, PublishError> {
        let started = Instant::now();
        let mut provider = String::new();
        let cluster_params = self.cluster.as_ref().map(|_| params.clone());
        let result = self.publish_inner(params, deadline, &mut provider, None).await;
        let m = &self.metrics;
        match &result {
            Ok(PublishOutcome::Published { remount, changed, .. }) => {
                m.publish_ok(&provider);
                if *remount {
                    m.rotation(&provider, *changed, started);
                }
            }
            Ok(PublishOutcome::Skipped) => m.publish_ok(&provider),
            Ok(PublishOutcome::KeptAfterError(e)) => {
                m.publish_error(&provider, &e.label());
                m.rotation_error(&provider, &e.label());
                if let (Some(cluster), Some(p)) = (&self.cluster, &cluster_params) {
                    cluster.rotation_failed(p, &e.to_string()).await;
                }
            }
            Err(e) => m.publish_error(&provider, &e.label()),
        }
        result
    }

    /// A rotation refresh of a published volume (the poller's, with background priority). A busy
    /// target (kubelet is publishing it) is skipped. Records `rotation_reconcile*` metrics only.
    pub async fn refresh(&self, params: PublishParams, cycle: Option<u64>) -> PublishOutcome {
        let started = Instant::now();
        let target = params.target_path.clone();
        let mut provider = String::new();
        let cluster_params = self.cluster.as_ref().map(|_| params.clone());
        // A refresh never outlives one interval: retries against a vault that is down stop, and the
        // poller's next attempt (backoff capped at one interval) finds it back within one interval.
        let interval = self.config.rotation_interval.unwrap_or(Duration::from_secs(120));
        let deadline = Instant::now() + interval.max(Duration::from_secs(1));
        let outcome = match self.publish_inner(params, Some(deadline), &mut provider, Some(cycle)).await {
            Ok(o) => o,
            Err(PublishError::Busy(_)) => PublishOutcome::Skipped,
            Err(e) => PublishOutcome::KeptAfterError(e),
        };
        match &outcome {
            PublishOutcome::Published { changed, .. } => self.metrics.rotation(&provider, *changed, started),
            PublishOutcome::KeptAfterError(e) => {
                self.metrics.rotation_error(&provider, &e.label());
                if let (Some(cluster), Some(p)) = (&self.cluster, &cluster_params) {
                    cluster.rotation_failed(p, &e.to_string()).await;
                }
                let interval = self.config.rotation_interval.unwrap_or(Duration::from_secs(120));
                self.volumes.update(&target, |v| {
                    v.failures = v.failures.saturating_add(1);
                    // Back off from one tick up to one interval: a recovered vault is retried within one interval.
                    let backoff = poll_tick(interval).saturating_mul(1u32 << v.failures.min(16)).min(interval);
                    v.retry_at = Some(Instant::now() + backoff);
                });
            }
            PublishOutcome::Skipped => {}
        }
        outcome
    }

    /// One rotation cycle. It starts when some volume's last successful fetch is a full interval old,
    /// and then takes along every volume fetched at least half an interval ago: volumes mounted at
    /// different times join one cycle, so each distinct object (per identity) is fetched once per cycle
    /// and fanned out (the provider shares identical fetches). No volume waits longer than the interval;
    /// some are refreshed after half of it, at no extra Key Vault cost. Returns the volumes attempted.
    pub async fn rotate_due(&self) -> usize {
        let Some(interval) = self.config.rotation_interval else { return 0 };
        let now = Instant::now();
        let volumes: Vec<_> = self
            .volumes
            .snapshot()
            .into_iter()
            .filter(|(_, v)| v.retry_at.is_none_or(|t| now >= t))
            .filter(|(_, v)| self.cluster.as_ref().is_none_or(|c| c.pod_active(&v.params.pod)))
            .collect();
        if !volumes.iter().any(|(_, v)| now.duration_since(v.last_fetch) >= interval) {
            return 0;
        }
        let due: Vec<PublishParams> = volumes
            .into_iter()
            .filter(|(_, v)| now.duration_since(v.last_fetch) >= cycle_join_age(interval))
            .map(|(_, v)| v.params)
            .collect();
        let cycle = self.cycles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = due.len();
        futures_util::stream::iter(due)
            .for_each_concurrent(ROTATION_CONCURRENCY, |params| async move {
                let span = tracing::info_span!(
                    "rotation",
                    pod = %params.pod.name,
                    namespace = %params.pod.namespace,
                    class = %params.class_name,
                    target = %params.target_path.display(),
                );
                let started = Instant::now();
                let outcome = self.refresh(params, Some(cycle)).instrument(span.clone()).await;
                let _e = span.enter();
                match outcome {
                    PublishOutcome::Published { files, changed, .. } => {
                        tracing::info!(files, changed, duration_s = started.elapsed().as_secs_f64(), "rotation complete")
                    }
                    PublishOutcome::KeptAfterError(e) => {
                        tracing::warn!(error = %e, error_type = %e.label(), "rotation failed; keeping the current files")
                    }
                    PublishOutcome::Skipped => {}
                }
            })
            .await;
        tracing::info!(cycle, volumes = n, duration_s = now.elapsed().as_secs_f64(), "rotation cycle complete");
        n
    }

    /// The rotation poller: until `shutdown`, checks every tick (a tenth of the interval, 100 ms to
    /// 10 s) for volumes due for a refresh.
    pub async fn run_rotation(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let Some(interval) = self.config.rotation_interval else { return };
        let tick = poll_tick(interval);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = &mut shutdown => return,
            }
            self.rotate_due().await;
        }
    }

    async fn publish_inner(
        &self,
        params: PublishParams,
        deadline: Option<Instant>,
        provider_name: &mut String,
        rotation: Option<Option<u64>>,
    ) -> Result<PublishOutcome, PublishError> {
        let background = rotation.is_some();
        let target = params.target_path.clone();
        let Some(_claim) = self.volumes.try_claim(&target) else {
            // kubelet serialises its own calls per volume, so a busy published target is our poller
            // refreshing it: that republish has nothing left to do.
            if rotation.is_none() && self.volumes.get(&target).is_some() {
                return Ok(PublishOutcome::Skipped);
            }
            return Err(PublishError::Busy(target));
        };

        let mounter = self.mounter.clone();
        let state = blocking({
            let target = target.clone();
            move || ensure_mount_point(&*mounter, &target)
        })
        .await
        .map_err(|source| PublishError::EnsureMountPoint { path: target.clone(), source })?;

        let remount = matches!(state, TargetState::Mounted { populated: true });
        if let TargetState::Mounted { populated } = state {
            match self.volumes.get(&target) {
                Some(volume) => {
                    *provider_name = volume.provider.clone();
                    // kubelet sends fresh service-account tokens on every republish: keep them for rotation.
                    self.volumes.update(&target, |v| {
                        v.params.tokens = params.tokens.clone();
                        v.params.secrets = params.secrets.clone();
                    });
                    // kubelet's republish waits a full interval; the poller batches from half of it.
                    let min_age = |i: Duration| if background { cycle_join_age(i) } else { i };
                    match self.config.rotation_interval {
                        None => return Ok(PublishOutcome::Skipped),
                        Some(interval) if volume.last_fetch.elapsed() < min_age(interval) => {
                            return Ok(PublishOutcome::Skipped);
                        }
                        Some(_) => {}
                    }
                }
                // Mounted and populated but unknown to us (the driver restarted): with rotation off this is
                // upstream's "already mounted" success; with rotation on, refresh it.
                None if populated && self.config.rotation_interval.is_none() => return Ok(PublishOutcome::Skipped),
                None => {}
            }
        }

        let result = self.fill(&params, state, deadline, provider_name, rotation.flatten()).await;
        match result {
            Ok(outcome) => Ok(outcome),
            Err(err) if remount => Ok(PublishOutcome::KeptAfterError(err)),
            Err(err) => Err(err),
        }
    }

    async fn fill(
        &self,
        params: &PublishParams,
        state: TargetState,
        deadline: Option<Instant>,
        provider_name: &mut String,
        cycle: Option<u64>,
    ) -> Result<PublishOutcome, PublishError> {
        let target = &params.target_path;
        let background = cycle.is_some();
        let remount = matches!(state, TargetState::Mounted { populated: true });
        let mounted = matches!(state, TargetState::Mounted { .. });

        if params.provider_name.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("mock_provider")) {
            // csi-sanity's provider: a bare tmpfs, nothing else.
            if !mounted {
                self.mount(target).await?;
            }
            return Ok(PublishOutcome::Published {
                provider: "mock_provider".into(),
                files: 0,
                changed: false,
                remount,
            });
        }

        if params.class_name.is_empty() {
            return Err(PublishError::ClassNotSet);
        }
        let (namespace, class_name) = (params.pod.namespace.clone(), params.class_name.clone());
        let spec = self.classes.get(&namespace, &class_name).await?;
        *provider_name = spec.provider.clone();
        if spec.provider.is_empty() {
            return Err(PublishError::ProviderNotSet { namespace, name: class_name });
        }
        if spec.parameters.is_empty() {
            return Err(PublishError::ParametersNotSet { namespace, name: class_name });
        }
        let attributes = params.attributes(&spec.parameters);
        if !params.readonly {
            return Err(PublishError::NotReadonly);
        }

        let pod = format!("{}/{}", params.pod.namespace, params.pod.name);
        let mounted_here = !mounted;
        if mounted_here {
            self.mount(target).await?;
        }
        let result = async {
            let provider = self.providers.get(&spec.provider).map_err(|source| PublishError::ProviderLookup {
                pod: pod.clone(),
                provider: spec.provider.clone(),
                source,
            })?;
            let request = MountRequest {
                attributes,
                secrets: params.secrets.clone(),
                target_path: target.clone(),
                permission: DEFAULT_FILE_MODE,
                current_object_versions: self.volumes.get(target).map(|v| v.object_versions).unwrap_or_default(),
                deadline,
                background,
                cycle,
            };
            let call = provider.mount(request);
            let response = match deadline {
                Some(d) => tokio::time::timeout_at(d.into(), call).await.unwrap_or_else(|_| {
                    Err(ProviderError::new(
                        ErrorKind::DeadlineExceeded,
                        "ProviderError",
                        if background {
                            format!("provider {:?} did not answer within one rotation interval", spec.provider)
                        } else {
                            format!("provider {:?} did not answer before kubelet's deadline", spec.provider)
                        },
                    ))
                }),
                None => call.await,
            }
            .map_err(|source| PublishError::Provider { pod: pod.clone(), source })?;

            let files = response.files.len();
            let changed = if response.files.is_empty() {
                // A legacy provider wrote the files itself (deprecated upstream path, kept for compatibility).
                true
            } else {
                let target = target.clone();
                match blocking(move || atomic_writer::write(&target, &response.files)).await {
                    Ok(outcome) => outcome == WriteOutcome::Written,
                    Err(WriteError::Payload(source)) => return Err(PublishError::Payload { pod: pod.clone(), source }),
                    Err(source) => return Err(PublishError::FileWrite { pod: pod.clone(), source }),
                }
            };
            if let Some(sink) = &self.cluster {
                let known = self.volumes.get(target);
                let unchanged = known.as_ref().is_some_and(|v| v.object_versions == response.object_versions);
                if !unchanged {
                    sink.record(params, &response.object_versions, known.is_some())
                        .await
                        .map_err(|message| PublishError::PodStatus { pod: pod.clone(), message })?;
                }
            }
            self.volumes.insert(
                target.clone(),
                Volume {
                    params: params.clone(),
                    provider: spec.provider.clone(),
                    object_versions: response.object_versions,
                    last_fetch: Instant::now(),
                    failures: 0,
                    retry_at: None,
                },
            );
            if let Some(cluster) = &self.cluster
                && (changed || !remount)
            {
                let started = Instant::now();
                let synced = cluster.written(params, &spec, remount).await;
                self.metrics.secrets_synced(&spec.provider, synced, started);
            }
            Ok(PublishOutcome::Published { provider: spec.provider.clone(), files, changed, remount })
        }
        .await;

        if result.is_err() && mounted_here {
            // Leave no mount behind, so kubelet's retry starts clean. The directory stays, as upstream.
            let mounter = self.mounter.clone();
            let t = target.clone();
            if let Err(e) = blocking(move || mounter.unmount(&t)).await {
                tracing::error!(target = %target.display(), error = %e, "failed to unmount after a failed publish");
            }
        }
        result
    }

    async fn mount(&self, target: &Path) -> Result<(), PublishError> {
        let mounter = self.mounter.clone();
        let t = target.to_path_buf();
        blocking(move || mounter.mount(&t))
            .await
            .map_err(|source| PublishError::Mount { path: target.to_path_buf(), source })
    }

    /// After a restart: takes back the volumes the cluster says this node published whose tmpfs is
    /// still mounted and populated, so the poller rotates them again without waiting for kubelet's
    /// republish (which also brings fresh service-account tokens). A volume kubelet already
    /// republished, or one whose mount is gone, is left alone: nothing is mounted twice. Returns the
    /// number adopted.
    pub async fn adopt(&self, volumes: Vec<PublishParams>) -> usize {
        let mut adopted = 0;
        for params in volumes {
            let target = params.target_path.clone();
            if self.volumes.get(&target).is_some() {
                continue;
            }
            let mounter = self.mounter.clone();
            let t = target.clone();
            let populated =
                blocking(move || Ok::<_, io::Error>(mounter.mount_point(&t)?.is_some() && t.join("..data").exists()))
                    .await;
            if !matches!(populated, Ok(true)) {
                continue;
            }
            let Some(_claim) = self.volumes.try_claim(&target) else { continue };
            if self.volumes.get(&target).is_none() {
                self.volumes.insert(
                    target.clone(),
                    Volume {
                        params,
                        provider: String::new(),
                        object_versions: BTreeMap::new(),
                        last_fetch: Instant::now(),
                        failures: 0,
                        retry_at: None,
                    },
                );
                adopted += 1;
            }
        }
        adopted
    }

    /// `NodeUnpublishVolume`: remove the files, unmount, remove the directory, forget the volume.
    /// Idempotent: an unknown or already removed target succeeds.
    pub async fn unpublish(&self, volume_id: &str, target_path: &str) -> Result<(), UnpublishError> {
        if volume_id.is_empty() {
            return Err(UnpublishError::InvalidArgument("Volume ID missing in request".into()));
        }
        if target_path.is_empty() {
            return Err(UnpublishError::InvalidArgument("Target path missing in request".into()));
        }
        let target = PathBuf::from(target_path);
        let _claim = self.volumes.try_claim(&target).ok_or_else(|| UnpublishError::Busy(target.clone()))?;
        let mounter = self.mounter.clone();
        let t = target.clone();
        let result = blocking(move || clean_and_unmount(&*mounter, &t))
            .await
            .map_err(|source| UnpublishError::Cleanup { path: target.clone(), source });
        self.metrics.unpublish(result.is_ok());
        result?;
        if let Some(volume) = self.volumes.remove(&target)
            && let Some(sink) = self.cluster.clone()
        {
            // Deleting the pod status is bookkeeping (the API server also garbage-collects it with the
            // pod), so kubelet does not wait for an API round trip: upstream's unpublish makes none.
            // A few at a time: 500 pods going away at once must not open 500 API connections (each
            // HTTP/1.1 connection kube's client opens keeps its buffers in the pool).
            let (volumes, limit) = (self.volumes.clone(), self.background_api.clone());
            tokio::spawn(async move {
                let Ok(_permit) = limit.acquire_owned().await else { return };
                if volumes.get(&target).is_some() {
                    return; // published again meanwhile: the status describes the new mount
                }
                if let Err(e) = sink.remove(&volume.params).await {
                    tracing::warn!(target = %target.display(), error = %e, "failed to delete the pod status");
                }
            });
        }
        Ok(())
    }
}

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

/// Upstream's `ensureMountPoint`: a readable mount is "mounted"; a broken one is unmounted; a missing
/// directory is created with mode 0750.
fn ensure_mount_point(mounter: &dyn Mounter, target: &Path) -> io::Result<TargetState> {
    match mounter.mount_point(target)? {
        Some(_) => match fs::read_dir(target) {
            Ok(_) => Ok(TargetState::Mounted { populated: target.join("..data").exists() }),
            Err(e) => {
                tracing::warn!(target = %target.display(), error = %e, "target is a broken mount point; remounting");
                mounter.unmount(target)?;
                Ok(TargetState::NotMounted)
            }
        },
        None => {
            if !target.exists() {
                fs::create_dir_all(target)?;
                fs::set_permissions(target, fs::Permissions::from_mode(0o750))?;
            }
            Ok(TargetState::NotMounted)
        }
    }
}

/// Deletes the contents first (fixes "directory not empty" unmount failures, upstream #936), then
/// unmounts and removes the directory. `ENOENT` anywhere means someone already did it.
fn clean_and_unmount(mounter: &dyn Mounter, target: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(target) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let res = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        if let Err(e) = res {
            tracing::warn!(path = %path.display(), error = %e, "failed to remove volume entry");
        }
    }
    if mounter.mount_point(target)?.is_some() {
        mounter.unmount(target)?;
    }
    match fs::remove_dir(target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
