//! Metrics after a scripted mount / failed mount / rotation / unmount sequence, health endpoints, and
//! `keyvault-csi provider` serving the v1alpha1 protocol to the driver's external-provider client.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use emulator::{Emulator, Handle, Seed};
use support::*;

const TENANT: &str = "99999999-2222-3333-4444-555555555555";

async fn emulator() -> Handle {
    let seed = Seed::from_yaml(&format!(
        r#"
tenants:
  - id: {TENANT}
    applications:
      - {{ clientId: sp, objectId: sp-oid, clientSecret: metrics-client-secret }}
vaults:
  - name: kv-metrics
    tenant: {TENANT}
    access:
      - {{ principal: sp-oid, secrets: [get] }}
    secrets:
      - {{ name: db-password, value: "metrics-secret-value-1" }}
"#
    ))
    .unwrap();
    Emulator::builder().seed(seed).start().await.unwrap()
}

#[tokio::test]
async fn metrics_after_mount_failure_rotation_and_unmount() {
    let h = emulator().await;
    let node = Node::new();
    let objects = "array:\n  - |\n    objectName: db-password\n    objectType: secret\n";
    node.add_class(
        "default",
        "azure-m",
        "azure",
        &[("keyvaultName", "kv-metrics"), ("tenantId", TENANT), ("objects", objects)],
    );
    let mut flags = azure_flags(&node, &h);
    flags.push("--enable-secret-rotation".into());
    flags.push("--rotation-poll-interval=200ms".into());
    flags.push("--rotation-poller=false".into());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let driver = DriverProcess::start(&node, &flags).await;
    let addr = driver.metrics_addr.clone();
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert_eq!(http_get(&addr, "/readyz").0, 200);

    let mut client = driver.node_client().await;
    let mut vol = PodVolume::new("m-0", "azure-m");
    vol.secrets =
        BTreeMap::from([("clientid".into(), "sp".into()), ("clientsecret".into(), "metrics-client-secret".into())]);
    vol.publish(&node, &mut client).await.unwrap();
    PodVolume::new("m-1", "no-such-class").publish(&node, &mut client).await.unwrap_err();
    tokio::time::sleep(Duration::from_millis(250)).await;
    h.set_secret("kv-metrics", "db-password", "metrics-secret-value-2");
    vol.publish(&node, &mut client).await.unwrap();
    assert_eq!(std::fs::read_to_string(vol.target(&node).join("db-password")).unwrap(), "metrics-secret-value-2");

    let (status, m) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&m, r#"node_publish_total{provider="azure",os_type="linux"}"#), 2.0);
    assert_eq!(
        sample(
            &m,
            r#"node_publish_error_total{provider="",error_type="SecretProviderClassNotFound",os_type="linux",error_class="not_found"}"#
        ),
        1.0
    );
    assert_eq!(sample(&m, r#"rotation_reconcile_total{provider="azure",os_type="linux",rotated="true"}"#), 1.0);
    assert_eq!(sample(&m, r#"rotation_reconcile_duration_sec_count{os_type="linux"}"#), 1.0);
    assert!(m.contains(r#"rotation_reconcile_duration_sec_bucket{le="0.1",os_type="linux"}"#), "upstream buckets");
    assert!(m.contains(r#"rotation_reconcile_duration_sec_bucket{le="2.0",os_type="linux"}"#));
    assert_eq!(sample(&m, "mounted_volumes"), 1.0);
    assert!(sample(&m, "rotation_lag_seconds") < 5.0);
    let kv = r#"keyvault_request_count{object_type="secret",object_name="db-password",error="",error_class="",os_type="linux",provider="azure",service_name="csi-secrets-store-provider-azure"}"#;
    assert_eq!(sample(&m, kv), 2.0);
    assert!(m.contains(r#"keyvault_request_bucket{le="0.1",object_type="secret""#), "provider buckets");
    assert_eq!(sample(&m, r#"grpc_request_count{grpc_method="/v1alpha1.CSIDriverProvider/Mount",grpc_code="Ok""#), 2.0);
    let port = h.https_addr.port();
    assert_eq!(
        sample(
            &m,
            &format!(
                r#"keyvault_requests_total{{vault="kv-metrics.vault.azure.net:{port}",status="200",error_class=""}}"#
            )
        ),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            &format!(
                r#"keyvault_requests_total{{vault="kv-metrics.vault.azure.net:{port}",status="401",error_class="auth"}}"#
            )
        ),
        1.0
    );
    assert_eq!(sample(&m, r#"keyvault_token_requests_total{result="acquired"}"#), 1.0);
    assert_eq!(sample(&m, r#"keyvault_token_requests_total{result="cache_hit"}"#), 1.0);
    assert_eq!(sample(&m, r#"keyvault_fetch_dedup_total{result="miss"}"#), 2.0);
    assert!(m.contains("keyvault_rate_limiter_wait_seconds_total"));
    assert!(m.trim_end().ends_with("# EOF"));

    vol.unpublish(&node, &mut client).await.unwrap();
    let (_, m) = http_get(&addr, "/metrics");
    assert_eq!(sample(&m, r#"node_unpublish_total{os_type="linux"}"#), 1.0);
    assert_eq!(sample(&m, "mounted_volumes"), 0.0);
    assert!(!m.contains("metrics-secret-value"), "no secret value in metrics");

    // One info line per mount and per rotation, with pod, namespace, class, duration and file count.
    let logs = driver.logs();
    let mount_lines: Vec<&str> = logs.lines().filter(|l| l.contains("node publish volume complete")).collect();
    assert_eq!(mount_lines.len(), 2, "{logs}");
    for l in &mount_lines {
        for field in [r#"pod="m-0""#, r#"namespace="default""#, r#"class="azure-m""#, "duration_s=", "files=1"] {
            assert!(l.contains(field), "{field} missing in {l}");
        }
    }
    driver.assert_logs_free_of(&["metrics-secret-value-1", "metrics-secret-value-2", "metrics-client-secret"]);
}

#[tokio::test]
async fn json_logs_carry_the_volume_fields() {
    let node = Node::new();
    let provider = TestProvider::start(&node.path("providers"), "p").await;
    provider.set_files(&[("a", 0o644, "json-log-secret")], "v1");
    node.add_class("default", "spc", "p", &[("x", "y")]);
    let driver = DriverProcess::start(&node, &["--log-format-json"]).await;
    PodVolume::new("j-0", "spc").publish(&node, &mut driver.node_client().await).await.unwrap();
    let line = driver.logs().lines().find(|l| l.contains("node publish volume complete")).map(str::to_string).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["span"]["pod"], "j-0");
    assert_eq!(v["span"]["class"], "spc");
    assert_eq!(v["files"], 1);
    driver.assert_logs_free_of(&["json-log-secret"]);
}

#[tokio::test]
async fn the_provider_subcommand_serves_v1alpha1_to_the_external_provider_client() {
    let h = emulator().await;
    let node = Node::new();
    let socket = node.path("providers/azure.sock");
    let provider_log = node.path("provider.log");
    let log = std::fs::File::create(node.path("provider.log")).unwrap();
    let mut child = std::process::Command::new(binary())
        .arg("provider")
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .arg("--metrics-addr=127.0.0.1:0")
        .arg("--healthz-port=0")
        .args(azure_flags(&node, &h))
        .arg("-v=5")
        .stderr(log)
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The socket exists before the line naming the addresses is written: wait for the line.
    for _ in 0..200 {
        if std::fs::read_to_string(&provider_log).unwrap_or_default().contains("metrics=") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = std::fs::read_to_string(&provider_log).unwrap();
    let metrics = logged_addr(&logs, "metrics=").expect("metrics address logged");
    let healthz = logged_addr(&logs, "healthz=").expect("healthz address logged");
    let client = secrets_store::external::ExternalProvider::new("azure", &socket, 4 << 20);
    let version = client.version().await.unwrap();
    assert_eq!(version.version, "v1alpha1");

    let ch = channel(&socket).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let status =
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    use secrets_store::provider::Provider;
    let attributes: BTreeMap<String, String> = [
        ("csi.storage.k8s.io/pod.name", "p"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("keyvaultName", "kv-metrics"),
        ("tenantId", TENANT),
        (
            "objects",
            "array:\n  - |\n    objectName: db-password\n    objectType: secret\n    filePermission: \"0400\"\n",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let secrets = BTreeMap::from([
        ("clientid".to_string(), "sp".to_string()),
        ("clientsecret".to_string(), "metrics-client-secret".to_string()),
    ]);
    let req = secrets_store::provider::MountRequest {
        attributes: attributes.clone(),
        secrets: Some(secrets_store::redact::secret_map(secrets)),
        target_path: "/unused".into(),
        permission: 0o644,
        current_object_versions: BTreeMap::new(),
        deadline: None,
        background: false,
        cycle: None,
        fresh: false,
    };
    let resp = client.mount(req.clone()).await.unwrap();
    assert_eq!(resp.files.len(), 1);
    assert_eq!((resp.files[0].path.as_str(), resp.files[0].mode), ("db-password", 0o400));
    assert_eq!(secrets_store::redact::ExposeSecret::expose_secret(&resp.files[0].contents), b"metrics-secret-value-1");
    assert_eq!(
        resp.object_versions["secret/db-password"],
        h.latest_version("kv-metrics", "secrets", "db-password").unwrap()
    );

    let mut bad = req;
    bad.secrets = None;
    let err = client.mount(bad).await.unwrap_err();
    assert!(err.message.contains("nodePublishSecretRef secret is not set"), "{}", err.message);

    let (status, body) = http_get(&healthz, "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (_, m) = http_get(&metrics, "/metrics");
    assert_eq!(sample(&m, r#"grpc_request_count{grpc_method="/v1alpha1.CSIDriverProvider/Mount",grpc_code="Ok""#), 1.0);
    assert_eq!(
        sample(&m, r#"grpc_request_count{grpc_method="/v1alpha1.CSIDriverProvider/Mount",grpc_code="InvalidArgument""#),
        1.0
    );
    let logs = std::fs::read_to_string(node.path("provider.log")).unwrap();
    assert!(!logs.contains("metrics-secret-value-1") && !logs.contains("metrics-client-secret"));
    drop((client, health));
    // Let the dropped channels' tasks close their connections (this runtime is single-threaded).
    tokio::time::sleep(Duration::from_millis(100)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        // Generous for a loaded runner: what is tested is that it exits, not how fast.
        assert!(started.elapsed() < Duration::from_secs(30), "exits once its clients are gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success());
    assert!(!socket.exists(), "removes its socket");
}

/// Every metric family the driver has, after a day's worth of events (a mount with a certificate, a
/// mount of a missing class, a refused rotation); the names are written to
/// `target/metric-names.txt`, which the chart's tests check every alert and dashboard query against
/// (`make chart` runs this test first): the alerts are tested against what the binary really exposes.
#[tokio::test]
async fn every_metric_family_after_mounts_errors_and_a_refused_rotation() {
    let seed = Seed::from_yaml(&format!(
        r#"
tenants:
  - id: {TENANT}
    applications:
      - {{ clientId: sp, objectId: sp-oid, clientSecret: families-client-secret }}
vaults:
  - name: kv-families
    tenant: {TENANT}
    access:
      - {{ principal: sp-oid, secrets: [get], certificates: [get] }}
    secrets:
      - {{ name: db-password, value: "families-secret-value" }}
    keys:
      - {{ name: signing, kty: EC, curve: P-256 }}
    certificates:
      - {{ name: tls, subject: CN=tls.example.com }}
"#
    ))
    .unwrap();
    let h = Emulator::builder().seed(seed).start().await.unwrap();
    let node = Node::new();
    let objects = |extra: &str| {
        format!(
            "array:\n  - |\n    objectName: db-password\n    objectType: secret\n  - |\n    objectName: tls\n    objectType: cert\n{extra}"
        )
    };
    let class = |objs: &str| {
        node.add_class(
            "default",
            "azure-f",
            "azure",
            &[("keyvaultName", "kv-families"), ("tenantId", TENANT), ("objects", objs)],
        )
    };
    class(&objects(""));
    let mut flags = azure_flags(&node, &h);
    flags.extend(["--enable-secret-rotation".into(), "--rotation-poll-interval=200ms".into()]);
    flags.push("--rotation-poller=false".into());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let driver = DriverProcess::start(&node, &flags).await;
    let mut client = driver.node_client().await;
    let mut vol = PodVolume::new("f-0", "azure-f");
    vol.secrets =
        BTreeMap::from([("clientid".into(), "sp".into()), ("clientsecret".into(), "families-client-secret".into())]);
    vol.publish(&node, &mut client).await.unwrap();
    PodVolume::new("f-1", "no-such-class").publish(&node, &mut client).await.unwrap_err();
    tokio::time::sleep(Duration::from_millis(250)).await;
    vol.publish(&node, &mut client).await.unwrap(); // a rotation
    // The identity may not read keys: the class gains one, and the republish's refresh is refused
    // (the files stay; kubelet sees success, as upstream masks a republish failure).
    class(&objects("  - |\n    objectName: signing\n    objectType: key\n"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    vol.publish(&node, &mut client).await.unwrap();

    let (_, m) = http_get(&driver.metrics_addr, "/metrics");
    let mut names = std::collections::BTreeSet::new();
    for line in m.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split(' ');
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => names.extend([format!("{name}_total")]),
            "histogram" => names.extend(["_bucket", "_count", "_sum"].map(|s| format!("{name}{s}"))),
            _ => names.extend([name.to_string()]),
        }
    }
    for family in [
        "node_publish_total",
        "node_publish_error_total",
        "node_publish_duration_seconds_bucket",
        "rotation_reconcile_total",
        "rotation_reconcile_error_total",
        "keyvault_request_count",
        "keyvault_requests_total",
        "grpc_request_bucket",
        "certificate_expiry_timestamp_seconds",
        "mounted_volumes",
        "rotation_lag_seconds",
        "api_writes_pending",
        "api_writes_oldest_pending_seconds",
    ] {
        assert!(names.contains(family), "{family} missing from {names:?}");
    }
    let refused = r#"rotation_reconcile_error_total{provider="azure",error_type="ProviderError",os_type="linux",rotated="true",error_class="auth"}"#;
    assert_eq!(sample(&m, refused), 1.0, "{m}");
    let cert = m.lines().find(|l| l.starts_with("certificate_expiry_timestamp_seconds{")).unwrap();
    assert!(
        cert.starts_with(r#"certificate_expiry_timestamp_seconds{namespace="default",class="azure-f",object="tls"} "#)
    );
    let not_after: f64 = cert.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(not_after > now + 86_400.0, "a fresh certificate: {cert}");
    assert!(!m.contains("families-secret-value") && !m.contains("BEGIN"), "no value in metrics");

    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/metric-names.txt");
    // `target/` of the checkout, which `make chart` reads: absent when CARGO_TARGET_DIR builds elsewhere.
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, names.into_iter().collect::<Vec<_>>().join("\n") + "\n").unwrap();
}
