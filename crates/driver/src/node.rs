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

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::atomic_writer::{self, WriteError, WriteOutcome};
use crate::class::ClassSource;
use crate::error::{PublishError, UnpublishError};
use crate::external::{ExternalProviders, LookupError};
use crate::metrics::Metrics;
use crate::mounter::Mounter;
use crate::provider::{ErrorKind, MountRequest, Provider, ProviderError};
use crate::registry::{Volume, VolumeRegistry};
use crate::volume_context::PublishParams;

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
        }
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
        let result = self.publish_inner(params, deadline, &mut provider).await;
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
            }
            Err(e) => m.publish_error(&provider, &e.label()),
        }
        result
    }

    async fn publish_inner(
        &self,
        params: PublishParams,
        deadline: Option<Instant>,
        provider_name: &mut String,
    ) -> Result<PublishOutcome, PublishError> {
        let target = params.target_path.clone();
        let _claim = self.volumes.try_claim(&target).ok_or_else(|| PublishError::Busy(target.clone()))?;

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
                    match self.config.rotation_interval {
                        None => return Ok(PublishOutcome::Skipped),
                        Some(interval) if volume.last_fetch.elapsed() < interval => return Ok(PublishOutcome::Skipped),
                        Some(_) => {}
                    }
                }
                // Mounted and populated but unknown to us (the driver restarted): with rotation off this is
                // upstream's "already mounted" success; with rotation on, refresh it.
                None if populated && self.config.rotation_interval.is_none() => return Ok(PublishOutcome::Skipped),
                None => {}
            }
        }

        let result = self.fill(&params, state, deadline, provider_name).await;
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
    ) -> Result<PublishOutcome, PublishError> {
        let target = &params.target_path;
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
            };
            let call = provider.mount(request);
            let response = match deadline {
                Some(d) => tokio::time::timeout_at(d.into(), call).await.unwrap_or_else(|_| {
                    Err(ProviderError::new(
                        ErrorKind::DeadlineExceeded,
                        "ProviderError",
                        format!("provider {:?} did not answer before kubelet's deadline", spec.provider),
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
            self.volumes.insert(
                target.clone(),
                Volume {
                    params: params.clone(),
                    provider: spec.provider.clone(),
                    object_versions: response.object_versions,
                    last_fetch: Instant::now(),
                },
            );
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
        self.volumes.remove(&target);
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
