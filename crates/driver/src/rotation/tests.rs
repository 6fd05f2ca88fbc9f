use super::*;

fn volume(age: Duration, now: Instant) -> Volume {
    let mut v = Volume::fresh(crate::publish::tests::params("/t"), "fake".into(), Default::default());
    v.last_fetch = now - age;
    v
}

fn plan(vols: &[(&str, Volume)], now: Instant, interval: Duration) -> Option<Vec<String>> {
    let owned: Vec<(PathBuf, Volume)> = vols.iter().map(|(t, v)| (PathBuf::from(t), v.clone())).collect();
    plan_cycle(owned.iter().map(|(t, v)| (t, v)), now, |_| interval, |_| true)
        .map(|ts| ts.into_iter().map(|t| t.display().to_string()).collect())
}

#[tokio::test(start_paused = true)]
async fn a_cycle_starts_when_one_volume_is_a_full_interval_old_and_takes_the_half_old_along() {
    tokio::time::advance(Duration::from_secs(600)).await;
    let now = Instant::now();
    let i = Duration::from_secs(120);
    let young = ("/young", volume(Duration::from_secs(10), now));
    let half = ("/half", volume(Duration::from_secs(55), now));
    let old = ("/old", volume(Duration::from_secs(120), now));
    assert_eq!(plan(&[young.clone(), half.clone()], now, i), None, "nobody is due");
    let mut due = plan(&[young, half, old], now, i).unwrap();
    due.sort();
    assert_eq!(due, ["/half", "/old"], "50 s (half minus a 10 s tick) joins; 10 s does not");
}

#[tokio::test(start_paused = true)]
async fn a_failed_volume_waits_out_its_backoff_and_an_inactive_pod_is_left_alone() {
    tokio::time::advance(Duration::from_secs(600)).await;
    let now = Instant::now();
    let i = Duration::from_secs(120);
    let mut failed = volume(Duration::from_secs(300), now);
    failed.retry_at = Some(now + Duration::from_secs(5));
    assert_eq!(plan(&[("/f", failed.clone())], now, i), None);
    assert_eq!(plan(&[("/f", failed)], now + Duration::from_secs(5), i).unwrap(), ["/f"]);
    let owned = [(PathBuf::from("/t"), volume(i, now))];
    assert_eq!(plan_cycle(owned.iter().map(|(t, v)| (t, v)), now, |_| i, |_| false), None);
}

#[tokio::test(start_paused = true)]
async fn each_volume_is_due_on_its_own_interval_and_joins_by_it() {
    tokio::time::advance(Duration::from_secs(3600)).await;
    let now = Instant::now();
    let vols = [
        (PathBuf::from("/hot"), volume(Duration::from_secs(30), now)),
        (PathBuf::from("/static"), volume(Duration::from_secs(600), now)),
        (PathBuf::from("/node"), volume(Duration::from_secs(70), now)),
    ];
    let interval = |t: &PathBuf| match t.to_str() {
        Some("/hot") => Duration::from_secs(30),
        Some("/static") => Duration::from_secs(86_400),
        _ => Duration::from_secs(120),
    };
    let mut due = plan_cycle(vols.iter().map(|(t, v)| (t, v)), now, interval, |_| true).unwrap();
    due.sort();
    assert_eq!(due, [PathBuf::from("/hot"), PathBuf::from("/node")], "the 24 h class waits; 70 s joins a 2 m class");
    let no_hot = &vols[1..];
    assert_eq!(plan_cycle(no_hot.iter().map(|(t, v)| (t, v)), now, interval, |_| true), None);
}

#[test]
fn node_phases_spread_over_the_interval_and_stay_put() {
    let i = Duration::from_secs(120);
    let phases: Vec<Duration> = (0..1000).map(|n| node_phase(&format!("aks-nodepool1-{n}-vmss"), i)).collect();
    assert!(phases.iter().all(|p| *p < i));
    let mut per_tenth = [0usize; 10];
    for p in &phases {
        per_tenth[(p.as_millis() * 10 / i.as_millis()) as usize] += 1;
    }
    assert!(per_tenth.iter().all(|n| (60..=140).contains(n)), "even across the interval: {per_tenth:?}");
    assert_eq!(node_phase("node-a", i), node_phase("node-a", i));
}

#[test]
fn backoff_doubles_from_one_tick_up_to_one_interval() {
    let i = Duration::from_secs(120);
    assert_eq!(poll_tick(i), Duration::from_secs(10));
    assert_eq!(backoff(i, 1), Duration::from_secs(20));
    assert_eq!(backoff(i, 2), Duration::from_secs(40));
    assert_eq!(backoff(i, 5), i);
    assert_eq!(backoff(i, u32::MAX), i);
    assert_eq!(poll_tick(Duration::from_millis(500)), Duration::from_millis(100));
}
