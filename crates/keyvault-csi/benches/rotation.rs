//! `make bench` (rotation part): the real binary with 1,000 mounted volumes of 10 objects each against
//! the emulator: Key Vault requests per rotation cycle, cycle wall time, driver RSS and open files.
//! Needs CAP_SYS_ADMIN (run through hack/in-mount-ns.sh, as `make bench` does).

#[path = "../../../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use emulator::{Emulator, Seed};
use support::*;

const TENANT: &str = "bench-tenant";
const ISSUER: &str = "https://oidc.bench.test/";
const VOLUMES: usize = 1000;

fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut seed = format!(
        "tenants:\n  - id: {TENANT}\n    applications:\n      - clientId: wi\n        objectId: wi-oid\n        federatedCredentials: [ {{ issuer: \"{ISSUER}\", subject: \"system:serviceaccount:default:app\" }} ]\nissuers:\n  - url: \"{ISSUER}\"\nvaults:\n  - name: kv-bench\n    tenant: {TENANT}\n    throttle: {{ limit: 1000000 }}\n    access: [ {{ principal: wi-oid, secrets: [get] }} ]\n    secrets:\n"
    );
    for i in 0..10 {
        seed.push_str(&format!("      - {{ name: s{i}, value: \"bench-value-{i}\" }}\n"));
    }
    let h = Emulator::builder().seed(Seed::from_yaml(&seed).unwrap()).start().await.unwrap();
    let node = Node::new();
    let mut objects = String::from("array:\n");
    for i in 0..10 {
        objects.push_str(&format!("  - |\n    objectName: s{i}\n    objectType: secret\n"));
    }
    node.add_class(
        "default",
        "bench",
        "azure",
        &[("keyvaultName", "kv-bench"), ("tenantId", TENANT), ("clientID", "wi"), ("objects", &objects)],
    );
    let mut flags = azure_flags(&node, &h);
    flags.extend([
        "--enable-secret-rotation".to_string(),
        "--rotation-poll-interval=10s".to_string(),
        "-v=0".to_string(),
    ]);
    let d = DriverProcess::start(&node, &flags.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let pid = d.pid();
    let rss_idle = proc_status_kb(&pid, "VmRSS:");
    let token = h.service_account_token(ISSUER, "default", "app", "api://AzureADTokenExchange", 3600).unwrap();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut client = d.node_client().await;
        let reqs: Vec<_> = (0..VOLUMES)
            .filter(|i| i % 16 == w)
            .map(|i| {
                let mut v = PodVolume::new(&format!("pod-{i}"), "bench");
                v.service_account = "app".into();
                v.tokens = Some(tokens_json("api://AzureADTokenExchange", &token));
                v.publish_request(&node)
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            for r in reqs {
                client.node_publish_volume(r).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mount_time = started.elapsed();
    let mount_gets = h.count(|k| k.vault == "kv-bench" && k.status == 200);

    // Skip the first cycle (volumes align), then measure one.
    let cycles = |d: &DriverProcess| d.logs().matches("rotation cycle complete").count();
    while cycles(&d) < 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = cycles(&d);
    h.reset_stats();
    while cycles(&d) < seen + 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gets = h.count(|k| k.vault == "kv-bench" && k.status == 200);
    let tokens = h.count(|k| k.vault == "entra");
    let logs = d.logs();
    let last = logs.lines().rfind(|l| l.contains("rotation cycle complete")).unwrap_or("");
    let cycle_volumes = last.split("volumes=").nth(1).and_then(|v| v.split_whitespace().next()).unwrap_or("?");
    let cycle_secs = last.split("duration_s=").nth(1).and_then(|v| v.split_whitespace().next()).unwrap_or("?");
    let rss = proc_status_kb(&pid, "VmRSS:");
    let fds = open_fds(&pid);

    println!("rotation at node scale: {VOLUMES} volumes × 10 objects, one workload identity, real tmpfs mounts");
    println!(
        "  mount {VOLUMES} volumes (16 concurrent kubelet calls): {:.2} s, {mount_gets} Key Vault GETs in all",
        mount_time.as_secs_f64()
    );
    println!(
        "  one rotation cycle: {cycle_volumes} volumes in {cycle_secs} s, {gets} Key Vault GETs, {tokens} token requests"
    );
    println!(
        "  upstream would make {} GETs per cycle ({VOLUMES} volumes × 10 objects, one per object per pod)",
        VOLUMES * 10
    );
    println!(
        "  driver RSS: {:.1} MiB idle, {:.1} MiB with {VOLUMES} volumes; open fds: {fds}",
        rss_idle as f64 / 1024.0,
        rss as f64 / 1024.0
    );
}
