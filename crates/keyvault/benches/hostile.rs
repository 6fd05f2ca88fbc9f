//! `make bench`, section "hostile tenants": figures, not assertions.
//!
//! 1. Fairness: other tenants' mounts (5 objects, 20 ms per request) measured alone, then while one
//!    tenant's vault hangs for 60 s (mounts of a 1,000-object class pile up on it) and another's
//!    throttles (429 with `Retry-After`). Printed: p50/p99 of the other tenants' mounts in both phases.
//! 2. Bounded state: 10,000 mounts, each with a distinct vault name, object name and identity (what a
//!    namespace can create at will). Printed every 1,000: RSS, Prometheus series, and the provider's
//!    shared maps. Flat after warm-up is the goal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use emulator::{Emulator, Faults, Handle, Seed};
use keyvault::{Config, MountRequest, NetworkConfig, Provider};

const TENANT: &str = "bench-tenant";

fn provider(h: &Handle) -> Provider {
    let c = Config {
        network: NetworkConfig {
            extra_ca_pem: Some(h.ca_pem.clone()),
            resolve_all_to: Some("127.0.0.1".parse().unwrap()),
            vault_port: Some(h.https_addr.port()),
            authority_override: Some(h.authority_url()),
            ..NetworkConfig::default()
        },
        dedup_window: Duration::ZERO,
        ..Config::default()
    };
    Provider::new(c).unwrap()
}

fn request(vault: &str, objects: usize, prefix: &str, client: (&str, &str), deadline: Duration) -> MountRequest {
    let mut yaml = String::from("array:\n");
    for i in 0..objects {
        yaml.push_str(&format!("  - |\n    objectName: {prefix}{i}\n    objectType: secret\n"));
    }
    let attributes: BTreeMap<String, String> = [
        ("csi.storage.k8s.io/pod.name", "bench"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("keyvaultName", vault),
        ("tenantID", TENANT),
        ("objects", yaml.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let secrets = [("clientid".to_string(), client.0.into()), ("clientsecret".to_string(), client.1.into())].into();
    MountRequest {
        attributes,
        secrets,
        default_mode: 0o644,
        deadline: Some(Instant::now() + deadline),
        ..Default::default()
    }
}

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

/// 1,000 mounts of 5 objects from `good-kv`, 10 at a time: (p50, p99) in ms.
async fn other_tenants(p: &Arc<Provider>) -> (f64, f64) {
    let mut times = Vec::new();
    for _ in 0..100 {
        let batch = (0..10).map(|_| {
            let p = p.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = p.mount(request("good-kv", 5, "s", ("bench", "bench-secret"), Duration::from_secs(30))).await;
                assert_eq!(r.expect("an unaffected tenant's mount").files.len(), 5);
                t.elapsed()
            })
        });
        for t in futures_util::future::join_all(batch).await {
            times.push(t.unwrap());
        }
    }
    (percentile(&mut times, 0.5), percentile(&mut times, 0.99))
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn series(registry: &prometheus_client::registry::Registry) -> usize {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count()
}

#[tokio::main]
async fn main() {
    let mut seed = format!(
        "tenants:\n  - id: {TENANT}\n    applications:\n      - {{ clientId: bench, objectId: bench-oid, clientSecret: bench-secret }}\nvaults:\n"
    );
    for (vault, n) in [("good-kv", 5), ("hung-kv", 1000), ("throttled-kv", 5)] {
        seed.push_str(&format!(
            "  - name: {vault}\n    tenant: {TENANT}\n    throttle: {{ limit: 1000000 }}\n    access:\n      - {{ principal: bench-oid, secrets: [get] }}\n    secrets:\n"
        ));
        for i in 0..n {
            seed.push_str(&format!("      - {{ name: s{i}, value: value-{i} }}\n"));
        }
    }
    let h = Emulator::builder().seed(Seed::from_yaml(&seed).unwrap()).start().await.unwrap();
    h.set_faults("good-kv", Faults { latency_ms: 20, ..Default::default() });
    let p = Arc::new(provider(&h));
    p.mount(request("good-kv", 5, "s", ("bench", "bench-secret"), Duration::from_secs(30))).await.unwrap();

    println!(
        "hostile tenants: fairness (other tenants' mounts of 5 objects at 20 ms per request, 1,000 mounts, 10 at a time)"
    );
    let (alone50, alone99) = other_tenants(&p).await;
    // One tenant's vault hangs for 60 s; its 1,000-object class is mounted 5 times over.
    h.set_faults("hung-kv", Faults { latency_ms: 60_000, ..Default::default() });
    // Another throttles: 5 requests per 10 s, then 429 with Retry-After.
    h.set_throttle("throttled-kv", 5, Duration::from_secs(10));
    let mut noise = Vec::new();
    for _ in 0..5 {
        let p = p.clone();
        noise.push(tokio::spawn(async move {
            let _ = p.mount(request("hung-kv", 1000, "s", ("bench", "bench-secret"), Duration::from_secs(90))).await;
        }));
    }
    for _ in 0..20 {
        let p = p.clone();
        noise.push(tokio::spawn(async move {
            loop {
                let _ =
                    p.mount(request("throttled-kv", 5, "s", ("bench", "bench-secret"), Duration::from_secs(20))).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (busy50, busy99) = other_tenants(&p).await;
    let refused = h.count(|k| k.vault == "throttled-kv" && k.status == 429);
    let answered = h.count(|k| k.vault == "throttled-kv" && k.status == 200);
    let hung = h.count(|k| k.vault == "hung-kv" && k.status == 200);
    println!("{:>44} | {:>9} | {:>9}", "", "p50", "p99");
    println!("{:>44} | {alone50:>7.1}ms | {alone99:>7.1}ms", "alone");
    println!("{:>44} | {busy50:>7.1}ms | {busy99:>7.1}ms", "one vault hung (5 x 1,000 objects), one 429ing");
    println!(
        "  (meanwhile the throttled vault answered {answered} requests and refused {refused}; the hung one answered {hung})"
    );
    for t in noise {
        t.abort();
    }
    h.clear_faults("hung-kv");

    println!();
    println!("hostile tenants: bounded state (10,000 mounts, each a new vault name, object name and identity)");
    let p = Arc::new(provider(&h));
    let metrics = keyvault::metrics::ProviderMetrics::default();
    let p = Arc::new(Arc::try_unwrap(p).ok().unwrap().with_observer(Arc::new(metrics.clone())));
    let mut registry = prometheus_client::registry::Registry::default();
    keyvault::metrics::register_provider(&mut registry, &metrics, p.stats().clone());
    println!(
        "{:>7} | {:>8} | {:>7} | {:>6} | {:>7} | {:>7} | {:>8}",
        "mounts", "RSS", "series", "gates", "tokens", "scopes", "flights"
    );
    let started = Instant::now();
    for batch in 0..10 {
        let tasks = (0..1000).map(|j| {
            let i = batch * 1000 + j;
            let p = p.clone();
            tokio::spawn(async move {
                // Half the identities are valid (the vault then 404s the object), half are unknown to Entra.
                let client =
                    if i % 2 == 0 { ("bench", "bench-secret".to_string()) } else { ("intruder", format!("s-{i}")) };
                let vault = if i % 3 == 0 { "good-kv".to_string() } else { format!("h{i}") };
                let r = request(&vault, 1, &format!("obj-{i}-"), (client.0, &client.1), Duration::from_secs(10));
                let _ = p.mount(r).await;
            })
        });
        futures_util::future::join_all(tasks).await;
        let f = p.footprint();
        println!(
            "{:>7} | {:>6.1}Mi | {:>7} | {:>6} | {:>7} | {:>7} | {:>8}",
            (batch + 1) * 1000,
            rss_mib(),
            series(&registry),
            f.vault_gates,
            f.cached_tokens,
            f.vault_scopes,
            f.flights
        );
    }
    println!("  ({:.1} s)", started.elapsed().as_secs_f64());
}
