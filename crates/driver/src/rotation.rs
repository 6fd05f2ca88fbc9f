//! The rotation poller: refreshes published volumes every `--rotation-poll-interval`.
//!
//! [`plan_cycle`] is pure: given the volumes and the time, it says whether a cycle starts and which
//! volumes it takes. A cycle starts when some volume's last successful fetch is a full interval old,
//! and then takes along every volume fetched at least about half an interval ago: volumes mounted at
//! different times join one cycle, so each distinct object (per identity) is fetched once per cycle and
//! fanned out (the provider shares identical fetches). No volume waits longer than the interval; some
//! are refreshed after half of it, at no extra Key Vault cost.
//!
//! Each volume rotates on its own interval: its class's `keyvault-csi.io/rotation-poll-interval`,
//! else the node's (see [`secrets_store::annotations`]); the cycle logic is per volume, so classes with
//! different intervals share cycles whenever their volumes are due together.
//!
//! A refresh-now request (`keyvault-csi.io/refresh-now` changed on the pod or the class) is served by
//! [`Driver::serve_refresh_requests`] within a second, as a forced cycle of its own: the same
//! executor, dedup, rate limits and claims as rotation, whether or not rotation is on.
//!
//! Refreshes are background work: they yield to kubelet (see [`crate::registry`]), never mount, and a
//! failure keeps the files and backs off from one tick up to one interval. Time is tokio's, so all of
//! this runs under paused time in tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tracing::Instrument;

use crate::node::{Driver, PublishOutcome};
use crate::publish::{Refresh, Trigger};
use crate::registry::{Holder, Volume};
use kube_bridge::supervise::isolate;
use secrets_store::annotations::{REFRESH_NOW, RefreshMarks, class_interval, shown};
use secrets_store::duration::later;
use secrets_store::volume_context::PublishParams;

/// Task names in logs and `task_panics_total{task}`.
pub const ROTATION_TASK: &str = "rotation";
/// See [`ROTATION_TASK`].
pub const REFRESH_TASK: &str = "refresh_now";
/// See [`ROTATION_TASK`].
pub const EXPIRY_TASK: &str = "cert_expiry_warnings";
/// See [`ROTATION_TASK`].
pub const INVALIDATION_TASK: &str = "change_events";

/// Volumes refreshed at once by the poller.
const ROTATION_CONCURRENCY: usize = 64;

/// The interval assumed for a refresh's deadline and backoff when rotation is off (a refresh-now
/// request, or a test).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(120);

/// How often refresh-now annotations are looked for (in the watch caches: no API call).
pub const REFRESH_REQUEST_TICK: Duration = Duration::from_secs(1);

/// How often the poller looks for due volumes: a tenth of the interval, 100 ms to 10 s.
pub fn poll_tick(interval: Duration) -> Duration {
    (interval / 10).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// Volumes fetched at least this long ago join a rotation cycle (half an interval, minus one tick so
/// that volumes refreshed by the previous half-interval cycle are not left out by a few milliseconds).
pub fn cycle_join_age(interval: Duration) -> Duration {
    (interval / 2).saturating_sub(poll_tick(interval))
}

/// How long a volume waits after its `failures`-th consecutive failed refresh: from one tick, doubling,
/// up to one interval, so a recovered vault is found back within one interval.
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    poll_tick(interval).saturating_mul(1u32 << failures.min(16)).min(interval)
}

/// A node's phase within `interval`, from its name (FNV-1a): spread evenly over the interval across
/// a cluster's nodes, and the same after every restart of one node.
pub fn node_phase(node: &str, interval: Duration) -> Duration {
    if node.is_empty() {
        return Duration::ZERO;
    }
    let ms = interval.as_millis().max(1) as u64;
    let h = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    Duration::from_millis(h % ms)
}

/// Whether a cycle starts now, and which volumes it takes (`None`: no volume is due). `interval` is a
/// volume's own rotation interval; `active` says whether its pod still runs (a terminating pod's
/// volume is not rotated).
pub fn plan_cycle<'a>(
    volumes: impl IntoIterator<Item = (&'a PathBuf, &'a Volume)>,
    now: Instant,
    interval: impl Fn(&PathBuf) -> Duration,
    active: impl Fn(&Volume) -> bool,
) -> Option<Vec<PathBuf>> {
    let candidates: Vec<(&PathBuf, &Volume)> =
        volumes.into_iter().filter(|(_, v)| v.retry_at.is_none_or(|t| now >= t)).filter(|(_, v)| active(v)).collect();
    let age = |v: &Volume| now.saturating_duration_since(v.last_fetch);
    if !candidates.iter().any(|(t, v)| age(v) >= interval(t)) {
        return None;
    }
    Some(
        candidates.into_iter().filter(|(t, v)| age(v) >= cycle_join_age(interval(t))).map(|(t, _)| t.clone()).collect(),
    )
}

impl Driver {
    /// A volume's rotation interval: its class's annotation (bounded below by
    /// `--min-rotation-poll-interval`), else the node's; `None` when rotation is off. An unusable
    /// annotation is reported once per class and value, and the node's interval applies.
    pub(crate) fn volume_interval(&self, params: &PublishParams) -> Option<Duration> {
        let interval = self.polled_interval(params)?;
        // While change events flow, polls are only the safety net.
        Some(match self.events_poll_interval_now() {
            Some(long) => interval.max(long),
            None => interval,
        })
    }

    /// `--events-poll-interval` while the event consumer's heartbeat is fresh (as last seen by
    /// [`Self::serve_invalidations`], every second); `None` otherwise.
    pub(crate) fn events_poll_interval_now(&self) -> Option<Duration> {
        let long = self.config.events_poll_interval?;
        self.events_healthy.load(Ordering::Relaxed).then_some(long)
    }

    fn polled_interval(&self, params: &PublishParams) -> Option<Duration> {
        let node = self.config.rotation_interval?;
        let Some(cluster) = &self.cluster else { return Some(node) };
        let raw = cluster.hints(params).class_interval;
        let (interval, warning) = match class_interval(raw.as_deref(), self.config.min_class_interval) {
            Ok(None) => (node, None),
            Ok(Some(c)) => (c.interval, c.capped),
            Err(message) => (node, Some(format!("{message}; using the node's --rotation-poll-interval ({node:?})"))),
        };
        if let Some(message) = warning {
            let raw = raw.unwrap_or_default();
            let key = (params.pod.namespace.clone(), params.class_name.clone(), shown(&raw));
            if self.invalid_intervals.first_time(key) {
                tracing::warn!(class = %params.class_name, namespace = %params.pod.namespace, %message,
                    "the class's rotation interval is not usable as written");
                let (cluster, params) = (cluster.clone(), params.clone());
                tokio::spawn(async move { cluster.class_interval_invalid(&params, &message).await });
            }
        }
        Some(interval)
    }

    /// The refresh-now values the volume's pod and class carry now.
    pub(crate) fn refresh_marks(&self, params: &PublishParams) -> RefreshMarks {
        self.cluster.as_ref().map(|c| c.hints(params).refresh).unwrap_or_default()
    }

    /// A background refresh of a published volume (its rotation, a refresh-now request or a change
    /// event; the last two ignore the volume's age). A target kubelet is working on is skipped, and kubelet arriving
    /// meanwhile stops the refresh. Records `rotation_reconcile*` metrics only.
    pub async fn refresh(&self, params: PublishParams, cycle: u64, reason: Refresh) -> PublishOutcome {
        let started = std::time::Instant::now();
        let target = params.target_path.clone();
        let Some(guard) = self.volumes.try_claim(&target, Holder::Poller) else { return PublishOutcome::Skipped };
        let interval = self.volume_interval(&params).unwrap_or(DEFAULT_INTERVAL);
        // A refresh never outlives one interval: retries against a vault that is down stop, and the
        // poller's next attempt (backoff capped at one interval) finds it back within one interval.
        let deadline = later(Instant::now(), interval.max(Duration::from_secs(1)));
        let attempt = self.execute(&params, Trigger::Poller { cycle, reason }, Some(deadline), &guard).await;
        // Released before any event or status write: kubelet never waits on those.
        drop(guard);
        let outcome = match attempt.result {
            Ok(o) => o,
            Err(e) => PublishOutcome::KeptAfterError(e),
        };
        match &outcome {
            PublishOutcome::Published { changed, .. } => self.metrics.rotation(&attempt.provider, *changed, started),
            PublishOutcome::KeptAfterError(e) => {
                self.metrics.rotation_error(&attempt.provider, e);
                if let Some(cluster) = &self.cluster {
                    cluster.rotation_failed(&params, &e.to_string()).await;
                }
                self.volumes.update(&target, |v| {
                    v.failures = v.failures.saturating_add(1);
                    v.retry_at = Some(later(Instant::now(), backoff(interval, v.failures)));
                });
            }
            PublishOutcome::Skipped => {}
        }
        outcome
    }

    /// One rotation cycle, if one is due (see [`plan_cycle`]). Returns the volumes attempted.
    pub async fn rotate_due(&self) -> usize {
        if self.config.rotation_interval.is_none() {
            return 0;
        }
        let started = Instant::now();
        let snapshot = self.volumes.snapshot();
        let intervals: HashMap<PathBuf, Duration> = snapshot
            .iter()
            .filter_map(|(t, v)| {
                let interval = self.volume_interval(&v.params)?;
                if v.interval != Some(interval) {
                    // An edited annotation shows in `rotation_lag_seconds` at once.
                    self.volumes.update(t, |v| v.interval = Some(interval));
                }
                Some((t.clone(), interval))
            })
            .collect();
        let interval_of = |t: &PathBuf| intervals.get(t).copied().unwrap_or(DEFAULT_INTERVAL);
        let active = |v: &Volume| self.cluster.as_ref().is_none_or(|c| c.pod_active(&v.params.pod));
        let Some(due) = plan_cycle(snapshot.iter().map(|(t, v)| (t, v)), started, interval_of, active) else {
            return 0;
        };
        let cycle = self.cycles.fetch_add(1, Ordering::Relaxed);
        let n = due.len();
        let due: std::collections::HashSet<PathBuf> = due.into_iter().collect();
        let due = snapshot.into_iter().filter(|(t, _)| due.contains(t)).map(|(_, v)| v.params);
        futures_util::stream::iter(due)
            .for_each_concurrent(ROTATION_CONCURRENCY, |params| async move {
                let span = volume_span("rotation", &params);
                let started = Instant::now();
                let target = params.target_path.clone();
                let outcome = match isolate(self.refresh(params, cycle, Refresh::Rotation).instrument(span.clone())).await {
                    Ok(o) => o,
                    Err(panic) => {
                        // Backs off like a failure, so one volume cannot panic on every tick.
                        self.volumes.update(&target, |v| {
                            v.failures = v.failures.saturating_add(1);
                            let interval = v.interval.unwrap_or(DEFAULT_INTERVAL);
                            v.retry_at = Some(later(Instant::now(), backoff(interval, v.failures)));
                        });
                        return self.tasks.record_isolated(ROTATION_TASK, &panic);
                    }
                };
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
        tracing::info!(cycle, volumes = n, duration_s = started.elapsed().as_secs_f64(), "rotation cycle complete");
        n
    }

    /// Serves refresh-now requests: every volume whose pod's or class's `keyvault-csi.io/refresh-now`
    /// changed since its last refresh (or mount) is refreshed now, in one forced cycle (so volumes of
    /// one class share each fetch), and an event on its pod confirms it. A request is served once: a
    /// failure keeps the files, reports `MountRotationFailed` and backs off like a rotation. A volume
    /// kubelet or the poller holds is taken at the next tick. Returns the volumes refreshed.
    pub async fn serve_refresh_requests(&self) -> usize {
        let Some(cluster) = &self.cluster else { return 0 };
        let mut due = Vec::new();
        for (target, volume) in self.volumes.snapshot() {
            let marks = cluster.hints(&volume.params).refresh;
            if marks == volume.refresh_seen {
                continue;
            }
            let Some((kind, value)) = marks.requested_since(&volume.refresh_seen) else {
                // An annotation removed or reverted asks for nothing.
                self.volumes.update(&target, |v| v.refresh_seen = marks.clone());
                continue;
            };
            if !cluster.pod_active(&volume.params.pod) || self.volumes.holder(&target).is_some() {
                continue;
            }
            let request = format!("{REFRESH_NOW}={:?} on the {kind}", shown(value));
            due.push((volume.params, marks, request));
        }
        if due.is_empty() {
            return 0;
        }
        let cycle = self.cycles.fetch_add(1, Ordering::Relaxed);
        let n = due.len();
        futures_util::stream::iter(due)
            .for_each_concurrent(ROTATION_CONCURRENCY, |(params, marks, request)| async move {
                let span = volume_span("refresh-now", &params);
                let target = params.target_path.clone();
                let outcome = match isolate(self.refresh(params.clone(), cycle, Refresh::Request).instrument(span.clone())).await {
                    Ok(o) => o,
                    Err(panic) => {
                        // Served (and failed): the request is not retried every second.
                        self.volumes.update(&target, |v| v.refresh_seen = marks);
                        return self.tasks.record_isolated(REFRESH_TASK, &panic);
                    }
                };
                if matches!(outcome, PublishOutcome::Skipped) && self.volumes.holder(&target).is_some() {
                    return; // kubelet took the target meanwhile: next tick
                }
                self.volumes.update(&target, |v| v.refresh_seen = marks);
                let _e = span.enter();
                match outcome {
                    PublishOutcome::Published { files, changed, .. } => {
                        let what = if changed { "contents changed" } else { "contents unchanged" };
                        let message = format!("refreshed on request ({request}): {files} files, {what}");
                        tracing::info!(files, changed, %request, "refreshed on request");
                        drop(_e);
                        cluster.refreshed(&params, &message).await;
                    }
                    PublishOutcome::KeptAfterError(e) => {
                        tracing::warn!(error = %e, error_type = %e.label(), %request, "refresh on request failed; keeping the current files")
                    }
                    PublishOutcome::Skipped => tracing::debug!(%request, "volume no longer mounted; request dropped"),
                }
            })
            .await;
        n
    }

    /// Acts on Key Vault change events (see [`secrets_store::invalidation`]): every volume holding a changed
    /// object is refreshed now, in one forced cycle (one fetch per distinct object and identity,
    /// nothing reused from before the event), through the same executor, claims and vault limits as
    /// rotation. An event for an object no volume holds costs nothing. Returns the volumes refreshed.
    pub async fn serve_invalidations(&self) -> usize {
        let Some(cluster) = &self.cluster else { return 0 };
        let Some(data) = cluster.invalidations() else { return 0 };
        let healthy = secrets_store::invalidation::healthy(&data, std::time::SystemTime::now());
        self.events_healthy.store(healthy, Ordering::Relaxed);
        self.metrics.events_healthy.set(i64::from(healthy));
        let news = self.invalidations_seen.lock().unwrap_or_else(|e| e.into_inner()).news(&data);
        if news.is_empty() {
            return 0;
        }
        let volumes = self.volumes.snapshot();
        let mut due: Vec<(PublishParams, u64)> = Vec::new();
        for inv in &news {
            let holders: Vec<_> = volumes
                .iter()
                .filter(|(_, v)| v.holds(&inv.object.vault, &inv.object.name))
                .filter(|(_, v)| cluster.pod_active(&v.params.pod))
                .collect();
            let outcome = if holders.is_empty() { "unused" } else { "refreshed" };
            self.metrics
                .events_invalidations
                .get_or_create(&crate::metrics::OutcomeLabels { outcome: outcome.into() })
                .inc();
            tracing::info!(vault = %inv.object.vault, kind = %inv.object.kind, object = %inv.object.name,
                version = %inv.entry.version, volumes = holders.len(), "change event");
            for (_, v) in holders {
                // One refresh per volume, however many of its objects changed; the oldest event
                // time is the one its latency is measured from.
                match due.iter_mut().find(|(p, _)| p.target_path == v.params.target_path) {
                    Some((_, t)) => *t = (*t).min(inv.entry.event_ms),
                    None => due.push((v.params.clone(), inv.entry.event_ms)),
                }
            }
        }
        if due.is_empty() {
            return 0;
        }
        let cycle = self.cycles.fetch_add(1, Ordering::Relaxed);
        let n = due.len();
        futures_util::stream::iter(due)
            .for_each_concurrent(ROTATION_CONCURRENCY, |(params, event_ms)| async move {
                let span = volume_span("change-event", &params);
                let outcome = match isolate(self.refresh(params, cycle, Refresh::Event).instrument(span.clone())).await {
                    Ok(o) => o,
                    Err(panic) => return self.tasks.record_isolated(INVALIDATION_TASK, &panic),
                };
                let _e = span.enter();
                match outcome {
                    PublishOutcome::Published { files, changed, .. } => {
                        if changed && event_ms > 0 {
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap_or_default()
                                .as_millis() as u64;
                            self.metrics.event_to_file.observe(now.saturating_sub(event_ms) as f64 / 1000.0);
                        }
                        tracing::info!(files, changed, "refreshed on a change event")
                    }
                    PublishOutcome::KeptAfterError(e) => {
                        tracing::warn!(error = %e, error_type = %e.label(), "refresh on a change event failed; keeping the current files")
                    }
                    // kubelet holds it: its republish (or the next poll) fetches anyway.
                    PublishOutcome::Skipped => {}
                }
            })
            .await;
        n
    }

    /// Warns on each pod whose volume mounts a certificate expiring within `--cert-expiry-warning`
    /// (once per file and `notAfter`: a renewed certificate is warned about afresh when it, too,
    /// comes close). Returns the warnings emitted.
    pub async fn warn_expiring(&self) -> usize {
        let (Some(cluster), Some(window)) = (&self.cluster, self.config.cert_expiry_warning) else { return 0 };
        let now = jiff::Timestamp::now().as_second();
        let mut warned = 0;
        for (target, volume) in self.volumes.snapshot() {
            for (file, &not_after) in &volume.cert_expiry {
                let key = (file.clone(), not_after);
                if volume.expiry_warned.contains(&key) {
                    continue;
                }
                let Some(message) = crate::expiry::warning(file, not_after, now, window) else { continue };
                let message = format!("{message}; class {}", volume.params.class_name);
                tracing::warn!(pod = %volume.params.pod.name, namespace = %volume.params.pod.namespace,
                    class = %volume.params.class_name, file = %file, not_after, "certificate expiring");
                cluster.certificate_expiring(&volume.params, &message).await;
                self.volumes.update(&target, |v| {
                    v.expiry_warned.insert(key.clone());
                });
                warned += 1;
            }
        }
        warned
    }

    /// The rotation poller: until `shutdown`, checks every [`poll_tick`] for volumes due for a refresh
    /// (the tick of the shortest interval a class may ask for, so a class's own interval is kept).
    pub async fn run_rotation(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let Some(interval) = self.config.rotation_interval else { return };
        let tick = poll_tick(interval.min(self.config.min_class_interval));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = &mut shutdown => return,
            }
            self.rotate_due().await;
        }
    }

    /// The refresh-now loop: until `shutdown`, serves requests every [`REFRESH_REQUEST_TICK`], and
    /// warns about expiring certificates.
    pub async fn run_refresh_requests(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        if self.cluster.is_none() {
            return;
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_REQUEST_TICK) => {}
                _ = &mut shutdown => return,
            }
            if let Err(panic) = isolate(self.serve_refresh_requests()).await {
                self.tasks.record_isolated(REFRESH_TASK, &panic);
            }
            if let Err(panic) = isolate(self.serve_invalidations()).await {
                self.tasks.record_isolated(INVALIDATION_TASK, &panic);
            }
            if let Err(panic) = isolate(self.warn_expiring()).await {
                self.tasks.record_isolated(EXPIRY_TASK, &panic);
            }
        }
    }
}

fn volume_span(what: &'static str, params: &PublishParams) -> tracing::Span {
    tracing::info_span!(
        "refresh",
        trigger = what,
        pod = %params.pod.name,
        namespace = %params.pod.namespace,
        class = %params.class_name,
        target = %params.target_path.display(),
    )
}

#[cfg(test)]
mod tests;
