//! kubelet's calls: `NodePublishVolume` and `NodeUnpublishVolume`.
//!
//! A publish is decided by [`plan`], a pure function of who asked, what the target looks like and
//! when the volume was last fetched; one executor then carries the plan out. The rotation poller uses
//! the same executor with [`Trigger::Poller`] (see [`crate::rotation`]).
//!
//! The algorithm is upstream's (`pkg/secrets-store/nodeserver.go`) with its known bugs fixed:
//! * the rotation skip uses this driver's record of the last *successful fetch* of a *live, published*
//!   mount, not the target directory's mtime (which let a retry after a failed first publish return
//!   success for an empty, unmounted directory, and which re-fetched on every republish once the content
//!   was older than the interval);
//! * the class's parameters are copied, never mutated in place;
//! * any failure on a republish of a healthy, populated volume keeps the files and reports success,
//!   because kubelet deletes the mount directory when a republish fails (kubernetes#121271);
//! * kubelet's calls never see `ABORTED` because our own poller is refreshing the same volume.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use crate::api_writes::{Job, Owed, StatusWrite, SyncWrite, WriteMode};
use crate::atomic_writer::{self, WriteError, WriteOutcome};
use crate::error::PublishError;
use crate::mounter::Mounter;
use crate::node::{DEFAULT_FILE_MODE, Driver, PublishOutcome, blocking};
use crate::registry::{Contended, Holder, TargetGuard, Volume};
use secrets_store::class::SecretProviderClassSpec;
use secrets_store::provider::{ErrorKind, MountRequest, ProviderError};
use secrets_store::volume_context::PublishParams;

mod adopt;
mod unpublish;

#[cfg(test)]
pub(crate) mod tests;

/// How long a kubelet call waits for the poller to let go of its target when kubelet set no deadline.
const KUBELET_WAIT: Duration = Duration::from_secs(30);

/// Who asked for a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// kubelet's `NodePublishVolume` (a first mount, or a `requiresRepublish` republish).
    Kubelet,
    /// The rotation poller, in cycle `cycle` (identical fetches of one cycle may share results).
    Poller {
        /// Cycle number.
        cycle: u64,
        /// Why the volume is refreshed.
        reason: Refresh,
    },
}

/// Why the poller refreshes a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Its rotation interval came.
    Rotation,
    /// A refresh-now request: fetch whatever the volume's age.
    Request,
    /// A Key Vault change event about one of its objects: fetch whatever its age.
    Event,
}

impl Trigger {
    /// Whether the fetch must ignore the volume's age and reuse nothing from before it.
    pub fn forced(&self) -> bool {
        matches!(self, Trigger::Poller { reason: Refresh::Request | Refresh::Event, .. })
    }
}

/// What the target path looks like before a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// No mount there (the directory may or may not exist).
    NotMounted,
    /// A readable mount; `populated` when it holds a generation of files (`..data`).
    Mounted {
        /// Whether files were written there.
        populated: bool,
    },
}

/// What a publish must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing: a republish within the interval, rotation off, or a refresh of a volume that is gone.
    Skip,
    /// Ask the provider and write the files.
    Fetch {
        /// Mount a tmpfs first.
        mount: bool,
        /// The target already serves files: a failure keeps them (and kubelet is told "success").
        keep_on_error: bool,
    },
}

/// Decides what a publish must do. `last_fetch_age` is how long ago this driver last fetched the volume
/// (`None`: it does not know the volume); `interval` is the rotation interval (`None`: rotation off).
pub fn plan(
    trigger: Trigger,
    state: TargetState,
    last_fetch_age: Option<Duration>,
    interval: Option<Duration>,
) -> Plan {
    let populated = matches!(state, TargetState::Mounted { populated: true });
    match (trigger, state, last_fetch_age) {
        (Trigger::Kubelet, TargetState::NotMounted, _) => Plan::Fetch { mount: true, keep_on_error: false },
        // The poller never mounts: a volume without its mount was unpublished (or kubelet will repair it).
        (Trigger::Poller { .. }, TargetState::NotMounted, _) | (Trigger::Poller { .. }, _, None) => Plan::Skip,
        (t @ Trigger::Poller { .. }, TargetState::Mounted { .. }, Some(_)) if t.forced() => {
            Plan::Fetch { mount: false, keep_on_error: populated }
        }
        (trigger, TargetState::Mounted { .. }, Some(age)) => {
            // kubelet's republish waits a full interval; the poller batches from about half of it.
            let min_age = match (trigger, interval) {
                (_, None) => return Plan::Skip,
                (Trigger::Kubelet, Some(i)) => i,
                (Trigger::Poller { .. }, Some(i)) => crate::rotation::cycle_join_age(i),
            };
            if age < min_age { Plan::Skip } else { Plan::Fetch { mount: false, keep_on_error: populated } }
        }
        // Mounted but unknown to us: the driver restarted before its pod status was written (or the
        // volume was mounted by another driver, e.g. the add-on before a migration). Upstream answers
        // "already mounted" when rotation is off; we fetch once, keeping the files on failure, so the
        // status is written and the volume is ours to rotate and refresh.
        (Trigger::Kubelet, TargetState::Mounted { .. }, None) => Plan::Fetch { mount: false, keep_on_error: populated },
    }
}

/// The result of one executed publish and the provider it concerned (for metric labels).
pub(crate) struct Attempt {
    pub(crate) provider: String,
    pub(crate) result: Result<PublishOutcome, PublishError>,
}

impl Driver {
    /// `NodePublishVolume`. `deadline` is kubelet's (from `grpc-timeout`), applied to the provider call.
    /// Records `node_publish*` and `rotation_reconcile*` metrics.
    pub async fn publish(
        &self,
        params: PublishParams,
        deadline: Option<std::time::Instant>,
    ) -> Result<PublishOutcome, PublishError> {
        let started = std::time::Instant::now();
        let target = params.target_path.clone();
        let known = self.volumes.get(&target);
        if let Some(volume) = &known
            && self.volumes.holder(&target) == Some(Holder::Poller)
            && self.healthy(&target).await
        {
            // Our poller is refreshing this very volume, and its mount is sound: the republish has
            // nothing left to do. Keep kubelet's fresh service-account tokens for the next refresh.
            // (A broken mount is kubelet's to repair: the claim below cancels the poller.)
            self.remember_credentials(&params);
            self.metrics.publish_ok(&volume.provider);
            return Ok(PublishOutcome::Skipped);
        }
        let guard = match self.volumes.claim_for_kubelet(&target, wait_budget(deadline)).await {
            Ok(g) => g,
            Err(Contended::ByKubelet | Contended::PollerTimedOut) => {
                let e = PublishError::Busy(target);
                self.metrics.publish_error(known.as_ref().map_or("", |v| &v.provider), &e);
                return Err(e);
            }
        };
        let attempt = self.execute(&params, Trigger::Kubelet, deadline.map(Instant::from_std), &guard).await;
        drop(guard);
        let m = &self.metrics;
        match &attempt.result {
            Ok(PublishOutcome::Published { remount, changed, .. }) => {
                m.publish_ok(&attempt.provider);
                if *remount {
                    m.rotation(&attempt.provider, *changed, started);
                }
            }
            Ok(PublishOutcome::Skipped) => m.publish_ok(&attempt.provider),
            Ok(PublishOutcome::KeptAfterError(e)) => {
                m.publish_error(&attempt.provider, e);
                m.rotation_error(&attempt.provider, e);
                if let Some(cluster) = &self.cluster {
                    cluster.rotation_failed(&params, &e.to_string()).await;
                }
            }
            Err(e) => m.publish_error(&attempt.provider, e),
        }
        m.publish_duration(started);
        attempt.result
    }

    /// Whether `target` is a readable, populated mount.
    async fn healthy(&self, target: &Path) -> bool {
        let (mounter, t) = (self.mounter.clone(), target.to_path_buf());
        let state = blocking(move || inspect_target(&*mounter, &t, false)).await;
        matches!(state, Ok(TargetState::Mounted { populated: true }))
    }

    /// kubelet sends fresh service-account tokens (and node-publish secrets) on every republish: keep
    /// them for rotation.
    fn remember_credentials(&self, params: &PublishParams) {
        self.volumes.update(&params.target_path, |v| {
            v.params.tokens = params.tokens.clone();
            v.params.secrets = params.secrets.clone();
        });
    }

    /// Inspects the target, plans, and carries the plan out. The caller holds `guard`.
    pub(crate) async fn execute(
        &self,
        params: &PublishParams,
        trigger: Trigger,
        deadline: Option<Instant>,
        guard: &TargetGuard,
    ) -> Attempt {
        let target = params.target_path.clone();
        let known = self.volumes.get(&target);
        let provider = known.as_ref().map(|v| v.provider.clone()).unwrap_or_default();
        let repair = trigger == Trigger::Kubelet;
        let mounter = self.mounter.clone();
        let t = target.clone();
        let state = match blocking(move || inspect_target(&*mounter, &t, repair)).await {
            Ok(s) => s,
            Err(source) => {
                return Attempt { provider, result: Err(PublishError::EnsureMountPoint { path: target, source }) };
            }
        };
        if known.is_some() && trigger == Trigger::Kubelet {
            self.remember_credentials(params);
        }
        let age = known.as_ref().map(|v| Instant::now().saturating_duration_since(v.last_fetch));
        match plan(trigger, state, age, self.volume_interval(params)) {
            Plan::Skip => Attempt { provider, result: Ok(PublishOutcome::Skipped) },
            Plan::Fetch { mount, keep_on_error } => {
                let spec = match self.resolve_class(params).await {
                    Ok(spec) => spec,
                    Err(e) => return Attempt { provider, result: keep(e, keep_on_error) },
                };
                let result = self.fetch_and_write(params, &spec, mount, keep_on_error, trigger, deadline, guard).await;
                // A provider name no socket answers to is the class author's free text: it never
                // becomes a metric label (the error names it).
                let provider = match &result {
                    Err(PublishError::ProviderLookup { .. }) => String::new(),
                    _ => spec.provider.clone(),
                };
                Attempt { provider, result: result.or_else(|e| keep(e, keep_on_error)) }
            }
        }
    }

    /// Resolves the class and checks what upstream checks before mounting, in upstream's order.
    async fn resolve_class(&self, params: &PublishParams) -> Result<SecretProviderClassSpec, PublishError> {
        if params.class_name.is_empty() {
            return Err(PublishError::ClassNotSet);
        }
        let (namespace, name) = (params.pod.namespace.clone(), params.class_name.clone());
        let spec = self.classes.get(&namespace, &name).await?;
        if spec.provider.is_empty() {
            return Err(PublishError::ProviderNotSet { namespace, name });
        }
        if spec.parameters.is_empty() {
            return Err(PublishError::ParametersNotSet { namespace, name });
        }
        if !params.readonly {
            return Err(PublishError::NotReadonly);
        }
        Ok(spec)
    }

    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename the arguments
    async fn fetch_and_write(
        &self,
        params: &PublishParams,
        spec: &SecretProviderClassSpec,
        mount: bool,
        remount: bool,
        trigger: Trigger,
        deadline: Option<Instant>,
        guard: &TargetGuard,
    ) -> Result<PublishOutcome, PublishError> {
        let target = &params.target_path;
        if mount {
            self.mount(target).await?;
        }
        let result = self.fetch_and_write_mounted(params, spec, remount, trigger, deadline, guard).await;
        if result.is_err() && mount {
            // Leave no mount behind, so kubelet's retry starts clean. The directory stays, as upstream.
            let mounter = self.mounter.clone();
            let t = target.clone();
            if let Err(e) = blocking(move || mounter.unmount(&t)).await {
                tracing::error!(target = %target.display(), error = %e, "failed to unmount after a failed publish");
            }
        }
        result
    }

    async fn fetch_and_write_mounted(
        &self,
        params: &PublishParams,
        spec: &SecretProviderClassSpec,
        remount: bool,
        trigger: Trigger,
        deadline: Option<Instant>,
        guard: &TargetGuard,
    ) -> Result<PublishOutcome, PublishError> {
        let target = &params.target_path;
        let pod = format!("{}/{}", params.pod.namespace, params.pod.name);
        let provider = self.providers.get(&spec.provider).map_err(|source| PublishError::ProviderLookup {
            pod: pod.clone(),
            provider: spec.provider.clone(),
            source,
        })?;
        let background = matches!(trigger, Trigger::Poller { .. });
        let request = MountRequest {
            attributes: params.attributes(&spec.parameters),
            secrets: params.secrets.clone(),
            target_path: target.clone(),
            permission: DEFAULT_FILE_MODE,
            current_object_versions: self.volumes.get(target).map(|v| v.object_versions).unwrap_or_default(),
            deadline: deadline.map(Instant::into_std),
            background,
            cycle: match trigger {
                Trigger::Poller { cycle, .. } => Some(cycle),
                Trigger::Kubelet => None,
            },
            fresh: trigger.forced(),
        };
        let late = || {
            let why = if background { "within one rotation interval" } else { "before kubelet's deadline" };
            ProviderError::new(
                ErrorKind::DeadlineExceeded,
                "ProviderError",
                format!("provider {:?} did not answer {why}", spec.provider),
            )
        };
        let call = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, provider.mount(request)).await.unwrap_or_else(|_| Err(late())),
                None => provider.mount(request).await,
            }
        };
        // The provider call is where a refresh spends its time; kubelet overtaking it stops it here.
        let mut response = tokio::select! {
            biased;
            () = guard.cancelled() => return Ok(PublishOutcome::Skipped),
            r = call => r.map_err(|source| PublishError::Provider { pod: pod.clone(), source })?,
        };

        let files = std::sync::Arc::new(std::mem::take(&mut response.files));
        let changed = if files.is_empty() {
            // A legacy provider wrote the files itself (deprecated upstream path, kept for compatibility).
            true
        } else {
            let (target, files) = (target.clone(), files.clone());
            match blocking(move || atomic_writer::write(&target, &files)).await {
                Ok(outcome) => outcome == WriteOutcome::Written,
                Err(WriteError::Payload(source)) => return Err(PublishError::Payload { pod, source }),
                Err(source) => return Err(PublishError::FileWrite { pod, source }),
            }
        };
        let known = self.volumes.get(target);
        let provenance = response.provenance();
        // What the API server is owed: the pod status when a version (or the serving vault) changed,
        // and the Secret sync when the files did (or on a first mount).
        // Nothing is owed without a cluster (standalone mounts).
        let owes = self.writer.is_some();
        let mut status = (owes
            && known
                .as_ref()
                .is_none_or(|v| v.object_versions != response.object_versions || v.provenance != provenance))
        .then(|| StatusWrite {
            versions: response.object_versions.clone(),
            provenance: provenance.clone(),
            refresh: known.is_some(),
        });
        let mut sync = (owes && (changed || !remount)).then(|| SyncWrite { rotated: remount, files: files.clone() });
        let waits = !background && self.writer.as_ref().is_some_and(|w| w.settings().mode == WriteMode::Synchronous);
        if let (Some(cluster), Some(writer)) = (&self.cluster, &self.writer) {
            if waits {
                // Upstream's semantics: kubelet waits, and a pod status that cannot be written fails the
                // mount (before the volume is recorded, so kubelet's retry records it).
                if let Some(s) = status.take() {
                    cluster
                        .record(params, &s.versions, &s.provenance, s.refresh)
                        .await
                        .map_err(|source| PublishError::PodStatus { pod: pod.clone(), source })?;
                }
            } else {
                // Refused now what the background write could never do, and what the queue has no room for.
                cluster.check(params).map_err(|source| PublishError::PodStatus { pod: pod.clone(), source })?;
                if !writer.has_room(target) {
                    return Err(PublishError::ApiBacklog { pod, pending: writer.pending() });
                }
            }
        }
        self.audit.volume(params, &response, audit_trigger(trigger, remount));
        let sources = response.sources();
        let mut volume = Volume::fresh(params.clone(), spec.provider.clone(), response.object_versions);
        volume.provenance = provenance;
        volume.sources = sources;
        volume.interval = self.volume_interval(params);
        if known.is_none() {
            // A first mount's first poll comes at the node's phase of the second half of the interval
            // (earlier, never later, and never sooner than half the interval: a class asking for 24 h
            // is not polled minutes after its mount): pods started together across nodes (a scale-up)
            // do not make every node ask the vault at the same moments ever after.
            self.phase_first_poll(&mut volume, 2);
        }
        volume.cert_expiry = match (&known, files.is_empty()) {
            // A legacy provider wrote the files itself: nothing to read here.
            (Some(k), true) => k.cert_expiry.clone(),
            _ => crate::expiry::expiries(&files),
        };
        volume.expiry_warned = known.as_ref().map(|k| k.expiry_warned.clone()).unwrap_or_default();
        // A new volume starts from the refresh-now values it was mounted under (they ask nothing of it).
        volume.refresh_seen = match &known {
            Some(k) => k.refresh_seen.clone(),
            None => self.refresh_marks(params),
        };
        if background {
            // The poller replays stored parameters: keep the credentials kubelet refreshed meanwhile
            // (read under the same lock as the write; the snapshot above predates the API calls).
            self.volumes.replace_keeping_params(target.clone(), volume);
        } else {
            self.volumes.insert(target.clone(), volume);
        }
        if let (Some(cluster), Some(writer)) = (&self.cluster, &self.writer) {
            if waits && let Some(s) = sync.take() {
                let started = std::time::Instant::now();
                let report = cluster.written(params, spec, s.rotated, &s.files).await;
                self.metrics.secrets_synced(&spec.provider, report.synced, started);
                if report.retry {
                    sync = Some(s); // owed: the writer retries it
                }
            }
            if status.is_some() || sync.is_some() {
                // Containers may read a first mount's synced Secrets as environment variables as soon
                // as kubelet is answered: give the writer a moment (bounded) to create them.
                let env_wait = sync.is_some() && !remount && !background && !spec.secret_objects.is_empty();
                let spec = std::sync::Arc::new(spec.clone());
                writer.submit(Job::Publish(Owed { params: params.clone(), spec, status, sync }));
                if env_wait && !writer.written(target, crate::api_writes::SECRET_WAIT).await {
                    tracing::warn!(%pod, class = %params.class_name, "the synced Secrets are not written yet (the API server is slow or away); the mount goes ahead and they follow");
                }
            }
        }
        Ok(PublishOutcome::Published { provider: spec.provider.clone(), files: files.len(), changed, remount })
    }

    async fn mount(&self, target: &Path) -> Result<(), PublishError> {
        let mounter = self.mounter.clone();
        let t = target.to_path_buf();
        blocking(move || mounter.mount(&t))
            .await
            .map_err(|source| PublishError::Mount { path: target.to_path_buf(), source })
    }

    /// Moves a volume's first poll earlier by the node's phase of `interval / spread`: at most one
    /// interval away, as always, and at the same offset on every restart of this node (see
    /// [`crate::rotation::node_phase`]).
    fn phase_first_poll(&self, volume: &mut Volume, spread: u32) {
        let Some(interval) = volume.interval else { return };
        let phase = crate::rotation::node_phase(&self.config.node_id, interval / spread.max(1));
        // Due `interval - phase` from now: as if last fetched `phase` ago.
        if let Some(t) = tokio::time::Instant::now().checked_sub(phase) {
            volume.last_fetch = t;
        }
    }
}

/// A failure of a publish that found the target serving files keeps them and reports success.
fn keep(e: PublishError, keep_on_error: bool) -> Result<PublishOutcome, PublishError> {
    if keep_on_error { Ok(PublishOutcome::KeptAfterError(e)) } else { Err(e) }
}

/// How long a kubelet call may wait for the poller: most of kubelet's own deadline, else a default.
fn wait_budget(deadline: Option<std::time::Instant>) -> Duration {
    deadline.map_or(KUBELET_WAIT, |d| d.saturating_duration_since(std::time::Instant::now()).mul_f32(0.8))
}

/// Upstream's `ensureMountPoint`: a readable mount is "mounted". With `repair` (kubelet's calls), a
/// broken mount is unmounted and a missing directory is created with mode 0750; the poller only looks.
fn inspect_target(mounter: &dyn Mounter, target: &Path, repair: bool) -> io::Result<TargetState> {
    match mounter.mount_point(target)? {
        Some(_) => match fs::read_dir(target) {
            Ok(_) => Ok(TargetState::Mounted { populated: target.join("..data").exists() }),
            Err(_) if !repair => Ok(TargetState::NotMounted),
            Err(e) => {
                tracing::warn!(target = %target.display(), error = %e, "target is a broken mount point; remounting");
                mounter.unmount(target)?;
                Ok(TargetState::NotMounted)
            }
        },
        None => {
            if repair && !target.exists() {
                fs::create_dir_all(target)?;
                fs::set_permissions(target, fs::Permissions::from_mode(0o750))?;
            }
            Ok(TargetState::NotMounted)
        }
    }
}

/// Why a volume's objects were served, as the audit trail names it.
fn audit_trigger(trigger: Trigger, remount: bool) -> secrets_store::audit::Trigger {
    match trigger {
        Trigger::Kubelet if remount => secrets_store::audit::Trigger::Republish,
        Trigger::Kubelet => secrets_store::audit::Trigger::Mount,
        Trigger::Poller { reason: Refresh::Request, .. } => secrets_store::audit::Trigger::Refresh,
        Trigger::Poller { reason: Refresh::Event, .. } => secrets_store::audit::Trigger::Event,
        Trigger::Poller { reason: Refresh::Rotation, .. } => secrets_store::audit::Trigger::Rotation,
    }
}
