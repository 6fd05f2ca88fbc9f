//! `make bench`: mount latency against the emulator with 20 ms injected per request, parallel vs a
//! sequential baseline (the same provider forced to one request at a time) measured in the same run,
//! and Key Vault requests per mount from the emulator's own counters.

use std::time::{Duration, Instant};

use emulator::{Emulator, Faults, Handle, Seed};
use keyvault::{Config, MountRequest, NetworkConfig, Provider};

const TENANT: &str = "bench-tenant";
const LATENCY_MS: u64 = match option_env!("BENCH_LATENCY_MS") {
    Some(_) => 100,
    None => 20,
};
const ROUNDS: usize = 15;

fn provider(h: &Handle, concurrency: usize) -> Provider {
    let mut c = Config {
        network: NetworkConfig {
            extra_ca_pem: Some(h.ca_pem.clone()),
            resolve_all_to: Some("127.0.0.1".parse().unwrap()),
            vault_port: Some(h.https_addr.port()),
            authority_override: Some(h.authority_url()),
            ..NetworkConfig::default()
        },
        // Every mount must really fetch: no sharing between the repeated mounts being timed.
        dedup_window: Duration::ZERO,
        ..Config::default()
    };
    c.limits.concurrency = concurrency;
    c.limits.rate_per_sec = 100_000.0;
    c.limits.burst = 100_000.0;
    Provider::new(c).unwrap()
}

fn request(n: usize) -> MountRequest {
    let mut objects = String::from("array:\n");
    for i in 0..n {
        objects.push_str(&format!("  - |\n    objectName: secret-{i}\n    objectType: secret\n"));
    }
    let attributes = [
        ("csi.storage.k8s.io/pod.name", "bench"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("keyvaultName", "bench-kv"),
        ("tenantID", TENANT),
        ("objects", objects.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let secrets =
        [("clientid".to_string(), "bench".into()), ("clientsecret".to_string(), "bench-secret".into())].into();
    MountRequest { attributes, secrets, default_mode: 0o644, ..Default::default() }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn measure(p: &Provider, n: usize) -> (Duration, Duration) {
    p.mount(request(n)).await.unwrap(); // warm: challenge + token
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = p.mount(request(n)).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(r.files.len(), n);
    }
    (percentile(&mut times, 0.5), percentile(&mut times, 0.95))
}

#[tokio::main]
async fn main() {
    let mut seed = format!(
        "tenants:\n  - id: {TENANT}\n    applications:\n      - {{ clientId: bench, objectId: bench-oid, clientSecret: bench-secret }}\nvaults:\n  - name: bench-kv\n    tenant: {TENANT}\n    throttle: {{ limit: 1000000 }}\n    access:\n      - {{ principal: bench-oid, secrets: [get] }}\n    secrets:\n"
    );
    for i in 0..50 {
        seed.push_str(&format!("      - {{ name: secret-{i}, value: value-{i} }}\n"));
    }
    let h = Emulator::builder().seed(Seed::from_yaml(&seed).unwrap()).start().await.unwrap();
    h.set_faults("bench-kv", Faults { latency_ms: LATENCY_MS, ..Default::default() });
    let parallel = provider(&h, 64);
    let sequential = provider(&h, 1);

    println!(
        "mount latency, {LATENCY_MS} ms injected per Key Vault request, {ROUNDS} mounts each (after one warm-up mount)"
    );
    println!(
        "{:>8} | {:>12} {:>12} | {:>14} {:>14} | {:>8}",
        "objects", "parallel p50", "p95", "sequential p50", "p95", "speed-up"
    );
    for n in [1, 10, 50] {
        let (pp50, pp95) = measure(&parallel, n).await;
        let (sp50, sp95) = measure(&sequential, n).await;
        println!(
            "{n:>8} | {:>10.1}ms {:>10.1}ms | {:>12.1}ms {:>12.1}ms | {:>7.1}x",
            pp50.as_secs_f64() * 1e3,
            pp95.as_secs_f64() * 1e3,
            sp50.as_secs_f64() * 1e3,
            sp95.as_secs_f64() * 1e3,
            sp50.as_secs_f64() / pp50.as_secs_f64()
        );
    }

    // Requests per mount, counted by the emulator: a cold provider, then a warm one.
    h.clear_faults("bench-kv");
    let fresh = provider(&h, 64);
    for (label, n) in [("first mount (cold)", 10), ("second mount (warm)", 10)] {
        h.reset_stats();
        fresh.mount(request(n)).await.unwrap();
        let gets = h.count(|k| k.vault == "bench-kv" && k.status == 200);
        let challenges = h.count(|k| k.vault == "bench-kv" && k.status == 401);
        let tokens = h.count(|k| k.vault == "entra");
        println!("{label}: {n} objects -> {gets} Key Vault GETs, {challenges} challenges, {tokens} token requests");
    }
}
