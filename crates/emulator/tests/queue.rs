//! Key Vault change events delivered to a Storage queue, as Event Grid delivers them, and the queue
//! service's REST API with its auth and error answers.

use std::time::Duration;

use base64::Engine;
use emulator::queue::QueueFaults;
use emulator::{Emulator, Handle, Seed};
use reqwest::StatusCode;
use serde_json::Value;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

fn seed() -> Seed {
    Seed::from_yaml(&format!(
        r#"
tenants:
  - id: {TENANT}
    applications:
      - {{ clientId: consumer, objectId: consumer-oid, clientSecret: s1 }}
      - {{ clientId: stranger, objectId: stranger-oid, clientSecret: s2 }}
vaults:
  - name: kv1
    tenant: {TENANT}
    secrets:
      - {{ name: db-password, value: hunter2 }}
  - name: kv2
    tenant: {TENANT}
storageAccounts:
  - name: events1
    tenant: {TENANT}
    queues:
      - name: kv-events
        subscriptions: [ {{ vault: kv1 }} ]
        processors: [ consumer-oid ]
      - name: kv-cloudevents
        subscriptions: [ {{ vault: kv1, schema: CloudEventSchemaV1_0 }} ]
        processors: [ consumer ]
"#
    ))
    .unwrap()
}

async fn start() -> (Handle, reqwest::Client) {
    let h = Emulator::builder().seed(seed()).start().await.unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(h.ca_pem.as_bytes()).unwrap()])
        .resolve("events1.queue.core.windows.net", h.https_addr)
        .resolve("login.microsoftonline.com", h.https_addr)
        .build()
        .unwrap();
    (h, client)
}

async fn token(h: &Handle, c: &reqwest::Client, client: &str, secret: &str, scope: &str) -> String {
    let form =
        [("grant_type", "client_credentials"), ("scope", scope), ("client_id", client), ("client_secret", secret)];
    let r = c.post(format!("{}/{TENANT}/oauth2/v2.0/token", h.authority_url())).form(&form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
}

async fn storage_token(h: &Handle, c: &reqwest::Client) -> String {
    token(h, c, "consumer", "s1", "https://storage.azure.com/.default").await
}

struct Msg {
    id: String,
    receipt: String,
    dequeue_count: u64,
    event: Value,
}

fn field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split_once(&open).and_then(|(_, r)| r.split_once(&close)).map(|(v, _)| v)
}

fn messages(xml: &str) -> Vec<Msg> {
    xml.split("<QueueMessage>")
        .skip(1)
        .map(|m| Msg {
            id: field(m, "MessageId").unwrap().to_string(),
            receipt: field(m, "PopReceipt").unwrap_or_default().to_string(),
            dequeue_count: field(m, "DequeueCount").unwrap().parse().unwrap(),
            event: serde_json::from_slice(
                &base64::engine::general_purpose::STANDARD.decode(field(m, "MessageText").unwrap()).unwrap(),
            )
            .unwrap_or(Value::Null),
        })
        .collect()
}

async fn get(h: &Handle, c: &reqwest::Client, queue: &str, query: &str, token: &str) -> (StatusCode, String) {
    let r = c
        .get(format!("{}/messages?{query}", h.queue_url("events1", queue)))
        .bearer_auth(token)
        .header("x-ms-version", "2021-12-02")
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.text().await.unwrap())
}

#[tokio::test]
async fn a_new_secret_version_arrives_as_an_event_grid_event_and_is_deleted_with_its_pop_receipt() {
    let (h, c) = start().await;
    let t = storage_token(&h, &c).await;
    let (s, body) = get(&h, &c, "kv-events", "numofmessages=32", &t).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(messages(&body).is_empty(), "the seed's objects predate the subscription: {body}");

    let version = h.set_secret("kv1", "db-password", "rotated").unwrap();
    let (s, body) = get(&h, &c, "kv-events", "numofmessages=32&visibilitytimeout=60", &t).await;
    assert_eq!(s, StatusCode::OK);
    let got = messages(&body);
    assert_eq!(got.len(), 1, "{body}");
    let m = &got[0];
    assert_eq!(m.dequeue_count, 1);
    assert_eq!(m.event["eventType"], "Microsoft.KeyVault.SecretNewVersionCreated");
    assert_eq!(m.event["data"]["VaultName"], "kv1");
    assert_eq!(m.event["data"]["ObjectName"], "db-password");
    assert_eq!(m.event["data"]["Version"], version.as_str());
    assert!(!body.contains("rotated"), "an event carries no value");

    // Invisible until the visibility timeout; Peek shows nothing either.
    let (_, again) = get(&h, &c, "kv-events", "numofmessages=32", &t).await;
    assert!(messages(&again).is_empty());
    let (_, peeked) = get(&h, &c, "kv-events", "peekonly=true", &t).await;
    assert!(messages(&peeked).is_empty());

    let del = |receipt: String| {
        let url = format!("{}/messages/{}", h.queue_url("events1", "kv-events"), m.id);
        c.delete(url).query(&[("popreceipt", receipt)]).bearer_auth(&t).header("x-ms-version", "2021-12-02").send()
    };
    let r = del("AAAA".into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["x-ms-error-code"], "PopReceiptMismatch");
    assert_eq!(del(m.receipt.clone()).await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(del(m.receipt.clone()).await.unwrap().status(), StatusCode::NOT_FOUND);

    // The CloudEvents subscription got the same change in its schema.
    let (_, body) = get(&h, &c, "kv-cloudevents", "numofmessages=32", &t).await;
    let got = messages(&body);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event["specversion"], "1.0");
    assert_eq!(got[0].event["type"], "Microsoft.KeyVault.SecretNewVersionCreated");
    assert_eq!(got[0].event["data"]["Version"], version.as_str());
}

#[tokio::test]
async fn a_message_not_deleted_comes_back_with_a_higher_dequeue_count() {
    let (h, c) = start().await;
    let t = storage_token(&h, &c).await;
    h.set_secret("kv1", "db-password", "x").unwrap();
    let (_, body) = get(&h, &c, "kv-events", "visibilitytimeout=1", &t).await;
    assert_eq!(messages(&body)[0].dequeue_count, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, body) = get(&h, &c, "kv-events", "visibilitytimeout=1", &t).await;
    assert_eq!(messages(&body)[0].dequeue_count, 2);
    let (s, body) = get(&h, &c, "kv-events", "numofmessages=33", &t).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body.contains("OutOfRangeQueryParameterValue"));
}

#[tokio::test]
async fn storage_answers_bad_credentials_as_azure_does() {
    let (h, c) = start().await;
    let url = format!("{}/messages", h.queue_url("events1", "kv-events"));
    let r = c.get(&url).header("x-ms-version", "2021-12-02").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["x-ms-error-code"], "NoAuthenticationInformation");
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(challenge.contains("resource_id=https://storage.azure.com"), "{challenge}");

    let vault_token = token(&h, &c, "consumer", "s1", "https://vault.azure.net/.default").await;
    let (s, body) = get(&h, &c, "kv-events", "", &vault_token).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body.contains("InvalidAuthenticationInfo"), "{body}");

    let t = storage_token(&h, &c).await;
    let r = c.get(&url).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "OAuth needs x-ms-version");
    assert_eq!(r.headers()["x-ms-error-code"], "MissingRequiredHeader");

    let stranger = token(&h, &c, "stranger", "s2", "https://storage.azure.com/.default").await;
    let (s, body) = get(&h, &c, "kv-events", "", &stranger).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(body.contains("AuthorizationPermissionMismatch"));

    let (s, body) = get(&h, &c, "no-such-queue", "", &t).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body.contains("QueueNotFound"));
}

#[tokio::test]
async fn faults_duplicate_reorder_expire_and_take_the_queue_away() {
    let (h, c) = start().await;
    let t = storage_token(&h, &c).await;
    h.set_queue_faults("events1", "kv-events", QueueFaults { duplicate: true, reorder: true, ..Default::default() });
    let v1 = h.set_secret("kv1", "db-password", "a").unwrap();
    let (_, _) = get(&h, &c, "kv-events", "peekonly=true", &t).await; // delivered now
    let v2 = h.set_secret("kv1", "db-password", "b").unwrap();
    let (_, body) = get(&h, &c, "kv-events", "numofmessages=32", &t).await;
    let versions: Vec<String> =
        messages(&body).iter().map(|m| m.event["data"]["Version"].as_str().unwrap().to_string()).collect();
    assert_eq!(versions, [v2.clone(), v2, v1.clone(), v1], "each twice, newest first");

    h.set_queue_faults("events1", "kv-events", QueueFaults { message_ttl_seconds: Some(1), ..Default::default() });
    h.set_secret("kv1", "db-password", "c").unwrap();
    let (_, _) = get(&h, &c, "kv-events", "peekonly=true", &t).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, body) = get(&h, &c, "kv-events", "numofmessages=32", &t).await;
    assert!(messages(&body).is_empty(), "expired before anyone read it: {body}");

    h.set_queue_faults("events1", "kv-events", QueueFaults { unavailable: true, ..Default::default() });
    let (s, body) = get(&h, &c, "kv-events", "", &t).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("ServerBusy"));
}

#[tokio::test]
async fn an_object_close_to_its_expiry_is_announced_once() {
    let (h, c) = start().await;
    let t = storage_token(&h, &c).await;
    h.set_secret("kv1", "short-lived", "x").unwrap();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + 86_400;
    h.set_secret_window("kv1", "short-lived", None, Some(exp));
    let (_, body) = get(&h, &c, "kv-events", "numofmessages=32", &t).await;
    let types: Vec<String> =
        messages(&body).iter().map(|m| m.event["eventType"].as_str().unwrap().to_string()).collect();
    assert_eq!(types, ["Microsoft.KeyVault.SecretNewVersionCreated", "Microsoft.KeyVault.SecretNearExpiry"]);
    assert_eq!(messages(&body)[0].event["data"]["EXP"], exp.to_string());
    let (_, body) = get(&h, &c, "kv-events", "peekonly=true&numofmessages=32", &t).await;
    assert!(messages(&body).is_empty(), "announced once");
}
