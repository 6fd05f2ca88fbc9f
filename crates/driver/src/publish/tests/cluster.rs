use super::*;

/// A cluster whose annotations the test sets, recording the events the driver reports.
#[derive(Default)]
pub(super) struct FakeCluster {
    pod_refresh: Mutex<BTreeMap<String, String>>,
    class_refresh: Mutex<Option<String>>,
    class_interval: Mutex<Option<String>>,
    events: Mutex<Vec<(String, String, String)>>,
    /// While set, pod-status writes wait for it: an API server that does not answer.
    record_gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// The `secret/a` version of every pod-status write that completed.
    recorded: Mutex<Vec<String>>,
    /// Per pod: the versions written, and `removed` for a deletion, in order.
    by_pod: Mutex<BTreeMap<String, Vec<String>>>,
    /// Secret syncs.
    synced: AtomicUsize,
    /// The invalidations ConfigMap's data (`None`: change events off).
    invalidations: Mutex<Option<BTreeMap<String, String>>>,
}

impl FakeCluster {
    fn events(&self, reason: &str) -> Vec<(String, String)> {
        let events = self.events.lock().unwrap();
        events.iter().filter(|(_, r, _)| r == reason).map(|(pod, _, m)| (pod.clone(), m.clone())).collect()
    }
}

#[async_trait]
impl crate::node::Cluster for FakeCluster {
    async fn record(
        &self,
        p: &PublishParams,
        versions: &BTreeMap<String, String>,
        _provenance: &secrets_store::provider::Provenance,
        _: bool,
    ) -> Result<(), kube_bridge::PodStatusError> {
        let gate = self.record_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        let v = versions.get("secret/a").cloned().unwrap_or_default();
        self.recorded.lock().unwrap().push(v.clone());
        self.by_pod.lock().unwrap().entry(p.pod.name.clone()).or_default().push(v);
        Ok(())
    }
    async fn remove(&self, p: &PublishParams) -> Result<(), kube_bridge::PodStatusError> {
        self.by_pod.lock().unwrap().entry(p.pod.name.clone()).or_default().push("removed".into());
        Ok(())
    }
    async fn written(
        &self,
        _: &PublishParams,
        _: &SecretProviderClassSpec,
        _: bool,
        _: &[File],
    ) -> crate::node::SyncReport {
        self.synced.fetch_add(1, Ordering::SeqCst);
        Default::default()
    }
    async fn rotation_failed(&self, params: &PublishParams, message: &str) {
        self.events.lock().unwrap().push((params.pod.name.clone(), "MountRotationFailed".into(), message.into()));
    }
    fn hints(&self, params: &PublishParams) -> secrets_store::annotations::VolumeHints {
        secrets_store::annotations::VolumeHints {
            refresh: secrets_store::annotations::RefreshMarks {
                pod: self.pod_refresh.lock().unwrap().get(&params.pod.name).cloned(),
                class: self.class_refresh.lock().unwrap().clone(),
            },
            class_interval: self.class_interval.lock().unwrap().clone(),
        }
    }
    async fn refreshed(&self, params: &PublishParams, message: &str) {
        self.events.lock().unwrap().push((params.pod.name.clone(), "RefreshedOnRequest".into(), message.into()));
    }
    async fn certificate_expiring(&self, params: &PublishParams, message: &str) {
        self.events.lock().unwrap().push((params.pod.name.clone(), "CertificateExpiring".into(), message.into()));
    }
    async fn class_interval_invalid(&self, params: &PublishParams, message: &str) {
        self.events.lock().unwrap().push((params.pod.name.clone(), "InvalidRotationInterval".into(), message.into()));
    }
    fn invalidations(&self) -> Option<BTreeMap<String, String>> {
        self.invalidations.lock().unwrap().clone()
    }
}

/// Applies a consumer's merge patch to the fake ConfigMap.
fn apply_patch(cluster: &FakeCluster, patch: serde_json::Value) {
    let mut g = cluster.invalidations.lock().unwrap();
    let data = g.get_or_insert_with(BTreeMap::new);
    for (k, v) in patch["data"].as_object().unwrap() {
        match v.as_str() {
            Some(s) => data.insert(k.clone(), s.to_string()),
            None => data.remove(k),
        };
    }
}

#[tokio::test(start_paused = true)]
async fn a_change_event_refreshes_only_the_volumes_holding_the_object_in_one_cycle() {
    use secrets_store::invalidation::{Board, ObjectKey};
    let cluster = Arc::new(FakeCluster::default());
    let mut f = Fixture::with_cluster(Some(INTERVAL), cluster.clone());
    Arc::get_mut(&mut f.driver).unwrap().config.events_poll_interval = Some(Duration::from_secs(3600));
    let d = f.driver.clone();
    let mut board = Board::default();
    let now = std::time::SystemTime::now();
    apply_patch(&cluster, board.apply([], now, true).unwrap());
    assert_eq!(d.serve_invalidations().await, 0, "the first look only learns what is there");
    for i in 0..3 {
        d.publish(f.volume(i), None).await.unwrap();
    }
    // While the heartbeat is fresh, polls are hourly: nothing is due after the node's 2 minutes.
    tokio::time::advance(INTERVAL * 2).await;
    assert_eq!(d.rotate_due().await, 0);
    let other = ObjectKey { vault: "kv1".into(), kind: "secret".into(), name: "unrelated".into() };
    apply_patch(&cluster, board.apply([(other, String::new(), None)], now, false).unwrap());
    assert_eq!(d.serve_invalidations().await, 0, "nobody here holds it: no fetch");
    assert_eq!(f.calls(), 3);
    *f.provider.value.lock().unwrap() = "v2".into();
    let held = ObjectKey { vault: "kv1".into(), kind: "secret".into(), name: "a".into() };
    apply_patch(&cluster, board.apply([(held.clone(), "v2".into(), Some(now))], now, false).unwrap());
    assert_eq!(d.serve_invalidations().await, 3);
    assert!((0..3).all(|i| f.read(i).as_deref() == Some("v2")));
    let cycles = f.provider.cycles.lock().unwrap().clone();
    let event_cycles: std::collections::HashSet<_> = cycles[3..].iter().collect();
    assert_eq!(event_cycles.len(), 1, "one forced cycle: identical fetches shared: {cycles:?}");
    assert_eq!(d.serve_invalidations().await, 0, "acted on once");
    // A duplicate delivery: refreshed again, nothing changes (no pod-status write).
    f.settle().await;
    let recorded = cluster.recorded.lock().unwrap().len();
    apply_patch(&cluster, board.apply([(held.clone(), "v2".into(), None)], now, false).unwrap());
    assert_eq!(d.serve_invalidations().await, 3);
    f.settle().await;
    assert_eq!(cluster.recorded.lock().unwrap().len(), recorded, "a no-op refresh writes no status");
    // Same name in another vault: not ours.
    let elsewhere = ObjectKey { vault: "kv2".into(), kind: "secret".into(), name: "a".into() };
    apply_patch(&cluster, board.apply([(elsewhere, String::new(), None)], now, false).unwrap());
    assert_eq!(d.serve_invalidations().await, 0);
    // The heartbeat stale (the queue away): back to the node's interval.
    cluster.invalidations.lock().unwrap().as_mut().unwrap().insert("heartbeat".into(), "2020-01-01T00:00:00Z".into());
    assert_eq!(d.serve_invalidations().await, 0);
    tokio::time::advance(INTERVAL).await;
    assert_eq!(d.rotate_due().await, 3, "polling at 2 minutes again");
}

#[tokio::test(start_paused = true)]
async fn refresh_now_on_a_pod_refreshes_its_volume_once_even_with_rotation_off_and_an_event_says_so() {
    let cluster = Arc::new(FakeCluster::default());
    // A value present at mount time asks nothing: it was already served by the mount itself.
    cluster.pod_refresh.lock().unwrap().insert("web-0".into(), "t0".into());
    let f = Fixture::with_cluster(None, cluster.clone());
    let d = f.driver.clone();
    for i in 0..2 {
        d.publish(f.volume(i), None).await.unwrap();
    }
    assert_eq!(d.serve_refresh_requests().await, 0);
    *f.provider.value.lock().unwrap() = "v2".into();
    cluster.pod_refresh.lock().unwrap().insert("web-0".into(), "2026-12-01T10:00:00Z".into());
    assert_eq!(d.serve_refresh_requests().await, 1, "only the annotated pod's volume");
    assert_eq!((f.read(0).as_deref(), f.read(1).as_deref()), (Some("v2"), Some("v1")));
    assert_eq!(f.calls(), 3);
    let events = cluster.events("RefreshedOnRequest");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "web-0");
    assert_eq!(
        events[0].1,
        r#"refreshed on request (keyvault-csi.io/refresh-now="2026-12-01T10:00:00Z" on the pod): 1 files, contents changed"#
    );
    assert!(!events[0].1.contains("v2"), "no value in an event");
    // Served once; removing the annotation asks nothing either.
    assert_eq!(d.serve_refresh_requests().await, 0);
    cluster.pod_refresh.lock().unwrap().clear();
    assert_eq!(d.serve_refresh_requests().await, 0);
    assert_eq!(f.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn refresh_now_on_a_class_refreshes_every_volume_in_one_cycle_and_a_failure_keeps_the_files() {
    let cluster = Arc::new(FakeCluster::default());
    let f = Fixture::with_cluster(Some(INTERVAL), cluster.clone());
    let d = f.driver.clone();
    for i in 0..3 {
        d.publish(f.volume(i), None).await.unwrap();
    }
    *f.provider.value.lock().unwrap() = "v2".into();
    *cluster.class_refresh.lock().unwrap() = Some("1".into());
    assert_eq!(d.serve_refresh_requests().await, 3);
    assert!((0..3).all(|i| f.read(i).as_deref() == Some("v2")));
    let cycles = f.provider.cycles.lock().unwrap().clone();
    let forced: std::collections::HashSet<_> = cycles[3..].iter().collect();
    assert_eq!(forced.len(), 1, "one cycle, so the provider shares identical fetches: {cycles:?}");
    assert!(forced.iter().all(|c| c.is_some()), "background calls, under the provider's dedup and rate limits");
    assert_eq!(cluster.events("RefreshedOnRequest").len(), 3);
    // A failing vault: the request is served (once), the files stay, the failure is reported.
    *f.provider.fail.lock().unwrap() = true;
    *cluster.class_refresh.lock().unwrap() = Some("2".into());
    assert_eq!(d.serve_refresh_requests().await, 3);
    assert!((0..3).all(|i| f.read(i).as_deref() == Some("v2")), "files kept");
    assert_eq!(cluster.events("MountRotationFailed").len(), 3);
    assert_eq!(d.serve_refresh_requests().await, 0, "not retried every second; rotation's backoff takes over");
}

#[tokio::test(start_paused = true)]
async fn a_class_interval_overrides_the_nodes_and_is_bounded_below() {
    let cluster = Arc::new(FakeCluster::default());
    *cluster.class_interval.lock().unwrap() = Some("10m".into());
    let f = Fixture::with_cluster(Some(INTERVAL), cluster.clone());
    let d = f.driver.clone();
    d.publish(f.volume(0), None).await.unwrap();
    tokio::time::advance(INTERVAL * 2).await;
    assert_eq!(d.rotate_due().await, 0, "a 10 m class is not due after the node's 2 m");
    tokio::time::advance(Duration::from_secs(360)).await;
    assert_eq!(d.rotate_due().await, 1, "due at 10 m");
    // Asking for 1 s gets the 30 s floor: not due at 20 s, due at 30 s.
    *cluster.class_interval.lock().unwrap() = Some("1s".into());
    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(d.rotate_due().await, 0);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(d.rotate_due().await, 1);
    assert_eq!(d.volumes().get(Path::new(&f.target(0))).unwrap().interval, Some(Duration::from_secs(30)));
    // An unusable value: the node's interval applies, and one Warning says why.
    *cluster.class_interval.lock().unwrap() = Some("soon".into());
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(d.rotate_due().await, 0);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(d.rotate_due().await, 1);
    tokio::task::yield_now().await;
    let warnings = cluster.events("InvalidRotationInterval");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].1.contains("keyvault-csi.io/rotation-poll-interval") && warnings[0].1.contains("soon"));
}

/// A self-signed certificate PEM valid until `not_after` (Unix seconds).
fn cert_pem(not_after: i64) -> String {
    let mut p = rcgen::CertificateParams::new(vec!["example.com".into()]).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
}

#[tokio::test]
async fn an_expiring_certificate_is_a_gauge_per_class_and_file_and_one_warning_per_pod() {
    let cluster = Arc::new(FakeCluster::default());
    let f = Fixture::with_cluster(Some(INTERVAL), cluster.clone());
    let d = f.driver.clone();
    let soon = jiff::Timestamp::now().as_second() + 10 * 86_400;
    *f.provider.value.lock().unwrap() = cert_pem(soon);
    for i in 0..2 {
        d.publish(f.volume(i), None).await.unwrap();
    }
    assert_eq!(d.warn_expiring().await, 2, "one per pod");
    assert_eq!(d.warn_expiring().await, 0, "once per file and notAfter");
    let warnings = cluster.events("CertificateExpiring");
    assert!(warnings[0].1.starts_with("certificate in file \"a\" expires at "), "{warnings:?}");
    assert!(warnings[0].1.contains("(in 9d23h)") || warnings[0].1.contains("(in 10d0h)"), "{warnings:?}");
    assert!(!warnings[0].1.contains("BEGIN"), "no certificate text in an event");
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = crate::metrics::Metrics::default();
    metrics.register(&mut registry, d.volumes().clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let series: Vec<&str> = text.lines().filter(|l| l.starts_with("certificate_expiry_timestamp_seconds{")).collect();
    assert_eq!(
        series,
        [format!("certificate_expiry_timestamp_seconds{{namespace=\"ns\",class=\"spc\",object=\"a\"}} {soon}")]
    );
    // A renewed certificate far from expiry: the gauge follows, and nothing is warned.
    let later = soon + 365 * 86_400;
    *f.provider.value.lock().unwrap() = cert_pem(later);
    *cluster.class_refresh.lock().unwrap() = Some("renewed".into());
    assert_eq!(d.serve_refresh_requests().await, 2);
    assert_eq!(d.warn_expiring().await, 0);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains(&format!("object=\"a\"}} {later}")), "{text}");
}

/// The hostile-tenant audit: one class with Go's longest duration as its interval plus refresh-now
/// panicked the node-wide refresh loop (`Instant + interval`), silently ending refresh-now for every
/// pod on the node. The interval is capped now (with a Warning), and the loop keeps serving.
#[tokio::test(start_paused = true)]
async fn the_most_hostile_interval_and_refresh_now_cannot_stop_the_node_wide_loops() {
    let cluster = Arc::new(FakeCluster::default());
    let f = Fixture::with_cluster(Some(INTERVAL), cluster.clone());
    let d = f.driver.clone();
    for i in 0..2 {
        d.publish(f.volume(i), None).await.unwrap();
    }
    // Beyond Go's range (a Duration, but `Instant + it` overflows): refused, the node's interval applies.
    *cluster.class_interval.lock().unwrap() = Some("3000000000000000h".into());
    *f.provider.fail.lock().unwrap() = true;
    *cluster.class_refresh.lock().unwrap() = Some("now".into());
    let loops = tokio::spawn(d.clone().run_refresh_requests(std::future::pending()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!loops.is_finished(), "the refresh-now loop is still running");
    assert_eq!(cluster.events("MountRotationFailed").len(), 2, "both refreshes ran and failed cleanly");
    let refused = cluster.events("InvalidRotationInterval");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].1.contains("longer than Go allows"), "{refused:?}");
    assert_eq!(d.volumes().get(Path::new(&f.target(0))).unwrap().failures, 1);
    // Go's longest duration: capped at 30 days, with a Warning.
    *cluster.class_interval.lock().unwrap() = Some("2562047h".into());
    *cluster.class_refresh.lock().unwrap() = Some("again".into());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.events("MountRotationFailed").len(), 4);
    let capped = cluster.events("InvalidRotationInterval");
    assert!(capped.len() == 2 && capped[1].1.contains("capped at 720h"), "{capped:?}");
    // Other tenants' requests are still served.
    *f.provider.fail.lock().unwrap() = false;
    *f.provider.value.lock().unwrap() = "v2".into();
    cluster.pod_refresh.lock().unwrap().insert("web-1".into(), "please".into());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(f.read(1).as_deref(), Some("v2"));
    assert_eq!(cluster.events("RefreshedOnRequest").len(), 1);
    assert_eq!(d.tasks().panics(crate::rotation::REFRESH_TASK), 0, "no panic to catch any more");
    assert_eq!(d.rotate_due().await, 0, "capped at 30 days: nothing due");
    loops.abort();
}

/// Issues 26 and 36: with an API server that does not answer, neither kubelet's calls nor the poller
/// wait on it. Refreshes rotate the files and return; kubelet's unpublish and a new mount go through at
/// once; what they owe is written, in order, when the API server answers: the new versions of the
/// volumes still mounted, the deletion of the one unpublished.
#[tokio::test]
async fn kubelet_and_the_poller_never_wait_on_an_api_server_that_does_not_answer() {
    let cluster = Arc::new(FakeCluster::default());
    let f = Fixture::with_cluster(Some(INTERVAL), cluster.clone());
    let d = f.driver.clone();
    for i in 0..2 {
        d.publish(f.volume(i), None).await.unwrap();
    }
    f.settle().await;
    assert_eq!(*cluster.recorded.lock().unwrap(), ["v1", "v1"]);
    *f.provider.value.lock().unwrap() = "v2".into();
    let gate = Arc::new(tokio::sync::Notify::new());
    *cluster.record_gate.lock().unwrap() = Some(gate.clone());
    let bound = Duration::from_secs(5);
    for i in 0..2 {
        let refreshed = tokio::time::timeout(bound, d.refresh(f.volume(i), 7, Refresh::Request)).await;
        let outcome = refreshed.expect("a refresh does not wait on the API server");
        assert!(matches!(outcome, PublishOutcome::Published { changed: true, .. }), "{outcome:?}");
        assert_eq!(f.read(i).as_deref(), Some("v2"));
    }
    let deadline = std::time::Instant::now() + bound;
    let t0 = f.target(0);
    tokio::time::timeout(bound, d.unpublish("csi-1", &t0, Some(deadline))).await.unwrap().unwrap();
    assert!(d.volumes().get(Path::new(&t0)).is_none());
    let mounted = tokio::time::timeout(bound, d.publish(f.volume(2), Some(deadline))).await;
    assert!(matches!(mounted.unwrap(), Ok(PublishOutcome::Published { .. })), "a new mount does not wait either");
    assert_eq!(f.read(2).as_deref(), Some("v2"));
    assert!(d.writer().unwrap().pending() >= 2, "owed: volume 1's new status, volume 2's first");
    // The API server answers again.
    *cluster.record_gate.lock().unwrap() = None;
    gate.notify_waiters();
    f.settle().await;
    let by_pod = cluster.by_pod.lock().unwrap().clone();
    assert_eq!(by_pod.get("web-1").and_then(|v| v.last()).map(String::as_str), Some("v2"));
    assert_eq!(by_pod.get("web-2").map(Vec::as_slice), Some(&["v2".to_string()][..]));
    assert_eq!(by_pod.get("web-0").and_then(|v| v.last()).map(String::as_str), Some("removed"), "{by_pod:?}");
}

/// Issue 26: a republish while the poller holds the volume used to return at once, even when the
/// mount was broken: kubelet's repair was dropped. It now cancels the poller and repairs.
#[tokio::test]
async fn a_republish_repairs_a_broken_mount_even_while_the_poller_holds_it() {
    let f = Fixture::new(Some(INTERVAL));
    let d = f.driver.clone();
    d.publish(f.volume(0), None).await.unwrap();
    let target = PathBuf::from(f.target(0));
    let guard = d.volumes().try_claim(&target, crate::registry::Holder::Poller).unwrap();
    let poller = tokio::spawn(async move {
        guard.cancelled().await;
        drop(guard);
    });
    // The mount breaks (here: its contents vanish; PlainDirMounter's "mount" is the ..data link).
    std::fs::remove_dir_all(&target).unwrap();
    let outcome = d.publish(f.volume(0), Some(std::time::Instant::now() + Duration::from_secs(5))).await.unwrap();
    assert!(matches!(outcome, PublishOutcome::Published { .. }), "{outcome:?}");
    assert_eq!(f.read(0).as_deref(), Some("v1"), "repaired");
    poller.await.unwrap();
}

/// Stakater Reloader's CSI mode restarts workloads when the sorted `id=version` pairs of a pod status
/// change. They must change exactly when a served object's version does: never on a republish, a no-op
/// rotation or refresh, or an adoption after a restart.
#[tokio::test(start_paused = true)]
async fn pod_status_versions_change_exactly_when_an_objects_version_does() {
    let cluster = Arc::new(FakeCluster::default());
    let f = Fixture::with_cluster(Some(INTERVAL), cluster.clone());
    let d = f.driver.clone();
    let recorded = || cluster.recorded.lock().unwrap().clone();
    d.publish(f.volume(0), None).await.unwrap();
    f.settle().await;
    assert_eq!(recorded(), ["v1"], "the first mount");
    d.publish(f.volume(0), None).await.unwrap();
    tokio::time::advance(INTERVAL).await;
    d.publish(f.volume(0), None).await.unwrap();
    assert_eq!(f.calls(), 2, "the late republish fetched");
    tokio::time::advance(INTERVAL).await;
    assert_eq!(d.rotate_due().await, 1);
    let refreshed = d.refresh(f.volume(0), 99, Refresh::Request).await;
    assert!(matches!(refreshed, PublishOutcome::Published { changed: false, .. }), "{refreshed:?}");
    f.settle().await;
    assert_eq!(recorded(), ["v1"], "republishes, a rotation and a refresh that found v1 again wrote nothing");
    *f.provider.value.lock().unwrap() = "v2".into();
    tokio::time::advance(INTERVAL).await;
    assert_eq!(d.rotate_due().await, 1);
    f.settle().await;
    assert_eq!(recorded(), ["v1", "v2"], "a new version: one write");
    // A restart: the volume is found again from its pod status, with the versions recorded there.
    let target = PathBuf::from(f.target(0));
    d.volumes().remove(&target);
    let found = vec![(f.volume(0), [("secret/a".to_string(), "v2".to_string())].into())];
    assert_eq!(d.adopt(found).await, 1);
    tokio::time::advance(INTERVAL).await;
    assert_eq!(d.rotate_due().await, 1);
    f.settle().await;
    assert_eq!(recorded(), ["v1", "v2"], "adopting and rotating an unchanged volume wrote nothing");
}

/// A crash after the files were written and before the pod status was: the restarted driver knows
/// nothing of the volume (no status to rediscover). Kubelet's next republish (CSIDriver
/// `requiresRepublish`) fetches it once, keeping its files, and writes the status; rotation off too.
#[tokio::test(start_paused = true)]
async fn a_volume_whose_status_was_never_written_is_fetched_and_recorded_on_kubelets_republish() {
    for rotation in [None, Some(INTERVAL)] {
        let cluster = Arc::new(FakeCluster::default());
        let f = Fixture::with_cluster(rotation, cluster.clone());
        let d = f.driver.clone();
        let gate = Arc::new(tokio::sync::Notify::new());
        *cluster.record_gate.lock().unwrap() = Some(gate.clone());
        d.publish(f.volume(0), None).await.unwrap();
        assert_eq!(f.read(0).as_deref(), Some("v1"), "kubelet's call returned with the files in place");
        // The process dies with the write pending: a new driver, same node, same mount.
        let target = PathBuf::from(f.target(0));
        d.volumes().remove(&target);
        let cluster = Arc::new(FakeCluster::default());
        let mut again = Fixture::with_cluster(rotation, cluster.clone());
        again.dir = f.dir; // the node's tmpfs outlives the process
        let restarted = again.driver.clone();
        assert_eq!(again.calls(), 0);
        let outcome = restarted.publish(again.volume(0), None).await.unwrap();
        assert!(matches!(outcome, PublishOutcome::Published { changed: false, .. }), "{outcome:?}");
        assert_eq!(again.calls(), 1, "fetched once");
        again.settle().await;
        assert_eq!(*cluster.recorded.lock().unwrap(), ["v1"], "and recorded (rotation {rotation:?})");
        assert_eq!(again.read(0).as_deref(), Some("v1"));
        let outcome = restarted.publish(again.volume(0), None).await.unwrap();
        assert!(matches!(outcome, PublishOutcome::Skipped), "known now: the next republish is upstream's");
        gate.notify_waiters();
    }
}

/// `--api-writes=synchronous` is upstream's: kubelet's publish waits for the pod status.
#[tokio::test]
async fn synchronous_writes_make_kubelet_wait_for_the_status() {
    let cluster = Arc::new(FakeCluster::default());
    let settings =
        crate::api_writes::WriterSettings { mode: crate::api_writes::WriteMode::Synchronous, ..Default::default() };
    let f = Fixture::with_cluster_writes(Some(INTERVAL), cluster.clone(), settings);
    let gate = Arc::new(tokio::sync::Notify::new());
    *cluster.record_gate.lock().unwrap() = Some(gate.clone());
    let d = f.driver.clone();
    let p = f.volume(0);
    let publish = tokio::spawn(async move { d.publish(p, None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!publish.is_finished(), "waits for the API server");
    *cluster.record_gate.lock().unwrap() = None;
    gate.notify_waiters();
    publish.await.unwrap().unwrap();
    assert_eq!(*cluster.recorded.lock().unwrap(), ["v1"], "recorded before kubelet was answered");
}

#[tokio::test(start_paused = true)]
async fn the_audit_trail_names_each_trigger_of_a_volume() {
    let mut f = Fixture::new(Some(INTERVAL));
    let log = f.dir.path().join("audit.log");
    let audit = secrets_store::audit::Audit::start(&secrets_store::audit::Sink::File(log.clone()), 1000).unwrap();
    f.driver = Arc::new(Arc::into_inner(f.driver).unwrap().with_audit(audit.clone()));
    let d = &f.driver;
    d.publish(f.volume(0), None).await.unwrap();
    *f.provider.value.lock().unwrap() = "v2".into();
    tokio::time::advance(INTERVAL).await;
    assert_eq!(d.rotate_due().await, 1);
    tokio::time::advance(INTERVAL).await;
    d.publish(f.volume(0), None).await.unwrap();
    assert_eq!(audit.counts(), (3, 0));
    let mut lines = Vec::new();
    for _ in 0..500 {
        lines = std::fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_string).collect();
        if lines.len() == 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let got: Vec<(String, String, String)> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["trigger"].as_str().unwrap().into(),
                v["version"].as_str().unwrap().into(),
                v["pod"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [("mount", "v1"), ("rotation", "v2"), ("republish", "v2")];
    assert_eq!(got, want.map(|(t, v)| (t.to_string(), v.to_string(), "web-0".to_string())));
}
