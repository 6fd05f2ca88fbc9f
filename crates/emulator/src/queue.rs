//! Azure Storage queues (`https://<account>.queue.core.windows.net/<queue>`), as an Event Grid
//! subscription on a vault's system topic delivers to them: one event per message, base64 text.
//!
//! The REST surface a consumer uses, as documented: Get Messages (`numofmessages`,
//! `visibilitytimeout`, dequeue count, pop receipts), Peek Messages (`peekonly=true`), Delete Message
//! (`popreceipt`) and Put Message, with XML bodies, Entra bearer auth for the Storage audience
//! (`x-ms-version` required) and Storage's error codes. Faults: the queue unavailable, every event
//! delivered twice, events delivered newest first, messages that expire before anyone reads them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Response, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::events::{Change, Schema, What};
use crate::state::{StatKey, State, World};
use crate::tokens::{AccessClaims, STORAGE_RESOURCE};

/// Storage's default (and largest) message time-to-live: 7 days.
const DEFAULT_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Messages kept per queue; past it, the oldest go (a real queue holds 500 TiB; this one is memory).
const MAX_MESSAGES: usize = 100_000;
/// The oldest `x-ms-version` that accepts OAuth.
const MIN_OAUTH_VERSION: &str = "2017-11-09";
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Faults of one queue (control API `PUT /_emulator/queues/<account>/<queue>/faults`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueueFaults {
    /// Every request fails with 503 `ServerBusy`.
    pub unavailable: bool,
    /// Every event is enqueued twice (Event Grid delivers at least once).
    pub duplicate: bool,
    /// New events go to the front: delivered newest first.
    pub reorder: bool,
    /// The time-to-live of new event messages (default 7 days).
    pub message_ttl_seconds: Option<u64>,
}

/// A subscription of a queue to a vault's system topic.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionSeed {
    /// The vault.
    pub vault: String,
    /// The delivery schema.
    #[serde(default)]
    pub schema: Schema,
}

/// A queue in the seed.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueSeed {
    /// Queue name.
    pub name: String,
    /// Vaults whose events it receives.
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionSeed>,
    /// Principals (object or client ids) with "Storage Queue Data Message Processor" on it.
    #[serde(default)]
    pub processors: Vec<String>,
}

/// A storage account in the seed.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageAccountSeed {
    /// Account name.
    pub name: String,
    /// Tenant.
    pub tenant: String,
    /// Queues.
    #[serde(default)]
    pub queues: Vec<QueueSeed>,
}

struct Message {
    id: String,
    inserted: SystemTime,
    expires: SystemTime,
    visible_at: SystemTime,
    pop_receipt: String,
    dequeue_count: u64,
    text: String,
}

/// A queue.
pub struct Queue {
    subscriptions: Vec<SubscriptionSeed>,
    processors: Vec<String>,
    messages: VecDeque<Message>,
    /// Faults.
    pub faults: QueueFaults,
}

/// A storage account.
pub struct Account {
    tenant: String,
    /// Queues by name.
    pub queues: BTreeMap<String, Queue>,
}

impl Account {
    /// From the seed.
    pub fn from_seed(seed: &StorageAccountSeed) -> Self {
        let queues = seed
            .queues
            .iter()
            .map(|q| {
                let queue = Queue {
                    subscriptions: q.subscriptions.clone(),
                    processors: q.processors.clone(),
                    messages: VecDeque::new(),
                    faults: QueueFaults::default(),
                };
                (q.name.clone(), queue)
            })
            .collect();
        Self { tenant: seed.tenant.clone(), queues }
    }
}

impl Queue {
    fn push(&mut self, text: String, ttl: Duration, front: bool) -> &Message {
        let now = SystemTime::now();
        let m = Message {
            id: uuid::Uuid::new_v4().to_string(),
            inserted: now,
            expires: now + ttl,
            visible_at: now,
            pop_receipt: String::new(),
            dequeue_count: 0,
            text,
        };
        if self.messages.len() >= MAX_MESSAGES {
            self.messages.pop_front();
        }
        if front {
            self.messages.push_front(m);
            &self.messages[0]
        } else {
            self.messages.push_back(m);
            &self.messages[self.messages.len() - 1]
        }
    }

    fn enqueue_event(&mut self, body: &serde_json::Value) {
        let text = STANDARD.encode(body.to_string());
        let ttl = self.faults.message_ttl_seconds.map(Duration::from_secs).unwrap_or(DEFAULT_TTL);
        let copies = if self.faults.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            self.push(text.clone(), ttl, self.faults.reorder);
        }
    }

    /// Drops every message (Storage's Clear Messages).
    pub fn purge(&mut self) {
        self.messages.clear();
    }

    fn drop_expired(&mut self, now: SystemTime) {
        self.messages.retain(|m| m.expires > now);
    }
}

impl World {
    /// Delivers what the vaults recorded since the last call (and the expiry events now due) to the
    /// queues subscribed to them. Called before any queue is read, so delivery is immediate as far as
    /// a reader can tell.
    pub fn route_changes(&mut self, suffix: &str) {
        let now = SystemTime::now();
        let unix_now = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        let mut due: Vec<(String, Change)> = Vec::new();
        for (name, vault) in self.vaults.iter_mut() {
            due.extend(vault.changes.drain(..).map(|c| (name.clone(), c)));
            for c in vault.expiry_events(unix_now, crate::events::NEAR_EXPIRY.as_secs() as i64) {
                due.push((name.clone(), c));
            }
        }
        for (vault, change) in due {
            for account in self.storage.values_mut() {
                for queue in account.queues.values_mut() {
                    for sub in queue.subscriptions.clone().iter().filter(|s| s.vault.eq_ignore_ascii_case(&vault)) {
                        let event = crate::events::event(&vault, suffix, &change, sub.schema);
                        queue.enqueue_event(&event);
                    }
                }
            }
        }
    }
}

/// One queue-service request.
pub struct QueueRequest<'a> {
    /// Account (first DNS label of the host).
    pub account: String,
    /// Method.
    pub method: Method,
    /// Path segments after `/`.
    pub segments: Vec<&'a str>,
    /// Query.
    pub query: BTreeMap<String, String>,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Body.
    pub body: &'a [u8],
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// Storage's error response: XML body, `x-ms-error-code`.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let request_id = uuid::Uuid::new_v4();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{}\nRequestId:{request_id}\nTime:{}</Message></Error>",
        xml_escape(message),
        jiff::Timestamp::now()
    );
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", "application/xml".parse().expect("literal"));
    h.insert("x-ms-error-code", code.parse().expect("code is ASCII"));
    h.insert("x-ms-request-id", request_id.to_string().parse().expect("uuid"));
    r
}

fn unauthorized(tenant: &str, authority: &str, code: &str, message: &str) -> Response<Body> {
    let mut r = error(StatusCode::UNAUTHORIZED, code, message);
    let challenge =
        format!("Bearer authorization_uri={authority}/{tenant}/oauth2/authorize resource_id={STORAGE_RESOURCE}");
    if let Ok(v) = challenge.parse() {
        r.headers_mut().insert("www-authenticate", v);
    }
    r
}

fn xml_ok(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", "application/xml".parse().expect("literal"));
    h.insert("x-ms-version", MIN_OAUTH_VERSION.parse().expect("literal"));
    h.insert("x-ms-request-id", uuid::Uuid::new_v4().to_string().parse().expect("uuid"));
    r
}

fn message_xml(m: &Message, peek: bool) -> String {
    let receipt = if peek {
        String::new()
    } else {
        format!(
            "<PopReceipt>{}</PopReceipt><TimeNextVisible>{}</TimeNextVisible>",
            xml_escape(&m.pop_receipt),
            http_date(m.visible_at)
        )
    };
    format!(
        "<QueueMessage><MessageId>{}</MessageId><InsertionTime>{}</InsertionTime><ExpirationTime>{}</ExpirationTime>{receipt}<DequeueCount>{}</DequeueCount><MessageText>{}</MessageText></QueueMessage>",
        m.id,
        http_date(m.inserted),
        http_date(m.expires),
        m.dequeue_count,
        xml_escape(&m.text)
    )
}

fn list_xml(items: impl IntoIterator<Item = String>) -> String {
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessagesList>");
    for i in items {
        s.push_str(&i);
    }
    s.push_str("</QueueMessagesList>");
    s
}

/// Serves one request to `<account>.queue.core.windows.net`.
pub fn handle(state: &State, suffix: &str, req: QueueRequest<'_>) -> Response<Body> {
    let resp = serve(state, suffix, &req);
    state.count(StatKey {
        vault: req.account.clone(),
        kind: "queue".into(),
        object: req.segments.first().map(|s| s.to_string()).unwrap_or_default(),
        method: req.method.to_string(),
        status: resp.status().as_u16(),
        identity: String::new(),
    });
    resp
}

fn serve(state: &State, suffix: &str, req: &QueueRequest<'_>) -> Response<Body> {
    let authority = state.authority();
    let mut w = state.world();
    let Some(tenant) = w.storage.get(&req.account).map(|a| a.tenant.clone()) else {
        // DNS would not resolve an account that does not exist; the closest an HTTP server can say.
        return error(StatusCode::NOT_FOUND, "ResourceNotFound", "The specified resource does not exist.");
    };
    let queue_name = req.segments.first().copied().unwrap_or_default().to_string();
    if w.storage[&req.account].queues.get(&queue_name).is_some_and(|q| q.faults.unavailable) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServerBusy",
            "The server is currently unable to receive requests. Please retry your request.",
        );
    }
    // Authentication: a bearer token for Storage, and an x-ms-version that accepts one.
    let Some(token) = req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
    else {
        return unauthorized(
            &tenant,
            &authority,
            "NoAuthenticationInformation",
            "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
        );
    };
    let version = req.headers.get("x-ms-version").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if version.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingRequiredHeader",
            "An HTTP header that's mandatory for this request is not specified.",
        );
    }
    if version < MIN_OAUTH_VERSION {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidHeaderValue",
            "The value for one of the HTTP headers is not in the correct format.",
        );
    }
    let claims: AccessClaims = match state.signer.verify(token) {
        Ok(c) => c,
        Err(_) => {
            return unauthorized(
                &tenant,
                &authority,
                "InvalidAuthenticationInfo",
                "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
            );
        }
    };
    if claims.aud.trim_end_matches('/') != STORAGE_RESOURCE {
        return unauthorized(&tenant, &authority, "InvalidAuthenticationInfo", "Audience validation failed.");
    }
    if claims.tid != tenant {
        return unauthorized(&tenant, &authority, "InvalidAuthenticationInfo", "Issuer validation failed.");
    }
    w.route_changes(suffix);
    let account = w.storage.get_mut(&req.account).expect("looked up above");
    let Some(queue) = account.queues.get_mut(&queue_name) else {
        return error(StatusCode::NOT_FOUND, "QueueNotFound", "The specified queue does not exist.");
    };
    if !queue.processors.iter().any(|p| *p == claims.oid || *p == claims.appid) {
        return error(
            StatusCode::FORBIDDEN,
            "AuthorizationPermissionMismatch",
            "This request is not authorized to perform this operation using this permission.",
        );
    }
    let now = SystemTime::now();
    queue.drop_expired(now);
    match (&req.method, &req.segments[1..]) {
        (&Method::GET, ["messages"]) => get_messages(queue, &req.query, now),
        (&Method::POST, ["messages"]) => put_message(queue, &req.query, req.body),
        (&Method::DELETE, ["messages", id]) => {
            let receipt = req.query.get("popreceipt").cloned().unwrap_or_default();
            match queue.messages.iter().position(|m| m.id == *id) {
                None => error(StatusCode::NOT_FOUND, "MessageNotFound", "The specified message does not exist."),
                Some(i) if queue.messages[i].pop_receipt != receipt || receipt.is_empty() => error(
                    StatusCode::BAD_REQUEST,
                    "PopReceiptMismatch",
                    "The specified pop receipt did not match the pop receipt for a dequeued message.",
                ),
                Some(i) => {
                    queue.messages.remove(i);
                    let mut r = xml_ok(StatusCode::NO_CONTENT, String::new());
                    r.headers_mut().remove("content-type");
                    r
                }
            }
        }
        _ => error(
            StatusCode::BAD_REQUEST,
            "UnsupportedHttpVerb",
            "The resource doesn't support the specified HTTP verb.",
        ),
    }
}

fn bounded(query: &BTreeMap<String, String>, name: &str, default: u64, range: (u64, u64)) -> Result<u64, String> {
    match query.get(name) {
        None => Ok(default),
        Some(v) => v.parse::<u64>().ok().filter(|n| (range.0..=range.1).contains(n)).ok_or_else(|| name.to_string()),
    }
}

fn out_of_range(name: &str) -> Response<Body> {
    error(
        StatusCode::BAD_REQUEST,
        "OutOfRangeQueryParameterValue",
        &format!("One of the query parameters specified in the request URI is outside the permissible range. ({name})"),
    )
}

fn get_messages(queue: &mut Queue, query: &BTreeMap<String, String>, now: SystemTime) -> Response<Body> {
    let n = match bounded(query, "numofmessages", 1, (1, 32)) {
        Ok(n) => n as usize,
        Err(name) => return out_of_range(&name),
    };
    let peek = query.get("peekonly").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if peek {
        let items = queue.messages.iter().filter(|m| m.visible_at <= now).take(n).map(|m| message_xml(m, true));
        return xml_ok(StatusCode::OK, list_xml(items.collect::<Vec<_>>()));
    }
    let visibility = match bounded(query, "visibilitytimeout", 30, (1, 7 * 86_400)) {
        Ok(v) => Duration::from_secs(v),
        Err(name) => return out_of_range(&name),
    };
    let mut items = Vec::new();
    for m in queue.messages.iter_mut().filter(|m| m.visible_at <= now).take(n) {
        m.dequeue_count += 1;
        m.visible_at = now + visibility;
        m.pop_receipt = STANDARD.encode(uuid::Uuid::new_v4().as_bytes());
        items.push(message_xml(m, false));
    }
    xml_ok(StatusCode::OK, list_xml(items))
}

fn put_message(queue: &mut Queue, query: &BTreeMap<String, String>, body: &[u8]) -> Response<Body> {
    let ttl = match bounded(query, "messagettl", DEFAULT_TTL.as_secs(), (1, DEFAULT_TTL.as_secs())) {
        Ok(t) => Duration::from_secs(t),
        Err(name) => return out_of_range(&name),
    };
    let body = String::from_utf8_lossy(body);
    let text = body.split_once("<MessageText>").and_then(|(_, rest)| rest.split_once("</MessageText>")).map(|(t, _)| t);
    let Some(text) = text.filter(|t| t.len() <= MAX_MESSAGE_BYTES) else {
        return error(StatusCode::BAD_REQUEST, "InvalidXmlDocument", "XML specified is not syntactically valid.");
    };
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    let m = queue.push(text, ttl, false);
    let mut xml = message_xml(m, false);
    // Put Message answers without the text.
    if let Some(start) = xml.find("<DequeueCount>") {
        xml.truncate(start);
        xml.push_str("</QueueMessage>");
    }
    xml_ok(StatusCode::CREATED, list_xml([xml]))
}

/// A vault's expiry bookkeeping: which (type, name, version, what) were already announced.
pub type Announced = BTreeSet<(crate::events::ObjectType, String, String, What)>;

/// Control API: `POST /_emulator/queues/<account>/<queue>/messages` enqueues raw text (a poison
/// message, say) without auth; `PUT …/faults` sets [`QueueFaults`]; `GET …` tells the queue's depth.
pub fn control(
    w: &mut World,
    method: &Method,
    account: &str,
    queue: &str,
    rest: &[&str],
    body: &[u8],
) -> Result<serde_json::Value, String> {
    let q = w
        .storage
        .get_mut(account)
        .and_then(|a| a.queues.get_mut(queue))
        .ok_or_else(|| format!("no queue {account}/{queue}"))?;
    match (method, rest) {
        (&Method::PUT, ["faults"]) => {
            q.faults = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            Ok(serde_json::json!({}))
        }
        (&Method::POST, ["messages"]) => {
            let text = String::from_utf8_lossy(body).into_owned();
            let id = q.push(text, DEFAULT_TTL, false).id.clone();
            Ok(serde_json::json!({ "id": id }))
        }
        (&Method::GET, []) => Ok(serde_json::json!({ "messages": q.messages.len() })),
        _ => Err("unknown queue control".into()),
    }
}
