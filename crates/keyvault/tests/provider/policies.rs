//! Version policies (`objectVersionPolicy`, `objectNotAfter`) and failover vaults
//! (`failoverKeyvaultNames`) against the emulator.

use super::*;

fn text(r: &keyvault::MountResponse, path: &str) -> String {
    String::from_utf8(file(r, path).contents.expose_secret().to_vec()).unwrap()
}

fn rfc3339(t: i64) -> String {
    jiff::Timestamp::from_second(t).unwrap().to_string()
}

#[tokio::test]
async fn latest_enabled_skips_disabled_expired_and_not_yet_valid_versions() {
    let (h, p) = setup(|_| {}).await;
    // Upstream's behaviour (and ours without a policy): the current version, here disabled: 403.
    let e = p.mount(request(&objects(&["objectName: staged\nobjectType: secret"]), &[], SP)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden, "{e}");
    let r = p
        .mount(request(
            &objects(&["objectName: staged\nobjectType: secret\nobjectVersionPolicy: latestEnabled"]),
            &[],
            SP,
        ))
        .await
        .unwrap();
    assert_eq!(text(&r, "staged"), "s1");
    let v1 = h.secret_versions("kv1", "staged")[0].0.clone();
    assert_eq!(r.object_versions["secret/staged"], v1, "the pod status names the version served");
}

#[tokio::test]
async fn not_after_serves_the_newest_enabled_version_created_at_or_before_the_time() {
    let (h, p) = setup(|_| {}).await;
    let versions = h.secret_versions("kv1", "history");
    // history: h1, h2, h3 (disabled), h4, h5 with increasing creation times.
    let mount = |t: i64, extra: &'static str| {
        let o = format!("objectName: history\nobjectType: secret\nobjectNotAfter: \"{}\"{extra}", rfc3339(t));
        p.mount(request(&objects(&[o.as_str()]), &[], SP))
    };
    let r = mount(versions[1].1, "").await.unwrap();
    assert_eq!(text(&r, "history"), "h2");
    // h3 is disabled: the time of h3 still serves h2.
    let r = mount(versions[2].1, "").await.unwrap();
    assert_eq!(text(&r, "history"), "h2");
    let r = mount(versions[4].1 + 3600, "").await.unwrap();
    assert_eq!(text(&r, "history"), "h5");
    // With a history: the chosen version first, then older enabled ones.
    let r = mount(versions[3].1, "\nobjectVersionHistory: 2").await.unwrap();
    assert_eq!((text(&r, "history/0"), text(&r, "history/1")), ("h4".into(), "h2".into()));
    // Before the first version: a precise not-found naming the policy.
    let e = mount(versions[0].1 - 1, "").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("objectName:history") && e.message.contains("created at or before"), "{e}");
}

#[tokio::test]
async fn a_policy_lists_versions_through_the_shared_fetches_and_works_for_keys() {
    let (h, p) = setup(|_| {}).await;
    h.reset_stats();
    let objs = objects(&["objectName: rotated\nobjectType: key\nobjectVersionPolicy: latestEnabled"]);
    let (a, b) = tokio::join!(p.mount(request(&objs, &[], SP)), p.mount(request(&objs, &[], SP)));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.object_versions, b.object_versions);
    assert_eq!(a.object_versions["key/rotated"], h.latest_version("kv1", "keys", "rotated").unwrap());
    let lists = h.count(|k| k.vault == "kv1" && k.object == "rotated" && k.status == 200);
    assert_eq!(lists, 2, "two concurrent mounts: one list and one GET between them");
}

#[tokio::test]
async fn a_policy_with_a_pinned_version_or_a_bad_value_is_refused_before_any_request() {
    let (h, p) = setup(|_| {}).await;
    h.reset_stats();
    let cases = [
        ("objectName: staged\nobjectVersion: abc\nobjectVersionPolicy: latestEnabled", "cannot be combined"),
        ("objectName: staged\nobjectVersionPolicy: newest", "invalid objectVersionPolicy"),
        ("objectName: staged\nobjectNotAfter: yesterday", "invalid objectNotAfter"),
    ];
    for (o, want) in cases {
        let e = p.mount(request(&objects(&[&format!("{o}\nobjectType: secret")]), &[], SP)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(e.message.contains(want), "{o}: {e}");
    }
    assert_eq!(h.count(|k| k.vault == "kv1"), 0);
}

const FAILOVER: (&str, &str) = ("failoverKeyvaultNames", "kv2");

#[tokio::test]
async fn an_outage_of_the_vault_fails_over_in_order_and_the_primary_is_used_again_when_it_recovers() {
    let (h, p) = setup(|c| {
        c.retry.max_attempts = 2;
        c.failover_backoff = Duration::from_millis(300);
        // Every mount asks a vault (no result shared from the mount before).
        c.dedup_window = Duration::ZERO;
    })
    .await;
    let objs = objects(&["objectName: db-password\nobjectType: secret"]);
    let r = p.mount(request(&objs, &[FAILOVER], SP)).await.unwrap();
    assert_eq!(text(&r, "db-password"), "s3cr3t-db");
    assert_eq!((r.served[0].vault.as_str(), r.served[0].failover), ("kv1", false));

    h.set_faults("kv1", Faults { outage: true, ..Faults::default() });
    let r = p.mount(request(&objs, &[FAILOVER], SP)).await.unwrap();
    assert_eq!(text(&r, "db-password"), "s3cr3t-db-replica");
    assert_eq!((r.served[0].vault.as_str(), r.served[0].failover), ("kv2", true));
    // While the primary backs off, mounts go straight to the failover vault.
    h.reset_stats();
    let r = p.mount(request(&objs, &[FAILOVER], SP)).await.unwrap();
    assert_eq!(r.served[0].vault, "kv2");
    assert_eq!(h.count(|k| k.vault == "kv1"), 0, "the primary is not asked during its back-off");

    h.clear_faults("kv1");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = p.mount(request(&objs, &[FAILOVER], SP)).await.unwrap();
    assert_eq!((r.served[0].vault.as_str(), text(&r, "db-password").as_str()), ("kv1", "s3cr3t-db"));
}

#[tokio::test]
async fn a_hung_vault_fails_over_before_the_deadline() {
    let (h, p) = setup(|_| {}).await;
    h.set_faults("kv1", Faults { latency_ms: 60_000, ..Faults::default() });
    let mut req = request(&objects(&["objectName: db-password\nobjectType: secret"]), &[FAILOVER], SP);
    req.deadline = Some(Instant::now() + Duration::from_secs(8));
    let r = p.mount(req).await.unwrap();
    assert_eq!(r.served[0].vault, "kv2");
}

#[tokio::test]
async fn not_found_and_forbidden_stay_errors_and_never_fail_over() {
    let (h, p) = setup(|_| {}).await;
    h.reset_stats();
    let e = p
        .mount(request(&objects(&["objectName: only-in-kv2\nobjectType: secret"]), &[FAILOVER], SP))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    // sp2 may not list: kv1 answers 403 for a version list.
    let e = p
        .mount(request(
            &objects(&["objectName: staged\nobjectType: secret\nobjectVersionPolicy: latestEnabled"]),
            &[FAILOVER],
            &[("clientid", "sp2"), ("clientsecret", "sp2-secret")],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden, "{e}");
    assert_eq!(h.count(|k| k.vault == "kv2"), 0, "a 404 or 403 never asks the failover vault");
}

#[tokio::test]
async fn failover_vault_names_are_checked() {
    let (_h, p) = setup(|_| {}).await;
    let objs = objects(&["objectName: db-password\nobjectType: secret"]);
    for (value, want) in [("kv2 kv1", "twice"), ("a,b,c,d,e", "at most 4"), ("kv_2", "Invalid vault name")] {
        let e = p.mount(request(&objs, &[("failoverKeyvaultNames", value)], SP)).await.unwrap_err();
        assert!(e.message.contains(want), "{value}: {e}");
    }
}

#[tokio::test]
async fn an_endless_version_history_is_read_to_a_bound_not_to_its_end() {
    let (h, p) = setup(|_| {}).await;
    let pages = keyvault::vault::MAX_VERSION_PAGES;
    for i in 0..pages * 25 + 1 {
        h.set_secret("kv1", "churned", &format!("v{i}"));
    }
    h.reset_stats();
    let objs = objects(&["objectName: churned\nobjectType: secret\nobjectVersionPolicy: latestEnabled"]);
    let e = p.mount(request(&objs, &[], SP)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
    assert!(e.message.contains("objectName:churned") && e.message.contains("more than"), "{e}");
    let listed = h.count(|k| k.vault == "kv1" && k.object == "churned" && k.status == 200);
    assert_eq!(listed as usize, pages, "exactly the bound's pages were read");
}
