//! Privilege separation (issue 33): the driver with the Azure provider in another process, as the
//! chart runs them (`provider.isolation: process`): the driver built without the in-process provider,
//! the provider on a socket in the driver's internal directory. What crosses the boundary, and what
//! happens when the provider process dies.

mod support;

use std::time::Duration;

use emulator::{Emulator, Handle, Seed};
use support::*;

const TENANT: &str = "99999999-3333-4444-5555-666666666666";

async fn emulator() -> Handle {
    let seed = Seed::from_yaml(&format!(
        r#"
tenants:
  - id: {TENANT}
    applications:
      - {{ clientId: sp, objectId: sp-oid, clientSecret: isolation-client-secret }}
vaults:
  - name: kv-iso
    tenant: {TENANT}
    access:
      - {{ principal: sp-oid, secrets: [get] }}
    secrets:
      - {{ name: db-password, value: "isolated-value-1" }}
"#
    ))
    .unwrap();
    Emulator::builder().seed(seed).start().await.unwrap()
}

/// `keyvault-csi provider` on `socket`, serving the emulator.
async fn provider(node: &Node, h: &Handle, socket: &std::path::Path) -> std::process::Child {
    let _ = std::fs::remove_file(socket);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(node.path("provider.log")).unwrap();
    let mut child = std::process::Command::new(binary())
        .arg("provider")
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .arg("--metrics-addr=127.0.0.1:0")
        .arg("--healthz-port=0")
        .args(azure_flags(node, h))
        .stderr(log)
        .spawn()
        .unwrap();
    for _ in 0..400 {
        if socket.exists() {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the provider did not bind {}", socket.display());
}

fn volume(pod: &str) -> PodVolume {
    let mut v = PodVolume::new(pod, "azure-iso");
    v.secrets = [("clientid".into(), "sp".into()), ("clientsecret".into(), "isolation-client-secret".into())].into();
    v
}

#[tokio::test]
async fn the_provider_in_its_own_process_serves_mounts_and_its_death_loses_no_mount() {
    let h = emulator().await;
    let node = Node::new();
    let objects = "array:\n  - |\n    objectName: db-password\n    objectType: secret\n";
    node.add_class(
        "default",
        "azure-iso",
        "azure",
        &[("keyvaultName", "kv-iso"), ("tenantId", TENANT), ("objects", objects)],
    );
    let internal = node.path("internal");
    std::fs::create_dir_all(&internal).unwrap();
    let socket = internal.join("azure.sock");
    let mut child = provider(&node, &h, &socket).await;
    let audit = node.path("audit.log");
    let flags = [
        "--builtin-azure-provider=false".to_string(),
        format!("--internal-provider-dir={}", internal.display()),
        format!("--audit-log={}", audit.display()),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let driver = DriverProcess::start(&node, &flags).await;
    let mut client = driver.node_client().await;

    let a = volume("iso-a");
    a.publish(&node, &mut client).await.unwrap();
    let file = a.target(&node).join("db-password");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "isolated-value-1");
    // What v1alpha1 cannot carry crossed the socket: the audit line names the vault and the identity.
    let mut line = String::new();
    for _ in 0..100 {
        line = std::fs::read_to_string(&audit).unwrap_or_default();
        if !line.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let served: serde_json::Value = serde_json::from_str(line.lines().next().unwrap_or("{}")).unwrap();
    assert_eq!((served["vault"].as_str(), served["clientId"].as_str()), (Some("kv-iso"), Some("sp")), "audit: {line}");
    assert!(!line.contains("isolated-value-1"));

    // The provider dies (its container killed): a new mount fails with UNAVAILABLE naming it; the
    // mounted volume stays as it was.
    child.kill().unwrap();
    child.wait().unwrap();
    let b = volume("iso-b");
    let err = b.publish(&node, &mut client).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    assert!(err.message().contains("provider \"azure\" is unavailable"), "{}", err.message());
    assert!(err.message().contains(&socket.display().to_string()), "{}", err.message());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "isolated-value-1", "the mounted files stay");
    assert!(driver.mounts_at(&b.target(&node)).is_empty(), "nothing left mounted");

    // Back (kubelet restarts the container): kubelet's retry mounts.
    let mut child = provider(&node, &h, &socket).await;
    b.publish(&node, &mut client).await.unwrap();
    assert_eq!(std::fs::read_to_string(b.target(&node).join("db-password")).unwrap(), "isolated-value-1");
    driver.assert_logs_free_of(&["isolated-value-1", "isolation-client-secret"]);
    child.kill().unwrap();
    child.wait().unwrap();
}
