//! `keyvault-csi check --live` against the fake API server and the Key Vault emulator: a healthy
//! class passes every check; each classic failure (missing class, driver not registered, missing
//! federated credential, missing object, denied identity, an unmanaged Secret in the way) fails with
//! the error text it prevents; identity binding is checked through the emulated token proxy; no
//! secret value is ever printed.

mod support;

#[path = "support/kube.rs"]
mod kube_fake;

use emulator::{Emulator, Handle, Seed};
use kube_fake::{FakeApi, class};
use serde_json::{Value, json};
use support::*;

const TENANT: &str = "44444444-2222-3333-4444-555555555555";
const ISSUER: &str = "https://oidc.check.test/";
const CLUSTER: &str = "c0ffee42";
const OBJECTS: &str = "array:\n  - |\n    objectName: db-password\n    objectType: secret\n  - |\n    objectName: api-key\n    objectType: secret\n";

async fn emulator() -> Handle {
    let seed = Seed::from_yaml(&format!(
        r#"
tenants:
  - id: {TENANT}
    applications:
      - clientId: wi
        objectId: wi-oid
        federatedCredentials: [ {{ issuer: "{ISSUER}", subject: "system:serviceaccount:apps:web" }} ]
      - {{ clientId: reader, objectId: reader-oid, clientSecret: reader-secret-value }}
      - clientId: events
        objectId: events-oid
        federatedCredentials: [ {{ issuer: "{ISSUER}", subject: "system:serviceaccount:kube-system:keyvault-csi-sync-controller" }} ]
storageAccounts:
  - name: checkevents
    tenant: {TENANT}
    queues:
      - {{ name: kv-events, subscriptions: [ {{ vault: kv-check }} ], processors: [ events-oid ] }}
      - {{ name: not-granted, processors: [] }}
managedIdentities:
  - {{ tenant: {TENANT}, clientId: uami, objectId: uami-oid }}
issuers:
  - url: "{ISSUER}"
identityBindings:
  - {{ clusterId: {CLUSTER}, issuer: "{ISSUER}", tenant: {TENANT}, clientId: uami, serviceAccounts: [ "system:serviceaccount:apps:web" ] }}
vaults:
  - name: kv-check
    tenant: {TENANT}
    access:
      - {{ principal: wi-oid, secrets: [get] }}
      - {{ principal: uami-oid, secrets: [get] }}
    secrets:
      - {{ name: db-password, value: "check-db-password-value" }}
      - {{ name: api-key, value: "check-api-key-value" }}
"#
    ))
    .unwrap();
    Emulator::builder().seed(seed).start().await.unwrap()
}

struct Env {
    node: Node,
    api: FakeApi,
    h: std::sync::Arc<Handle>,
}

async fn cluster() -> Env {
    let h = std::sync::Arc::new(emulator().await);
    let api = FakeApi::start().await;
    let minter = h.clone();
    api.set_token_minter(move |ns, sa, aud| minter.service_account_token(ISSUER, ns, sa, aud, 600));
    api.put(
        "csidrivers",
        json!({ "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": { "name": "secrets-store.csi.k8s.io", "namespace": "" },
        "spec": { "tokenRequests": [{ "audience": "api://AzureADTokenExchange" }] } }),
    );
    for n in ["node-1", "node-2"] {
        api.put(
            "csinodes",
            json!({ "apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
            "metadata": { "name": n, "namespace": "" },
            "spec": { "drivers": [{ "name": "secrets-store.csi.k8s.io", "nodeID": n }] } }),
        );
    }
    for sa in ["web", "other"] {
        api.put(
            "serviceaccounts",
            json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": sa, "namespace": "apps" } }),
        );
    }
    api.put(
        "serviceaccounts",
        json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": { "name": "keyvault-csi-sync-controller", "namespace": "kube-system" } }),
    );
    let mut c = class(
        "apps",
        "web",
        "azure",
        &[("keyvaultName", "kv-check"), ("tenantId", TENANT), ("clientID", "wi"), ("objects", OBJECTS)],
    );
    c["spec"]["secretObjects"] = json!([{ "secretName": "web-db", "type": "Opaque", "data": [{ "objectName": "db-password", "key": "password" }] }]);
    api.put("secretproviderclasses", c);
    Env { node: Node::new(), api, h }
}

/// Runs `check --live --output json`; (exit code, report, stderr).
fn live(env: &Env, args: &[&str]) -> (Option<i32>, Value, String) {
    let kubeconfig = env.node.path("kubeconfig");
    env.api.kubeconfig(&kubeconfig);
    let out = std::process::Command::new(binary())
        .args(["check", "--live", "--output", "json", &format!("--kubeconfig={}", kubeconfig.display())])
        .args(azure_flags(&env.node, &env.h))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    for v in ["check-db-password-value", "check-api-key-value", "reader-secret-value"] {
        assert!(!stdout.contains(v) && !stderr.contains(v), "a secret value was printed");
    }
    (out.status.code(), serde_json::from_str(&stdout).unwrap_or(Value::Null), stderr)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["check"] == name))
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_class_passes_every_check() {
    let env = cluster().await;
    let (code, r, err) = live(&env, &["-n", "apps", "--class", "web", "--service-account", "web"]);
    assert_eq!(code, Some(0), "{r:#}{err}");
    for name in [
        "class exists",
        "CSI driver registered",
        "CSIDriver token audience",
        "synced Secret web-db",
        "service account token",
        "object db-password",
        "object api-key",
        "identity",
    ] {
        assert_eq!(check(&r, name)["status"], "pass", "{name}: {r:#}");
    }
    assert!(check(&r, "object db-password")["detail"].as_str().unwrap().starts_with("secret/db-password version "));
    assert_eq!(r["findings"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_classic_failure_names_the_error_it_prevents() {
    let env = cluster().await;

    // The class is in another namespace.
    let (code, r, _) = live(&env, &["-n", "default", "--class", "web"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        check(&r, "class exists")["prevents"],
        "failed to get secretproviderclass default/web, error: SecretProviderClass.secrets-store.csi.x-k8s.io \"web\" not found"
    );

    // No federated credential for this service account: Entra ID refuses the exchange.
    let (code, r, _) = live(&env, &["-n", "apps", "--class", "web", "--service-account", "other"]);
    assert_eq!(code, Some(1));
    let obj = check(&r, "object db-password");
    assert_eq!(obj["status"], "fail");
    assert!(obj["detail"].as_str().unwrap().contains("AADSTS70021"), "{obj:#}");
    assert_eq!(check(&r, "identity")["status"], "fail");

    // The service account does not exist.
    let (_, r, _) = live(&env, &["-n", "apps", "--class", "web", "--service-account", "ghost"]);
    assert_eq!(check(&r, "service account token")["status"], "fail");

    // A missing object, and a Secret of the synced name that belongs to someone else.
    let mut c = env.api.get("secrets-store.csi.x-k8s.io/v1", "secretproviderclasses", "apps", "web").unwrap();
    c["spec"]["parameters"]["objects"] =
        json!(format!("{OBJECTS}  - |\n    objectName: missing\n    objectType: secret\n"));
    env.api.put("secretproviderclasses", c);
    env.api.put("secrets", json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "web-db", "namespace": "apps" }, "data": {} }));
    let (code, r, _) = live(&env, &["-n", "apps", "--class", "web", "--service-account", "web"]);
    assert_eq!(code, Some(1));
    assert_eq!(check(&r, "object db-password")["status"], "pass");
    let missing = check(&r, "object missing");
    assert_eq!(missing["status"], "fail");
    assert!(missing["detail"].as_str().unwrap().contains("SecretNotFound"), "{missing:#}");
    let secret = check(&r, "synced Secret web-db");
    assert_eq!(secret["status"], "fail");
    assert!(secret["prevents"].as_str().unwrap().contains("is not managed by the Secrets Store CSI driver"));

    // A node without the driver registered (a new node before the DaemonSet pod started).
    env.api.put(
        "csinodes",
        json!({ "apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
        "metadata": { "name": "node-3", "namespace": "" }, "spec": { "drivers": [] } }),
    );
    let (_, r, _) = live(&env, &["-n", "apps", "--class", "web", "--service-account", "web"]);
    let reg = check(&r, "CSI driver registered");
    assert_eq!(reg["status"], "fail");
    assert!(reg["detail"].as_str().unwrap().contains("missing on node-3"));
    assert_eq!(reg["prevents"], "driver name secrets-store.csi.k8s.io not found in the list of registered CSI drivers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_principal_without_access_is_denied_and_an_unreachable_cluster_is_exit_2() {
    let env = cluster().await;
    let sp = class("apps", "sp", "azure", &[("keyvaultName", "kv-check"), ("tenantId", TENANT), ("objects", OBJECTS)]);
    env.api.put("secretproviderclasses", sp);
    env.api.put(
        "secrets",
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "creds", "namespace": "apps" },
        "data": { "clientid": "cmVhZGVy", "clientsecret": "cmVhZGVyLXNlY3JldC12YWx1ZQ==" } }),
    );
    let (code, r, _) = live(&env, &["-n", "apps", "--class", "sp", "--node-publish-secret-ref", "creds"]);
    assert_eq!(code, Some(1));
    assert_eq!(check(&r, "nodePublishSecretRef")["status"], "pass");
    let obj = check(&r, "object db-password");
    assert_eq!(obj["status"], "fail");
    assert!(obj["detail"].as_str().unwrap().contains("Forbidden"), "{obj:#}");

    let kubeconfig = env.node.path("closed-kubeconfig");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    kube_fake::write_kubeconfig(&kubeconfig, &format!("http://{closed}"));
    let out = std::process::Command::new(binary())
        .args(["check", "--live", "-n", "apps", "--class", "web", &format!("--kubeconfig={}", kubeconfig.display())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("check --live: cannot read SecretProviderClass apps/web"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_binding_needs_its_audience_and_mounts_through_the_token_proxy() {
    let env = cluster().await;
    let bound = class(
        "apps",
        "bound",
        "azure",
        &[
            ("keyvaultName", "kv-check"),
            ("tenantId", TENANT),
            ("clientID", "uami"),
            ("useAzureTokenProxy", "true"),
            ("objects", OBJECTS),
        ],
    );
    env.api.put("secretproviderclasses", bound);
    let ca = env.node.path("proxy-ca.pem");
    std::fs::write(&ca, &env.h.ca_pem).unwrap();
    let proxy = [
        format!("--token-proxy-url=https://kubernetes.default.svc.cluster.local:{}", env.h.token_proxy_port()),
        format!("--sni-name={}", keyvault::identity::proxy::sni_name_for_cluster(CLUSTER)),
        format!("--token-proxy-ca-file={}", ca.display()),
    ];
    let args = |sa: &'static str| {
        let mut a: Vec<String> = ["-n", "apps", "--class", "bound", "--service-account", sa].map(String::from).to_vec();
        a.extend(proxy.iter().cloned());
        a
    };
    let run = |sa| {
        let a = args(sa);
        live(&env, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // The chart of an older release: kubelet mints no api://AKSIdentityBinding token.
    let (code, r, _) = run("web");
    assert_eq!(code, Some(1));
    let aud = check(&r, "CSIDriver token audience");
    assert_eq!(aud["status"], "fail", "{r:#}");
    assert_eq!(
        aud["prevents"],
        "failed to parse service account token for identity binding, error: token for audience api://AKSIdentityBinding not found"
    );

    // With the audience, the token goes to the proxy (the binding's SNI name) and the objects are read.
    env.api.put(
        "csidrivers",
        json!({ "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": { "name": "secrets-store.csi.k8s.io", "namespace": "" },
        "spec": { "tokenRequests": [{ "audience": "api://AzureADTokenExchange" }, { "audience": "api://AKSIdentityBinding" }] } }),
    );
    let (code, r, err) = run("web");
    assert_eq!(code, Some(0), "{r:#}{err}");
    for name in ["CSIDriver token audience", "service account token", "object db-password", "identity"] {
        assert_eq!(check(&r, name)["status"], "pass", "{name}: {r:#}");
    }
    assert!(env.h.count(|k| k.kind == "binding-token") >= 1, "the token did not come from the proxy");

    // A service account the binding does not grant: the proxy refuses, the check says so.
    let (code, r, _) = run("other");
    assert_eq!(code, Some(1));
    assert_eq!(check(&r, "identity")["status"], "fail", "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_sync_is_checked_with_its_class_account_opt_in_controller_and_secret() {
    let env = cluster().await;
    let sync = json!({ "apiVersion": "secret-sync.x-k8s.io/v1alpha1", "kind": "SecretSync",
        "metadata": { "name": "web-sync", "namespace": "apps", "uid": "sync-uid" },
        "spec": { "secretProviderClassName": "web", "serviceAccountName": "web",
                  "secretObject": { "data": [ { "sourcePath": "db-password", "targetKey": "password" },
                                              { "sourcePath": "nope", "targetKey": "x" } ] } } });
    env.api.put("secretsyncs", sync);

    // No controller, no opt-in, a sourcePath the class cannot yield; the objects are still fetched
    // with the SecretSync's service account (its token).
    let (code, r, _) = live(&env, &["-n", "apps", "--secret-sync", "web-sync"]);
    assert_eq!(code, Some(1));
    assert_eq!(check(&r, "secretsync exists")["status"], "pass");
    assert_eq!(check(&r, "sync controller")["status"], "fail");
    let opt_in = check(&r, "service account opt-in");
    assert_eq!(opt_in["status"], "fail");
    assert!(
        opt_in["detail"]
            .as_str()
            .unwrap()
            .starts_with("service account apps/web has not opted in to SecretSync \"web-sync\"")
    );
    assert_eq!(check(&r, "Secret web-sync")["status"], "pass");
    assert_eq!(check(&r, "object db-password")["status"], "pass");
    assert!(r["findings"].to_string().contains("nope"), "{:#}", r["findings"]);

    // Opted in, a ready controller, and a Secret of that name that someone else wrote.
    env.api.put(
        "serviceaccounts",
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "web", "namespace": "apps",
            "annotations": { "keyvault-csi.io/allow-secret-syncs": "web-sync" } } }),
    );
    env.api.put(
        "deployments",
        json!({ "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "kv-sync", "namespace": "kube-system",
                          "labels": { "app.kubernetes.io/component": "sync-controller" } },
            "spec": { "selector": {}, "template": {} }, "status": { "readyReplicas": 1 } }),
    );
    env.api.put(
        "secrets",
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "web-sync", "namespace": "apps",
            "ownerReferences": [ { "apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u" } ] }, "data": {} }),
    );
    let (_, r, _) = live(&env, &["-n", "apps", "--secret-sync", "web-sync"]);
    assert_eq!(check(&r, "service account opt-in")["status"], "pass");
    assert_eq!(check(&r, "sync controller")["status"], "pass");
    let secret = check(&r, "Secret web-sync");
    assert_eq!(secret["status"], "fail");
    assert_eq!(
        secret["prevents"],
        "secret apps/web-sync already exists and is not managed by this SecretSync (owned by Deployment web); delete it or rename the SecretSync"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_event_queue_is_checked_with_the_controllers_identity() {
    let env = cluster().await;
    let port = env.h.https_addr.port();
    let url = |q: &str| format!("--events-queue-url=https://checkevents.queue.core.windows.net:{port}/{q}");
    let ids = [format!("--events-tenant-id={TENANT}"), "--events-client-id=events".to_string()];
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let ok = url("kv-events");
    let (code, r, err) = live(&env, &[&[ok.as_str()], ids.as_slice()].concat());
    assert_eq!(code, Some(0), "{r:#}{err}");
    assert_eq!(check(&r, "queue access")["status"], "pass", "{r:#}");
    let denied = url("not-granted");
    let (code, r, _) = live(&env, &[&[denied.as_str()], ids.as_slice()].concat());
    assert_eq!(code, Some(1));
    let detail = check(&r, "queue access")["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("403") && detail.contains("Storage Queue Data Message Processor"), "{detail}");
    let (code, r, _) = live(&env, &["--events-queue-url=http://checkevents.queue.core.windows.net/q"]);
    assert_eq!(code, Some(1));
    assert_eq!(check(&r, "queue URL")["status"], "fail");
}
