//! `make bench` (cluster): many nodes on one real API server. N keyvault-csi driver processes, each
//! with its own node name, socket, kubelet directory and metrics port, with pods bound to N Node
//! objects; a kubelet-like client publishes volumes to each; the emulator counts Key Vault requests.
//! For N = 10, 25, 50, with change events off (polls every `INTERVAL`) and on (the real
//! sync-controller pulls the emulated Storage queue; polls every hour), it measures:
//!
//! * API requests per node per minute: idle, during the burst of first mounts, during rotation;
//! * watches per node (the API server's own long-running request gauge);
//! * driver RSS;
//! * the cluster's Key Vault GETs per interval, and the most GETs in any 10 s window;
//! * change-to-file latency (p50/p99 over every volume) after a secret changes in the vault.
//!
//! Then it fits the per-node constants and extrapolates to 1,000 and 5,000 nodes. Writes
//! `target/bench/cluster.json`. Needs `KUBECONFIG` (hack/bench.sh starts the kit) and CAP_SYS_ADMIN
//! (hack/in-mount-ns.sh). `CLUSTER_NODES=10,25` narrows the run.

#[path = "../../../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

#[path = "sidebyside/host.rs"]
#[allow(dead_code)]
mod host;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use emulator::{Emulator, Seed};
use serde_json::{Value, json};
use support::*;

use host::*;

const NS: &str = "kvcsi-cluster";
const TENANT: &str = "cluster-tenant";
const VAULT: &str = "kv-cluster";
const ACCOUNT: &str = "benchevents";
const QUEUE: &str = "kv-events";
/// Distinct objects every node mounts (one class, one identity).
const OBJECTS: usize = 10;
/// Volumes (pods) per node.
const VOLUMES: usize = 4;
/// The poll interval with events off.
const INTERVAL: Duration = Duration::from_secs(30);
/// Key Vault's limit per vault.
const VAULT_LIMIT_10S: f64 = 4000.0;
/// Resources counted in `apiserver_request_total` (host.rs reads this).
const RESOURCES: &[&str] =
    &["secretproviderclasses", "secretproviderclasspodstatuses", "pods", "secrets", "events", "configmaps", "nodes"];

fn seed() -> Seed {
    let secrets: String = (0..OBJECTS).map(|i| format!("      - {{ name: s{i}, value: v0-{i} }}\n")).collect();
    Seed::from_yaml(&format!(
        r#"
tenants:
  - id: {TENANT}
    applications:
      - {{ clientId: sp, objectId: sp-oid, clientSecret: sp-secret }}
managedIdentities:
  - {{ tenant: {TENANT}, clientId: events-mi, objectId: events-oid }}
vaults:
  - name: {VAULT}
    tenant: {TENANT}
    access:
      - {{ principal: sp-oid, secrets: [get] }}
    secrets:
{secrets}
storageAccounts:
  - name: {ACCOUNT}
    tenant: {TENANT}
    queues:
      - {{ name: {QUEUE}, subscriptions: [ {{ vault: {VAULT} }} ], processors: [ events-oid ] }}
"#
    ))
    .expect("seed")
}

fn objects_param() -> String {
    let mut s = String::from("array:\n");
    for i in 0..OBJECTS {
        s.push_str(&format!("  - |\n    objectName: s{i}\n    objectType: secret\n"));
    }
    s
}

fn apply(objects: Vec<Value>) {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    kubectl(&["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(&list.to_string()));
}

/// N Node objects and `VOLUMES` pods bound to each; returns (node, pod, uid).
fn setup_cluster(n: usize) -> Vec<(String, String, String)> {
    let mut objects = Vec::new();
    for i in 0..n {
        let node = format!("cluster-node-{i}");
        objects.push(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {"kvcsi-bench": "cluster"}}}));
        for j in 0..VOLUMES {
            objects.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p-{i}-{j}"), "namespace": NS, "labels": {"kvcsi-bench": "cluster"}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}));
        }
    }
    apply(objects);
    let out = kubectl(
        &[
            "-n",
            NS,
            "get",
            "pods",
            "-l",
            "kvcsi-bench=cluster",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName} {.metadata.name} {.metadata.uid}{\"\\n\"}{end}",
        ],
        None,
    );
    let pods: Vec<(String, String, String)> = out
        .lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some((it.next()?.to_string(), it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect();
    assert_eq!(pods.len(), n * VOLUMES, "every pod exists");
    pods
}

fn teardown_cluster() {
    for args in [
        vec!["-n", NS, "delete", "pods", "-l", "kvcsi-bench=cluster", "--grace-period=0", "--force", "--wait=false"],
        vec!["delete", "nodes", "-l", "kvcsi-bench=cluster", "--wait=false"],
        vec!["-n", NS, "delete", "secretproviderclasspodstatuses", "--all", "--wait=false"],
        vec!["-n", NS, "delete", "configmap", "keyvault-csi-invalidations", "--ignore-not-found"],
    ] {
        let _ = Command::new("kubectl").args(&args).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Long-running WATCH requests the API server holds now (its own gauge).
fn watches() -> f64 {
    kubectl(&["get", "--raw", "/metrics"], None)
        .lines()
        .filter(|l| l.starts_with("apiserver_longrunning_requests{") && l.contains("verb=\"WATCH\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One node's driver (fields drop in order: the process stops before its directory goes).
struct Driver {
    proc: Proc,
    node: Node,
    metrics: String,
    client: Option<csi_proto::csi::node_client::NodeClient<tonic::transport::Channel>>,
}

async fn start_driver(name: &str, emu: &emulator::Handle, events: bool) -> Driver {
    let node = Node::new();
    let socket = node.socket();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        format!("--endpoint=unix://{}", socket.display()),
        format!("--nodeid={name}"),
        format!("--provider-volume={}", node.path("providers").display()),
        format!("--additional-provider-volume-paths={}", node.path("providers-extra").display()),
        "--enable-secret-rotation=true".into(),
        format!("--rotation-poll-interval={}s", INTERVAL.as_secs()),
        format!("--metrics-addr={metrics}"),
        format!("--kubeconfig={}", env("KUBECONFIG")),
    ];
    if events {
        args.push("--events-poll-interval=1h".into());
        args.push(format!("--events-namespace={NS}"));
    }
    args.extend(azure_flags(&node, emu));
    let proc = Proc::spawn("driver", &ours(), &args, &node.path("driver.log"));
    Driver { proc, node, metrics, client: None }
}

/// `KEYVAULT_CSI_BIN` (the static release build hack/bench.sh makes for the other parts), else this
/// bench's own build.
fn ours() -> String {
    std::env::var("KEYVAULT_CSI_BIN").unwrap_or_else(|_| binary().to_string())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn gets(emu: &emulator::Handle) -> u64 {
    emu.count(|k| k.vault == VAULT && k.method == "GET" && k.kind == "secrets")
}

/// One configuration: N nodes, events on or off.
async fn run(emu: &emulator::Handle, n: usize, events: bool) -> Value {
    let label = if events { "events" } else { "polling" };
    eprintln!("[cluster] N={n} {label}: setting up");
    teardown_cluster();
    let pods = setup_cluster(n);
    let mut controller = None;
    // Events of earlier runs' changes would make this run's nodes refresh: start from an empty queue.
    emu.purge_queue(ACCOUNT, QUEUE);
    if events {
        let node = Node::new();
        let mut args = vec![
            "sync-controller".to_string(),
            format!("--kubeconfig={}", env("KUBECONFIG")),
            "--leader-elect=false".into(),
            format!("--leader-election-namespace={NS}"),
            format!("--metrics-bind-address=127.0.0.1:{}", free_port()),
            format!("--events-queue-url=https://{ACCOUNT}.queue.core.windows.net:{}/{QUEUE}", emu.https_addr.port()),
            "--events-identity=managed".into(),
            "--events-client-id=events-mi".into(),
            format!("--events-tenant-id={TENANT}"),
            format!("--azure-imds-endpoint={}", emu.http_url()),
        ];
        args.extend(azure_flags(&node, emu));
        let proc = Proc::spawn("sync-controller", &ours(), &args, &node.path("controller.log"));
        controller = Some((node, proc));
    }
    let watches_before = watches();
    let mut drivers = Vec::new();
    for i in 0..n {
        drivers.push(start_driver(&format!("cluster-node-{i}"), emu, events).await);
    }
    for d in &mut drivers {
        let socket = d.node.socket();
        let deadline = Instant::now() + Duration::from_secs(60);
        d.client = loop {
            if let Ok(ch) = channel(&socket).await {
                break Some(csi_proto::csi::node_client::NodeClient::new(ch));
            }
            assert!(
                Instant::now() < deadline,
                "driver did not serve: {}",
                std::fs::read_to_string(d.node.path("driver.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
    }
    if events {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !kubectl(&["-n", NS, "get", "configmap", "-o", "name"], None).contains("keyvault-csi-invalidations") {
            assert!(Instant::now() < deadline, "the consumer never wrote its heartbeat");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // Idle: watches established, nothing mounted.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let watches_per_node = (watches() - watches_before) / n as f64;
    let api0 = api_requests();
    let idle_secs = 20.0;
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let idle_per_node_min = (api_requests() - api0) / n as f64 / idle_secs * 60.0;

    // Burst: every volume of every node mounted at once.
    let mut volumes: Vec<(usize, PodVolume)> = Vec::new();
    for (node, pod, uid) in &pods {
        let i: usize = node.trim_start_matches("cluster-node-").parse().unwrap();
        let mut v = PodVolume::new(pod, "cluster");
        v.namespace = NS.into();
        v.uid = uid.clone();
        v.secrets =
            [("clientid".to_string(), "sp".to_string()), ("clientsecret".to_string(), "sp-secret".to_string())].into();
        volumes.push((i, v));
    }
    let api0 = api_requests();
    let t0 = Instant::now();
    let mut joins = Vec::new();
    for (i, v) in volumes.clone() {
        let mut client = drivers[i].client.clone().unwrap();
        let req = v.publish_request(&drivers[i].node);
        joins.push(tokio::spawn(async move { client.node_publish_volume(req).await.map(|_| ()) }));
    }
    for j in joins {
        j.await.unwrap().expect("publish");
    }
    let burst_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burst_per_node = (api_requests() - api0) / n as f64;
    let rss: Vec<f64> = drivers.iter().map(|d| rss_mib(d.proc.pid())).collect();

    // Rotation: two intervals of steady state, Key Vault GETs sampled every second.
    let window = INTERVAL * 2;
    let api0 = api_requests();
    let g0 = gets(emu);
    let mut samples = vec![g0];
    let t0 = Instant::now();
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(gets(emu));
    }
    let rotation_per_node_min = (api_requests() - api0) / n as f64 / window.as_secs_f64() * 60.0;
    let gets_per_interval = (gets(emu) - g0) as f64 / 2.0;
    let max_10s = samples.windows(11).map(|w| w[10] - w[0]).max().unwrap_or(0) as f64;

    // Change to file, on every volume.
    let changes = if events { 3 } else { 2 };
    let mut latencies = Vec::new();
    for c in 0..changes {
        let value = format!("changed-{n}-{label}-{c}");
        let t0 = Instant::now();
        emu.set_secret(VAULT, "s0", &value).unwrap();
        let mut pending: Vec<std::path::PathBuf> =
            volumes.iter().map(|(i, v)| v.target(&drivers[*i].node).join("s0")).collect();
        let deadline = t0 + INTERVAL * 2 + Duration::from_secs(15);
        while !pending.is_empty() && Instant::now() < deadline {
            pending.retain(|p| {
                let done = std::fs::read_to_string(p).map(|s| s == value).unwrap_or(false);
                if done {
                    latencies.push(t0.elapsed().as_secs_f64());
                }
                !done
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(pending.is_empty(), "{} volumes never got the change", pending.len());
        // Spread the next change off the poll phase.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    latencies.sort_by(|a, b| a.total_cmp(b));

    // Teardown: unmount everything, stop the processes.
    for (i, v) in &volumes {
        let mut client = drivers[*i].client.clone().unwrap();
        let _ = client.node_unpublish_volume(v.unpublish_request(&drivers[*i].node)).await;
    }
    let metrics_sample = drivers.first().map(|d| http_get(&d.metrics, "/metrics").1).unwrap_or_default();
    drop(drivers);
    drop(controller);
    teardown_cluster();
    let r = json!({
        "nodes": n, "events": events, "volumes_per_node": VOLUMES, "objects": OBJECTS,
        "interval_s": if events { 3600 } else { INTERVAL.as_secs() },
        "api_per_node_min": {"idle": idle_per_node_min, "burst_total_per_node": burst_per_node, "rotation": rotation_per_node_min},
        "burst_s": burst_secs,
        "watches_per_node": watches_per_node,
        "rss_mib": {"mean": rss.iter().sum::<f64>() / rss.len() as f64, "max": rss.iter().cloned().fold(0.0, f64::max)},
        "kv_gets_per_interval": gets_per_interval,
        "kv_gets_max_10s": max_10s,
        "change_to_file_s": {"p50": percentile(&latencies, 0.5), "p99": percentile(&latencies, 0.99), "n": latencies.len()},
        "event_to_file_count": sample(&metrics_sample, "event_to_file_seconds_count"),
    });
    eprintln!("[cluster] {r}");
    r
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    require_mount_privilege();
    let ns: Vec<usize> = std::env::var("CLUSTER_NODES")
        .unwrap_or_else(|_| "10,25,50".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let emu = Emulator::builder().seed(seed()).start().await.expect("emulator");
    for crd in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/keyvault-csi/crds")).unwrap() {
        kubectl(&["apply", "--server-side", "-f", crd.unwrap().path().to_str().unwrap()], None);
    }
    kubectl(&["wait", "--for=condition=Established", "crd/secretproviderclasses.secrets-store.csi.x-k8s.io"], None);
    apply(vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        json!({"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
               "metadata": {"name": "cluster", "namespace": NS},
               "spec": {"provider": "azure", "parameters": {"keyvaultName": VAULT, "tenantId": TENANT, "objects": objects_param()}}}),
    ]);
    let mut runs = Vec::new();
    for &n in &ns {
        for events in [false, true] {
            runs.push(run(&emu, n, events).await);
        }
    }
    print_report(&runs);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/cluster.json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&json!({"machine": machine(), "date": stamp(), "runs": runs})).unwrap(),
    )
    .unwrap();
    let _ = Command::new("kubectl").args(["delete", "namespace", NS, "--wait=false"]).stdout(Stdio::null()).status();
}

/// When and at which commit the run was made, for the report's reader.
fn stamp() -> String {
    let out = |cmd: &str, args: &[&str]| {
        Command::new(cmd).args(args).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let date = out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    match out("git", &["rev-parse", "--short", "HEAD"]).filter(|c| !c.is_empty()) {
        Some(commit) => format!("{date}, commit {commit}"),
        None => date,
    }
}

/// The table, the fitted per-node constants and the extrapolation.
fn print_report(runs: &[Value]) {
    println!("\n## cluster: many nodes on one API server ({} objects per node, {VOLUMES} volumes per node)\n", OBJECTS);
    println!(
        "| nodes | events | API req/node/min idle | API req/node, mount burst | API req/node/min rotation | watches/node | RSS MiB (mean) | KV GETs per interval | max KV GETs in 10 s | change→file p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} ({} s) | {:.0} | {:.2} / {:.2} s |",
            r["nodes"],
            if r["events"].as_bool() == Some(true) { "on" } else { "off" },
            r["api_per_node_min"]["idle"].as_f64().unwrap_or(0.0),
            r["api_per_node_min"]["burst_total_per_node"].as_f64().unwrap_or(0.0),
            r["api_per_node_min"]["rotation"].as_f64().unwrap_or(0.0),
            r["watches_per_node"].as_f64().unwrap_or(0.0),
            r["rss_mib"]["mean"].as_f64().unwrap_or(0.0),
            r["kv_gets_per_interval"].as_f64().unwrap_or(0.0),
            r["interval_s"],
            r["kv_gets_max_10s"].as_f64().unwrap_or(0.0),
            r["change_to_file_s"]["p50"].as_f64().unwrap_or(f64::NAN),
            r["change_to_file_s"]["p99"].as_f64().unwrap_or(f64::NAN),
        );
    }
    // Per-node constants: the mean over runs (they should not depend on N; the table shows whether they do).
    let mean = |f: &dyn Fn(&Value) -> f64, events: bool| {
        let v: Vec<f64> = runs.iter().filter(|r| r["events"].as_bool() == Some(events)).map(f).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let idle = mean(&|r| r["api_per_node_min"]["idle"].as_f64().unwrap_or(0.0), true);
    let rot = mean(&|r| r["api_per_node_min"]["rotation"].as_f64().unwrap_or(0.0), false);
    let watch = mean(&|r| r["watches_per_node"].as_f64().unwrap_or(0.0), true);
    let gets_per_node =
        mean(&|r| r["kv_gets_per_interval"].as_f64().unwrap_or(0.0) / r["nodes"].as_f64().unwrap_or(1.0), false);
    println!(
        "\nfitted per node: {idle:.2} API requests/min idle (events on), {rot:.2}/min while rotating every {}s, {watch:.1} watches, {gets_per_node:.1} Key Vault GETs per interval (= distinct objects × identities)",
        INTERVAL.as_secs()
    );
    println!(
        "\n| nodes | API requests/s (idle, events on) | watches | KV GETs per 10 s, polling every 2 min | KV GETs per 10 s, events on (polls hourly) |"
    );
    println!("|---|---|---|---|---|");
    for n in [1000.0, 5000.0] {
        let poll = n * gets_per_node * 10.0 / 120.0;
        let ev = n * gets_per_node * 10.0 / 3600.0;
        println!(
            "| {n:.0} | {:.1} | {:.0} | {poll:.0} ({:.0} % of {VAULT_LIMIT_10S:.0}) | {ev:.0} ({:.1} %) + changes |",
            n * idle / 60.0,
            n * watch,
            poll / VAULT_LIMIT_10S * 100.0,
            ev / VAULT_LIMIT_10S * 100.0
        );
    }
}
