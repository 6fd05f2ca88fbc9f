//! Key Vault change events, pulled from an Azure Storage queue that an Event Grid subscription on the
//! vault's system topic delivers to: no public endpoint, only outbound HTTPS with an Entra token for
//! Storage.
//!
//! [`parse`] turns one queue message (base64 JSON, one event, Event Grid schema or CloudEvents 1.0)
//! into a [`Change`]: (vault, object type, name, version, event time). Everything in a message is
//! input from whoever can write to the queue, so each field is bounded and checked the way a class's
//! fields are; nothing from it is echoed into an error beyond a bounded, quoted name.
//! [`QueueClient`] speaks the queue's REST API (Get Messages, Delete Message).

use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::error::{Error, ErrorKind, Origin, Result};
use crate::params::{ExposeSecret, Identity};

/// The largest message text considered (Storage's own limit is 64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Messages asked for per Get Messages (Storage's maximum).
pub const MAX_BATCH: u8 = 32;
/// Storage's resource, for tokens.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// The `x-ms-version` sent (OAuth needs 2017-11-09 or later).
const STORAGE_VERSION: &str = "2021-12-02";

/// An object type, as events name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectType {
    /// `Secret`.
    Secret,
    /// `Key`.
    Key,
    /// `Certificate`.
    Certificate,
}

impl ObjectType {
    /// `secret`, `key`, `cert`: the `objectType` a class uses for it.
    pub fn class_type(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Key => "key",
            Self::Certificate => "cert",
        }
    }
}

/// One change of one object, from one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The vault (lowercase).
    pub vault: String,
    /// Object type.
    pub kind: ObjectType,
    /// Object name.
    pub name: String,
    /// The version the event is about ("" when the event names none).
    pub version: String,
    /// The event type's suffix: `NewVersionCreated`, `NearExpiry`, `Expired`.
    pub what: String,
    /// `eventTime` (`time` in CloudEvents), when it parses.
    pub event_time: Option<SystemTime>,
}

/// Why a message is not a usable Key Vault object event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not base64 JSON, or not an object.
    #[error("not an Event Grid or CloudEvents JSON event")]
    NotAnEvent,
    /// Larger than [`MAX_MESSAGE_BYTES`].
    #[error("larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    /// A Key Vault event about no object (`VaultAccessPolicyChanged`), or another service's event.
    #[error("event type {0:?} does not change an object")]
    Ignored(String),
    /// A field is missing or out of bounds.
    #[error("field {0} is missing or invalid")]
    Field(&'static str),
}

impl EventError {
    /// Whether the message can only ever fail (delete it at once, it is not a transient failure).
    pub fn is_ignorable(&self) -> bool {
        matches!(self, Self::Ignored(_))
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "eventType", alias = "type")]
    event_type: Option<String>,
    #[serde(rename = "eventTime", alias = "time")]
    event_time: Option<String>,
    data: Option<Data>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Data {
    vault_name: Option<String>,
    object_type: Option<String>,
    object_name: Option<String>,
    version: Option<String>,
}

fn bounded(v: Option<String>, field: &'static str, max: usize, ok: impl Fn(u8) -> bool) -> Result<String, EventError> {
    v.filter(|s| !s.is_empty() && s.len() <= max && s.bytes().all(&ok)).ok_or(EventError::Field(field))
}

/// Parses one queue message's text (base64, as Event Grid writes it; raw JSON is accepted too).
pub fn parse(text: &str) -> Result<Change, EventError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(EventError::TooLarge);
    }
    let trimmed = text.trim();
    let json = match base64::engine::general_purpose::STANDARD.decode(trimmed) {
        Ok(bytes) => bytes,
        Err(_) => trimmed.as_bytes().to_vec(),
    };
    // Event Grid's batch form (an array of one) is accepted as its single element.
    let value: serde_json::Value = serde_json::from_slice(&json).map_err(|_| EventError::NotAnEvent)?;
    let value = match value {
        serde_json::Value::Array(mut a) if a.len() == 1 => a.remove(0),
        v @ serde_json::Value::Object(_) => v,
        _ => return Err(EventError::NotAnEvent),
    };
    let env: Envelope = serde_json::from_value(value).map_err(|_| EventError::NotAnEvent)?;
    let event_type = env.event_type.ok_or(EventError::Field("eventType"))?;
    let shown = || event_type.chars().take(80).collect::<String>();
    let Some(rest) = event_type.strip_prefix("Microsoft.KeyVault.") else { return Err(EventError::Ignored(shown())) };
    let (kind, what) =
        [("Secret", ObjectType::Secret), ("Key", ObjectType::Key), ("Certificate", ObjectType::Certificate)]
            .into_iter()
            .find_map(|(p, k)| rest.strip_prefix(p).map(|w| (k, w)))
            .ok_or_else(|| EventError::Ignored(shown()))?;
    if !["NewVersionCreated", "NearExpiry", "Expired"].contains(&what) {
        return Err(EventError::Ignored(shown()));
    }
    let data = env.data.ok_or(EventError::Field("data"))?;
    let vault = bounded(data.vault_name, "data.VaultName", 24, |b| b.is_ascii_alphanumeric() || b == b'-')?;
    let name = bounded(data.object_name, "data.ObjectName", 127, |b| b.is_ascii_alphanumeric() || b == b'-')?;
    let version = data.version.unwrap_or_default();
    if version.len() > 64 || !version.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(EventError::Field("data.Version"));
    }
    if data.object_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case(&format!("{kind:?}"))) {
        return Err(EventError::Field("data.ObjectType"));
    }
    let event_time =
        env.event_time.filter(|t| t.len() <= 64).and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(SystemTime::from);
    Ok(Change { vault: vault.to_ascii_lowercase(), kind, name, version, what: what.to_string(), event_time })
}

/// One message taken from the queue (invisible to others until its visibility timeout).
#[derive(Clone, Debug)]
pub struct Message {
    /// `MessageId`.
    pub id: String,
    /// `PopReceipt`: needed to delete it.
    pub pop_receipt: String,
    /// `DequeueCount`: how many times it has been taken (1 the first time).
    pub dequeue_count: u64,
    /// `MessageText`, bounded to [`MAX_MESSAGE_BYTES`] (longer text is cut, and fails to parse).
    pub text: String,
}

#[derive(Deserialize, Default)]
struct MessageList {
    #[serde(rename = "QueueMessage", default)]
    messages: Vec<RawMessage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawMessage {
    message_id: String,
    #[serde(default)]
    pop_receipt: String,
    #[serde(default)]
    dequeue_count: u64,
    #[serde(default)]
    message_text: String,
}

/// Parses a Get Messages answer.
pub fn parse_messages(xml: &str) -> Result<Vec<Message>> {
    let list: MessageList = quick_xml::de::from_str(xml)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("queue answered with an unreadable message list: {e}")))?;
    Ok(list
        .messages
        .into_iter()
        .map(|m| Message {
            id: m.message_id,
            pop_receipt: m.pop_receipt,
            dequeue_count: m.dequeue_count,
            text: m.message_text.chars().take(MAX_MESSAGE_BYTES).collect(),
        })
        .collect())
}

/// A queue and the identity that reads it.
#[derive(Clone, Debug)]
pub struct QueueClient {
    /// `https://<account>.queue.core.windows.net/<queue>` (port and path as given).
    pub url: String,
    /// The identity's tenant.
    pub tenant: String,
    /// The identity (workload identity or managed identity).
    pub identity: Identity,
    /// The cloud (authority host).
    pub cloud: crate::cloud::Cloud,
}

/// Checks a queue URL: HTTPS, a host, a single-segment queue path; returns it without a trailing `/`.
pub fn check_queue_url(url: &str) -> std::result::Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("queue URL {url:?}: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("queue URL {url:?}: must be https"));
    }
    let path = parsed.path().trim_matches('/');
    if parsed.host_str().is_none() || path.is_empty() || path.contains('/') || parsed.query().is_some() {
        return Err(format!("queue URL {url:?}: expected https://<account>.queue.core.windows.net/<queue>"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

impl crate::Provider {
    async fn storage_request(
        &self,
        q: &QueueClient,
        method: Method,
        url: &str,
        deadline: Instant,
    ) -> Result<crate::transport::Reply> {
        let src = crate::identity::TokenSource {
            transport: &self.transport,
            net: &self.config.network,
            authority_host: &q.cloud.authority_host,
            keyvault_resource: &q.cloud.keyvault_resource,
            token_proxy: &self.token_proxy,
            deadline,
        };
        for attempt in 0..2 {
            let token = self.tokens.get(&src, &q.tenant, &q.identity, STORAGE_SCOPE, &self.stats).await?;
            let headers = [
                ("Authorization", format!("Bearer {}", token.expose_secret())),
                ("x-ms-version", STORAGE_VERSION.to_string()),
            ];
            let r = self.transport.send(None, method.clone(), url, &headers, None, deadline).await?;
            if r.status == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.tokens.invalidate(&q.tenant, &q.identity, STORAGE_SCOPE);
                continue;
            }
            return Ok(r);
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Takes up to `max` messages (1..=32), invisible to other readers for `visibility`.
    pub async fn queue_receive(&self, q: &QueueClient, max: u8, visibility: Duration) -> Result<Vec<Message>> {
        let query = format!(
            "numofmessages={}&visibilitytimeout={}",
            max.clamp(1, MAX_BATCH),
            visibility.as_secs().clamp(1, 7 * 86_400)
        );
        self.get_messages(q, &query, "Get Messages").await
    }

    /// Peeks at up to one message without taking it: proves the URL, the identity and its access
    /// (`check --live`). Returns how many messages were visible (0 or 1).
    pub async fn queue_peek(&self, q: &QueueClient) -> Result<usize> {
        Ok(self.get_messages(q, "peekonly=true&numofmessages=1", "Peek Messages").await?.len())
    }

    /// `GET <queue>/messages?<query>`: Get Messages and Peek Messages share it.
    async fn get_messages(&self, q: &QueueClient, query: &str, op: &str) -> Result<Vec<Message>> {
        let url = format!("{}/messages?{query}", q.url);
        let r = self.storage_request(q, Method::GET, &url, Instant::now() + Duration::from_secs(30)).await?;
        if !r.status.is_success() {
            return Err(storage_error(&r, op));
        }
        parse_messages(&String::from_utf8_lossy(&r.body))
    }

    /// Deletes a message taken with [`Self::queue_receive`].
    pub async fn queue_delete(&self, q: &QueueClient, id: &str, pop_receipt: &str) -> Result<()> {
        let url = format!(
            "{}/messages/{}?popreceipt={}",
            q.url,
            crate::identity::urlencode(id),
            crate::identity::urlencode(pop_receipt)
        );
        let r = self.storage_request(q, Method::DELETE, &url, Instant::now() + Duration::from_secs(30)).await?;
        // 404: already deleted (by an earlier attempt whose answer was lost) or expired: done either way.
        if r.status.is_success() || r.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(storage_error(&r, "Delete Message"))
        }
    }
}

/// A Storage error as an [`Error`]: the status, `x-ms-error-code` and the cause an operator acts on.
fn storage_error(r: &crate::transport::Reply, op: &str) -> Error {
    let code = r
        .headers
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(64)
        .collect::<String>();
    let status = r.status.as_u16();
    let (kind, hint) = match status {
        401 => (ErrorKind::Forbidden, "the token was refused: check the identity's tenant and the Storage audience"),
        403 => (
            ErrorKind::Forbidden,
            "grant the identity \"Storage Queue Data Message Processor\" on the queue (or its account)",
        ),
        404 => (ErrorKind::NotFound, "no such queue: check the URL"),
        429 => (ErrorKind::Throttled, "the queue service is throttling"),
        _ => (ErrorKind::Unavailable, "the queue service is unavailable"),
    };
    let mut e = Error::new(kind, format!("{op}: queue answered {status} {code}: {hint}"));
    e.origin = Origin::KeyVault;
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn both_schemas_parse_to_the_same_change() {
        let data = r#"{"Id":"https://kv1.vault.azure.net/secrets/db/abc","VaultName":"KV1","ObjectType":"Secret","ObjectName":"db","Version":"abc","NBF":null,"EXP":"1900000000"}"#;
        let eg = format!(
            r#"{{"id":"1","topic":"/x","subject":"db","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","eventTime":"2026-12-02T18:00:00.1234567Z","data":{data},"dataVersion":"1"}}"#
        );
        let ce = format!(
            r#"{{"id":"1","source":"/x","specversion":"1.0","type":"Microsoft.KeyVault.SecretNewVersionCreated","time":"2026-12-02T18:00:00.1234567Z","data":{data}}}"#
        );
        let a = parse(&b64(&eg)).unwrap();
        let b = parse(&b64(&ce)).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            (a.vault.as_str(), a.kind, a.name.as_str(), a.version.as_str()),
            ("kv1", ObjectType::Secret, "db", "abc")
        );
        assert!(a.event_time.is_some());
        assert_eq!(parse(&eg).unwrap(), a, "raw JSON is accepted too");
        assert_eq!(parse(&format!("[{eg}]")).unwrap(), a, "a batch of one");
    }

    #[test]
    fn hostile_or_foreign_messages_are_refused_without_echoing_them() {
        let ev = |t: &str, vault: &str, name: &str| {
            b64(&format!(
                r#"{{"eventType":"{t}","data":{{"VaultName":"{vault}","ObjectName":"{name}","Version":"v1"}}}}"#
            ))
        };
        assert!(matches!(
            parse(&ev("Microsoft.KeyVault.VaultAccessPolicyChanged", "kv1", "x")),
            Err(EventError::Ignored(_))
        ));
        assert!(matches!(parse(&ev("Microsoft.Storage.BlobCreated", "kv1", "x")), Err(EventError::Ignored(_))));
        assert_eq!(
            parse(&ev("Microsoft.KeyVault.SecretNewVersionCreated", "../etc", "x")),
            Err(EventError::Field("data.VaultName"))
        );
        assert_eq!(
            parse(&ev("Microsoft.KeyVault.SecretNewVersionCreated", "kv1", "a/b")),
            Err(EventError::Field("data.ObjectName"))
        );
        let long = "n".repeat(128);
        assert_eq!(
            parse(&ev("Microsoft.KeyVault.SecretNewVersionCreated", "kv1", &long)),
            Err(EventError::Field("data.ObjectName"))
        );
        assert_eq!(parse("not json at all"), Err(EventError::NotAnEvent));
        assert_eq!(parse(&b64("[1,2]")), Err(EventError::NotAnEvent));
        assert_eq!(parse(&"A".repeat(MAX_MESSAGE_BYTES + 1)), Err(EventError::TooLarge));
        let secret_in_name = ev("Microsoft.KeyVault.SecretNewVersionCreated", "kv1", "hunter2 value");
        assert!(!parse(&secret_in_name).unwrap_err().to_string().contains("hunter2"));
    }

    #[test]
    fn message_lists_parse_as_storage_writes_them() {
        let xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessagesList><QueueMessage><MessageId>m1</MessageId><InsertionTime>Wed, 02 Dec 2026 18:00:00 GMT</InsertionTime><ExpirationTime>Wed, 09 Dec 2026 18:00:00 GMT</ExpirationTime><PopReceipt>AgAAAA==</PopReceipt><TimeNextVisible>Wed, 02 Dec 2026 18:00:30 GMT</TimeNextVisible><DequeueCount>3</DequeueCount><MessageText>eyJhIjoxfQ==</MessageText></QueueMessage></QueueMessagesList>";
        let m = parse_messages(xml).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].id.as_str(), m[0].pop_receipt.as_str(), m[0].dequeue_count), ("m1", "AgAAAA==", 3));
        assert_eq!(m[0].text, "eyJhIjoxfQ==");
        assert!(parse_messages("<QueueMessagesList></QueueMessagesList>").unwrap().is_empty());
        assert!(parse_messages("<QueueMessagesList/>").unwrap().is_empty());
    }

    #[test]
    fn queue_urls_must_name_one_queue_over_https() {
        assert_eq!(
            check_queue_url("https://a.queue.core.windows.net/q/").unwrap(),
            "https://a.queue.core.windows.net/q"
        );
        assert!(check_queue_url("http://a.queue.core.windows.net/q").is_err());
        assert!(check_queue_url("https://a.queue.core.windows.net/").is_err());
        assert!(check_queue_url("https://a.queue.core.windows.net/q/messages").is_err());
    }
}
