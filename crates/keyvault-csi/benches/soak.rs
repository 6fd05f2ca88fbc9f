//! `make soak`: the real binary with SOAK_VOLUMES volumes (default 200) for SOAK_SECS seconds (default
//! 600) while the emulator changes a secret every 3 s and rotation polls every 2 s. Checks that every
//! change lands within one interval (plus the cycle), that a reader never sees a torn file or a read
//! error, and that RSS and open file descriptors stay flat after warm-up (the last minute against the
//! first minute after warm-up), and that no file is behind the vault once the changes stop; prints the
//! per-change latency distribution, RSS and descriptors per minute, and exits non-zero when a check
//! fails. `make bench` runs it. Needs CAP_SYS_ADMIN (hack/in-mount-ns.sh).

#[path = "../../../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use emulator::{Emulator, Seed};
use support::*;

const TENANT: &str = "soak-tenant";
const INTERVAL: Duration = Duration::from_secs(2);
const CHANGE_EVERY: Duration = Duration::from_secs(3);

fn env(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Volumes whose `rotating` file does not (yet) hold `want`.
fn behind(targets: &[std::path::PathBuf], want: &str) -> usize {
    targets.iter().filter(|t| std::fs::read_to_string(t.join("rotating")).ok().as_deref() != Some(want)).count()
}

fn value(n: u64) -> String {
    format!("gen-{n:08};").repeat(512)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let volumes = env("SOAK_VOLUMES", 200) as usize;
    let duration = Duration::from_secs(env("SOAK_SECS", 600));
    let seed = format!(
        "tenants:\n  - id: {TENANT}\n    applications:\n      - {{ clientId: sp, objectId: sp-oid, clientSecret: soak-secret }}\nvaults:\n  - name: kv-soak\n    tenant: {TENANT}\n    access: [ {{ principal: sp-oid, secrets: [get] }} ]\n    secrets:\n      - {{ name: rotating, value: \"{}\" }}\n      - {{ name: stable, value: stable-value }}\n",
        value(0)
    );
    let h = Emulator::builder().seed(Seed::from_yaml(&seed).unwrap()).start().await.unwrap();
    let node = Node::new();
    let objects = "array:\n  - |\n    objectName: rotating\n    objectType: secret\n  - |\n    objectName: stable\n    objectType: secret\n";
    node.add_class(
        "default",
        "soak",
        "azure",
        &[("keyvaultName", "kv-soak"), ("tenantId", TENANT), ("objects", objects)],
    );
    let mut flags = azure_flags(&node, &h);
    flags.extend([
        "--enable-secret-rotation".to_string(),
        format!("--rotation-poll-interval={}s", INTERVAL.as_secs()),
        "-v=0".to_string(),
    ]);
    let d = DriverProcess::start(&node, &flags.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let pid = d.pid();
    let mut client = d.node_client().await;
    let mut targets = Vec::new();
    for i in 0..volumes {
        let mut v = PodVolume::new(&format!("soak-{i}"), "soak");
        v.secrets.insert("clientid".into(), "sp".into());
        v.secrets.insert("clientsecret".into(), "soak-secret".into());
        v.publish(&node, &mut client).await.unwrap();
        targets.push(v.target(&node));
    }
    let (rss0, fds0) = (proc_status_kb(&pid, "VmRSS:"), std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count());

    // A reader that never stops: every file it reads must be one whole generation.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, torn, read_errors) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (stop, reads, torn, read_errors, targets) =
            (stop.clone(), reads.clone(), torn.clone(), read_errors.clone(), targets.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for t in targets.iter().step_by(7) {
                    reads.fetch_add(1, Ordering::Relaxed);
                    match std::fs::read_to_string(t.join("rotating")) {
                        Ok(c) => {
                            let g: u64 = c.get(4..12).and_then(|g| g.parse().ok()).unwrap_or(u64::MAX);
                            if c != value(g) {
                                torn.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // A swap must never make the file vanish or unreadable, even for an instant.
                        Err(_) => {
                            read_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        })
    };

    let started = Instant::now();
    let (mut changes, mut worst, mut late, mut n) = (0u64, Duration::ZERO, 0u64, 0u64);
    let (mut rss_max, mut fds_max) = (rss0, fds0);
    // (seconds since start, RSS kB, open fds), one sample per change; per-change landing times.
    let mut samples: Vec<(f64, u64, usize)> = Vec::new();
    let mut landed: Vec<f64> = Vec::new();
    while started.elapsed() < duration {
        n += 1;
        h.set_secret("kv-soak", "rotating", &value(n));
        let set_at = Instant::now();
        let want = value(n);
        // Every volume must show the change within one interval plus one cycle.
        loop {
            if behind(&targets, &want) == 0 {
                break;
            }
            if set_at.elapsed() > INTERVAL * 3 {
                late += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worst = worst.max(set_at.elapsed());
        landed.push(set_at.elapsed().as_secs_f64());
        changes += 1;
        let (rss, fds) =
            (proc_status_kb(&pid, "VmRSS:"), std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count());
        samples.push((started.elapsed().as_secs_f64(), rss, fds));
        rss_max = rss_max.max(rss);
        fds_max = fds_max.max(fds);
        tokio::time::sleep(CHANGE_EVERY.saturating_sub(set_at.elapsed())).await;
    }
    // After the last change: every file must reach the vault's value (nothing left behind).
    let want = value(n);
    let settle = Instant::now();
    let behind = loop {
        let behind = behind(&targets, &want);
        if behind == 0 || settle.elapsed() > INTERVAL * 3 {
            break behind;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let fds1 = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    println!(
        "soak: {volumes} volumes, {:.0} s, rotation every {} s, a change every {} s",
        duration.as_secs_f64(),
        INTERVAL.as_secs(),
        CHANGE_EVERY.as_secs()
    );
    println!(
        "  changes: {changes}, all landed on every volume within {:.2} s at worst; late (> {} s): {late}",
        worst.as_secs_f64(),
        (INTERVAL * 3).as_secs()
    );
    let (reads, torn, read_errors) =
        (reads.load(Ordering::Relaxed), torn.load(Ordering::Relaxed), read_errors.load(Ordering::Relaxed));
    println!("  reads: {reads}, torn reads: {torn}, read errors: {read_errors}");
    println!("  files behind the vault after the soak (3 intervals after the last change): {behind} of {volumes}");
    // RSS and descriptors over time: one line per minute (the sample nearest each minute mark).
    println!("  over time:    min   RSS MiB   open fds");
    let minutes = (started.elapsed().as_secs_f64() / 60.0).floor() as u64;
    for m in 0..=minutes {
        if let Some(s) =
            samples.iter().min_by(|a, b| (a.0 - m as f64 * 60.0).abs().total_cmp(&(b.0 - m as f64 * 60.0).abs()))
        {
            println!("               {m:>3}   {:>7.1}   {:>8}", s.1 as f64 / 1024.0, s.2);
        }
    }
    landed.sort_by(f64::total_cmp);
    let q = |p: f64| landed.get(((landed.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(0.0);
    println!(
        "  time until a change is on every volume: p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s",
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
    // Trend: the first minute after warm-up (the first 20% of the run, at most 60 s) against the last
    // minute. A leak shows as a ratio that keeps growing with the soak's length.
    let total = started.elapsed().as_secs_f64();
    let warm = (total * 0.2).min(60.0);
    let window = 60.0_f64.min((total - warm) / 2.0);
    let median = |from: f64, to: f64, f: &dyn Fn(&(f64, u64, usize)) -> f64| {
        let mut v: Vec<f64> = samples.iter().filter(|s| s.0 >= from && s.0 < to).map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let rss_first = median(warm, warm + window, &|s| s.1 as f64);
    let rss_last = median(total - window, total + 1.0, &|s| s.1 as f64);
    let fds_first = median(warm, warm + window, &|s| s.2 as f64);
    let fds_last = median(total - window, total + 1.0, &|s| s.2 as f64);
    let rss_ratio = if rss_first > 0.0 { rss_last / rss_first } else { f64::INFINITY };
    println!(
        "  driver RSS: {:.1} MiB after mounting; median {:.1} MiB in the first minute after warm-up ({warm:.0} s), {:.1} MiB in the last (ratio {rss_ratio:.2}; max {:.1}); open fds: {fds0} → {fds1} (median {fds_first:.0} → {fds_last:.0}, max {fds_max})",
        rss0 as f64 / 1024.0,
        rss_first / 1024.0,
        rss_last / 1024.0,
        rss_max as f64 / 1024.0
    );
    let checks = [
        ("every change landed within 3 intervals", late == 0),
        ("no torn read", torn == 0),
        ("no read error", read_errors == 0),
        ("no file behind the vault after the soak", behind == 0),
        ("reads happened", reads > 0),
        ("RSS flat after warm-up (last/first minute ≤ 1.25)", rss_ratio <= 1.25),
        ("open fds flat (last ≤ first + 2)", fds_last <= fds_first + 2.0),
    ];
    for (what, ok) in &checks {
        println!("  {} {what}", if *ok { "ok  " } else { "FAIL" });
    }
    let ok = checks.iter().all(|(_, ok)| *ok);
    println!("  result: {}", if ok { "PASS" } else { "FAIL" });
    if !ok {
        std::process::exit(1);
    }
}
