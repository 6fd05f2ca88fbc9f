//! The driver against a (fake) Kubernetes API: classes resolved per namespace, pod statuses recorded
//! as upstream writes them, and a clear failure (not a crash) when the API cannot be reached.

mod support;

#[path = "support/kube.rs"]
mod kube_fake;

use kube_fake::{FakeApi, class, write_kubeconfig};
use serde_json::json;
use support::*;
use tonic::Code;

const SPCPS: &str = "secretproviderclasspodstatuses";
const GV: &str = "secrets-store.csi.x-k8s.io/v1";

async fn setup() -> (Node, TestProvider, FakeApi, DriverProcess) {
    let node = Node::new();
    let provider = TestProvider::start(&node.path("providers"), "e2e-provider").await;
    let api = FakeApi::start().await;
    let kubeconfig = node.path("kubeconfig");
    api.kubeconfig(&kubeconfig);
    // No --class-dir: classes come from the API. The harness passes --class-dir, so start by hand.
    let driver = DriverProcess::start_with(&node, &[&format!("--kubeconfig={}", kubeconfig.display())], false).await;
    (node, provider, api, driver)
}

#[tokio::test]
async fn classes_come_from_the_pods_namespace() {
    let (node, provider, api, driver) = setup().await;
    provider.set_files(&[("foo", 0o644, "secret")], "v1");
    api.put("secretproviderclasses", class("default", "e2e-provider", "e2e-provider", &[("where", "default")]));
    api.put("secretproviderclasses", class("test-ns", "e2e-provider", "e2e-provider", &[("where", "test-ns")]));
    let mut client = driver.node_client().await;
    let mut vol = PodVolume::new("p", "e2e-provider");
    vol.namespace = "test-ns".into();
    vol.publish(&node, &mut client).await.unwrap();
    assert!(provider.last_request().attributes.contains(r#""where":"test-ns""#));

    let mut missing = PodVolume::new("p2", "e2e-provider-sync");
    missing.namespace = "negative-test-ns".into();
    let err = missing.publish(&node, &mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.message(),
        "failed to get secretproviderclass negative-test-ns/e2e-provider-sync, error: SecretProviderClass.secrets-store.csi.x-k8s.io \"e2e-provider-sync\" not found"
    );
}

#[tokio::test]
async fn pod_status_is_recorded_updated_taken_over_and_deleted() {
    let (node, provider, api, driver) = setup().await;
    provider.set_files(&[("b", 0o644, "1"), ("a", 0o644, "2")], "v1");
    api.put("secretproviderclasses", class("default", "spc", "e2e-provider", &[("x", "y")]));
    // A status left by another node for the same pod name (a StatefulSet pod that moved here).
    api.put(SPCPS, json!({
        "apiVersion": GV, "kind": "SecretProviderClassPodStatus",
        "metadata": { "name": "web-0-default-spc", "namespace": "default", "labels": { "internal.secrets-store.csi.k8s.io/node-name": "old-node" } },
        "status": { "podName": "web-0", "mounted": true }
    }));
    let mut client = driver.node_client().await;
    let vol = PodVolume::new("web-0", "spc");
    vol.publish(&node, &mut client).await.unwrap();
    // Written by the node's background writer, moments after kubelet was answered.
    let s = status_when(&api, "default", "web-0-default-spc", |s| {
        s["metadata"]["labels"]["internal.secrets-store.csi.k8s.io/node-name"] == "node-1"
    })
    .await;
    assert_eq!(
        s["metadata"]["ownerReferences"][0],
        json!({ "apiVersion": "v1", "kind": "Pod", "name": "web-0", "uid": vol.uid })
    );
    assert_eq!(s["status"]["podName"], "web-0");
    assert_eq!(s["status"]["secretProviderClassName"], "spc");
    assert_eq!(s["status"]["mounted"], true);
    assert_eq!(s["status"]["targetPath"], vol.target(&node).to_string_lossy().as_ref());
    assert_eq!(
        s["status"]["objects"],
        json!([{ "id": "secret/a", "version": "v1" }, { "id": "secret/b", "version": "v1" }]),
        "sorted by id"
    );

    let fresh = PodVolume::new("api-0", "spc");
    fresh.publish(&node, &mut client).await.unwrap();
    status_when(&api, "default", "api-0-default-spc", |_| true).await; // created when absent

    vol.unpublish(&node, &mut client).await.unwrap();
    // Deleted right after unpublish returns (kubelet does not wait for it).
    wait_for("pod status deleted after unpublish", || api.get(GV, SPCPS, "default", "web-0-default-spc").is_none())
        .await;

    let long = PodVolume::new(&"p".repeat(250), "spc");
    let err = long.publish(&node, &mut client).await.unwrap_err();
    assert!(
        err.message().starts_with("failed to create secret provider class pod status for pod default/ppp"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("more than Kubernetes' 253"), "{}", err.message());
    assert!(driver.mounts_at(&long.target(&node)).is_empty(), "a failed status write leaves no mount");
}

#[tokio::test]
async fn an_unreachable_api_server_is_a_clear_error_and_probe_still_answers() {
    let node = Node::new();
    let kubeconfig = node.path("kubeconfig");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    write_kubeconfig(&kubeconfig, &format!("http://{closed}"));
    let driver = DriverProcess::start_with(&node, &[&format!("--kubeconfig={}", kubeconfig.display())], false).await;
    let err = PodVolume::new("p", "spc").publish(&node, &mut driver.node_client().await).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().starts_with("failed to get secretproviderclass default/spc, error: "), "{}", err.message());
    assert!(err.message().contains("onnect"), "names the connection failure: {}", err.message());

    let broken = node.path("broken-kubeconfig");
    std::fs::write(&broken, "not: [a kubeconfig").unwrap();
    drop(driver);
    let driver = DriverProcess::start_with(&node, &[&format!("--kubeconfig={}", broken.display())], false).await;
    let err = PodVolume::new("p", "spc").publish(&node, &mut driver.node_client().await).await.unwrap_err();
    assert!(err.message().contains("--kubeconfig"), "{}", err.message());
}

// The upstream e2e suite's scenarios: secret sync, ownership and garbage collection, namespaced classes, several classes
// in one pod; plus what upstream gets wrong (foreign owners and metadata, unmanaged Secrets).

const SECRETS: &str = "secrets";

/// A class syncing `secret` (type `ty`) from the files `(objectName, key)`.
fn sync_class(ns: &str, name: &str, secret: &str, ty: &str, data: &[(&str, &str)]) -> serde_json::Value {
    let mut c = class(ns, name, "e2e-provider", &[("x", "y")]);
    let data: Vec<_> = data.iter().map(|(o, k)| json!({ "objectName": o, "key": k })).collect();
    c["spec"]["secretObjects"] =
        json!([{ "secretName": secret, "type": ty, "labels": { "environment": "test" }, "data": data }]);
    c
}

/// A "Deployment": a ReplicaSet and `n` pods on node-1 owned by it, each with a volume of `class`.
fn deployment(api: &FakeApi, ns: &str, name: &str, n: usize, class: &str) -> (serde_json::Value, Vec<PodVolume>) {
    let rs = api.put("replicasets", kube_fake::replica_set(ns, name));
    let vols = (0..n)
        .map(|i| {
            let pod = api.put("pods", kube_fake::pod(ns, &format!("{name}-{i}"), "node-1", Some(&rs)));
            let mut v = PodVolume::new(&format!("{name}-{i}"), class);
            v.namespace = ns.into();
            v.uid = pod["metadata"]["uid"].as_str().unwrap().into();
            v
        })
        .collect();
    (rs, vols)
}

fn secret_value(s: &serde_json::Value, key: &str) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.decode(s["data"][key].as_str().expect("key present")).unwrap();
    String::from_utf8(b).unwrap()
}

fn owners(s: &serde_json::Value) -> Vec<String> {
    s["metadata"]["ownerReferences"]
        .as_array()
        .map(|a| a.iter().map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["name"].as_str().unwrap())).collect())
        .unwrap_or_default()
}

fn events(api: &FakeApi, ns: &str, reason: &str) -> Vec<serde_json::Value> {
    api.list("v1", "events", ns).into_iter().filter(|e| e["reason"] == reason).collect()
}

/// The pod status `ns/name` once it satisfies `cond` (the background writer records it moments after
/// kubelet was answered).
async fn status_when(
    api: &FakeApi,
    ns: &str,
    name: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = None;
    wait_for(&format!("pod status {ns}/{name}"), || {
        last = api.get(GV, SPCPS, ns, name).filter(|s| cond(s));
        last.is_some()
    })
    .await;
    last.expect("waited for it")
}

/// Events are written in the background of a publish; give them a moment.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn synced_secret_is_owned_by_both_deployments_and_collected_with_the_last() {
    let (node, provider, api, driver) = setup().await;
    provider.set_files(&[("foo", 0o644, "s3cr3t-value")], "v1");
    api.put(
        "secretproviderclasses",
        sync_class("default", "e2e-provider-sync", "foosecret", "Opaque", &[("foo", "username")]),
    );
    let mut client = driver.node_client().await;
    let (rs_a, vols_a) = deployment(&api, "default", "deploy-a", 2, "e2e-provider-sync");
    let (rs_b, vols_b) = deployment(&api, "default", "deploy-b", 2, "e2e-provider-sync");
    for v in vols_a.iter().chain(&vols_b) {
        v.publish(&node, &mut client).await.unwrap();
    }
    // The Secret exists when NodePublishVolume returns: containers reading it from env start at once.
    let s = api.get("v1", SECRETS, "default", "foosecret").expect("foosecret synced");
    assert_eq!(secret_value(&s, "username"), "s3cr3t-value");
    assert_eq!(s["type"], "Opaque");
    assert_eq!(s["metadata"]["labels"]["environment"], "test");
    assert_eq!(s["metadata"]["labels"]["secrets-store.csi.k8s.io/managed"], "true");
    assert_eq!(owners(&s), ["ReplicaSet/deploy-a", "ReplicaSet/deploy-b"]);
    assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], rs_a["metadata"]["uid"]);
    assert!(s["metadata"]["ownerReferences"][0].get("controller").is_none(), "not a controller reference, as upstream");

    // Deleting a Deployment (its ReplicaSet) leaves one owner; deleting the other deletes the Secret.
    assert!(api.delete("apps/v1", "replicasets", "default", "deploy-a"));
    assert_eq!(owners(&api.get("v1", SECRETS, "default", "foosecret").unwrap()), ["ReplicaSet/deploy-b"]);
    assert!(api.delete("apps/v1", "replicasets", "default", rs_b["metadata"]["name"].as_str().unwrap()));
    assert!(api.get("v1", SECRETS, "default", "foosecret").is_none(), "garbage-collected with its last owner");
    assert_eq!(driver.metric_sum("sync_k8s_secret_total"), 4.0, "one sync per mounted volume");
    driver.assert_logs_free_of(&["s3cr3t-value", "czNjcjN0LXZhbHVl"]);
}

#[tokio::test]
async fn namespaced_classes_sync_into_their_own_namespace() {
    let (node, provider, api, driver) = setup().await;
    provider.set_files(&[("foo", 0o644, "secret")], "v1");
    api.put(
        "secretproviderclasses",
        sync_class("default", "e2e-provider-sync", "foosecret", "Opaque", &[("foo", "wrong")]),
    );
    api.put(
        "secretproviderclasses",
        sync_class("test-ns", "e2e-provider-sync", "foosecret", "Opaque", &[("foo", "username")]),
    );
    let mut client = driver.node_client().await;
    let (_, vols) = deployment(&api, "test-ns", "deploy", 1, "e2e-provider-sync");
    vols[0].publish(&node, &mut client).await.unwrap();
    let s = api.get("v1", SECRETS, "test-ns", "foosecret").expect("synced in test-ns");
    assert_eq!(secret_value(&s, "username"), "secret");
    assert_eq!(owners(&s).len(), 1);
    assert!(api.get("v1", SECRETS, "default", "foosecret").is_none(), "nothing in the other namespace");
    api.delete("apps/v1", "replicasets", "test-ns", "deploy");
    assert!(api.get("v1", SECRETS, "test-ns", "foosecret").is_none());
}

#[tokio::test]
async fn several_classes_in_one_pod_each_sync_their_secret() {
    let (node, provider, api, driver) = setup().await;
    provider.set_files(&[("foo", 0o644, "secret")], "v1");
    for i in 0..2 {
        api.put(
            "secretproviderclasses",
            sync_class(
                "default",
                &format!("e2e-provider-spc-{i}"),
                &format!("foosecret-{i}"),
                "Opaque",
                &[("foo", "username")],
            ),
        );
    }
    let mut client = driver.node_client().await;
    let (_, vols) = deployment(&api, "default", "multi", 1, "e2e-provider-spc-0");
    let mut second = vols[0].clone();
    second.class = "e2e-provider-spc-1".into();
    second.volume = "secrets-store-1".into();
    vols[0].publish(&node, &mut client).await.unwrap();
    second.publish(&node, &mut client).await.unwrap();
    for i in 0..2 {
        let s = api.get("v1", SECRETS, "default", &format!("foosecret-{i}")).expect("both synced");
        assert_eq!(secret_value(&s, "username"), "secret");
        assert_eq!(owners(&s), ["ReplicaSet/multi"]);
    }
}

#[tokio::test]
async fn a_bare_pods_secret_is_owned_by_its_pod_status_and_goes_with_the_pod() {
    let (node, provider, api, driver) = setup().await;
    provider.set_files(&[("foo", 0o644, "secret")], "v1");
    api.put("secretproviderclasses", sync_class("default", "spc", "foosecret", "Opaque", &[("foo", "username")]));
    let pod = api.put("pods", kube_fake::pod("default", "bare", "node-1", None));
    let mut vol = PodVolume::new("bare", "spc");
    vol.uid = pod["metadata"]["uid"].as_str().unwrap().into();
    vol.publish(&node, &mut driver.node_client().await).await.unwrap();
    let s = api.get("v1", SECRETS, "default", "foosecret").unwrap();
    assert_eq!(owners(&s), ["SecretProviderClassPodStatus/bare-default-spc"]);
    api.delete("v1", "pods", "default", "bare");
    assert!(api.get(GV, SPCPS, "default", "bare-default-spc").is_none(), "the pod status goes with the pod");
    assert!(api.get("v1", SECRETS, "default", "foosecret").is_none(), "and the Secret with the pod status");
}

#[tokio::test]
async fn an_unmanaged_secret_of_the_same_name_is_never_taken_over() {
    let (node, provider, api, driver) = setup().await;
    provider.set_files(&[("foo", 0o644, "secret")], "v1");
    api.put("secretproviderclasses", sync_class("default", "spc", "theirs", "Opaque", &[("foo", "username")]));
    let theirs = json!({ "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": { "name": "theirs", "namespace": "default" }, "data": { "username": "b3JpZ2luYWw=" } });
    api.put(SECRETS, theirs);
    let (_, vols) = deployment(&api, "default", "app", 1, "spc");
    vols[0].publish(&node, &mut driver.node_client().await).await.expect("the mount itself succeeds");
    let s = api.get("v1", SECRETS, "default", "theirs").unwrap();
    assert_eq!(secret_value(&s, "username"), "original", "untouched");
    assert!(owners(&s).is_empty(), "no owner added: it will not be garbage-collected");
    wait_for("FailedToCreateSecret", || !events(&api, "default", "FailedToCreateSecret").is_empty()).await;
    let e = &events(&api, "default", "FailedToCreateSecret")[0];
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["involvedObject"]["name"], "app-0");
    assert_eq!(e["involvedObject"]["uid"], vols[0].uid.as_str());
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("secret default/theirs already exists and is not managed"), "{msg}");
    assert!(!msg.contains("secret\"") && !msg.contains("original"), "no values in events: {msg}");
}

#[tokio::test]
async fn rotation_resyncs_the_secret_keeping_foreign_owners_and_metadata_and_reports_events() {
    let node = Node::new();
    let provider = TestProvider::start(&node.path("providers"), "e2e-provider").await;
    let api = FakeApi::start().await;
    let kubeconfig = node.path("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let driver = DriverProcess::start_with(
        &node,
        &[&format!("--kubeconfig={}", kubeconfig.display()), "--enable-secret-rotation", "--rotation-poll-interval=1s"],
        false,
    )
    .await;
    provider.set_files(&[("foo", 0o644, "secret")], "v1");
    api.put(
        "secretproviderclasses",
        sync_class("rotation", "e2e-provider-auto-rotation", "rotationsecret", "Opaque", &[("foo", "username")]),
    );
    let (_, vols) = deployment(&api, "rotation", "rot", 1, "e2e-provider-auto-rotation");
    vols[0].publish(&node, &mut driver.node_client().await).await.unwrap();
    // Someone else adds an owner, a label and an annotation (e.g. a backup tool).
    let mut s = api.get("v1", SECRETS, "rotation", "rotationsecret").unwrap();
    s["metadata"]["labels"]["team"] = json!("payments");
    s["metadata"]["annotations"] = json!({ "backup.example.com/include": "true" });
    s["metadata"]["ownerReferences"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "apiVersion": "v1", "kind": "ConfigMap", "name": "keeper", "uid": "u-keeper" }));
    api.put(SECRETS, s);

    provider.set_files(&[("foo", 0o644, "rotated")], "v2");
    let target = vols[0].target(&node);
    wait_for("the file to rotate", || std::fs::read_to_string(target.join("foo")).is_ok_and(|v| v == "rotated")).await;
    wait_for("the Secret to rotate", || {
        api.get("v1", SECRETS, "rotation", "rotationsecret").is_some_and(|s| secret_value(&s, "username") == "rotated")
    })
    .await;
    let s = api.get("v1", SECRETS, "rotation", "rotationsecret").unwrap();
    assert_eq!(owners(&s), ["ReplicaSet/rot", "ConfigMap/keeper"], "foreign owner kept");
    assert_eq!(s["metadata"]["labels"]["team"], "payments");
    assert_eq!(s["metadata"]["annotations"]["backup.example.com/include"], "true");
    wait_for("rotation events", || {
        !events(&api, "rotation", "MountRotationComplete").is_empty()
            && !events(&api, "rotation", "SecretRotationComplete").is_empty()
    })
    .await;
    let e = &events(&api, "rotation", "MountRotationComplete")[0];
    assert_eq!(e["message"], "successfully rotated mounted contents for spc rotation/e2e-provider-auto-rotation");
    assert_eq!(e["source"]["component"], "csi-secrets-store-rotation");
    assert_eq!(
        events(&api, "rotation", "SecretRotationComplete")[0]["message"],
        "successfully rotated K8s secret rotationsecret"
    );
    status_when(&api, "rotation", "rot-0-rotation-e2e-provider-auto-rotation", |s| {
        s["status"]["objects"][0]["version"] == "v2"
    })
    .await;

    // A failing provider: a Warning event, the files and the Secret stay.
    provider.state.lock().unwrap().fail = Some(tonic::Status::unavailable("backend unavailable"));
    wait_for("MountRotationFailed", || !events(&api, "rotation", "MountRotationFailed").is_empty()).await;
    assert_eq!(std::fs::read_to_string(target.join("foo")).unwrap(), "rotated");
    assert_eq!(secret_value(&api.get("v1", SECRETS, "rotation", "rotationsecret").unwrap(), "username"), "rotated");
}

#[tokio::test]
async fn tls_secrets_get_the_certificate_chain_and_a_pkcs1_key() {
    use emulator::model::{CertMaterial, KeySpec};
    let (node, provider, api, driver) = setup().await;
    let cert = CertMaterial::generate("CN=web", KeySpec::Rsa(2048)).unwrap();
    let bundle = cert.secret_value("application/x-pem-file").unwrap();
    provider.set_files(&[("web-cert", 0o644, &bundle)], "v1");
    api.put(
        "secretproviderclasses",
        sync_class(
            "default",
            "tls",
            "web-tls",
            "kubernetes.io/tls",
            &[("web-cert", "tls.key"), ("web-cert", "tls.crt")],
        ),
    );
    let (_, vols) = deployment(&api, "default", "ingress", 1, "tls");
    vols[0].publish(&node, &mut driver.node_client().await).await.unwrap();
    let s = api.get("v1", SECRETS, "default", "web-tls").unwrap();
    assert_eq!(s["type"], "kubernetes.io/tls");
    let crt = secret_value(&s, "tls.crt");
    assert_eq!(crt.matches("-----BEGIN CERTIFICATE-----").count(), 3, "leaf, intermediate and root");
    assert!(secret_value(&s, "tls.key").starts_with("-----BEGIN RSA PRIVATE KEY-----"));
}

#[tokio::test]
async fn watches_are_filtered_to_this_node_and_mounts_read_the_class_cache() {
    let node = Node::new();
    let provider = TestProvider::start(&node.path("providers"), "e2e-provider").await;
    provider.set_files(&[("foo", 0o644, "secret")], "v1");
    let api = FakeApi::start().await;
    // The class exists before the driver starts: once /readyz says the caches synced, it is cached.
    api.put("secretproviderclasses", class("default", "spc", "e2e-provider", &[("x", "y")]));
    let kubeconfig = node.path("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let driver = DriverProcess::start_with(&node, &[&format!("--kubeconfig={}", kubeconfig.display())], false).await;
    driver.wait_readyz().await;
    let requests = api.requests();
    let pods_watch = requests.iter().find(|r| r.starts_with("GET /api/v1/pods?") && r.contains("watch=true"));
    let pods_watch = pods_watch.expect("pods are watched");
    assert!(pods_watch.contains("fieldSelector=spec.nodeName%3Dnode-1"), "{pods_watch}");
    assert!(
        requests.iter().any(|r| r.starts_with("GET /apis/secrets-store.csi.x-k8s.io/v1/secretproviderclasses?")
            && r.contains("watch=true")),
        "classes are watched: {requests:?}"
    );
    assert!(!requests.iter().any(|r| r.contains("/secrets?")), "Secrets are never listed or watched: {requests:?}");
    let before = api.requests().len();
    PodVolume::new("p", "spc").publish(&node, &mut driver.node_client().await).await.unwrap();
    let during: Vec<String> = api.requests()[before..].to_vec();
    assert!(
        !during.iter().any(|r| r.contains("/secretproviderclasses/spc")),
        "the class came from the cache: {during:?}"
    );

    // A class created after start reaches the cache through the watch (or, if the mount is faster,
    // through the GET fallback): the mount works either way.
    api.put("secretproviderclasses", class("default", "late", "e2e-provider", &[("x", "y")]));
    PodVolume::new("q", "late").publish(&node, &mut driver.node_client().await).await.unwrap();
}

#[tokio::test]
async fn after_a_crash_the_driver_takes_its_volumes_back_from_the_pod_statuses() {
    let node = Node::new();
    let provider = TestProvider::start(&node.path("providers"), "e2e-provider").await;
    let api = FakeApi::start().await;
    let kubeconfig = node.path("kubeconfig");
    api.kubeconfig(&kubeconfig);
    // With token minting after a restart (off by default: the chart then grants no TokenRequest).
    let flags = [
        format!("--kubeconfig={}", kubeconfig.display()),
        "--enable-secret-rotation".into(),
        "--rotation-poll-interval=1s".into(),
        "--restart-token-requests".into(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    provider.set_files(&[("foo", 0o644, "before")], "v1");
    api.put("secretproviderclasses", class("default", "spc", "e2e-provider", &[("x", "y")]));
    let mut pod = kube_fake::pod("default", "web-0", "node-1", None);
    pod["spec"]["volumes"] = json!([{ "name": "secrets-store-inline", "csi": { "driver": "secrets-store.csi.k8s.io",
        "readOnly": true, "volumeAttributes": { "secretProviderClass": "spc" },
        "nodePublishSecretRef": { "name": "creds" } } }]);
    let pod = api.put("pods", pod);
    // kubelet's credentials for the volume: a nodePublishSecretRef Secret and the CSIDriver's tokens.
    api.put(
        "secrets",
        json!({ "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "creds", "namespace": "default" }, "data": { "clientid": "c3AtY2xpZW50" } }),
    );
    api.put(
        "csidrivers",
        json!({ "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": { "name": "secrets-store.csi.k8s.io", "namespace": "" },
        "spec": { "tokenRequests": [{ "audience": "api://AzureADTokenExchange" }] } }),
    );
    api.put(
        "serviceaccounts",
        json!({ "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": { "name": "default", "namespace": "default" } }),
    );
    api.set_token_minter(|ns, sa, aud| Some(format!("minted-for-{ns}-{sa}-{aud}")));
    let mut vol = PodVolume::new("web-0", "spc");
    vol.uid = pod["metadata"]["uid"].as_str().unwrap().into();
    let target = vol.target(&node);

    let mut driver = DriverProcess::start_with(&node, &flags, false).await;
    vol.publish(&node, &mut driver.node_client().await).await.unwrap();
    status_when(&api, "default", "web-0-default-spc", |_| true).await;
    driver.signal(nix::sys::signal::Signal::SIGKILL);
    driver.wait_exit(std::time::Duration::from_secs(10)).await;
    assert_eq!(std::fs::read_to_string(target.join("foo")).unwrap(), "before", "the tmpfs outlives the driver");

    // The new driver finds the volume through its pod status and rotates it without any republish.
    let driver = DriverProcess::start_with(&node, &flags, false).await;
    provider.set_files(&[("foo", 0o644, "after")], "v2");
    wait_for("rotation after the restart", || std::fs::read_to_string(target.join("foo")).is_ok_and(|v| v == "after"))
        .await;
    assert!(driver.logs().contains("adopted=1"), "{}", driver.logs());
    assert_eq!(driver.mounts_at(&target), ["tmpfs"], "not mounted twice");
    let request = provider.last_request();
    assert!(request.attributes.contains(r#""csi.storage.k8s.io/pod.name":"web-0""#), "{}", request.attributes);
    assert!(request.attributes.contains(&vol.uid), "the pod's identity is rebuilt from the pod");
    // kubelet's credentials are never persisted: they come back as kubelet got them (a GET of the
    // nodePublishSecretRef, a TokenRequest for the pod's service account), so rotation needs no republish.
    assert!(request.secrets.contains(r#""clientid":"sp-client""#), "nodePublishSecretRef recovered");
    assert!(
        request.attributes.contains("minted-for-default-default-api://AzureADTokenExchange"),
        "tokens requested for the pod: {}",
        request.attributes
    );
    assert!(api.requests().iter().any(|r| r.contains("/serviceaccounts/default/token")));

    // Kubelet's unpublish still cleans up everything.
    vol.unpublish(&node, &mut driver.node_client().await).await.unwrap();
    assert!(driver.mounts_at(&target).is_empty());
    // The pod status is deleted in the background of the unpublish.
    wait_for("pod status deleted after unpublish", || api.get(GV, SPCPS, "default", "web-0-default-spc").is_none())
        .await;
}

/// A provider's empty version is a missing optional object: the pod status lists it and the pod gets
/// one `OptionalObjectNotFound` event naming it; the mount itself succeeds.
#[tokio::test]
async fn a_missing_optional_object_is_named_in_the_pod_status_and_an_event() {
    let (node, provider, api, driver) = setup().await;
    provider.set_files(&[("present", 0o644, "value-present")], "v1");
    provider
        .state
        .lock()
        .unwrap()
        .versions
        .push(csi_proto::provider::ObjectVersion { id: "secret/later".into(), version: String::new() });
    api.put("secretproviderclasses", class("default", "spc", "e2e-provider", &[("x", "y")]));
    let vol = PodVolume::new("web-0", "spc");
    vol.publish(&node, &mut driver.node_client().await).await.unwrap();
    let status = status_when(&api, "default", "web-0-default-spc", |_| true).await;
    let objects = status["status"]["objects"].as_array().unwrap().clone();
    let later = objects.iter().find(|o| o["id"] == "secret/later").expect("listed");
    assert!(later["version"].as_str().unwrap_or("").is_empty(), "listed without a version: {objects:?}");
    wait_for("OptionalObjectNotFound", || !events(&api, "default", "OptionalObjectNotFound").is_empty()).await;
    let e = &events(&api, "default", "OptionalObjectNotFound")[0];
    assert_eq!(e["type"], "Warning");
    assert!(e["message"].as_str().unwrap().contains("optional object secret/later was not found"), "{e}");
    assert!(!e["message"].as_str().unwrap().contains("value-present"), "no values in events");
}
