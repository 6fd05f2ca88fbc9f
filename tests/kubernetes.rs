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
    let s = api.get(GV, SPCPS, "default", "web-0-default-spc").expect("pod status");
    assert_eq!(s["metadata"]["labels"]["internal.secrets-store.csi.k8s.io/node-name"], "node-1");
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
    assert!(api.get(GV, SPCPS, "default", "api-0-default-spc").is_some(), "created when absent");

    vol.unpublish(&node, &mut client).await.unwrap();
    assert!(api.get(GV, SPCPS, "default", "web-0-default-spc").is_none(), "deleted on unpublish");

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
