//! What one crossing of the process boundary costs, next to the isolated column's publishes: a bare
//! v1alpha1 `Version` round trip on the internal socket (the floor any RPC design pays per mount), and
//! the provider's own handling time per `Mount` (its "mount served" log line), so the difference
//! between the isolated and the in-process column can be split into transport and work.

use super::*;
use csi_proto::provider::{VersionRequest, csi_driver_provider_client::CsiDriverProviderClient};

const CALLS: usize = 1000;
/// Rounds of [`CALLS`]: one round's p50 moved from 0.06 to 0.15 ms between two runs on one idle VM, so
/// the figure is the median of the rounds' p50s, printed with their range.
const ROUNDS: usize = 5;

/// Runs [`ROUNDS`] × [`CALLS`] `Version` calls against `socket`, with the provider process's CPU around
/// them, and reads the provider's per-`Mount` durations from its log.
pub async fn measure(socket: &Path, provider: &Proc, provider_log: &Path) -> Value {
    let mut client = CsiDriverProviderClient::new(channel(socket).await.expect("provider socket"));
    let before = cpu_secs(provider.pid());
    let mut latencies = Vec::with_capacity(ROUNDS * CALLS);
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let mut round = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let t = Instant::now();
            client.version(VersionRequest { version: "v1alpha1".into() }).await.expect("Version");
            round.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        round.sort_by(f64::total_cmp);
        rounds.push(percentile(&round, 50.0));
        latencies.extend(round);
    }
    let cpu_ms = (cpu_secs(provider.pid()) - before) * 1000.0 / (ROUNDS * CALLS) as f64;
    latencies.sort_by(f64::total_cmp);
    let mut sorted_rounds = rounds.clone();
    sorted_rounds.sort_by(f64::total_cmp);
    let log = std::fs::read_to_string(provider_log).unwrap_or_default();
    let mut handled: Vec<f64> = log.lines().filter_map(mount_duration_ms).collect();
    handled.sort_by(f64::total_cmp);
    json!({
        "version_rpc": { "calls": ROUNDS * CALLS, "p50_ms": sorted_rounds[ROUNDS / 2], "round_p50_ms": rounds,
                         "p99_ms": percentile(&latencies, 99.0), "provider_cpu_ms_per_call": cpu_ms },
        "mount_handler": { "mounts": handled.len(), "p50_ms": percentile(&handled, 50.0), "p99_ms": percentile(&handled, 99.0) },
    })
}

/// `duration_s=0.000123` of a "mount served" line, in ms.
fn mount_duration_ms(line: &str) -> Option<f64> {
    if !line.contains("mount served") {
        return None;
    }
    let rest = line.split("duration_s=").nth(1)?;
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-')).unwrap_or(rest.len());
    rest[..end].parse::<f64>().ok().map(|s| s * 1000.0)
}
