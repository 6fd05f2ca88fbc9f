//! The writer against an API server the test controls: down, hung, or answering, on paused time.

use super::*;
use crate::node::SyncReport;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// An API server: `down` refuses every call; `gate` holds pod-status writes until notified.
#[derive(Default)]
struct Api {
    down: AtomicBool,
    gate: Mutex<Option<Arc<Notify>>>,
    /// Secret syncs that still fail with a retryable error.
    sync_failures: AtomicUsize,
    /// ("record" | "sync" | "remove", pod, version of secret/a).
    calls: Mutex<Vec<(&'static str, String, String)>>,
    /// Writes in flight per pod, and the most ever seen at once for one pod.
    busy: Mutex<HashMap<String, usize>>,
    most_at_once_per_pod: AtomicUsize,
}

impl Api {
    fn calls(&self, kind: &str) -> Vec<(String, String)> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|(k, ..)| *k == kind).map(|(_, p, v)| (p.clone(), v.clone())).collect()
    }

    fn enter(&self, pod: &str) {
        let mut busy = self.busy.lock().unwrap();
        let n = busy.entry(pod.to_string()).or_default();
        *n += 1;
        self.most_at_once_per_pod.fetch_max(*n, Ordering::SeqCst);
    }

    fn leave(&self, pod: &str) {
        *self.busy.lock().unwrap().get_mut(pod).unwrap() -= 1;
    }

    fn unavailable() -> kube_bridge::PodStatusError {
        kube_bridge::PodStatusError::NoUid("connection refused".into())
    }
}

#[async_trait::async_trait]
impl Cluster for Api {
    async fn record(
        &self,
        p: &PublishParams,
        versions: &BTreeMap<String, String>,
        _: &secrets_store::provider::Provenance,
        _: bool,
    ) -> Result<(), kube_bridge::PodStatusError> {
        self.enter(&p.pod.name);
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        self.leave(&p.pod.name);
        if self.down.load(Ordering::SeqCst) {
            return Err(Self::unavailable());
        }
        let v = versions.get("secret/a").cloned().unwrap_or_default();
        self.calls.lock().unwrap().push(("record", p.pod.name.clone(), v));
        Ok(())
    }

    async fn remove(&self, p: &PublishParams) -> Result<(), kube_bridge::PodStatusError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Self::unavailable());
        }
        self.calls.lock().unwrap().push(("remove", p.pod.name.clone(), String::new()));
        Ok(())
    }

    async fn written(&self, p: &PublishParams, _: &SecretProviderClassSpec, _: bool, files: &[File]) -> SyncReport {
        let failing = self.sync_failures.load(Ordering::SeqCst) > 0;
        if failing {
            self.sync_failures.fetch_sub(1, Ordering::SeqCst);
            return SyncReport { synced: 0, retry: true };
        }
        let v = files.first().map(|f| {
            String::from_utf8_lossy(secrets_store::redact::ExposeSecret::expose_secret(&f.contents)).into_owned()
        });
        self.calls.lock().unwrap().push(("sync", p.pod.name.clone(), v.unwrap_or_default()));
        SyncReport { synced: 1, retry: false }
    }

    async fn rotation_failed(&self, _: &PublishParams, _: &str) {}
}

fn params(pod: &str) -> PublishParams {
    PublishParams {
        volume_id: "csi-1".into(),
        target_path: PathBuf::from(format!("/pods/{pod}/volumes/kubernetes.io~csi/kv/mount")),
        readonly: true,
        class_name: "spc".into(),
        pod: secrets_store::volume_context::PodInfo {
            name: pod.into(),
            namespace: "ns".into(),
            uid: format!("uid-{pod}"),
            service_account: "default".into(),
        },
        volume_context: Default::default(),
        secrets: None,
        tokens: None,
    }
}

fn status(pod: &str, version: &str) -> Job {
    Job::Publish(Owed {
        params: params(pod),
        spec: Arc::new(SecretProviderClassSpec::default()),
        status: Some(StatusWrite {
            versions: [("secret/a".to_string(), version.to_string())].into(),
            provenance: Default::default(),
            refresh: false,
        }),
        sync: None,
    })
}

fn with_sync(job: Job, value: &str) -> Job {
    let Job::Publish(mut owed) = job else { unreachable!() };
    let file = File { path: "a".into(), contents: value.as_bytes().to_vec().into(), mode: 0o644 };
    owed.sync = Some(SyncWrite { rotated: true, files: Arc::new(vec![file]) });
    Job::Publish(owed)
}

fn writer(api: &Arc<Api>, settings: WriterSettings) -> ApiWriter {
    ApiWriter::start(api.clone(), settings, crate::metrics::Metrics::default())
}

fn failures(w: &ApiWriter, kind: &'static str) -> u64 {
    w.shared.failures.get_or_create(&KindLabels { kind }).get()
}

/// Lets the writer's tasks run (paused time: nothing else moves the clock).
async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn one_volume_is_written_in_order_and_only_its_latest_state() {
    let api = Arc::new(Api::default());
    let gate = Arc::new(Notify::new());
    *api.gate.lock().unwrap() = Some(gate.clone());
    let w = writer(&api, WriterSettings::default());
    w.submit(status("p", "v1"));
    run_for(Duration::from_millis(10)).await;
    // v1 is in flight (the API server holds it); v2 and v3 arrive meanwhile.
    w.submit(status("p", "v2"));
    w.submit(status("p", "v3"));
    assert_eq!(w.pending(), 1, "one entry per volume");
    *api.gate.lock().unwrap() = None;
    gate.notify_waiters();
    w.settled().await;
    assert_eq!(api.calls("record"), [("p".into(), "v1".into()), ("p".into(), "v3".into())], "v2 was coalesced away");
    assert_eq!(api.most_at_once_per_pod.load(Ordering::SeqCst), 1, "never two writes of one volume at once");
}

#[tokio::test(start_paused = true)]
async fn an_unpublish_cancels_what_was_pending_and_deletes_the_status() {
    let api = Arc::new(Api::default());
    let gate = Arc::new(Notify::new());
    *api.gate.lock().unwrap() = Some(gate.clone());
    let w = writer(&api, WriterSettings { concurrency: 1, ..Default::default() });
    w.submit(status("busy", "v1")); // takes the only slot, held by the API server
    run_for(Duration::from_millis(10)).await;
    w.submit(with_sync(status("gone", "v1"), "s3cr3t"));
    assert!(w.try_submit(Job::Remove(params("gone"))));
    *api.gate.lock().unwrap() = None;
    gate.notify_waiters();
    w.settled().await;
    assert_eq!(api.calls("record"), [("busy".into(), "v1".into())], "the unpublished volume's status never written");
    assert!(api.calls("sync").is_empty(), "nor its Secrets");
    assert_eq!(api.calls("remove"), [("gone".into(), String::new())]);
    // Published again after the unpublish, before the deletion ran: the new status replaces it.
    *api.gate.lock().unwrap() = Some(gate.clone());
    w.submit(status("busy", "v2"));
    run_for(Duration::from_millis(10)).await;
    assert!(w.try_submit(Job::Remove(params("back"))));
    w.submit(status("back", "v9"));
    *api.gate.lock().unwrap() = None;
    gate.notify_waiters();
    w.settled().await;
    assert_eq!(api.calls("remove").len(), 1, "no deletion of the republished volume's status");
    assert!(api.calls("record").contains(&("back".into(), "v9".into())));
}

#[tokio::test(start_paused = true)]
async fn what_the_api_server_refused_is_owed_and_written_once_it_answers_without_new_changes() {
    let api = Arc::new(Api::default());
    api.down.store(true, Ordering::SeqCst);
    let w = writer(&api, WriterSettings::default());
    for (i, pod) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
        w.submit(status(pod, &format!("v{i}")));
    }
    // Down for ten minutes: retried with backoff (at most every 30 s), never given up.
    run_for(Duration::from_secs(600)).await;
    assert_eq!(w.pending(), 6);
    let refused = failures(&w, "pod_status");
    assert!((6 * 15..=6 * 40).contains(&refused), "backed off to 30 s between tries: {refused}");
    api.down.store(false, Ordering::SeqCst);
    // The next try of any volume succeeds, and every other owed write is due at once.
    run_for(Duration::from_secs(31)).await;
    assert_eq!(w.pending(), 0);
    let mut written = api.calls("record");
    written.sort();
    let expected: Vec<(String, String)> =
        ["a", "b", "c", "d", "e", "f"].iter().enumerate().map(|(i, p)| (p.to_string(), format!("v{i}"))).collect();
    assert_eq!(written, expected, "every status at the version served, each written once");
}

#[tokio::test(start_paused = true)]
async fn a_hung_api_server_holds_no_slot_past_the_timeout() {
    let api = Arc::new(Api::default());
    let gate = Arc::new(Notify::new()); // never notified: the API server accepts and never answers
    *api.gate.lock().unwrap() = Some(gate);
    let settings = WriterSettings { concurrency: 1, timeout: Duration::from_secs(2), ..Default::default() };
    let w = writer(&api, settings);
    w.submit(status("a", "v1"));
    w.submit(status("b", "v1"));
    run_for(Duration::from_secs(5)).await;
    assert!(failures(&w, "pod_status") >= 2, "both timed out in turn, one slot: {}", failures(&w, "pod_status"));
    *api.gate.lock().unwrap() = None;
    run_for(Duration::from_secs(31)).await;
    assert_eq!(w.pending(), 0);
    assert_eq!(api.calls("record").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_secret_sync_is_retried_without_rewriting_the_status() {
    let api = Arc::new(Api::default());
    api.sync_failures.store(3, Ordering::SeqCst);
    let w = writer(&api, WriterSettings::default());
    w.submit(with_sync(status("p", "v1"), "value-1"));
    run_for(Duration::from_secs(10)).await;
    assert_eq!(w.pending(), 0);
    assert_eq!(api.calls("record").len(), 1, "the status was written once");
    assert_eq!(api.calls("sync"), [("p".into(), "value-1".into())]);
    assert_eq!(failures(&w, "secret"), 3);
}

#[tokio::test(start_paused = true)]
async fn the_queue_is_bounded_per_volume() {
    let api = Arc::new(Api::default());
    api.down.store(true, Ordering::SeqCst);
    let w = writer(&api, WriterSettings { limit: 2, ..Default::default() });
    w.submit(status("a", "v1"));
    w.submit(status("b", "v1"));
    assert!(w.has_room(Path::new("/pods/a/volumes/kubernetes.io~csi/kv/mount")), "a volume already owing may add");
    assert!(!w.has_room(Path::new("/pods/c/volumes/kubernetes.io~csi/kv/mount")), "a third volume may not");
    assert!(!w.try_submit(Job::Remove(params("c"))), "a deletion beyond the bound is dropped");
    w.submit(status("a", "v2"));
    assert_eq!(w.pending(), 2);
    api.down.store(false, Ordering::SeqCst);
    run_for(Duration::from_secs(1)).await;
    w.settled().await;
    let mut written = api.calls("record");
    written.sort();
    assert_eq!(written, [("a".into(), "v2".into()), ("b".into(), "v1".into())]);
}

#[test]
fn merging_keeps_a_first_mounts_create_and_the_newest_of_each_part() {
    let first = with_sync(status("p", "v1"), "one");
    let Job::Publish(mut rotation) = status("p", "v2") else { unreachable!() };
    rotation.status.as_mut().unwrap().refresh = true;
    let merged = first.clone().then(Job::Publish(rotation));
    let Job::Publish(m) = merged else { panic!("not a publish") };
    let s = m.status.unwrap();
    assert_eq!(s.versions["secret/a"], "v2");
    assert!(!s.refresh, "the status was never created: still a create");
    assert!(m.sync.is_some(), "the first mount's Secret sync still owed");
    assert!(matches!(first.then(Job::Remove(params("p"))), Job::Remove(_)));
}

use std::path::Path;
