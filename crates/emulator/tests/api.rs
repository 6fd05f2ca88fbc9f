//! The emulator answers as Azure does: every error path with its status, code, body and headers.

use std::time::Duration;

use emulator::{Emulator, Faults, Handle, Seed};
use reqwest::StatusCode;
use serde_json::Value;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const ISSUER: &str = "https://oidc.cluster.test/";

fn seed() -> Seed {
    Seed::from_yaml(&format!(
        r#"
tenants:
  - id: {TENANT}
    applications:
      - clientId: sp-client
        objectId: sp-object
        clientSecret: sp-secret
      - clientId: wi-client
        objectId: wi-object
        federatedCredentials:
          - {{ issuer: "{ISSUER}", subject: "system:serviceaccount:default:app" }}
      - clientId: nobody-client
        objectId: nobody-object
        clientSecret: nobody-secret
  - id: other-tenant
    applications:
      - {{ clientId: foreign, objectId: foreign-oid, clientSecret: foreign-secret }}
managedIdentities:
  - {{ tenant: {TENANT}, clientId: uami-client, objectId: uami-object }}
  - {{ tenant: {TENANT}, objectId: system-object, systemAssigned: true }}
podIdentities:
  - {{ namespace: legacy, clientId: uami-client }}
issuers:
  - url: "{ISSUER}"
vaults:
  - name: kv1
    tenant: {TENANT}
    access:
      - {{ principal: sp-object, secrets: [get, list, set], keys: [get, list, create], certificates: [get, list, import] }}
      - {{ principal: wi-client, secrets: [get] }}
      - {{ principal: uami-object, secrets: [get] }}
      - {{ principal: system-object, secrets: [get] }}
    secrets:
      - {{ name: db-password, value: hunter2 }}
      - name: rotating
        versions: [ {{ value: v1 }}, {{ value: v2 }}, {{ value: v3, enabled: false }} ]
    keys:
      - {{ name: rsa-key, kty: RSA, size: 2048 }}
      - {{ name: k1-key, kty: EC, curve: P-256K }}
    certificates:
      - {{ name: web, subject: CN=web.example.com }}
      - {{ name: web-pem, contentType: application/x-pem-file, kty: EC, curve: P-384 }}
"#
    ))
    .unwrap()
}

async fn start() -> (Handle, reqwest::Client) {
    let h = Emulator::builder().seed(seed()).start().await.unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(h.ca_pem.as_bytes()).unwrap()])
        .resolve("kv1.vault.azure.net", h.https_addr)
        .resolve("nope.vault.azure.net", h.https_addr)
        .resolve("login.microsoftonline.com", h.https_addr)
        .build()
        .unwrap();
    (h, client)
}

async fn json(r: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let (s, h) = (r.status(), r.headers().clone());
    let body = r.text().await.unwrap();
    (s, h, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

async fn token_with(h: &Handle, c: &reqwest::Client, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut f = vec![("grant_type", "client_credentials"), ("scope", "https://vault.azure.net/.default")];
    f.extend_from_slice(form);
    let r = c.post(format!("{}/{TENANT}/oauth2/v2.0/token", h.authority_url())).form(&f).send().await.unwrap();
    let (s, _, b) = json(r).await;
    (s, b)
}

async fn sp_token(h: &Handle, c: &reqwest::Client) -> String {
    let (s, b) = token_with(h, c, &[("client_id", "sp-client"), ("client_secret", "sp-secret")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["access_token"].as_str().unwrap().to_string()
}

async fn kv_get(
    h: &Handle,
    c: &reqwest::Client,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let url = format!("{}{}", h.vault_url("kv1").trim_end_matches('/'), path);
    let mut rb = c.get(url);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    json(rb.send().await.unwrap()).await
}

#[tokio::test]
async fn no_bearer_gets_the_challenge_with_azures_header_and_body() {
    let (h, c) = start().await;
    let (s, headers, body) = kv_get(&h, &c, "/secrets/db-password?api-version=7.4", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers["www-authenticate"].to_str().unwrap(),
        format!("Bearer authorization=\"{}/{TENANT}\", resource=\"https://vault.azure.net\"", h.authority_url())
    );
    assert_eq!(body["error"]["code"], "Unauthorized");
    assert!(headers.contains_key("x-ms-request-id"));
    let (s, _, body) = kv_get(&h, &c, "/secrets/db-password?api-version=7.4", Some("not.a.jwt")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body["error"]["message"].as_str().unwrap().contains("signature"), "{body}");
}

#[tokio::test]
async fn a_token_from_another_tenant_is_rejected() {
    let (h, c) = start().await;
    let r = c
        .post(format!("{}/other-tenant/oauth2/v2.0/token", h.authority_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "https://vault.azure.net/.default"),
            ("client_id", "foreign"),
            ("client_secret", "foreign-secret"),
        ])
        .send()
        .await
        .unwrap();
    let (_, _, b) = json(r).await;
    let (s, _, body) = kv_get(&h, &c, "/secrets/db-password?api-version=7.4", b["access_token"].as_str()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body["error"]["message"].as_str().unwrap().starts_with("AKV10032: Invalid issuer"), "{body}");
}

#[tokio::test]
async fn secrets_by_latest_version_and_trailing_slash() {
    let (h, c) = start().await;
    let t = sp_token(&h, &c).await;
    for path in ["/secrets/db-password?api-version=7.4", "/secrets/db-password/?api-version=2025-07-01"] {
        let (s, _, b) = kv_get(&h, &c, path, Some(&t)).await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
        assert_eq!(b["value"], "hunter2");
        assert!(b["id"].as_str().unwrap().starts_with(&format!("{}secrets/db-password/", h.vault_url("kv1"))));
        assert!(b.get("kid").is_none(), "plain secrets carry no kid");
    }
    // The latest version of `rotating` is disabled: Azure answers 403 SecretDisabled.
    let (s, _, b) = kv_get(&h, &c, "/secrets/rotating?api-version=7.4", Some(&t)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(b["error"]["innererror"]["code"], "SecretDisabled");
    let (_, _, versions) = kv_get(&h, &c, "/secrets/rotating/versions?api-version=7.4", Some(&t)).await;
    let first = versions["value"][0]["id"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    assert_eq!(first.len(), 32);
    let (s, _, b) = kv_get(&h, &c, &format!("/secrets/rotating/{first}?api-version=7.4"), Some(&t)).await;
    assert_eq!((s, b["value"].as_str()), (StatusCode::OK, Some("v1")));
}

#[tokio::test]
async fn version_lists_page_with_maxresults_and_absolute_next_links() {
    let (h, c) = start().await;
    let t = sp_token(&h, &c).await;
    for i in 0..4 {
        h.set_secret("kv1", "many", &format!("value-{i}"));
    }
    let (s, _, page1) = kv_get(&h, &c, "/secrets/many/versions?api-version=7.4&maxresults=3", Some(&t)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page1["value"].as_array().unwrap().len(), 3);
    assert!(page1["value"][0].get("value").is_none(), "lists never carry values");
    let next = page1["nextLink"].as_str().unwrap();
    assert!(next.starts_with("https://kv1.vault.azure.net:"), "{next}");
    let (_, _, page2) = json(c.get(next).bearer_auth(&t).send().await.unwrap()).await;
    assert_eq!(page2["value"].as_array().unwrap().len(), 1);
    assert!(page2["nextLink"].is_null());
    let (s, _, b) = kv_get(&h, &c, "/secrets/many/versions?api-version=7.4&maxresults=26", Some(&t)).await;
    assert_eq!((s, b["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("BadParameter")));
    let (_, _, keys) = kv_get(&h, &c, "/keys/rsa-key/versions?api-version=7.4", Some(&t)).await;
    assert!(keys["value"][0]["kid"].is_string() && keys["value"][0].get("id").is_none(), "key version items carry kid");
}

#[tokio::test]
async fn missing_objects_bad_names_and_api_versions_get_azures_errors() {
    let (h, c) = start().await;
    let t = sp_token(&h, &c).await;
    for (path, code) in [
        ("/secrets/nope?api-version=7.4", "SecretNotFound"),
        ("/keys/nope?api-version=7.4", "KeyNotFound"),
        ("/certificates/nope?api-version=7.4", "CertificateNotFound"),
    ] {
        let (s, _, b) = kv_get(&h, &c, path, Some(&t)).await;
        assert_eq!((s, b["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some(code)), "{path}");
        assert!(b["error"]["message"].as_str().unwrap().contains("(name/id) nope was not found in this key vault"));
    }
    let (s, _, b) = kv_get(&h, &c, "/secrets/bad_name?api-version=7.4", Some(&t)).await;
    assert_eq!((s, b["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("BadParameter")));
    let (s, _, b) = kv_get(&h, &c, "/secrets/db-password", Some(&t)).await;
    assert_eq!((s, b["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("BadParameter")));
    let (s, _, _) = kv_get(&h, &c, "/secrets/db-password?api-version=1.0", Some(&t)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn access_policy_denials_are_403_forbidden_with_the_inner_code() {
    let (h, c) = start().await;
    let (_, b) = token_with(&h, &c, &[("client_id", "nobody-client"), ("client_secret", "nobody-secret")]).await;
    let (s, _, body) = kv_get(&h, &c, "/secrets/db-password?api-version=7.4", b["access_token"].as_str()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "Forbidden");
    assert_eq!(body["error"]["innererror"]["code"], "AccessDenied");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("does not have secrets get permission on key vault 'kv1")
    );
}

#[tokio::test]
async fn entra_checks_secrets_and_federated_assertions() {
    let (h, c) = start().await;
    let (s, b) = token_with(&h, &c, &[("client_id", "sp-client"), ("client_secret", "wrong")]).await;
    assert_eq!((s, b["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_client")));
    assert_eq!(b["error_codes"][0], 7000215);
    let (s, b) = token_with(&h, &c, &[("client_id", "ghost"), ("client_secret", "x")]).await;
    assert_eq!((s, b["error_codes"][0].as_u64()), (StatusCode::BAD_REQUEST, Some(700016)));

    let assertion = |sa: &str, aud: &str, ttl: i64| h.service_account_token(ISSUER, "default", sa, aud, ttl).unwrap();
    let (hr, cr) = (&h, &c);
    let wi = move |a: String| async move {
        token_with(
            hr,
            cr,
            &[
                ("client_id", "wi-client"),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", a.as_str()),
            ],
        )
        .await
    };
    let (s, b) = wi(assertion("app", "api://AzureADTokenExchange", 3600)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _, body) = kv_get(&h, &c, "/secrets/db-password?api-version=7.4", b["access_token"].as_str()).await;
    assert_eq!((s, body["value"].as_str()), (StatusCode::OK, Some("hunter2")));
    let (_, b) = wi(assertion("other", "api://AzureADTokenExchange", 3600)).await;
    assert_eq!(b["error_codes"][0], 700213, "{b}");
    let (_, b) = wi(assertion("app", "api://wrong", 3600)).await;
    assert_eq!(b["error_codes"][0], 700212, "{b}");
    let (_, b) = wi(assertion("app", "api://AzureADTokenExchange", -60)).await;
    assert_eq!(b["error_codes"][0], 700024, "{b}");
    let forged = {
        let t = assertion("app", "api://AzureADTokenExchange", 3600);
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        parts[2] = parts[2].chars().rev().collect();
        parts.join(".")
    };
    let (s, _) = wi(forged).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let r =
        c.get(format!("{}/{TENANT}/v2.0/.well-known/openid-configuration", h.authority_url())).send().await.unwrap();
    let (s, _, b) = json(r).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["token_endpoint"], format!("{}/{TENANT}/oauth2/v2.0/token", h.authority_url()));
}

#[tokio::test]
async fn imds_needs_the_metadata_header_and_a_known_identity() {
    let (h, c) = start().await;
    let url = |q: &str| {
        format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net{q}",
            h.http_url()
        )
    };
    let (s, _, b) = json(c.get(url("")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["error_description"], "Required metadata header not specified");
    let (s, _, b) = json(c.get(url("&client_id=ghost")).header("Metadata", "true").send().await.unwrap()).await;
    assert_eq!((s, b["error_description"].as_str()), (StatusCode::BAD_REQUEST, Some("Identity not found")));
    for q in ["&client_id=uami-client", ""] {
        let (s, _, b) = json(c.get(url(q)).header("Metadata", "true").send().await.unwrap()).await;
        assert_eq!(s, StatusCode::OK, "{q}: {b}");
        assert!(b["expires_in"].is_string() && b["expires_on"].is_string(), "IMDS numbers are strings");
        let (s, _, _) = kv_get(&h, &c, "/secrets/db-password?api-version=7.4", b["access_token"].as_str()).await;
        assert_eq!(s, StatusCode::OK);
    }
    let nmi = |ns: &str| {
        c.get(format!("{}/host/token/?resource=https://vault.azure.net", h.http_url()))
            .header("podname", "p")
            .header("podns", ns)
            .send()
    };
    let (s, _, b) = json(nmi("legacy").await.unwrap()).await;
    assert_eq!((s, b["clientid"].as_str()), (StatusCode::OK, Some("uami-client")));
    assert_eq!(nmi("other").await.unwrap().status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn throttling_answers_429_with_retry_after_and_counts_by_vault() {
    let (h, c) = start().await;
    let t = sp_token(&h, &c).await;
    h.set_throttle("kv1", 3, Duration::from_secs(10));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (s, headers, b) = kv_get(&h, &c, "/secrets/db-password?api-version=7.4", Some(&t)).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(b["error"]["code"], "Throttled");
            let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=10).contains(&retry));
        }
        statuses.push(s.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(h.count(|k| k.vault == "kv1" && k.status == 429 && k.object == "db-password"), 2);
}

#[tokio::test]
async fn injected_outages_errors_and_refused_connections() {
    let (h, c) = start().await;
    let t = sp_token(&h, &c).await;
    h.set_faults("kv1", Faults { outage: true, ..Default::default() });
    let (s, _, b) = kv_get(&h, &c, "/secrets/db-password?api-version=7.4", Some(&t)).await;
    assert_eq!((s, b["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("ServiceUnavailable")));
    h.set_faults("kv1", Faults { error_rate: 1.0, error_status: Some(500), ..Default::default() });
    assert_eq!(
        kv_get(&h, &c, "/secrets/db-password?api-version=7.4", Some(&t)).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    h.set_faults("kv1", Faults { latency_ms: 150, ..Default::default() });
    let started = std::time::Instant::now();
    assert_eq!(kv_get(&h, &c, "/secrets/db-password?api-version=7.4", Some(&t)).await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
    h.clear_faults("kv1");

    h.stop_listening();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(h.ca_pem.as_bytes()).unwrap()])
        .resolve("kv1.vault.azure.net", h.https_addr)
        .build()
        .unwrap();
    let err = fresh.get(format!("{}secrets/db-password?api-version=7.4", h.vault_url("kv1"))).send().await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    h.resume_listening().await.unwrap();
    assert_eq!(kv_get(&h, &fresh, "/secrets/db-password?api-version=7.4", Some(&t)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn certificates_bring_their_key_and_secret_like_azure() {
    let (h, c) = start().await;
    let t = sp_token(&h, &c).await;
    let (s, _, cert) = kv_get(&h, &c, "/certificates/web?api-version=7.4", Some(&t)).await;
    assert_eq!(s, StatusCode::OK);
    let version = cert["id"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    assert!(cert["kid"].as_str().unwrap().ends_with(&format!("/keys/web/{version}")));
    assert!(cert["sid"].as_str().unwrap().ends_with(&format!("/secrets/web/{version}")));
    assert_eq!(cert["policy"]["secret_props"]["contentType"], "application/x-pkcs12");
    assert!(cert["x5t"].is_string() && cert["cer"].is_string());
    let (_, _, secret) = kv_get(&h, &c, "/secrets/web?api-version=7.4", Some(&t)).await;
    assert_eq!(secret["contentType"], "application/x-pkcs12");
    assert_eq!(secret["managed"], true);
    assert!(secret["kid"].as_str().unwrap().ends_with(&format!("/keys/web/{version}")));
    let (_, _, key) = kv_get(&h, &c, "/keys/web?api-version=7.4", Some(&t)).await;
    assert_eq!(key["key"]["kty"], "RSA");
    assert_eq!(key["managed"], true);
    let (_, _, pem_secret) = kv_get(&h, &c, "/secrets/web-pem?api-version=7.4", Some(&t)).await;
    let value = pem_secret["value"].as_str().unwrap();
    assert!(value.starts_with("-----BEGIN PRIVATE KEY-----") && value.matches("BEGIN CERTIFICATE").count() == 3);
    let (_, _, k1) = kv_get(&h, &c, "/keys/k1-key?api-version=7.4", Some(&t)).await;
    assert_eq!(k1["key"]["crv"], "P-256K");
}

#[tokio::test]
async fn writes_set_secrets_create_keys_and_import_certificates() {
    let (h, c) = start().await;
    let t = sp_token(&h, &c).await;
    let base = h.vault_url("kv1");
    let r = c
        .put(format!("{base}secrets/new-one?api-version=7.5"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"value": "fresh", "contentType": "text/plain"}))
        .send()
        .await
        .unwrap();
    let (s, _, b) = json(r).await;
    assert_eq!(
        (s, b["value"].as_str(), b["contentType"].as_str()),
        (StatusCode::OK, Some("fresh"), Some("text/plain"))
    );
    let r = c
        .post(format!("{base}keys/made/create?api-version=7.5"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"kty": "EC", "crv": "P-521"}))
        .send()
        .await
        .unwrap();
    let (s, _, b) = json(r).await;
    assert_eq!((s, b["key"]["crv"].as_str()), (StatusCode::OK, Some("P-521")));
    let (pem, _) = h.certificate_secret("kv1", "web-pem").unwrap();
    let r = c
        .post(format!("{base}certificates/imported/import?api-version=7.5"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"value": pem}))
        .send()
        .await
        .unwrap();
    let (s, _, b) = json(r).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["policy"]["secret_props"]["contentType"], "application/x-pem-file");
}
