//! Rotation of 500 volumes: time until every file changed, CPU per minute, with kubelet's
//! republish driven the same way for every column.

use super::*;

/// Reads `path` under every volume's target until all hold `want`; the time it took from `since`.
pub async fn all_changed(
    setup: &Setup,
    vols: &[PodVolume],
    file: &str,
    want: &[u8],
    since: Instant,
    limit: Duration,
) -> Value {
    let mut pending: Vec<PathBuf> = vols.iter().map(|v| v.target(&setup.node).join(file)).collect();
    let mut firsts = Vec::new();
    while !pending.is_empty() && since.elapsed() < limit {
        pending.retain(|p| {
            if std::fs::read(p).is_ok_and(|c| c == want) {
                firsts.push(since.elapsed().as_secs_f64());
                false
            } else {
                true
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    firsts.sort_by(f64::total_cmp);
    json!({ "unchanged": pending.len(), "changed_at_s": firsts })
}

/// 500 volumes published; the secret changes; kubelet republishes every volume every `interval` (as
/// `requiresRepublish` makes it do) for both drivers; ours also runs its own poller at `interval`.
pub async fn rotation(column: Column, h: &emulator::Handle, uids: &[(String, String)], token: &str) -> Value {
    const INTERVAL: Duration = Duration::from_secs(10);
    const WINDOW: Duration = Duration::from_secs(60);
    let setup = Setup::start(column, "10s", column.azure().then_some(h)).await;
    reset_api();
    let vols: Vec<PodVolume> =
        uids.iter().map(|(p, u)| volume(p, u, column.class(), column.azure().then_some(token))).collect();
    let publish = drive(&setup, calls(&setup, &vols, true), 16).await;
    assert!(publish.errors.is_empty(), "{}: rotation publish errors {:?}", column.name(), publish.errors);
    let (file, want): (&str, &[u8]) = match column {
        Column::OursAzure | Column::OursAzureIsolated => ("s0", b"rotated-0"),
        _ => ("foo", b"rotated"),
    };
    // Change the secret.
    let since = Instant::now();
    match column {
        Column::OursAzure | Column::OursAzureIsolated => {
            h.set_secret("kv-bench", "s0", "rotated-0");
        }
        _ => {
            let (code, body) = http_get(PROVIDER_HTTP, "/rotation?rotated=true");
            assert_eq!(code, 200, "mock provider rotation switch: {body}");
        }
    }
    let cpu0 = setup.cpu();
    let api0 = api_requests_by_kind();
    // kubelet: a republish wave over every volume every INTERVAL, for the whole window.
    let waves = {
        let reqs: Vec<csi::NodePublishVolumeRequest> = vols.iter().map(|v| v.publish_request(&setup.node)).collect();
        let socket = setup.socket.clone();
        tokio::spawn(async move {
            let mut errors = BTreeMap::<String, usize>::new();
            let start = Instant::now();
            while start.elapsed() < WINDOW {
                let wave = Instant::now();
                let mut tasks = Vec::new();
                for w in 0..16 {
                    let mut client = csi::node_client::NodeClient::new(channel(&socket).await.unwrap());
                    let mine: Vec<_> = reqs.iter().skip(w).step_by(16).cloned().collect();
                    tasks.push(tokio::spawn(async move {
                        let mut errs = Vec::new();
                        for r in mine {
                            if let Err(e) = client.node_publish_volume(r).await {
                                errs.push(format!("{:?}", e.code()));
                            }
                        }
                        errs
                    }));
                }
                for t in tasks {
                    for e in t.await.unwrap() {
                        *errors.entry(e).or_default() += 1;
                    }
                }
                tokio::time::sleep(INTERVAL.saturating_sub(wave.elapsed())).await;
            }
            errors
        })
    };
    let changed = all_changed(&setup, &vols, file, want, since, WINDOW).await;
    let republish_errors = waves.await.unwrap();
    let elapsed = since.elapsed().as_secs_f64();
    let cpu_per_min = (setup.cpu() - cpu0) / elapsed * 60.0;
    let api_by_kind = delta(&api0, &api_requests_by_kind());
    let api: f64 = api_by_kind.values().sum();
    let rss = setup.rss();
    // Reset for the next column (the mock provider of the next column starts fresh).
    if column.azure() {
        h.set_secret("kv-bench", "s0", "value-0");
    }
    drive(&setup, calls(&setup, &vols, false), 16).await;
    json!({
        "volumes": vols.len(),
        "interval_s": INTERVAL.as_secs(),
        "window_s": elapsed,
        "cpu_s_per_min": cpu_per_min,
        "api_requests_per_min": api / elapsed * 60.0,
        "api_requests_by_kind": api_by_kind,
        "republish_errors": republish_errors,
        "files": changed,
        "rss_mib": rss,
    })
}
