//! `make bench` (side by side): the upstream Secrets Store CSI Driver (v1.6, Go) and keyvault-csi in
//! the same run, on the same machine, against the same kube-apiserver, driven by the same kubelet-like
//! client over the real CSI proto and Unix sockets, with the same flags:
//!
//! * `upstream`: upstream's driver + its e2e mock provider (v1alpha1 socket);
//! * `ours-mock`: keyvault-csi + the same mock provider over the same socket protocol;
//! * `ours-azure`: keyvault-csi's in-process Azure provider against the emulator, 20 ms added to every
//!   Key Vault request.
//!
//! Per column: publish and unpublish latency (p50/p90/p99) and throughput at concurrency 1 and 16 for
//! 1, 100 and 500 volumes (`BENCH_REPEATS` repeats, spread reported), RSS of every process idle /
//! after publish / after unpublish, CPU seconds per phase, API requests per publish (the API server's
//! own `apiserver_request_total`), errors by gRPC code; then rotation of 500 volumes: time until every
//! file changed and CPU seconds per minute, with kubelet's republish driven the same way for all.
//! Writes `target/bench/sidebyside.json`; `hack/bench-report.py` turns it into tables and an SVG.
//!
//! Needs: `KUBECONFIG` (an API server; `hack/bench.sh` starts the kit), `UPSTREAM_DRIVER` and
//! `UPSTREAM_PROVIDER` (unpacked binaries), `kubectl` on `PATH`, CAP_SYS_ADMIN (hack/in-mount-ns.sh).

#[path = "../../../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

#[path = "sidebyside/boundary.rs"]
mod boundary;
#[path = "sidebyside/host.rs"]
mod host;
#[path = "sidebyside/rotation.rs"]
mod rotation;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use csi_proto::csi;
use emulator::{Emulator, Faults, Seed};
use serde_json::{Value, json};
use support::*;

use host::*;

const NS: &str = "kvcsi-bench";
const TENANT: &str = "bench-tenant";
const ISSUER: &str = "https://oidc.bench.test/";
const NODE: &str = "bench-node";
const PROVIDER_HTTP: &str = "127.0.0.1:8080";
const MOCK_OBJECTS: &str = "array:\n  - |\n    objectName: foo\n  - |\n    objectName: fookey\n";
/// Resources a Secrets Store driver touches; counted in `apiserver_request_total` (other clients of
/// the kit — kubelet, controllers — touch none of them but pods, whose reads they rarely make).
const RESOURCES: &[&str] = &[
    "secretproviderclasses",
    "secretproviderclasspodstatuses",
    "pods",
    "secrets",
    "events",
    "serviceaccounts",
    "csidrivers",
];

#[derive(Clone, Copy, PartialEq)]
enum Column {
    Upstream,
    OursMock,
    /// Ours with the same provider but no API server (classes from files, no pod status): with
    /// `ours-mock`, the split between time in our code and time waiting on the API server.
    OursMockNoApi,
    /// Ours with the same provider and `--api-writes=synchronous` (upstream's semantics: kubelet waits
    /// for the pod status): with `ours-mock`, what the background writer saves.
    OursMockSync,
    OursAzure,
    /// `ours-azure` with the provider in its own process, as the chart runs it by default
    /// (`provider.isolation: process`): the cost of the process boundary.
    OursAzureIsolated,
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::Upstream => "upstream",
            Column::OursMock => "ours-mock",
            Column::OursMockNoApi => "ours-mock-no-api",
            Column::OursMockSync => "ours-mock-sync",
            Column::OursAzure => "ours-azure",
            Column::OursAzureIsolated => "ours-azure-isolated",
        }
    }
    fn class(self) -> &'static str {
        if self.azure() { "azure" } else { "mock" }
    }
    /// Served by the Azure provider (in process or not) from the emulator.
    fn azure(self) -> bool {
        matches!(self, Column::OursAzure | Column::OursAzureIsolated)
    }
}

/// The processes of one column, on its own scratch node.
struct Setup {
    node: Node,
    procs: Vec<Proc>,
    socket: PathBuf,
}

impl Setup {
    async fn start(column: Column, rotation_interval: &str, azure: Option<&emulator::Handle>) -> Self {
        let node = Node::new();
        let mut procs = Vec::new();
        if !column.azure() {
            let sock = node.path("providers/e2e-provider.sock");
            procs.push(Proc::spawn(
                "provider",
                &env("UPSTREAM_PROVIDER"),
                &[format!("--endpoint=unix://{}", sock.display())],
                &node.path("provider.log"),
            ));
            wait_for(&sock, "mock provider socket").await;
        }
        let socket = node.socket();
        let mut args = vec![
            format!("--endpoint=unix://{}", socket.display()),
            format!("--nodeid={NODE}"),
            format!("--provider-volume={}", node.path("providers").display()),
            format!("--additional-provider-volume-paths={}", node.path("providers-extra").display()),
            "--enable-secret-rotation=true".into(),
            format!("--rotation-poll-interval={rotation_interval}"),
            format!("--metrics-addr=127.0.0.1:{}", free_port()),
            "-v=2".into(),
        ];
        if column == Column::OursMockNoApi {
            node.add_class(NS, "mock", "e2e-provider", &[("objects", MOCK_OBJECTS)]);
            args.push(format!("--class-dir={}", node.path("classes").display()));
        } else {
            args.push(format!("--kubeconfig={}", env("KUBECONFIG")));
        }
        if column == Column::OursMockSync {
            args.push("--api-writes=synchronous".into());
        }
        let program = match column {
            Column::Upstream => env("UPSTREAM_DRIVER"),
            _ => ours_binary(),
        };
        if let Some(h) = azure {
            if column == Column::OursAzureIsolated {
                // The chart's default: the provider's own process on the driver's internal socket.
                let internal = node.path("internal");
                std::fs::create_dir_all(&internal).unwrap();
                let sock = internal.join("azure.sock");
                let mut pargs = vec![
                    "provider".to_string(),
                    format!("--endpoint=unix://{}", sock.display()),
                    format!("--metrics-addr=127.0.0.1:{}", free_port()),
                    format!("--healthz-port={}", free_port()),
                ];
                pargs.extend(azure_flags(&node, h));
                procs.push(Proc::spawn("provider", &ours_binary(), &pargs, &node.path("provider.log")));
                wait_for(&sock, "Azure provider socket").await;
                args.push("--builtin-azure-provider=false".into());
                args.push(format!("--internal-provider-dir={}", internal.display()));
            } else {
                args.extend(azure_flags(&node, h));
            }
        }
        procs.push(Proc::spawn("driver", &program, &args, &node.path("driver.log")));
        wait_for(&socket, "driver socket").await;
        let mut client = loop {
            if let Ok(ch) = channel(&socket).await {
                break csi::identity_client::IdentityClient::new(ch);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        client.probe(csi::ProbeRequest {}).await.expect("driver answers Probe");
        Self { node, procs, socket }
    }

    fn cpu(&self) -> f64 {
        self.procs.iter().map(|p| cpu_secs(p.pid())).sum()
    }

    fn rss(&self) -> BTreeMap<String, f64> {
        self.procs.iter().map(|p| (p.name.clone(), rss_mib(p.pid()))).collect()
    }

    async fn client(&self) -> csi::node_client::NodeClient<tonic::transport::Channel> {
        csi::node_client::NodeClient::new(channel(&self.socket).await.unwrap())
    }
}

/// The keyvault-csi binary measured: `KEYVAULT_CSI_BIN` (hack/bench.sh passes the static musl release
/// build, what the image ships), else this bench's own build.
fn ours_binary() -> String {
    std::env::var("KEYVAULT_CSI_BIN").unwrap_or_else(|_| binary().to_string())
}

async fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{what} did not appear at {}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pod of the bench namespace: its volume as kubelet describes it, with the pod's real UID.
fn volume(pod: &str, uid: &str, class: &str, token: Option<&str>) -> PodVolume {
    let mut v = PodVolume::new(pod, class);
    v.namespace = NS.into();
    v.uid = uid.into();
    v.service_account = "app".into();
    v.tokens = token.map(|t| tokens_json("api://AzureADTokenExchange", t));
    v
}

#[derive(Default)]
struct Calls {
    latencies_ms: Vec<f64>,
    errors: BTreeMap<String, usize>,
    wall: Duration,
}

enum Call {
    Publish(Box<csi::NodePublishVolumeRequest>),
    Unpublish(csi::NodeUnpublishVolumeRequest),
}

fn calls(setup: &Setup, vols: &[PodVolume], publish: bool) -> Vec<Call> {
    vols.iter()
        .map(|v| {
            if publish {
                Call::Publish(Box::new(v.publish_request(&setup.node)))
            } else {
                Call::Unpublish(csi::NodeUnpublishVolumeRequest {
                    volume_id: format!("csi-{}", v.uid),
                    target_path: v.target(&setup.node).to_string_lossy().into_owned(),
                })
            }
        })
        .collect()
}

/// Sends every call with `concurrency` kubelet-like workers, one gRPC call at a time each.
async fn drive(setup: &Setup, all: Vec<Call>, concurrency: usize) -> Calls {
    let started = Instant::now();
    let mut queues: Vec<Vec<Call>> = (0..concurrency).map(|_| Vec::new()).collect();
    for (i, c) in all.into_iter().enumerate() {
        queues[i % concurrency].push(c);
    }
    let mut tasks = Vec::new();
    for queue in queues {
        let mut client = setup.client().await;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for call in queue {
                let t = Instant::now();
                let r = match call {
                    Call::Publish(r) => client.node_publish_volume(*r).await.map(|_| ()),
                    Call::Unpublish(r) => client.node_unpublish_volume(r).await.map(|_| ()),
                };
                out.push((
                    t.elapsed().as_secs_f64() * 1000.0,
                    r.err().map(|e| (format!("{:?}", e.code()), e.message().to_string())),
                ));
            }
            out
        }));
    }
    let mut calls = Calls::default();
    for t in tasks {
        for (ms, err) in t.await.unwrap() {
            calls.latencies_ms.push(ms);
            if let Some((code, message)) = err {
                if !calls.errors.contains_key(&code) {
                    eprintln!("    first {code} error: {message}");
                }
                *calls.errors.entry(code).or_default() += 1;
            }
        }
    }
    calls.wall = started.elapsed();
    calls
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(c: &Calls, cpu: f64, api: f64) -> Value {
    let mut l = c.latencies_ms.clone();
    l.sort_by(f64::total_cmp);
    json!({
        "calls": l.len(),
        "per_s": l.len() as f64 / c.wall.as_secs_f64(),
        "wall_s": c.wall.as_secs_f64(),
        "p50_ms": percentile(&l, 50.0),
        "p90_ms": percentile(&l, 90.0),
        "p99_ms": percentile(&l, 99.0),
        "cpu_s": cpu,
        "api_requests": api,
        "errors": c.errors,
        "latencies_ms": l,
    })
}

/// Removes what a phase left in the API (pod statuses), so every phase starts alike.
fn reset_api() {
    kubectl(&["-n", NS, "delete", "secretproviderclasspodstatuses", "--all", "--wait=true"], None);
}

/// Publish then unpublish `n` volumes at `concurrency`, measured.
async fn phase(setup: &Setup, vols: &[PodVolume], concurrency: usize) -> Value {
    reset_api();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, api0) = (setup.cpu(), api_requests());
    let published = drive(setup, calls(setup, vols, true), concurrency).await;
    let (cpu1, api1) = (setup.cpu(), api_requests());
    let rss_published = setup.rss();
    let unpublished = drive(setup, calls(setup, vols, false), concurrency).await;
    let (cpu2, api2) = (setup.cpu(), api_requests());
    let rss_unpublished = setup.rss();
    json!({
        "volumes": vols.len(),
        "concurrency": concurrency,
        "publish": summary(&published, cpu1 - cpu0, api1 - api0),
        "unpublish": summary(&unpublished, cpu2 - cpu1, api2 - api1),
        "rss_after_publish_mib": rss_published,
        "rss_after_unpublish_mib": rss_unpublished,
    })
}

fn setup_api(pods: usize) -> Vec<(String, String)> {
    for crd in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/keyvault-csi/crds")).unwrap() {
        kubectl(&["apply", "--server-side", "-f", crd.unwrap().path().to_str().unwrap()], None);
    }
    kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "crd/secretproviderclasses.secrets-store.csi.x-k8s.io",
            "crd/secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io",
        ],
        None,
    );
    let mut objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": NS}}),
        json!({"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
               "metadata": {"name": "mock", "namespace": NS}, "spec": {"provider": "e2e-provider", "parameters": {"objects": MOCK_OBJECTS}}}),
        json!({"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
               "metadata": {"name": "azure", "namespace": NS},
               "spec": {"provider": "azure", "parameters": {
                   "keyvaultName": "kv-bench", "tenantId": TENANT, "clientID": "wi",
                   "objects": "array:\n  - |\n    objectName: s0\n    objectType: secret\n  - |\n    objectName: s1\n    objectType: secret\n"}}}),
    ];
    // Pods bound to a node no kubelet runs: they exist (pod statuses get real owners) and never start.
    for i in 0..pods {
        objects.push(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("pod-{i}"), "namespace": NS},
            "spec": {"nodeName": NODE, "serviceAccountName": "app", "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}));
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    kubectl(&["apply", "--server-side", "-f", "-"], Some(&list.to_string()));
    let out = kubectl(
        &["-n", NS, "get", "pods", "-o", "jsonpath={range .items[*]}{.metadata.name} {.metadata.uid}{\"\\n\"}{end}"],
        None,
    );
    let uids: BTreeMap<usize, (String, String)> = out
        .lines()
        .filter_map(|l| {
            let (name, uid) = l.split_once(' ')?;
            Some((name.strip_prefix("pod-")?.parse().ok()?, (name.to_string(), uid.to_string())))
        })
        .collect();
    assert_eq!(uids.len(), pods, "every bench pod exists");
    uids.into_values().collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let repeats: usize = std::env::var("BENCH_REPEATS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let sizes: Vec<usize> = std::env::var("BENCH_VOLUMES")
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|_| vec![1, 100, 500]);
    let max = *sizes.iter().max().unwrap();
    let uids = setup_api(max);
    let h = Emulator::builder()
        .seed(Seed::from_yaml(&format!(
            "tenants:\n  - id: {TENANT}\n    applications:\n      - clientId: wi\n        objectId: wi-oid\n        federatedCredentials: [ {{ issuer: \"{ISSUER}\", subject: \"system:serviceaccount:{NS}:app\" }} ]\nissuers:\n  - url: \"{ISSUER}\"\nvaults:\n  - name: kv-bench\n    tenant: {TENANT}\n    throttle: {{ limit: 1000000 }}\n    access: [ {{ principal: wi-oid, secrets: [get] }} ]\n    secrets:\n      - {{ name: s0, value: value-0 }}\n      - {{ name: s1, value: value-1 }}\n"
        )).unwrap())
        .start()
        .await
        .unwrap();
    h.set_faults("kv-bench", Faults { latency_ms: 20, ..Default::default() });
    let token = h.service_account_token(ISSUER, NS, "app", "api://AzureADTokenExchange", 3600).unwrap();

    let wanted = std::env::var("BENCH_COLUMNS")
        .unwrap_or_else(|_| "upstream,ours-mock,ours-mock-no-api,ours-mock-sync,ours-azure,ours-azure-isolated".into());
    let mut columns = Vec::new();
    let all = [
        Column::Upstream,
        Column::OursMock,
        Column::OursMockNoApi,
        Column::OursMockSync,
        Column::OursAzure,
        Column::OursAzureIsolated,
    ];
    for column in all {
        if !wanted.split(',').any(|w| w == column.name()) {
            continue;
        }
        eprintln!("== {}", column.name());
        let setup = Setup::start(column, "2m", column.azure().then_some(&h)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle = setup.rss();
        let idle_cpu = setup.cpu();
        let mut phases = Vec::new();
        for &n in &sizes {
            for conc in [1usize, 16] {
                if conc > n {
                    continue;
                }
                for r in 0..repeats {
                    let vols: Vec<PodVolume> = uids[..n]
                        .iter()
                        .map(|(p, u)| volume(p, u, column.class(), column.azure().then_some(&token)))
                        .collect();
                    let result = phase(&setup, &vols, conc).await;
                    eprintln!(
                        "  {n:>3} volumes, concurrency {conc:>2}, run {r}: publish {:.1}/s p50 {:.1} ms, unpublish {:.1}/s p50 {:.1} ms, errors {} {}",
                        result["publish"]["per_s"].as_f64().unwrap(),
                        result["publish"]["p50_ms"].as_f64().unwrap(),
                        result["unpublish"]["per_s"].as_f64().unwrap(),
                        result["unpublish"]["p50_ms"].as_f64().unwrap(),
                        result["publish"]["errors"],
                        result["unpublish"]["errors"],
                    );
                    phases.push(result);
                }
            }
        }
        let driver_log_tail = std::fs::read_to_string(setup.node.path("driver.log")).unwrap_or_default();
        let tail: Vec<&str> = driver_log_tail.lines().rev().take(5).collect();
        let rss_end = setup.rss();
        let boundary = if column == Column::OursAzureIsolated {
            let provider = setup.procs.iter().find(|p| p.name == "provider").expect("the provider process");
            let b =
                boundary::measure(&setup.node.path("internal/azure.sock"), provider, &setup.node.path("provider.log"))
                    .await;
            let rounds: Vec<f64> =
                b["version_rpc"]["round_p50_ms"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
            let (low, high) = rounds.iter().fold((f64::MAX, 0.0f64), |(l, h), &r| (l.min(r), h.max(r)));
            eprintln!(
                "  the boundary: a bare Version round trip p50 {:.3} ms (rounds {low:.3}-{high:.3}; {:.3} ms provider CPU); the provider's Mount handling p50 {:.3} ms",
                b["version_rpc"]["p50_ms"].as_f64().unwrap_or(0.0),
                b["version_rpc"]["provider_cpu_ms_per_call"].as_f64().unwrap_or(0.0),
                b["mount_handler"]["p50_ms"].as_f64().unwrap_or(0.0),
            );
            b
        } else {
            Value::Null
        };
        drop(setup);
        if matches!(column, Column::OursMockNoApi | Column::OursMockSync) {
            columns
                .push(json!({ "name": column.name(), "rss_idle_mib": idle, "rss_end_mib": rss_end, "phases": phases }));
            continue;
        }
        eprintln!("  rotation of {max} volumes");
        let rot = rotation::rotation(column, &h, &uids[..max], &token).await;
        eprintln!(
            "    every file changed after {:?} s ({} unchanged), {:.2} CPU s/min",
            rot["files"]["changed_at_s"].as_array().and_then(|a| a.last().cloned()),
            rot["files"]["unchanged"],
            rot["cpu_s_per_min"].as_f64().unwrap()
        );
        columns.push(json!({
            "name": column.name(),
            "rss_idle_mib": idle,
            "cpu_idle_start_s": idle_cpu,
            "rss_end_mib": rss_end,
            "phases": phases,
            "rotation": rot,
            "driver_log_tail": tail,
            "boundary": boundary,
        }));
    }
    // `--version` prints JSON: {"BuildVersion":"v1.6.0",...}
    let upstream_version = Command::new(env("UPSTREAM_DRIVER"))
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|v| v["BuildVersion"].as_str().map(str::to_string))
        .unwrap_or_default();
    let server_version = kubectl(&["version", "-o", "json"], None);
    let server: Value = serde_json::from_str(&server_version).unwrap_or(Value::Null);
    let report = json!({
        "date": chrono_now(),
        "machine": machine(),
        "versions": {
            "keyvault-csi": env!("CARGO_PKG_VERSION"),
            "keyvault-csi-binary": if std::env::var("KEYVAULT_CSI_BIN").is_ok() { "static musl release build (as shipped)" } else { "cargo bench build (glibc)" },
            "upstream": upstream_version,
            "kube-apiserver": server["serverVersion"]["gitVersion"],
        },
        "repeats": repeats,
        "columns": columns,
    });
    let out = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench"));
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("sidebyside.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
    kubectl(&["delete", "namespace", NS, "--wait=false"], None);
    eprintln!("wrote target/bench/sidebyside.json");
}
