//! The rotation poller: refreshes published volumes every `--rotation-poll-interval`.
//!
//! [`plan_cycle`] is pure: given the volumes and the time, it says whether a cycle starts and which
//! volumes it takes. A cycle starts when some volume's last successful fetch is a full interval old,
//! and then takes along every volume fetched at least about half an interval ago: volumes mounted at
//! different times join one cycle, so each distinct object (per identity) is fetched once per cycle and
//! fanned out (the provider shares identical fetches). No volume waits longer than the interval; some
//! are refreshed after half of it, at no extra Key Vault cost.
//!
//! Refreshes are background work: they yield to kubelet (see [`crate::registry`]), never mount, and a
//! failure keeps the files and backs off from one tick up to one interval. Time is tokio's, so all of
//! this runs under paused time in tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tracing::Instrument;

use crate::node::{Driver, PublishOutcome};
use crate::publish::Trigger;
use crate::registry::{Holder, Volume};
use crate::volume_context::PublishParams;

/// Volumes refreshed at once by the poller.
const ROTATION_CONCURRENCY: usize = 64;

/// The interval assumed for a refresh's deadline when rotation is off (only the tests refresh then).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(120);

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

/// Whether a cycle starts now, and which volumes it takes (`None`: no volume is due).
/// `active` says whether a volume's pod still runs (a terminating pod's volume is not rotated).
pub fn plan_cycle<'a>(
    volumes: impl IntoIterator<Item = (&'a PathBuf, &'a Volume)>,
    now: Instant,
    interval: Duration,
    active: impl Fn(&Volume) -> bool,
) -> Option<Vec<PathBuf>> {
    let candidates: Vec<(&PathBuf, &Volume)> =
        volumes.into_iter().filter(|(_, v)| v.retry_at.is_none_or(|t| now >= t)).filter(|(_, v)| active(v)).collect();
    let age = |v: &Volume| now.saturating_duration_since(v.last_fetch);
    if !candidates.iter().any(|(_, v)| age(v) >= interval) {
        return None;
    }
    Some(candidates.into_iter().filter(|(_, v)| age(v) >= cycle_join_age(interval)).map(|(t, _)| t.clone()).collect())
}

impl Driver {
    fn interval(&self) -> Duration {
        self.config.rotation_interval.unwrap_or(DEFAULT_INTERVAL)
    }

    /// A rotation refresh of a published volume (the poller's, with background priority). A target
    /// kubelet is working on is skipped, and kubelet arriving meanwhile stops the refresh. Records
    /// `rotation_reconcile*` metrics only.
    pub async fn refresh(&self, params: PublishParams, cycle: u64) -> PublishOutcome {
        let started = std::time::Instant::now();
        let target = params.target_path.clone();
        let Some(guard) = self.volumes.try_claim(&target, Holder::Poller) else { return PublishOutcome::Skipped };
        // A refresh never outlives one interval: retries against a vault that is down stop, and the
        // poller's next attempt (backoff capped at one interval) finds it back within one interval.
        let deadline = Instant::now() + self.interval().max(Duration::from_secs(1));
        let attempt = self.execute(&params, Trigger::Poller { cycle }, Some(deadline), &guard).await;
        let outcome = match attempt.result {
            Ok(o) => o,
            Err(e) => PublishOutcome::KeptAfterError(e),
        };
        match &outcome {
            PublishOutcome::Published { changed, .. } => self.metrics.rotation(&attempt.provider, *changed, started),
            PublishOutcome::KeptAfterError(e) => {
                self.metrics.rotation_error(&attempt.provider, e.label());
                if let Some(cluster) = &self.cluster {
                    cluster.rotation_failed(&params, &e.to_string()).await;
                }
                let interval = self.interval();
                self.volumes.update(&target, |v| {
                    v.failures = v.failures.saturating_add(1);
                    v.retry_at = Some(Instant::now() + backoff(interval, v.failures));
                });
            }
            PublishOutcome::Skipped => {}
        }
        outcome
    }

    /// One rotation cycle, if one is due (see [`plan_cycle`]). Returns the volumes attempted.
    pub async fn rotate_due(&self) -> usize {
        let Some(interval) = self.config.rotation_interval else { return 0 };
        let started = Instant::now();
        let snapshot = self.volumes.snapshot();
        let active = |v: &Volume| self.cluster.as_ref().is_none_or(|c| c.pod_active(&v.params.pod));
        let Some(due) = plan_cycle(snapshot.iter().map(|(t, v)| (t, v)), started, interval, active) else {
            return 0;
        };
        let cycle = self.cycles.fetch_add(1, Ordering::Relaxed);
        let n = due.len();
        let due: std::collections::HashSet<PathBuf> = due.into_iter().collect();
        let due = snapshot.into_iter().filter(|(t, _)| due.contains(t)).map(|(_, v)| v.params);
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
                let outcome = self.refresh(params, cycle).instrument(span.clone()).await;
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

    /// The rotation poller: until `shutdown`, checks every [`poll_tick`] for volumes due for a refresh.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(age: Duration, now: Instant) -> Volume {
        let mut v = Volume::fresh(crate::publish::tests::params("/t"), "fake".into(), Default::default());
        v.last_fetch = now - age;
        v
    }

    fn plan(vols: &[(&str, Volume)], now: Instant, interval: Duration) -> Option<Vec<String>> {
        let owned: Vec<(PathBuf, Volume)> = vols.iter().map(|(t, v)| (PathBuf::from(t), v.clone())).collect();
        plan_cycle(owned.iter().map(|(t, v)| (t, v)), now, interval, |_| true)
            .map(|ts| ts.into_iter().map(|t| t.display().to_string()).collect())
    }

    #[tokio::test(start_paused = true)]
    async fn a_cycle_starts_when_one_volume_is_a_full_interval_old_and_takes_the_half_old_along() {
        tokio::time::advance(Duration::from_secs(600)).await;
        let now = Instant::now();
        let i = Duration::from_secs(120);
        let young = ("/young", volume(Duration::from_secs(10), now));
        let half = ("/half", volume(Duration::from_secs(55), now));
        let old = ("/old", volume(Duration::from_secs(120), now));
        assert_eq!(plan(&[young.clone(), half.clone()], now, i), None, "nobody is due");
        let mut due = plan(&[young, half, old], now, i).unwrap();
        due.sort();
        assert_eq!(due, ["/half", "/old"], "50 s (half minus a 10 s tick) joins; 10 s does not");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_volume_waits_out_its_backoff_and_an_inactive_pod_is_left_alone() {
        tokio::time::advance(Duration::from_secs(600)).await;
        let now = Instant::now();
        let i = Duration::from_secs(120);
        let mut failed = volume(Duration::from_secs(300), now);
        failed.retry_at = Some(now + Duration::from_secs(5));
        assert_eq!(plan(&[("/f", failed.clone())], now, i), None);
        assert_eq!(plan(&[("/f", failed)], now + Duration::from_secs(5), i).unwrap(), ["/f"]);
        let owned = [(PathBuf::from("/t"), volume(i, now))];
        assert_eq!(plan_cycle(owned.iter().map(|(t, v)| (t, v)), now, i, |_| false), None);
    }

    #[test]
    fn backoff_doubles_from_one_tick_up_to_one_interval() {
        let i = Duration::from_secs(120);
        assert_eq!(poll_tick(i), Duration::from_secs(10));
        assert_eq!(backoff(i, 1), Duration::from_secs(20));
        assert_eq!(backoff(i, 2), Duration::from_secs(40));
        assert_eq!(backoff(i, 5), i);
        assert_eq!(backoff(i, u32::MAX), i);
        assert_eq!(poll_tick(Duration::from_millis(500)), Duration::from_millis(100));
    }
}
