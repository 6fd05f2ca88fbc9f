//! Rotation at node scale through the real binary: one Key Vault request per distinct (object,
//! identity) per cycle, authorization kept per identity, nothing lost in a 429 storm or an outage, and
//! a driver restart that neither orphans nor double-mounts a volume.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use emulator::{Emulator, Faults, Handle, Seed};
use support::*;
use tonic::Code;

const TENANT: &str = "77777777-2222-3333-4444-555555555555";
const ISSUER: &str = "https://oidc.rotation.test/";
const AUDIENCE: &str = "api://AzureADTokenExchange";

async fn emulator(service_accounts: usize) -> Handle {
    let mut fics = String::new();
    for i in 0..service_accounts {
        fics.push_str(&format!(
            "          - {{ issuer: \"{ISSUER}\", subject: \"system:serviceaccount:default:sa-{i}\" }}\n"
        ));
    }
    let mut secrets = String::new();
    for i in 0..10 {
        secrets.push_str(&format!("      - {{ name: s{i}, value: \"rotation-value-{i}-v1\" }}\n"));
    }
    let seed = format!(
        r#"
tenants:
  - id: {TENANT}
    applications:
      - clientId: wi
        objectId: wi-oid
        federatedCredentials:
{fics}      - {{ clientId: allowed, objectId: allowed-oid, clientSecret: allowed-secret }}
      - {{ clientId: denied, objectId: denied-oid, clientSecret: denied-secret }}
issuers:
  - url: "{ISSUER}"
vaults:
  - name: kv-rot
    tenant: {TENANT}
    throttle: {{ limit: 100000 }}
    access:
      - {{ principal: wi-oid, secrets: [get] }}
      - {{ principal: allowed-oid, secrets: [get] }}
    secrets:
{secrets}"#
    );
    Emulator::builder().seed(Seed::from_yaml(&seed).unwrap()).start().await.unwrap()
}

fn objects(n: usize) -> String {
    let mut s = String::from("array:\n");
    for i in 0..n {
        s.push_str(&format!("  - |\n    objectName: s{i}\n    objectType: secret\n"));
    }
    s
}

async fn driver(node: &Node, h: &Handle, interval: &str) -> DriverProcess {
    let mut flags = azure_flags(node, h);
    flags.extend([
        "--enable-secret-rotation".to_string(),
        format!("--rotation-poll-interval={interval}"),
        "-v=2".into(),
        // Not what these tests measure; the default (200/s) would stretch a 500-GET cycle to seconds.
        "--keyvault-rate-limit=5000".into(),
    ]);
    DriverProcess::start(node, &flags.iter().map(String::as_str).collect::<Vec<_>>()).await
}

fn wi_volume(h: &Handle, i: usize, sa: usize) -> PodVolume {
    let mut v = PodVolume::new(&format!("pod-{i}"), "wi-class");
    v.service_account = format!("sa-{sa}");
    let token = h.service_account_token(ISSUER, "default", &v.service_account, AUDIENCE, 3600).unwrap();
    v.tokens = Some(tokens_json(AUDIENCE, &token));
    v
}

/// Publishes `vols` concurrently, like a node full of pods starting.
async fn publish_all(node: &Node, driver: &DriverProcess, vols: &[PodVolume]) {
    let mut tasks = Vec::new();
    for chunk in vols.chunks(vols.len().div_ceil(16)) {
        let (mut client, chunk) = (driver.node_client().await, chunk.to_vec());
        let reqs: Vec<_> = chunk.iter().map(|v| v.publish_request(node)).collect();
        tasks.push(tokio::spawn(async move {
            for r in reqs {
                client.node_publish_volume(r).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The two 500-volume tests run one at a time: on a 2-core machine, two of them at once would stretch a
/// cycle past the half-interval that lets late volumes join the next one.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cycle_gets(h: &Handle, node: &Node, sas: usize, volumes: usize) -> (u64, u64) {
    let _one_at_a_time = HEAVY.lock().await;
    let d = driver(node, h, "4s").await;
    node.add_class(
        "default",
        "wi-class",
        "azure",
        &[("keyvaultName", "kv-rot"), ("tenantId", TENANT), ("clientID", "wi"), ("objects", &objects(10))],
    );
    let vols: Vec<PodVolume> = (0..volumes).map(|i| wi_volume(h, i, i % sas)).collect();
    publish_all(node, &d, &vols).await;
    // Volumes mounted at different moments join one cycle within about two intervals. Cycles run one
    // after another, so the requests between two "cycle complete" lines are exactly one cycle's.
    let cycles = |d: &DriverProcess| d.logs().matches("rotation cycle complete").count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cycles(&d) < 2 {
        assert!(Instant::now() < deadline, "no rotation cycles");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = cycles(&d);
    while cycles(&d) == seen {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.reset_stats();
    let before = d.logs().matches("rotation complete").count();
    while cycles(&d) < seen + 2 {
        assert!(Instant::now() < deadline, "no further rotation cycle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rotated = d.logs().matches("rotation complete").count() - before;
    assert_eq!(rotated, volumes, "one cycle refreshes every volume");
    let gets = h.count(|k| k.vault == "kv-rot" && k.status == 200);
    let tokens = h.count(|k| k.vault == "entra" && k.status == 200);
    assert_eq!(std::fs::read_to_string(vols[volumes - 1].target(node).join("s9")).unwrap(), "rotation-value-9-v1");
    (gets, tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_volumes_of_one_service_account_cost_ten_gets_per_cycle() {
    let h = emulator(1).await;
    let node = Node::new();
    node.add_class(
        "default",
        "wi-class",
        "azure",
        &[("keyvaultName", "kv-rot"), ("tenantId", TENANT), ("clientID", "wi"), ("objects", &objects(10))],
    );
    let (gets, tokens) = cycle_gets(&h, &node, 1, 500).await;
    assert_eq!(gets, 10, "500 volumes × 10 objects, one identity: one GET per object per cycle");
    assert_eq!(tokens, 0, "the identity's token stays cached across the cycle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_service_accounts_cost_one_get_per_object_per_identity() {
    let h = emulator(50).await;
    let node = Node::new();
    node.add_class(
        "default",
        "wi-class",
        "azure",
        &[("keyvaultName", "kv-rot"), ("tenantId", TENANT), ("clientID", "wi"), ("objects", &objects(10))],
    );
    let (gets, _) = cycle_gets(&h, &node, 50, 500).await;
    assert_eq!(gets, 500, "50 identities × 10 objects");
}

#[tokio::test]
async fn a_denied_identity_never_receives_what_another_pod_fetched() {
    let h = emulator(1).await;
    let node = Node::new();
    node.add_class(
        "default",
        "sp-class",
        "azure",
        &[("keyvaultName", "kv-rot"), ("tenantId", TENANT), ("objects", &objects(2))],
    );
    let d = driver(&node, &h, "2m").await;
    let mut client = d.node_client().await;
    let mut a = PodVolume::new("allowed-pod", "sp-class");
    a.secrets =
        BTreeMap::from([("clientid".into(), "allowed".into()), ("clientsecret".into(), "allowed-secret".into())]);
    a.publish(&node, &mut client).await.unwrap();
    let mut b = PodVolume::new("denied-pod", "sp-class");
    b.secrets = BTreeMap::from([("clientid".into(), "denied".into()), ("clientsecret".into(), "denied-secret".into())]);
    let err = b.publish(&node, &mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(d.mounts_at(&b.target(&node)).is_empty());
    assert_eq!(std::fs::read_dir(b.target(&node)).unwrap().count(), 0);
}

#[tokio::test]
async fn a_429_storm_and_an_outage_lose_no_files_and_recover_within_an_interval() {
    let h = emulator(1).await;
    let node = Node::new();
    node.add_class(
        "default",
        "wi-class",
        "azure",
        &[("keyvaultName", "kv-rot"), ("tenantId", TENANT), ("clientID", "wi"), ("objects", &objects(2))],
    );
    let d = driver(&node, &h, "1s").await;
    let vols: Vec<PodVolume> = (0..5).map(|i| wi_volume(&h, i, 0)).collect();
    publish_all(&node, &d, &vols).await;
    for (storm, faults) in [("429", None), ("outage", Some(Faults { outage: true, ..Default::default() }))] {
        match &faults {
            None => h.set_throttle("kv-rot", 0, Duration::from_secs(2)),
            Some(f) => h.set_faults("kv-rot", f.clone()),
        }
        h.set_secret("kv-rot", "s0", &format!("after-{storm}"));
        // A 3 s storm of 429s; an 8 s outage (8 rotation intervals: the backoff, from one 100 ms tick,
        // reaches its one-interval cap after about 3 s). Sixty intervals of outage are covered on paused
        // time by the driver's unit test `a_long_outage_backs_off_to_one_attempt_per_interval...`.
        tokio::time::sleep(Duration::from_secs(if faults.is_some() { 8 } else { 3 })).await;
        for v in &vols {
            let t = v.target(&node);
            assert_eq!(d.mounts_at(&t).len(), 1, "{storm}: still mounted");
            let s1 = std::fs::read_to_string(t.join("s1")).unwrap();
            assert_eq!(s1, "rotation-value-1-v1", "{storm}: files intact and readable");
        }
        h.set_throttle("kv-rot", 100000, Duration::from_secs(10));
        h.clear_faults("kv-rot");
        // It recovers (how fast, within one interval, is shown on paused time by the driver's unit test
        // `a_long_outage_backs_off_to_one_attempt_per_interval_and_recovers_within_one_interval`; a
        // wall-clock bound here would only measure the runner's load).
        let recovered = Instant::now();
        let target = vols[0].target(&node);
        while std::fs::read_to_string(target.join("s0")).unwrap() != format!("after-{storm}") {
            assert!(recovered.elapsed() < Duration::from_secs(60), "{storm}: never recovered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(h.count(|k| k.vault == "kv-rot" && k.status == 429) > 0, "the storm was real");
    assert!(h.count(|k| k.vault == "kv-rot" && k.status == 503) > 0, "the outage was real");
}

#[tokio::test]
async fn a_restart_mid_rotation_neither_orphans_nor_double_mounts() {
    let h = emulator(1).await;
    let node = Node::new();
    node.add_class(
        "default",
        "wi-class",
        "azure",
        &[("keyvaultName", "kv-rot"), ("tenantId", TENANT), ("clientID", "wi"), ("objects", &objects(2))],
    );
    let mut d = driver(&node, &h, "1s").await;
    let vols: Vec<PodVolume> = (0..3).map(|i| wi_volume(&h, i, 0)).collect();
    publish_all(&node, &d, &vols).await;
    h.set_faults("kv-rot", Faults { latency_ms: 400, ..Default::default() });
    tokio::time::sleep(Duration::from_millis(1300)).await; // a rotation is in flight now
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).await;
    h.clear_faults("kv-rot");
    h.set_secret("kv-rot", "s0", "after-restart");
    let d = driver(&node, &h, "1s").await;
    let mut client = d.node_client().await;
    for v in &vols {
        // kubelet's periodic republish (requiresRepublish) reintroduces the volume to the new driver.
        v.publish(&node, &mut client).await.unwrap();
        let t = v.target(&node);
        assert_eq!(d.mounts_at(&t).len(), 1, "not double-mounted");
        assert_eq!(std::fs::read_to_string(t.join("s0")).unwrap(), "after-restart", "rotation resumed");
    }
    for v in &vols {
        v.unpublish(&node, &mut client).await.unwrap();
        assert!(d.mounts_at(&v.target(&node)).is_empty(), "unpublish still cleans up");
    }
}

/// kubelet's calls win over the poller: 500 volumes unpublished while a rotation cycle refreshes them
/// (Key Vault slowed down so the cycle is in flight) get no `ABORTED`, and no tmpfs is left behind, not
/// even one the poller was about to rewrite.
#[tokio::test]
async fn unpublishing_500_volumes_during_a_rotation_cycle_aborts_none_and_leaves_no_mount() {
    let _one_at_a_time = HEAVY.lock().await;
    let h = emulator(1).await;
    let node = Node::new();
    node.add_class(
        "default",
        "wi-class",
        "azure",
        &[("keyvaultName", "kv-rot"), ("tenantId", TENANT), ("clientID", "wi"), ("objects", &objects(2))],
    );
    let d = driver(&node, &h, "2s").await;
    let vols: Vec<PodVolume> = (0..500).map(|i| wi_volume(&h, i, 0)).collect();
    publish_all(&node, &d, &vols).await;
    h.set_faults("kv-rot", Faults { latency_ms: 300, ..Default::default() });
    h.set_secret("kv-rot", "s0", "rotated");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.logs().contains("rotation complete") {
        assert!(Instant::now() < deadline, "no rotation started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The cycle in flight now has not reported yet: its report is the sign it is over.
    let cycles_before = d.logs().matches("rotation cycle complete").count();
    let mut tasks = Vec::new();
    for chunk in vols.chunks(32) {
        let (mut client, reqs) =
            (d.node_client().await, chunk.iter().map(|v| v.unpublish_request(&node)).collect::<Vec<_>>());
        tasks.push(tokio::spawn(async move {
            let mut aborted = 0;
            for r in reqs {
                match client.node_unpublish_volume(r).await {
                    Ok(_) => {}
                    Err(s) if s.code() == Code::Aborted => aborted += 1,
                    Err(s) => panic!("unpublish failed: {s:?}"),
                }
            }
            aborted
        }));
    }
    let mut aborted = 0;
    for t in tasks {
        aborted += t.await.unwrap();
    }
    assert_eq!(aborted, 0, "kubelet never sees ABORTED because of our poller");
    // Wait for the cycle that was in flight to end (every refresh of it has written, or not, by then),
    // then look for leftovers.
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.logs().matches("rotation cycle complete").count() <= cycles_before {
        assert!(Instant::now() < deadline, "the rotation cycle in flight never completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<_> = vols.iter().filter(|v| !d.mounts_at(&v.target(&node)).is_empty()).collect();
    assert!(left.is_empty(), "{} tmpfs mounts left behind", left.len());
    assert!(vols.iter().all(|v| !v.target(&node).exists()), "every target directory is gone");
}
