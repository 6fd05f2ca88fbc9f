//! Identity binding (`useAzureTokenProxy`) end to end against the emulator's token proxy: the SNI
//! name computed from the API server's certificate, TLS trusting only the given CA, the token for
//! `api://AKSIdentityBinding` exchanged by the proxy, and the proxy's refusals surfacing as errors.

use std::collections::BTreeMap;
use std::time::Duration;

use emulator::{Emulator, Handle, Seed};
use keyvault::identity::proxy::{TokenProxyConfig, sni_name_for_cluster};
use keyvault::{Config, ErrorKind, MountRequest, NetworkConfig, Origin, Provider};
use secrecy::ExposeSecret;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const ISSUER: &str = "https://oidc.cluster.test/";
const CLUSTER: &str = "64f1c0de";
const TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";

fn seed() -> Seed {
    Seed::from_yaml(&format!(
        r#"
managedIdentities:
  - {{ tenant: {TENANT}, clientId: uami, objectId: uami-oid }}
  - {{ tenant: {TENANT}, clientId: unbound, objectId: unbound-oid }}
issuers:
  - url: "{ISSUER}"
identityBindings:
  - clusterId: {CLUSTER}
    issuer: "{ISSUER}"
    tenant: {TENANT}
    clientId: uami
    serviceAccounts: [ "system:serviceaccount:default:app" ]
vaults:
  - name: kv1
    tenant: {TENANT}
    access:
      - {{ principal: uami-oid, secrets: [get] }}
    secrets:
      - {{ name: db-password, value: "s3cr3t-db" }}
"#
    ))
    .unwrap()
}

struct Setup {
    h: Handle,
    _ca: tempfile::NamedTempFile,
}

async fn setup(sni_name: Option<String>) -> (Setup, Provider) {
    let h = Emulator::builder().seed(seed()).start().await.unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &h.ca_pem).unwrap();
    let port = h.token_proxy_port();
    let mut c = Config {
        network: NetworkConfig {
            // Key Vault is trusted through the extra CA; the proxy only through its own CA file.
            extra_ca_pem: Some(h.ca_pem.clone()),
            resolve_all_to: Some("127.0.0.1".parse().unwrap()),
            vault_port: Some(h.https_addr.port()),
            // Where a workload-identity token request would go: the proxy must be used instead.
            authority_override: Some(h.authority_url()),
            token_proxy: TokenProxyConfig {
                url: Some(format!("https://kubernetes.default.svc.cluster.local:{port}")),
                sni_name,
                ca_file: ca.path().to_path_buf(),
                api_server: format!("kubernetes.default.svc.cluster.local:{port}"),
            },
            ..NetworkConfig::default()
        },
        ..Config::default()
    };
    c.retry.base_delay = Duration::from_millis(20);
    (Setup { h, _ca: ca }, Provider::new(c).unwrap())
}

fn request(h: &Handle, sa: &str, audience: &str, client_id: &str) -> MountRequest {
    let token = h.service_account_token(ISSUER, "default", sa, audience, 3600).unwrap();
    let tokens = format!(r#"{{"{audience}":{{"token":"{token}","expirationTimestamp":"2100-01-01T00:00:00Z"}}}}"#);
    let attributes: BTreeMap<String, String> = [
        ("csi.storage.k8s.io/pod.name", "web-0"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("keyvaultName", "kv1"),
        ("tenantID", TENANT),
        ("useAzureTokenProxy", "true"),
        ("clientID", client_id),
        ("objects", "array:\n  - |\n    objectName: db-password\n    objectType: secret\n"),
        (TOKENS, &tokens),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    MountRequest { attributes, default_mode: 0o644, ..Default::default() }
}

fn count(h: &Handle, kind: &str) -> u64 {
    h.count(|k| k.kind == kind)
}

#[tokio::test]
async fn a_binding_mounts_through_the_proxy_with_the_computed_sni_name() {
    let (s, p) = setup(None).await;
    let r = p.mount(request(&s.h, "app", "api://AKSIdentityBinding", "uami")).await.unwrap();
    assert_eq!(r.files.len(), 1);
    assert_eq!(r.files[0].contents.expose_secret(), b"s3cr3t-db");
    assert_eq!(count(&s.h, "binding-token"), 1, "one exchange at the proxy");
    assert_eq!(count(&s.h, "token"), 0, "nothing sent to Entra ID directly");
    // The token is cached per bound identity and service account.
    let again = request(&s.h, "app", "api://AKSIdentityBinding", "uami");
    p.mount(again).await.unwrap();
    assert_eq!(count(&s.h, "binding-token"), 1);
}

#[tokio::test]
async fn the_given_sni_name_is_used_and_a_wrong_one_reaches_the_api_server_not_the_proxy() {
    let (s, p) = setup(Some(sni_name_for_cluster(CLUSTER))).await;
    p.mount(request(&s.h, "app", "api://AKSIdentityBinding", "uami")).await.unwrap();

    // A name the API server's certificate does not cover: TLS refuses it.
    let (s, p) = setup(Some("aother.ests.aks".into())).await;
    let e = p.mount(request(&s.h, "app", "api://AKSIdentityBinding", "uami")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("client uami"), "{e}");
    assert_eq!(count(&s.h, "binding-token"), 0);
}

#[tokio::test]
async fn the_proxy_refuses_an_ungranted_service_account_an_unbound_identity_and_the_wrong_audience() {
    let (s, p) = setup(None).await;
    let e = p.mount(request(&s.h, "intruder", "api://AKSIdentityBinding", "uami")).await.unwrap_err();
    assert_eq!((e.kind, e.origin), (ErrorKind::Forbidden, Origin::TokenProxy), "{e}");
    assert!(e.message.contains("system:serviceaccount:default:intruder is not allowed to use managed identity"), "{e}");

    let e = p.mount(request(&s.h, "app", "api://AKSIdentityBinding", "unbound")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden, "{e}");
    assert!(e.message.contains("no identity binding for client id 'unbound'"), "{e}");

    // A pod without the binding audience's token fails before any request.
    let mut wi = request(&s.h, "app", "api://AzureADTokenExchange", "uami");
    let e = p.mount(wi.clone()).await.unwrap_err();
    assert!(e.message.contains("token for audience api://AKSIdentityBinding not found"), "{e}");
    // A token for another audience under the binding's key is refused by the proxy.
    let tokens = wi.attributes[TOKENS].replace("api://AzureADTokenExchange", "api://AKSIdentityBinding");
    wi.attributes.insert(TOKENS.into(), tokens);
    let e = p.mount(wi).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden, "{e}");
    assert!(e.message.contains("audience"), "{e}");
    assert!(!e.message.contains("eyJ"), "no token in the message: {e}");
}

#[tokio::test]
async fn the_ca_file_is_reread_and_a_wrong_ca_fails_the_tls_handshake() {
    let (s, p) = setup(Some(sni_name_for_cluster(CLUSTER))).await;
    // Another CA: the proxy's certificate no longer verifies.
    let other = other_ca().await;
    std::fs::write(s._ca.path(), other).unwrap();
    let e = p.mount(request(&s.h, "app", "api://AKSIdentityBinding", "uami")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    std::fs::write(s._ca.path(), &s.h.ca_pem).unwrap();
    p.mount(request(&s.h, "app", "api://AKSIdentityBinding", "uami")).await.unwrap();
}

/// A CA that signed nothing this emulator serves (each emulator generates its own).
async fn other_ca() -> String {
    Emulator::builder().start().await.unwrap().ca_pem.clone()
}
