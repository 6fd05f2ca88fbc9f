//! `make bench` (SecretSync): 1,000 SecretSyncs over 10 Key Vault objects and 5 workload identities,
//! reconciled by the real `keyvault-csi sync-controller` against a real kube-apiserver (its
//! TokenRequest tokens, checked by the emulated Entra ID against the cluster's own JWKS) and the
//! emulator with 20 ms added to every Key Vault request.
//!
//! Printed (not asserted): time to the first full sync; then for a refresh round with nothing changed
//! and one with one object changed: Key Vault requests (expected: one per distinct object and
//! identity, 50), round time, API writes (expected 0 when nothing changed), controller RSS and CPU.
//! Writes `target/bench/secretsync.json`.
//!
//! Needs `KUBECONFIG` (hack/bench.sh starts the kit) and `kubectl` on `PATH`.

#[path = "../../../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

#[path = "sidebyside/host.rs"]
#[allow(dead_code)]
mod host;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use emulator::{Emulator, Faults, Seed};
use serde_json::{Value, json};
use support::*;

use host::*;

const NS: &str = "kvcsi-ssbench";
const TENANT: &str = "ssbench-tenant";
const VAULT: &str = "kv-ssbench";
const SYNCS: usize = 1000;
const OBJECTS: usize = 10;
const IDENTITIES: usize = 5;
const INTERVAL: u64 = 30;
/// The controller's `--jitter`: the round's checks are spread over its first `JITTER` seconds.
const JITTER: u64 = 10;
/// Resources counted in `apiserver_request_total` by `host::api_requests_by_kind`.
const RESOURCES: &[&str] = &["secrets", "events", "serviceaccounts"];

fn metrics(port: u16) -> BTreeMap<String, f64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("controller metrics");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with("secretsync_") || l.starts_with("keyvault_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn sum(m: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    m.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
}

fn kube_json(path: &str) -> String {
    kubectl(&["get", "--raw", path], None)
}

fn apply(items: Vec<Value>) {
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": items }).to_string();
    kubectl(&["apply", "--server-side", "--force-conflicts", "--field-manager=bench", "-f", "-"], Some(&list));
}

fn objects_param() -> String {
    let mut s = String::from("array:\n");
    for o in 0..OBJECTS {
        s.push_str(&format!("  - |\n    objectName: o{o}\n    objectType: secret\n"));
    }
    s
}

/// Waits until the wall clock reaches the next multiple of the interval (the controller's rounds).
async fn next_round() -> SystemTime {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let start = Duration::from_secs((now.as_secs() / INTERVAL + 1) * INTERVAL);
    tokio::time::sleep(start - now).await;
    SystemTime::UNIX_EPOCH + start
}

struct Round {
    requests: u64,
    /// Key Vault GETs by (object, identity): 1 each when fetches are shared as designed.
    per_object_identity: BTreeMap<String, u64>,
    checks: f64,
    seconds: f64,
    secret_writes: f64,
    status_writes: f64,
    api: BTreeMap<String, f64>,
}

/// One refresh round: counters reset a few seconds before it starts; it ends once the jitter (every
/// SecretSync's offset) has passed and no check has finished for 3 s. Rounds are `INTERVAL` apart
/// and spread over `JITTER`, so nothing of the round before or after falls inside.
async fn round(h: &emulator::Handle, port: u16, change: Option<&str>) -> Round {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let into = now % INTERVAL;
    if into < JITTER + 4 || INTERVAL - into < 3 {
        // Inside a round, or too close to the next: measure the one after.
        tokio::time::sleep(Duration::from_secs((JITTER + 4).saturating_sub(into).max(4))).await;
    }
    h.reset_stats();
    if let Some(o) = change {
        h.set_secret(VAULT, o, &format!("changed-{now}"));
    }
    let before = metrics(port);
    let api_before = api_by_kind();
    let checked = |m: &BTreeMap<String, f64>| sum(m, "secretsync_reconcile_total");
    let start = next_round().await;
    let mut last = checked(&before);
    let mut last_change = start;
    let mut after;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = metrics(port);
        let now = SystemTime::now();
        if checked(&after) != last {
            last = checked(&after);
            last_change = now;
        }
        let since_start = now.duration_since(start).unwrap_or_default();
        let quiet = now.duration_since(last_change).unwrap_or_default();
        if (since_start > Duration::from_secs(JITTER) && quiet > Duration::from_secs(3))
            || since_start > Duration::from_secs(INTERVAL - 3)
        {
            break;
        }
    }
    let seconds = last_change.duration_since(start).unwrap_or_default().as_secs_f64();
    let gets = |k: &emulator::StatKey| k.vault == VAULT && k.kind == "secrets" && k.method == "GET" && k.status == 200;
    let requests = h.count(gets);
    let mut per_object_identity = BTreeMap::new();
    for (k, n) in h.stats() {
        if gets(&k) {
            *per_object_identity.entry(format!("{}/{}", k.object, k.identity)).or_insert(0) += n;
        }
    }
    let w = |m: &BTreeMap<String, f64>, kind: &str| {
        m.get(&format!("secretsync_api_writes_total{{kind=\"{kind}\"}}")).copied().unwrap_or(0.0)
    };
    Round {
        requests,
        per_object_identity,
        checks: checked(&after) - checked(&before),
        seconds,
        secret_writes: w(&after, "secret") - w(&before, "secret"),
        status_writes: w(&after, "status") - w(&before, "status"),
        api: delta(&api_before, &api_by_kind()),
    }
}

fn round_json(r: &Round) -> Value {
    json!({ "seconds_to_last_check": r.seconds, "checks": r.checks, "keyvault_requests": r.requests,
        "keyvault_requests_by_object_and_identity": r.per_object_identity,
        "secret_writes": r.secret_writes, "status_writes": r.status_writes, "api_requests": r.api })
}

fn api_by_kind() -> BTreeMap<String, f64> {
    api_requests_by_kind().into_iter().filter(|(k, _)| RESOURCES.iter().any(|r| k.ends_with(r))).collect()
}

#[tokio::main]
async fn main() {
    let disco: Value = serde_json::from_str(&kube_json("/.well-known/openid-configuration")).unwrap();
    let issuer = disco["issuer"].as_str().unwrap().to_string();
    let jwks = kube_json("/openid/v1/jwks");
    let apps: Vec<Value> = (0..IDENTITIES)
        .map(|i| {
            json!({ "clientId": format!("id-{i}"), "objectId": format!("id-{i}-oid"), "federatedCredentials": [
                { "issuer": issuer, "subject": format!("system:serviceaccount:{NS}:sa-{i}"),
                  "audience": "api://AzureADTokenExchange" }] })
        })
        .collect();
    let seed = json!({
        "tenants": [{ "id": TENANT, "applications": apps }],
        "issuers": [{ "url": issuer, "jwks": jwks }],
        "vaults": [{ "name": VAULT, "tenant": TENANT, "throttle": { "limit": 1_000_000 },
            "access": (0..IDENTITIES).map(|i| json!({ "principal": format!("id-{i}-oid"), "secrets": ["get"] })).collect::<Vec<_>>(),
            "secrets": (0..OBJECTS).map(|o| json!({ "name": format!("o{o}"), "value": format!("value-{o}") })).collect::<Vec<_>>() }],
    });
    let h = Emulator::builder().seed(Seed::from_yaml(&seed.to_string()).unwrap()).start().await.unwrap();
    h.set_faults(VAULT, Faults { latency_ms: 20, ..Default::default() });

    let _ = Command::new("kubectl")
        .args(["delete", "namespace", NS, "--ignore-not-found", "--wait=true"])
        .stdout(Stdio::null())
        .status();
    kubectl(&["create", "namespace", NS], None);
    let mut items = Vec::new();
    for i in 0..IDENTITIES {
        items.push(json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": format!("sa-{i}"),
            "namespace": NS, "annotations": { "keyvault-csi.io/allow-secret-syncs": "*" } } }));
        items.push(json!({ "apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
            "metadata": { "name": format!("class-{i}"), "namespace": NS },
            "spec": { "provider": "azure", "parameters": { "keyvaultName": VAULT, "tenantId": TENANT,
                "clientID": format!("id-{i}"), "objects": objects_param() } } }));
    }
    apply(items);
    let syncs: Vec<Value> = (0..SYNCS)
        .map(|n| {
            let i = n % IDENTITIES;
            json!({ "apiVersion": "secret-sync.x-k8s.io/v1alpha1", "kind": "SecretSync",
                "metadata": { "name": format!("sync-{n}"), "namespace": NS },
                "spec": { "secretProviderClassName": format!("class-{i}"), "serviceAccountName": format!("sa-{i}"),
                    "secretObject": { "data": [
                        { "sourcePath": format!("o{}", n % OBJECTS), "targetKey": "a" },
                        { "sourcePath": format!("o{}", (n + 3) % OBJECTS), "targetKey": "b" } ] } } })
        })
        .collect();
    for chunk in syncs.chunks(250) {
        apply(chunk.to_vec());
    }

    let node = Node::new();
    let port = free_port();
    let mut args = vec![
        "sync-controller".to_string(),
        format!("--kubeconfig={}", env("KUBECONFIG")),
        "--leader-elect=false".into(),
        format!("--metrics-bind-address=127.0.0.1:{port}"),
        format!("--rotation-poll-interval={INTERVAL}s"),
        format!("--jitter={JITTER}s"),
    ];
    args.extend(azure_flags(&node, &h));
    let binary = std::env::var("KEYVAULT_CSI_BIN").unwrap_or_else(|_| support::binary().to_string());
    let t0 = Instant::now();
    let proc = Proc::spawn("sync-controller", &binary, &args, &node.path("controller.log"));
    let ready =
        |m: &BTreeMap<String, f64>| m.iter().filter(|(k, v)| k.starts_with("secretsync_ready{") && **v == 1.0).count();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(m) = std::panic::catch_unwind(|| metrics(port))
            && ready(&m) == SYNCS
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "not every SecretSync synced: see {}",
            node.path("controller.log").display()
        );
    }
    let first = t0.elapsed().as_secs_f64();
    let first_requests = h.count(|k| k.vault == VAULT && k.kind == "secrets" && k.method == "GET" && k.status == 200);
    let first_m = metrics(port);
    let rss_first = rss_mib(proc.pid());
    eprintln!("first sync: {SYNCS} Secrets in {first:.1} s, {first_requests} Key Vault requests");

    let idle = round(&h, port, None).await;
    let changed = round(&h, port, Some("o0")).await;
    let rss = rss_mib(proc.pid());
    let cpu = cpu_secs(proc.pid());
    let upstream_per_round = SYNCS * OBJECTS;
    let out = json!({
        "syncs": SYNCS, "objects": OBJECTS, "identities": IDENTITIES, "interval_s": INTERVAL,
        "first_sync": { "seconds": first, "keyvault_requests": first_requests,
            "secret_writes": first_m.get("secretsync_api_writes_total{kind=\"secret\"}") },
        "round_unchanged": round_json(&idle),
        "round_one_object_changed": round_json(&changed),
        "controller_rss_mib": { "after_first_sync": rss_first, "after_rounds": rss },
        "controller_cpu_s": cpu,
        "upstream_keyvault_requests_per_round_by_its_algorithm": upstream_per_round,
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secretsync.json"), serde_json::to_string_pretty(&out).unwrap()).unwrap();
    println!(
        "SecretSync bench: {SYNCS} SecretSyncs, {OBJECTS} objects, {IDENTITIES} identities, 20 ms per Key Vault request"
    );
    println!("  first sync           {first:>7.1} s   {first_requests:>5} Key Vault requests");
    for (name, r) in [("round, nothing changed", &idle), ("round, o0 changed", &changed)] {
        let most = r.per_object_identity.values().max().copied().unwrap_or(0);
        println!(
            "  {name:<22} {:>5.1} s   {} checks   {:>5} Key Vault requests ({} object/identity pairs, at most {most} each)   {} Secret writes   {} status writes   API: {:?}",
            r.seconds,
            r.checks,
            r.requests,
            r.per_object_identity.len(),
            r.secret_writes,
            r.status_writes,
            r.api
        );
    }
    println!(
        "  controller RSS {rss_first:.1} MiB after the first sync, {rss:.1} MiB after two rounds; {cpu:.1} CPU s in all"
    );
    println!(
        "  (upstream's controller fetches the whole class per SecretSync: {upstream_per_round} Key Vault requests per round)"
    );
    drop(proc);
    let _ = Command::new("kubectl").args(["delete", "namespace", NS, "--wait=false"]).stdout(Stdio::null()).status();
}
