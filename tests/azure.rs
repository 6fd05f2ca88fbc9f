//! End-to-end: kubelet → the real binary → the in-process Azure provider → the emulator over HTTPS.

mod support;

use emulator::{Emulator, Handle, Seed};
use support::*;
use tonic::Code;

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const ISSUER: &str = "https://oidc.e2e.test/";

async fn emulator() -> Handle {
    let seed = Seed::from_yaml(&format!(
        r#"
tenants:
  - id: {TENANT}
    applications:
      - {{ clientId: sp, objectId: sp-oid, clientSecret: sp-client-secret-value }}
      - clientId: wi
        objectId: wi-oid
        federatedCredentials: [ {{ issuer: "{ISSUER}", subject: "system:serviceaccount:default:web" }} ]
issuers:
  - url: "{ISSUER}"
vaults:
  - name: kv-e2e
    tenant: {TENANT}
    access:
      - {{ principal: sp-oid, secrets: [get], keys: [get], certificates: [get] }}
      - {{ principal: wi-oid, secrets: [get], keys: [get], certificates: [get] }}
    secrets:
      - {{ name: db-password, value: "e2e-db-password-value" }}
    keys:
      - {{ name: signing, kty: EC, curve: P-384 }}
    certificates:
      - {{ name: web, subject: CN=web.e2e.test }}
"#
    ))
    .unwrap();
    Emulator::builder().seed(seed).start().await.unwrap()
}

const OBJECTS: &str = "array:\n  - |\n    objectName: db-password\n    objectType: secret\n    objectAlias: db/password\n  - |\n    objectName: signing\n    objectType: key\n  - |\n    objectName: web\n    objectType: secret\n    objectAlias: tls.pem\n";

async fn start(node: &Node, h: &Handle) -> DriverProcess {
    let flags = azure_flags(node, h);
    DriverProcess::start(node, &flags.iter().map(String::as_str).collect::<Vec<_>>()).await
}

#[tokio::test]
async fn workload_identity_mount_through_the_real_binary() {
    let h = emulator().await;
    let node = Node::new();
    node.add_class(
        "default",
        "azure-wi",
        "azure",
        &[("keyvaultName", "kv-e2e"), ("tenantId", TENANT), ("clientID", "wi"), ("objects", OBJECTS)],
    );
    let driver = start(&node, &h).await;
    let sa_token = h.service_account_token(ISSUER, "default", "web", "api://AzureADTokenExchange", 3600).unwrap();
    let mut vol = PodVolume::new("web-0", "azure-wi");
    vol.service_account = "web".into();
    vol.tokens = Some(tokens_json("api://AzureADTokenExchange", &sa_token));
    vol.tokens_in_secrets = true;
    let mut client = driver.node_client().await;
    vol.publish(&node, &mut client).await.unwrap();
    let target = vol.target(&node);
    assert_eq!(driver.mounts_at(&target), vec!["tmpfs".to_string()]);
    assert_eq!(std::fs::read_to_string(target.join("db/password")).unwrap(), "e2e-db-password-value");
    assert!(std::fs::read_to_string(target.join("signing")).unwrap().starts_with("-----BEGIN PUBLIC KEY-----\n"));
    let tls = std::fs::read_to_string(target.join("tls.pem")).unwrap();
    assert!(tls.starts_with("-----BEGIN PRIVATE KEY-----\n") && tls.matches("BEGIN CERTIFICATE").count() == 3);
    vol.unpublish(&node, &mut client).await.unwrap();
    assert!(driver.mounts_at(&target).is_empty());
    let key_pem = &tls[28..80];
    driver.assert_logs_free_of(&["e2e-db-password-value", &sa_token, key_pem]);
}

#[tokio::test]
async fn service_principal_from_node_publish_secrets_and_a_missing_object() {
    let h = emulator().await;
    let node = Node::new();
    node.add_class(
        "default",
        "azure-sp",
        "azure",
        &[("keyvaultName", "kv-e2e"), ("tenantId", TENANT), ("objects", OBJECTS)],
    );
    let missing = "array:\n  - |\n    objectName: db-password\n    objectType: secret\n  - |\n    objectName: nope\n    objectType: secret\n";
    node.add_class(
        "default",
        "azure-missing",
        "azure",
        &[("keyvaultName", "kv-e2e"), ("tenantId", TENANT), ("objects", missing)],
    );
    let driver = start(&node, &h).await;
    let mut client = driver.node_client().await;
    let mut vol = PodVolume::new("api-0", "azure-sp");
    vol.secrets.insert("clientid".into(), "sp".into());
    vol.secrets.insert("clientsecret".into(), "sp-client-secret-value".into());
    vol.publish(&node, &mut client).await.unwrap();
    assert_eq!(std::fs::read_to_string(vol.target(&node).join("db/password")).unwrap(), "e2e-db-password-value");

    let mut bad = PodVolume::new("api-1", "azure-missing");
    bad.secrets = vol.secrets.clone();
    let err = bad.publish(&node, &mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().starts_with("failed to mount secrets store objects for pod default/api-1, err: failed to mount objects, error: failed to get objectType:secret, objectName:nope, objectVersion:: GET https://kv-e2e.vault.azure.net:"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("SecretNotFound"));
    assert!(driver.mounts_at(&bad.target(&node)).is_empty(), "a failed mount leaves nothing behind");
    driver.assert_logs_free_of(&["e2e-db-password-value", "sp-client-secret-value"]);
}
