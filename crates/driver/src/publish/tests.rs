//! Publish, unpublish and rotation on paused time, with a directory-only mounter and in-memory fakes:
//! the decisions and the kubelet-versus-poller rules, without root and without sleeping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::mounter::PlainDirMounter;
use crate::node::Config;
use secrets_store::class::{ClassError, ClassSource, SecretProviderClassSpec};
use secrets_store::external::ExternalProviders;
use secrets_store::provider::Providers;
use secrets_store::provider::{File, MountResponse, Provider};
use secrets_store::redact::{ExposeSecret, SecretString};
use secrets_store::volume_context::PodInfo;

const INTERVAL: Duration = Duration::from_secs(120);

/// Parameters of a volume at `target`, as kubelet would send them.
pub(crate) fn params(target: &str) -> PublishParams {
    PublishParams {
        volume_id: "csi-1".into(),
        target_path: PathBuf::from(target),
        readonly: true,
        class_name: "spc".into(),
        pod: PodInfo { name: "web".into(), namespace: "ns".into(), uid: "u".into(), service_account: "sa".into() },
        volume_context: BTreeMap::new(),
        secrets: None,
        tokens: None,
    }
}

struct OneClass;

#[async_trait]
impl ClassSource for OneClass {
    async fn get(&self, namespace: &str, name: &str) -> Result<SecretProviderClassSpec, ClassError> {
        if name != "spc" {
            return Err(ClassError::NotFound { namespace: namespace.into(), name: name.into() });
        }
        Ok(SecretProviderClassSpec {
            provider: "fake".into(),
            parameters: [("objects".to_string(), "a".to_string())].into(),
            secret_objects: vec![],
        })
    }
}

/// A provider serving one file, `value`, after `latency`; counts its calls.
#[derive(Default)]
struct FakeProvider {
    value: Mutex<String>,
    latency: Mutex<Duration>,
    fail: Mutex<bool>,
    calls: AtomicUsize,
    /// The rotation cycle of each call (`None`: kubelet's).
    cycles: Mutex<Vec<Option<u64>>>,
}

#[async_trait]
impl Provider for FakeProvider {
    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.cycles.lock().unwrap().push(request.cycle);
        let latency = *self.latency.lock().unwrap();
        tokio::time::sleep(latency).await;
        if *self.fail.lock().unwrap() {
            return Err(ProviderError::new(ErrorKind::Unavailable, "GRPCProviderError", "vault unreachable"));
        }
        let value = self.value.lock().unwrap().clone();
        Ok(MountResponse {
            files: vec![File::new("a", 0o644, value.clone().into_bytes())],
            object_versions: [("secret/a".to_string(), value.clone())].into(),
            served: vec![secrets_store::provider::Served {
                id: "secret/a".into(),
                version: value,
                source: "kv1".into(),
                ..Default::default()
            }],
            requester: secrets_store::provider::Requester { identity: "workload".into(), client_id: "cid".into() },
        })
    }
}

struct Fixture {
    driver: Arc<Driver>,
    provider: Arc<FakeProvider>,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(rotation: Option<Duration>) -> Self {
        let provider = Arc::new(FakeProvider::default());
        *provider.value.lock().unwrap() = "v1".into();
        let config = Config {
            driver_name: "secrets-store.csi.k8s.io".into(),
            // No name, no phase: the tests' clocks start at the mount (see `rotation::node_phase`).
            node_id: String::new(),
            vendor_version: "test".into(),
            rotation_interval: rotation,
            min_class_interval: secrets_store::annotations::DEFAULT_MIN_CLASS_INTERVAL,
            cert_expiry_warning: Some(crate::node::DEFAULT_CERT_EXPIRY_WARNING),
            events_poll_interval: None,
        };
        let providers = Providers::new(ExternalProviders::new(vec![], PathBuf::from("/nonexistent"), 4 << 20))
            .with_builtin("fake", provider.clone());
        let driver = Driver::new(config, Arc::new(PlainDirMounter), Arc::new(OneClass), providers);
        Self { driver: Arc::new(driver), provider, dir: tempfile::tempdir().unwrap() }
    }

    /// The same driver, reporting to (and reading annotations from) `cluster`.
    fn with_cluster(rotation: Option<Duration>, cluster: Arc<FakeCluster>) -> Self {
        Self::with_cluster_writes(rotation, cluster, Default::default())
    }

    /// [`Fixture::with_cluster`] with the API writer's `settings`.
    fn with_cluster_writes(
        rotation: Option<Duration>,
        cluster: Arc<FakeCluster>,
        settings: crate::api_writes::WriterSettings,
    ) -> Self {
        let mut f = Self::new(rotation);
        let driver = Arc::into_inner(f.driver).expect("not shared yet").with_cluster_writes(cluster, settings);
        f.driver = Arc::new(driver);
        f
    }

    /// Kubelet's parameters for volume `i`, of pod `web-i`.
    fn volume(&self, i: usize) -> PublishParams {
        let mut p = params(&self.target(i));
        p.pod.name = format!("web-{i}");
        p
    }

    fn target(&self, i: usize) -> String {
        self.dir.path().join(format!("pod-{i}/mount")).display().to_string()
    }

    fn read(&self, i: usize) -> Option<String> {
        std::fs::read_to_string(Path::new(&self.target(i)).join("a")).ok()
    }

    fn calls(&self) -> usize {
        self.provider.calls.load(Ordering::SeqCst)
    }

    /// Waits until the background writer has written everything owed.
    async fn settle(&self) {
        if let Some(w) = self.driver.writer() {
            w.settled().await;
        }
    }
}

#[test]
fn the_plan_covers_every_trigger_and_target_state() {
    use Plan::*;
    use TargetState::*;
    let (k, p) = (Trigger::Kubelet, Trigger::Poller { cycle: 1, reason: Refresh::Rotation });
    let now = Trigger::Poller { cycle: 2, reason: Refresh::Request };
    let (on, off) = (Some(INTERVAL), None);
    let (young, old, half) = (Some(Duration::from_secs(5)), Some(INTERVAL), Some(Duration::from_secs(55)));
    let populated = Mounted { populated: true };
    let first = Fetch { mount: true, keep_on_error: false };
    let refresh = Fetch { mount: false, keep_on_error: true };
    let cases = [
        (k, NotMounted, None, on, first),
        (k, NotMounted, old, on, first),
        (k, populated, young, on, Skip),
        (k, populated, half, on, Skip),
        (k, populated, old, on, refresh),
        (k, populated, old, off, Skip),
        // Unknown (a restart before its status was written, or another driver's mount): fetched once.
        (k, populated, None, off, refresh),
        (k, populated, None, on, refresh),
        (k, Mounted { populated: false }, None, off, Fetch { mount: false, keep_on_error: false }),
        (p, NotMounted, old, on, Skip),
        (p, populated, None, on, Skip),
        (p, populated, young, on, Skip),
        (p, populated, half, on, refresh),
        (p, populated, old, off, Skip),
        // A refresh-now request: any age, rotation on or off; never a mount, never an unknown volume.
        (now, populated, young, on, refresh),
        (now, populated, young, off, refresh),
        (now, NotMounted, young, on, Skip),
        (now, populated, None, on, Skip),
    ];
    for (trigger, state, age, interval, want) in cases {
        assert_eq!(
            plan(trigger, state, age, interval),
            want,
            "{trigger:?} {state:?} age {age:?} interval {interval:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_republish_refetches_only_after_a_full_interval() {
    let f = Fixture::new(Some(INTERVAL));
    let d = &f.driver;
    d.publish(params(&f.target(0)), None).await.unwrap();
    assert_eq!((f.read(0).as_deref(), f.calls()), (Some("v1"), 1));
    *f.provider.value.lock().unwrap() = "v2".into();
    tokio::time::advance(INTERVAL - Duration::from_secs(1)).await;
    assert!(matches!(d.publish(params(&f.target(0)), None).await.unwrap(), PublishOutcome::Skipped));
    assert_eq!(f.calls(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    let out = d.publish(params(&f.target(0)), None).await.unwrap();
    assert!(matches!(out, PublishOutcome::Published { changed: true, remount: true, .. }), "{out:?}");
    assert_eq!(f.read(0).as_deref(), Some("v2"));
}

#[tokio::test(start_paused = true)]
async fn a_first_mount_is_first_polled_at_the_nodes_phase_in_the_second_half_of_the_interval() {
    tokio::time::advance(Duration::from_secs(3600)).await;
    for node in ["aks-nodepool1-0", "aks-nodepool1-1", "aks-nodepool1-2"] {
        let mut f = Fixture::new(Some(INTERVAL));
        Arc::get_mut(&mut f.driver).unwrap().config.node_id = node.into();
        let d = f.driver.clone();
        d.publish(params(&f.target(0)), None).await.unwrap();
        let phase = crate::rotation::node_phase(node, INTERVAL / 2);
        let first_poll = INTERVAL - phase;
        assert!(first_poll > INTERVAL / 2 && first_poll <= INTERVAL, "{first_poll:?}");
        tokio::time::advance(first_poll.saturating_sub(Duration::from_secs(11))).await;
        assert_eq!(d.rotate_due().await, 0, "{node}: not before its phase");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(d.rotate_due().await, 1, "{node}: at its phase, {first_poll:?} after the mount");
        // Then every interval, from there.
        tokio::time::advance(INTERVAL - Duration::from_secs(1)).await;
        assert_eq!(d.rotate_due().await, 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(d.rotate_due().await, 1);
    }
    let phases: std::collections::BTreeSet<_> = ["aks-nodepool1-0", "aks-nodepool1-1", "aks-nodepool1-2"]
        .map(|n| crate::rotation::node_phase(n, INTERVAL / 2))
        .into();
    assert_eq!(phases.len(), 3, "three nodes, three phases");
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_files_and_backs_off() {
    let f = Fixture::new(Some(INTERVAL));
    let d = &f.driver;
    d.publish(params(&f.target(0)), None).await.unwrap();
    *f.provider.fail.lock().unwrap() = true;
    tokio::time::advance(INTERVAL).await;
    assert_eq!(d.rotate_due().await, 1);
    assert_eq!(f.read(0).as_deref(), Some("v1"), "files kept");
    let v = d.volumes().get(Path::new(&f.target(0))).unwrap();
    assert_eq!(v.failures, 1);
    assert_eq!(v.retry_at, Some(Instant::now() + crate::rotation::backoff(INTERVAL, 1)));
    assert_eq!(d.rotate_due().await, 0, "backing off");
    // kubelet's republish of a healthy volume reports success and keeps the files too.
    let out = d.publish(params(&f.target(0)), None).await.unwrap();
    assert!(matches!(out, PublishOutcome::KeptAfterError(_)), "{out:?}");
    *f.provider.fail.lock().unwrap() = false;
    *f.provider.value.lock().unwrap() = "v2".into();
    tokio::time::advance(crate::rotation::backoff(INTERVAL, 1)).await;
    assert_eq!(d.rotate_due().await, 1);
    assert_eq!(f.read(0).as_deref(), Some("v2"));
    assert_eq!(d.volumes().get(Path::new(&f.target(0))).unwrap().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_first_publish_leaves_nothing_and_is_an_error() {
    let f = Fixture::new(Some(INTERVAL));
    *f.provider.fail.lock().unwrap() = true;
    let err = f.driver.publish(params(&f.target(0)), None).await.unwrap_err();
    assert!(matches!(err, PublishError::Provider { .. }), "{err}");
    assert!(f.driver.volumes().is_empty());
    let mut missing = params(&f.target(1));
    missing.class_name = "nope".into();
    let err = f.driver.publish(missing, None).await.unwrap_err();
    assert_eq!(err.to_status().code(), tonic::Code::NotFound);
    assert_eq!(f.calls(), 1, "no provider call for a missing class");
}

#[tokio::test(start_paused = true)]
async fn kubelet_deadline_bounds_the_provider_call() {
    let f = Fixture::new(None);
    *f.provider.latency.lock().unwrap() = Duration::from_secs(600);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let err = f.driver.publish(params(&f.target(0)), Some(deadline)).await.unwrap_err();
    assert_eq!(err.to_status().code(), tonic::Code::DeadlineExceeded, "{err}");
}

#[tokio::test(start_paused = true)]
async fn unpublish_overtakes_a_refresh_in_flight_and_the_poller_never_brings_the_volume_back() {
    let f = Fixture::new(Some(INTERVAL));
    let d = f.driver.clone();
    d.publish(params(&f.target(0)), None).await.unwrap();
    *f.provider.latency.lock().unwrap() = Duration::from_secs(30);
    *f.provider.value.lock().unwrap() = "v2".into();
    tokio::time::advance(INTERVAL).await;
    let poller = tokio::spawn({
        let d = d.clone();
        async move { d.rotate_due().await }
    });
    while f.calls() < 2 {
        tokio::task::yield_now().await;
    }
    // The refresh is waiting on the provider: kubelet's unpublish cancels it and succeeds at once.
    let t = f.target(0);
    let before = Instant::now();
    d.unpublish("csi-1", &t, None).await.expect("never ABORTED by our own poller");
    assert!(before.elapsed() < Duration::from_secs(1), "kubelet did not wait for the provider");
    assert_eq!(poller.await.unwrap(), 1);
    assert!(!Path::new(&t).exists(), "the target is gone");
    // A refresh from a stale snapshot finds the volume gone and does nothing.
    let out = d.refresh(params(&t), 9, Refresh::Rotation).await;
    assert!(matches!(out, PublishOutcome::Skipped), "{out:?}");
    assert!(!Path::new(&t).exists(), "the poller never recreates an unpublished volume");
    assert!(d.volumes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_republish_during_a_refresh_succeeds_at_once_and_keeps_kubelets_fresh_tokens() {
    let f = Fixture::new(Some(INTERVAL));
    let d = f.driver.clone();
    d.publish(params(&f.target(0)), None).await.unwrap();
    *f.provider.latency.lock().unwrap() = Duration::from_secs(30);
    tokio::time::advance(INTERVAL).await;
    let poller = tokio::spawn({
        let d = d.clone();
        async move { d.rotate_due().await }
    });
    while f.calls() < 2 {
        tokio::task::yield_now().await;
    }
    let mut republish = params(&f.target(0));
    republish.tokens = Some(SecretString::from("fresh-token"));
    assert!(matches!(d.publish(republish, None).await.unwrap(), PublishOutcome::Skipped));
    poller.await.unwrap();
    let stored = d.volumes().get(Path::new(&f.target(0))).unwrap();
    assert_eq!(stored.params.tokens.as_ref().map(|t| t.expose_secret()), Some("fresh-token"));
    assert_eq!(f.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn unpublishing_500_volumes_during_a_rotation_cycle_aborts_none_and_removes_all() {
    let f = Fixture::new(Some(INTERVAL));
    let d = f.driver.clone();
    for i in 0..500 {
        d.publish(params(&f.target(i)), None).await.unwrap();
    }
    *f.provider.latency.lock().unwrap() = Duration::from_millis(200);
    *f.provider.value.lock().unwrap() = "v2".into();
    tokio::time::advance(INTERVAL).await;
    let poller = tokio::spawn({
        let d = d.clone();
        async move { d.rotate_due().await }
    });
    while f.calls() < 501 {
        tokio::task::yield_now().await;
    }
    let unpublishes: Vec<_> = (0..500)
        .map(|i| {
            let (d, t) = (d.clone(), f.target(i));
            tokio::spawn(async move { d.unpublish("csi-1", &t, None).await })
        })
        .collect();
    let mut aborted = 0;
    for u in unpublishes {
        if let Err(e) = u.await.unwrap() {
            assert!(matches!(e, crate::error::UnpublishError::Busy(_)), "{e}");
            aborted += 1;
        }
    }
    assert_eq!(poller.await.unwrap(), 500);
    assert_eq!(aborted, 0);
    let left: Vec<usize> = (0..500).filter(|i| Path::new(&f.target(*i)).exists()).collect();
    assert!(left.is_empty(), "targets left behind: {left:?}");
    assert!(d.volumes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_long_outage_backs_off_to_one_attempt_per_interval_and_recovers_within_one_interval() {
    let f = Fixture::new(Some(INTERVAL));
    let d = f.driver.clone();
    d.publish(params(&f.target(0)), None).await.unwrap();
    *f.provider.fail.lock().unwrap() = true;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let poller = tokio::spawn(d.clone().run_rotation(async move {
        let _ = stop_rx.await;
    }));
    // Sixty intervals of outage, on paused time: the poller's own loop, its ticks and its backoff.
    tokio::time::sleep(60 * INTERVAL).await;
    let attempts = f.calls() - 1;
    assert!((55..=70).contains(&attempts), "{attempts} refreshes in 60 intervals: the backoff caps at one interval");
    assert_eq!(f.read(0).as_deref(), Some("v1"), "files kept through the outage");
    *f.provider.fail.lock().unwrap() = false;
    *f.provider.value.lock().unwrap() = "v2".into();
    let back = Instant::now();
    while f.read(0).as_deref() != Some("v2") {
        tokio::time::sleep(crate::rotation::poll_tick(INTERVAL)).await;
    }
    assert!(back.elapsed() <= INTERVAL + crate::rotation::poll_tick(INTERVAL), "recovered in {:?}", back.elapsed());
    let _ = stop_tx.send(());
    poller.await.unwrap();
}

/// Tests of the driver reporting to a cluster: refresh-now, class intervals, certificate expiry,
/// the node-wide loops under hostile input, the races with kubelet, pod-status versions, the audit trail.
mod cluster;
use cluster::FakeCluster;
