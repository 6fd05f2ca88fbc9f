//! The node's background writer of what kubelet does not wait for: pod statuses, synced Secrets
//! (`secretObjects`), their events, and the deletion of a pod status on unpublish.
//!
//! A publish returns once the files are in place and hands what it owes the API server to this writer:
//! * **one entry per volume** (its target path), written in order: a volume's next write starts only
//!   after its previous one finished;
//! * **coalesced**: a write that arrives while an older one is still pending replaces it (only the
//!   latest state of a volume is written; an unpublish replaces whatever was pending with the deletion);
//! * **owed, not forgotten**: a write that fails (API server down, hung, 5xx) stays in its entry and is
//!   retried with backoff, whether or not the files change again; the first success after a failure
//!   makes every failing entry due at once, so statuses catch up as soon as the API server answers;
//! * **bounded**: at most [`WriterSettings::limit`] volumes may owe writes. A publish that would add
//!   one more fails with `UNAVAILABLE` before anything is recorded (kubelet retries it); a deletion that
//!   finds the queue full is dropped (the API server garbage-collects a pod status with its pod, which
//!   owns it).
//!
//! One wait remains, short and bounded: kubelet's first mount of a class with `secretObjects` waits up
//! to [`SECRET_WAIT`] for its Secrets, because containers reading them as environment variables start
//! right after the mount (upstream syncs before answering kubelet). An API server that does not answer
//! delays such a mount by that much, never more.
//!
//! A crash loses what was pending, harmlessly: the files are on tmpfs, and a volume whose status was
//! never written is re-fetched and recorded by kubelet's next republish (see [`crate::publish::plan`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::node::Cluster;
use secrets_store::class::SecretProviderClassSpec;
use secrets_store::provider::File;
use secrets_store::volume_context::PublishParams;

mod metrics;
use metrics::register;

/// Whether kubelet's publish waits for its API writes (`--api-writes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// Publish returns when the files are in place; the writer records the rest (ours, the default).
    #[default]
    Background,
    /// Upstream's semantics: kubelet's publish waits for the pod status and the Secret sync, and a
    /// failed pod-status write fails the mount. Rotation still writes in the background.
    Synchronous,
}

impl std::str::FromStr for WriteMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "background" => Ok(Self::Background),
            "synchronous" => Ok(Self::Synchronous),
            other => Err(format!("{other:?} is not one of background, synchronous")),
        }
    }
}

/// The writer's settings.
#[derive(Clone, Copy, Debug)]
pub struct WriterSettings {
    /// Kubelet's publish waits, or not.
    pub mode: WriteMode,
    /// Volumes that may owe writes at once (`--api-writes-limit`).
    pub limit: usize,
    /// Writes in flight at once: 500 pods going away together must not open 500 API connections.
    pub concurrency: usize,
    /// One API call longer than this counts as failed (a hung API server holds no slot for long).
    pub timeout: Duration,
    /// First retry delay; doubles per failure in a row, up to `max_backoff`.
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

/// How long kubelet's first mount of a class with `secretObjects` waits for its Secrets.
pub const SECRET_WAIT: Duration = Duration::from_secs(2);

/// `--api-writes-limit`'s default: far above a node's pods (110 by default), small in memory.
pub const DEFAULT_LIMIT: usize = 4096;

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            mode: WriteMode::Background,
            limit: DEFAULT_LIMIT,
            concurrency: 4,
            timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// A pod-status write.
#[derive(Clone, Debug)]
pub(crate) struct StatusWrite {
    pub(crate) versions: BTreeMap<String, String>,
    pub(crate) provenance: secrets_store::provider::Provenance,
    /// The status exists already (patch it) rather than a first mount's (create it).
    pub(crate) refresh: bool,
}

/// A Secret sync (and its events) after the volume's files were written.
#[derive(Clone)]
pub(crate) struct SyncWrite {
    /// By a rotation (events and reasons differ from a first mount's).
    pub(crate) rotated: bool,
    /// What was written (empty: a legacy provider wrote the files itself).
    pub(crate) files: Arc<Vec<File>>,
}

/// What a published volume owes the API server.
#[derive(Clone)]
pub(crate) struct Owed {
    pub(crate) params: PublishParams,
    pub(crate) spec: Arc<SecretProviderClassSpec>,
    pub(crate) status: Option<StatusWrite>,
    pub(crate) sync: Option<SyncWrite>,
}

/// One volume's pending work.
#[derive(Clone)]
pub(crate) enum Job {
    Publish(Owed),
    /// Unpublished: delete its pod status.
    Remove(PublishParams),
}

impl Job {
    fn params(&self) -> &PublishParams {
        match self {
            Job::Publish(o) => &o.params,
            Job::Remove(p) => p,
        }
    }

    /// `self` was pending when `newer` arrived: what is left to write.
    fn then(self, newer: Job) -> Job {
        match (self, newer) {
            // An unpublish cancels what was pending.
            (_, remove @ Job::Remove(_)) => remove,
            // Published again (same pod, same volume): its status replaces the deletion.
            (Job::Remove(_), publish) => publish,
            (Job::Publish(old), Job::Publish(mut new)) => {
                // A first mount's create still owed makes the newer status a create too.
                new.status = match (old.status, new.status) {
                    (Some(o), Some(mut n)) => {
                        n.refresh &= o.refresh;
                        Some(n)
                    }
                    (o, n) => n.or(o),
                };
                new.sync = match (old.sync, new.sync) {
                    (Some(o), Some(mut n)) => {
                        n.rotated &= o.rotated;
                        Some(n)
                    }
                    (o, n) => n.or(o),
                };
                Job::Publish(new)
            }
        }
    }

    fn is_done(&self) -> bool {
        matches!(self, Job::Publish(Owed { status: None, sync: None, .. }))
    }
}

/// Which write failed (`api_write_failures_total{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Status,
    Secret,
    Delete,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Status => "pod_status",
            Kind::Secret => "secret",
            Kind::Delete => "pod_status_delete",
        }
    }
}

/// A write that failed: which, why (the API server's words; never a value), and what is left.
pub(crate) struct Failed {
    pub(crate) kind: Kind,
    pub(crate) message: String,
    pub(crate) left: Job,
}

/// Carries one job out against `cluster`, each API call bounded by `timeout`.
pub(crate) async fn write(
    cluster: &dyn Cluster,
    metrics: &crate::metrics::Metrics,
    mut job: Job,
    timeout: Duration,
) -> Result<(), Box<Failed>> {
    let late = |what: &str| format!("the API server did not answer the {what} within {timeout:?}");
    match &mut job {
        Job::Remove(params) => match tokio::time::timeout(timeout, cluster.remove(params)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Box::new(Failed { kind: Kind::Delete, message: e.to_string(), left: job })),
            Err(_) => Err(Box::new(Failed { kind: Kind::Delete, message: late("deletion"), left: job })),
        },
        Job::Publish(owed) => {
            if let Some(s) = &owed.status {
                let call = cluster.record(&owed.params, &s.versions, &s.provenance, s.refresh);
                let message = match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(late("pod-status write")),
                };
                if let Some(message) = message {
                    return Err(Box::new(Failed { kind: Kind::Status, message, left: job }));
                }
                owed.status = None;
            }
            if let Some(s) = &owed.sync {
                // Several Secrets, each a few calls: a budget per Secret.
                let budget = timeout * (owed.spec.secret_objects.len().max(1) as u32);
                let started = std::time::Instant::now();
                let call = cluster.written(&owed.params, &owed.spec, s.rotated, &s.files);
                let message = match tokio::time::timeout(budget, call).await {
                    Ok(report) => {
                        metrics.secrets_synced(&owed.spec.provider, report.synced, started);
                        report.retry.then(|| "a Secret sync failed on an API error (see the pod's events)".to_string())
                    }
                    Err(_) => Some(late("Secret sync")),
                };
                if let Some(message) = message {
                    return Err(Box::new(Failed { kind: Kind::Secret, message, left: job }));
                }
                owed.sync = None;
            }
            Ok(())
        }
    }
}

/// The per-node writer. Cheap to clone.
#[derive(Clone)]
pub struct ApiWriter {
    shared: Arc<Shared>,
}

struct Shared {
    cluster: Arc<dyn Cluster>,
    metrics: crate::metrics::Metrics,
    settings: WriterSettings,
    state: Mutex<State>,
    wake: Notify,
    settled: Notify,
    /// Notified after every write.
    progress: Notify,
    failures: Family<KindLabels, Counter>,
}

#[derive(Default)]
struct State {
    entries: HashMap<PathBuf, Entry>,
    in_flight: usize,
}

struct Entry {
    /// What is still to write (`None` while only the in-flight write remains).
    job: Option<Job>,
    in_flight: bool,
    /// Failures in a row.
    failures: u32,
    /// Not written before this.
    due: Instant,
    /// Since when this volume owes something.
    since: Instant,
}

/// `{kind}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

impl ApiWriter {
    /// Starts the writer's task (on the current Tokio runtime).
    /// Secret syncs are counted in `metrics` (`sync_k8s_secret_total`, `k8s_secret_duration_sec`).
    pub fn start(cluster: Arc<dyn Cluster>, settings: WriterSettings, metrics: crate::metrics::Metrics) -> Self {
        let shared = Arc::new(Shared {
            cluster,
            metrics,
            settings,
            state: Mutex::default(),
            wake: Notify::new(),
            settled: Notify::new(),
            progress: Notify::new(),
            failures: Family::default(),
        });
        tokio::spawn(run(shared.clone()));
        Self { shared }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &WriterSettings {
        &self.shared.settings
    }

    /// Whether the volume at `target` may owe a write: it owes one already, or the queue has room.
    pub(crate) fn has_room(&self, target: &std::path::Path) -> bool {
        let st = self.shared.state.lock().unwrap();
        st.entries.contains_key(target) || st.entries.len() < self.shared.settings.limit
    }

    /// How many volumes owe writes.
    pub fn pending(&self) -> usize {
        self.shared.state.lock().unwrap().entries.len()
    }

    /// Queues `job` for its volume, after (and merged with) what the volume already owes. A publish
    /// checks [`ApiWriter::has_room`] before it records anything; two publishes racing for the last
    /// place may both be queued (the bound is at admission).
    pub(crate) fn submit(&self, job: Job) {
        self.enqueue(job, false);
    }

    /// [`ApiWriter::submit`], refusing a new entry beyond the limit: says whether `job` was queued.
    pub(crate) fn try_submit(&self, job: Job) -> bool {
        self.enqueue(job, true)
    }

    fn enqueue(&self, job: Job, bounded: bool) -> bool {
        let target = job.params().target_path.clone();
        let now = Instant::now();
        {
            let mut st = self.shared.state.lock().unwrap();
            let full = bounded && st.entries.len() >= self.shared.settings.limit;
            match st.entries.get_mut(&target) {
                Some(entry) => {
                    entry.job = Some(match entry.job.take() {
                        Some(older) => older.then(job),
                        None => job,
                    });
                }
                None if full => return false,
                None => {
                    let entry = Entry { job: Some(job), in_flight: false, failures: 0, due: now, since: now };
                    st.entries.insert(target, entry);
                }
            }
        }
        self.shared.wake.notify_one();
        true
    }

    /// Waits until no volume owes a write (tests, and a graceful stop).
    pub async fn settled(&self) {
        loop {
            let notified = self.shared.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.state.lock().unwrap().entries.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Waits until the volume at `target` owes nothing, for at most `budget`; says whether it does not.
    pub async fn written(&self, target: &std::path::Path, budget: Duration) -> bool {
        let until = Instant::now() + budget;
        loop {
            let notified = self.shared.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.shared.state.lock().unwrap().entries.contains_key(target) {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Registers `api_writes_pending`, `api_writes_oldest_pending_seconds` and `api_write_failures_total`.
    pub fn register(&self, registry: &mut Registry) {
        register(registry, self.shared.failures.clone(), Arc::downgrade(&self.shared));
    }

    /// The same metrics, at zero, for a driver without a cluster (standalone, classes from files):
    /// dashboards and alerts find the series wherever the driver runs.
    pub fn register_idle(registry: &mut Registry) {
        register(registry, Family::default(), std::sync::Weak::new());
    }
}

/// The dispatcher: starts due writes (up to the concurrency) and files their results. It lives as long
/// as the process (the driver holds one writer for its lifetime).
async fn run(shared: Arc<Shared>) {
    let mut running: JoinSet<(PathBuf, Result<(), Box<Failed>>)> = JoinSet::new();
    loop {
        let next = shared.start_due(&mut running);
        tokio::select! {
            () = shared.wake.notified() => {}
            Some(done) = running.join_next(), if !running.is_empty() => match done {
                Ok((target, result)) => shared.finish(target, result),
                // Writes catch their own panics (`start_due`); this is only a cancelled runtime.
                Err(e) => tracing::error!(error = %e, "an API write task ended unexpectedly"),
            },
            () = sleep_until(next), if next.is_some() => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Shared {
    /// Starts every due write there is a slot for; returns when the next one not started is due.
    fn start_due(&self, running: &mut JoinSet<(PathBuf, Result<(), Box<Failed>>)>) -> Option<Instant> {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap();
        let mut next: Option<Instant> = None;
        let mut ready: Vec<(Instant, PathBuf)> = Vec::new();
        for (target, e) in &st.entries {
            if e.in_flight || e.job.is_none() {
                continue;
            }
            if e.due <= now {
                ready.push((e.since, target.clone()));
            } else {
                next = Some(next.map_or(e.due, |n| n.min(e.due)));
            }
        }
        // Oldest debt first.
        ready.sort();
        let slots = self.settings.concurrency.saturating_sub(st.in_flight);
        if ready.len() > slots {
            // Not started now: retried as soon as a slot frees (join_next wakes the loop).
            ready.truncate(slots);
        }
        for (_, target) in ready {
            let entry = st.entries.get_mut(&target).expect("listed above");
            let Some(job) = entry.job.take() else { continue };
            entry.in_flight = true;
            st.in_flight += 1;
            let (cluster, metrics, timeout) = (self.cluster.clone(), self.metrics.clone(), self.settings.timeout);
            running.spawn(async move {
                let left = job.clone();
                let result = match kube_bridge::supervise::isolate(write(&*cluster, &metrics, job, timeout)).await {
                    Ok(r) => r,
                    Err(panic) => Err(Box::new(Failed { kind: Kind::Status, message: panic, left })),
                };
                (target, result)
            });
        }
        next
    }

    /// Files the result of `target`'s write.
    fn finish(&self, target: PathBuf, result: Result<(), Box<Failed>>) {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap();
        st.in_flight = st.in_flight.saturating_sub(1);
        let Some(entry) = st.entries.get_mut(&target) else { return };
        entry.in_flight = false;
        match result {
            Ok(()) => {
                let recovered = entry.failures > 0;
                entry.failures = 0;
                entry.due = now;
                if entry.job.as_ref().is_none_or(Job::is_done) {
                    st.entries.remove(&target);
                }
                if recovered {
                    // The API server answers again: everything owed is due now, not at its backoff.
                    for e in st.entries.values_mut().filter(|e| e.failures > 0) {
                        e.due = now;
                    }
                }
            }
            Err(failed) => {
                let Failed { kind, message, left } = *failed;
                self.failures.get_or_create(&KindLabels { kind: kind.label() }).inc();
                entry.failures += 1;
                let delay = backoff(&self.settings, entry.failures);
                entry.due = now + delay;
                entry.job = Some(match entry.job.take() {
                    Some(newer) => left.then(newer),
                    None => left,
                });
                let p = entry.job.as_ref().expect("just set").params();
                let (pod, namespace, class) = (&p.pod.name, &p.pod.namespace, &p.class_name);
                let what = match kind {
                    Kind::Status => "the volume's files are in place; its pod status is pending",
                    Kind::Secret => "the volume's files are in place; its synced Secrets are pending",
                    Kind::Delete => "the volume is unpublished; deleting its pod status is pending",
                };
                if entry.failures == 1 || entry.failures.is_power_of_two() {
                    tracing::warn!(%pod, %namespace, %class, error = %message, retry_in = ?delay, failures = entry.failures, "{what}");
                }
            }
        }
        self.progress.notify_waiters();
        if st.entries.is_empty() {
            self.settled.notify_waiters();
        }
    }
}

fn backoff(s: &WriterSettings, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    s.backoff.saturating_mul(factor).min(s.max_backoff)
}

#[cfg(test)]
mod tests;
