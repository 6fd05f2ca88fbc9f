//! An in-process fake Kubernetes API server (plain HTTP) for the driver's real kube client.
//!
//! Objects are kept per resource and namespace with a global resourceVersion. It serves GET, LIST
//! (namespaced and cluster-wide) and WATCH (newline-delimited events from a resourceVersion, ending
//! at `timeoutSeconds`, `410 Gone` when the version is compacted), CREATE, UPDATE (optimistic locking),
//! merge PATCH and DELETE, with label selectors (`k=v`, `k!=v`, `k`, `!k`) and field selectors
//! (`a.b=v`). Errors are Kubernetes `Status` bodies. Deleting an object garbage-collects its
//! dependents as the API server's collector does: a dependent loses the dangling owner reference and
//! is deleted (recursively) when no owner is left.
#![allow(dead_code, clippy::result_large_err)]

#[path = "kube/query.rs"]
mod query;
use query::*;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// (collection `group/version/plural` or `v1/plural`, namespace) → name → object.
type Store = BTreeMap<(String, String), BTreeMap<String, Value>>;

/// One change, for watches.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    coll: String,
    ns: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State_ {
    store: Store,
    rv: u64,
    log: Vec<Change>,
    /// Changes up to here were dropped (a watch from before gets 410 Gone).
    compacted: u64,
    requests: Vec<String>,
}

/// Issues service-account tokens (namespace, service account, audience) for the TokenRequest API.
type Minter = Arc<dyn Fn(&str, &str, &str) -> Option<String> + Send + Sync>;

#[derive(Clone)]
struct Inner {
    state: Arc<Mutex<State_>>,
    changed: tokio::sync::watch::Sender<u64>,
    minter: Arc<Mutex<Option<Minter>>>,
}

/// A running fake API server.
pub struct FakeApi {
    pub addr: SocketAddr,
    inner: Inner,
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16() });
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

fn ok(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

impl State_ {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, coll: &str, ns: &str, kind: &'static str, object: &Value) {
        let rv = self.rv;
        self.log.push(Change { rv, coll: coll.into(), ns: ns.into(), kind, object: object.clone() });
    }

    /// Stores a new object: uid, resourceVersion, namespace, creationTimestamp.
    fn create(&mut self, coll: &str, ns: &str, mut obj: Value) -> Result<Value, Response> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if name.is_empty() {
            return Err(status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required value".into()));
        }
        if self.store.get(&(coll.into(), ns.into())).is_some_and(|o| o.contains_key(&name)) {
            let (group, plural) = names(coll);
            return Err(status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{plural}{group} \"{name}\" already exists"),
            ));
        }
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{rv:012}"));
        if !ns.is_empty() {
            obj["metadata"]["namespace"] = json!(ns);
        }
        obj["metadata"]["creationTimestamp"] = json!("2026-11-23T00:00:00Z");
        self.store.entry((coll.into(), ns.into())).or_default().insert(name, obj.clone());
        self.record(coll, ns, "ADDED", &obj);
        Ok(obj)
    }

    fn replace(&mut self, coll: &str, ns: &str, name: &str, mut obj: Value) -> Value {
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.store.entry((coll.into(), ns.into())).or_default().insert(name.into(), obj.clone());
        self.record(coll, ns, "MODIFIED", &obj);
        obj
    }

    /// Deletes an object and garbage-collects its dependents.
    fn delete(&mut self, coll: &str, ns: &str, name: &str) -> Option<Value> {
        let obj = self.store.get_mut(&(coll.into(), ns.into()))?.remove(name)?;
        self.bump();
        self.record(coll, ns, "DELETED", &obj);
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let dependents: Vec<(String, String, String)> = self
            .store
            .iter()
            .flat_map(|((c, n), objs)| objs.iter().map(move |(name, o)| (c, n, name, o)))
            .filter(|(_, _, _, o)| {
                o["metadata"]["ownerReferences"].as_array().is_some_and(|r| r.iter().any(|r| r["uid"] == uid.as_str()))
            })
            .map(|(c, n, name, _)| (c.clone(), n.clone(), name.clone()))
            .collect();
        for (c, n, dep) in dependents {
            let mut o = self.store[&(c.clone(), n.clone())][&dep].clone();
            let refs: Vec<Value> = o["metadata"]["ownerReferences"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["uid"] != uid.as_str())
                .cloned()
                .collect();
            if refs.is_empty() {
                self.delete(&c, &n, &dep);
            } else {
                o["metadata"]["ownerReferences"] = json!(refs);
                self.replace(&c, &n, &dep, o);
            }
        }
        Some(obj)
    }
}

async fn handle(
    State(s): State<Inner>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if method == Method::POST
        && let ["api", "v1", "namespaces", ns, "serviceaccounts", sa, "token"] =
            uri.path().trim_matches('/').split('/').collect::<Vec<_>>()[..]
    {
        return token_request(&s, ns, sa, &body);
    }
    let mut st = s.state.lock().unwrap();
    st.requests.push(format!("{method} {}", uri));
    let Some(Target { coll, ns, name }) = parse(uri.path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({})", uri.path()),
        );
    };
    let (group, plural) = names(&coll);
    let not_found = |n: &str| status(StatusCode::NOT_FOUND, "NotFound", format!("{plural}{group} \"{n}\" not found"));
    let ns_key = ns.clone().unwrap_or_default();
    match (method, name) {
        (Method::GET, Some(n)) => match st.store.get(&(coll.clone(), ns_key)).and_then(|o| o.get(&n)) {
            Some(o) => ok(StatusCode::OK, o),
            None => not_found(&n),
        },
        (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(st.rv);
            if from < st.compacted {
                return status(
                    StatusCode::GONE,
                    "Expired",
                    format!("too old resource version: {from} ({})", st.compacted),
                );
            }
            let timeout = query.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(290u64);
            let bookmarks = query.get("allowWatchBookmarks").is_some_and(|b| b == "true");
            drop(st);
            watch_response(s.clone(), coll, ns, query, from, Duration::from_secs(timeout), bookmarks)
        }
        (Method::GET, None) => {
            let items: Vec<Value> = st
                .store
                .iter()
                .filter(|((c, n), _)| *c == coll && ns.as_ref().is_none_or(|ns| ns == n))
                .flat_map(|(_, objs)| objs.values())
                .filter(|o| selected(o, &query))
                .cloned()
                .collect();
            let api_version = coll.rsplit_once('/').map(|x| x.0).unwrap_or("v1");
            ok(
                StatusCode::OK,
                &json!({ "apiVersion": api_version, "kind": "List", "metadata": { "resourceVersion": st.rv.to_string() }, "items": items }),
            )
        }
        (Method::POST, None) => {
            let obj: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
            };
            let r = st.create(&coll, &ns_key, obj);
            drop(st);
            s.changed.send_modify(|v| *v += 1);
            match r {
                Ok(o) => ok(StatusCode::CREATED, &o),
                Err(e) => e,
            }
        }
        (Method::PUT, Some(n)) => {
            let obj: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
            };
            let Some(current) = st.store.get(&(coll.clone(), ns_key.clone())).and_then(|o| o.get(&n)).cloned() else {
                return not_found(&n);
            };
            let sent = &obj["metadata"]["resourceVersion"];
            if !sent.is_null() && *sent != current["metadata"]["resourceVersion"] {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {plural}{group} \"{n}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                );
            }
            let mut obj = obj;
            obj["metadata"]["uid"] = current["metadata"]["uid"].clone();
            obj["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
            let o = st.replace(&coll, &ns_key, &n, obj);
            drop(st);
            s.changed.send_modify(|v| *v += 1);
            ok(StatusCode::OK, &o)
        }
        (Method::PATCH, Some(n)) => {
            let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
            if !(ct.starts_with("application/merge-patch+json")
                || ct.starts_with("application/strategic-merge-patch+json"))
            {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!("the fake API server supports merge patches only, not {ct:?}"),
                );
            }
            let patch: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
            };
            let Some(mut obj) = st.store.get(&(coll.clone(), ns_key.clone())).and_then(|o| o.get(&n)).cloned() else {
                return not_found(&n);
            };
            merge_patch(&mut obj, &patch);
            let o = st.replace(&coll, &ns_key, &n, obj);
            drop(st);
            s.changed.send_modify(|v| *v += 1);
            ok(StatusCode::OK, &o)
        }
        (Method::DELETE, Some(n)) => {
            let r = st.delete(&coll, &ns_key, &n);
            drop(st);
            s.changed.send_modify(|v| *v += 1);
            match r {
                Some(o) => ok(StatusCode::OK, &o),
                None => not_found(&n),
            }
        }
        (m, _) => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{m} is not supported here")),
    }
}

/// `POST .../serviceaccounts/<sa>/token` (TokenRequest), answered by the minter for an existing
/// service account.
fn token_request(s: &Inner, ns: &str, sa: &str, body: &[u8]) -> Response {
    s.state.lock().unwrap().requests.push(format!("POST /api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"));
    let exists = s
        .state
        .lock()
        .unwrap()
        .store
        .get(&("v1/serviceaccounts".into(), ns.into()))
        .is_some_and(|o| o.contains_key(sa));
    if !exists {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("serviceaccounts \"{sa}\" not found"));
    }
    let req: Value = serde_json::from_slice(body).unwrap_or_default();
    let audience = req["spec"]["audiences"][0].as_str().unwrap_or("").to_string();
    let minter = s.minter.lock().unwrap().clone();
    match minter.and_then(|m| m(ns, sa, &audience)) {
        Some(token) => {
            let mut out = req;
            out["status"] = json!({ "token": token, "expirationTimestamp": "2030-01-01T00:00:00Z" });
            ok(StatusCode::CREATED, &out)
        }
        None => status(StatusCode::FORBIDDEN, "Forbidden", format!("cannot create a token for {ns}/{sa}")),
    }
}

/// A watch: every matching change after `from`, then new ones as they happen, until `timeout`.
fn watch_response(
    s: Inner,
    coll: String,
    ns: Option<String>,
    query: HashMap<String, String>,
    from: u64,
    timeout: Duration,
    bookmarks: bool,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let mut changed = s.changed.subscribe();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut cursor = from;
        loop {
            let lines: Vec<String> = {
                let st = s.state.lock().unwrap();
                let mut lines: Vec<String> = st
                    .log
                    .iter()
                    .filter(|c| c.rv > cursor && c.coll == coll && ns.as_ref().is_none_or(|n| *n == c.ns))
                    .filter(|c| selected(&c.object, &query))
                    .map(|c| json!({ "type": c.kind, "object": c.object }).to_string())
                    .collect();
                if bookmarks && lines.is_empty() && st.rv > cursor {
                    let api_version = coll.rsplit_once('/').map(|x| x.0).unwrap_or("v1");
                    lines.push(
                        json!({ "type": "BOOKMARK", "object": { "apiVersion": api_version, "kind": "Bookmark",
                            "metadata": { "resourceVersion": st.rv.to_string() } } })
                        .to_string(),
                    );
                }
                cursor = st.rv;
                lines
            };
            for l in lines {
                if tx.send(Ok(Bytes::from(l + "\n"))).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

impl FakeApi {
    pub async fn start() -> Self {
        let (changed, _) = tokio::sync::watch::channel(0);
        let inner = Inner { state: Arc::default(), changed, minter: Arc::default() };
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, inner }
    }

    /// Writes a kubeconfig for this server.
    pub fn kubeconfig(&self, path: &Path) {
        write_kubeconfig(path, &format!("http://{}", self.addr));
    }

    fn collection(obj: &Value, plural: &str) -> (String, String) {
        let api_version = obj["apiVersion"].as_str().unwrap().to_string();
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        (format!("{api_version}/{plural}"), ns)
    }

    /// Creates an object (its `apiVersion`, `metadata.namespace` and `metadata.name` say where),
    /// replacing one of the same name; returns it with uid and resourceVersion.
    pub fn put(&self, plural: &str, obj: Value) -> Value {
        let (coll, ns) = Self::collection(&obj, plural);
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let mut st = self.inner.state.lock().unwrap();
        let existing = st.store.get(&(coll.clone(), ns.clone())).and_then(|o| o.get(&name)).cloned();
        let stored = match existing {
            Some(cur) => {
                let mut obj = obj;
                obj["metadata"]["uid"] = cur["metadata"]["uid"].clone();
                st.replace(&coll, &ns, &name, obj)
            }
            None => st.create(&coll, &ns, obj).unwrap_or_else(|_| panic!("cannot create {name}")),
        };
        drop(st);
        self.inner.changed.send_modify(|v| *v += 1);
        stored
    }

    /// Deletes an object (garbage-collecting its dependents); whether it existed.
    pub fn delete(&self, api_version: &str, plural: &str, ns: &str, name: &str) -> bool {
        let r = self.inner.state.lock().unwrap().delete(&format!("{api_version}/{plural}"), ns, name).is_some();
        self.inner.changed.send_modify(|v| *v += 1);
        r
    }

    /// An object, if stored.
    pub fn get(&self, api_version: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.inner
            .state
            .lock()
            .unwrap()
            .store
            .get(&(format!("{api_version}/{plural}"), ns.to_string()))?
            .get(name)
            .cloned()
    }

    /// The objects of a collection in a namespace.
    pub fn list(&self, api_version: &str, plural: &str, ns: &str) -> Vec<Value> {
        let st = self.inner.state.lock().unwrap();
        st.store
            .get(&(format!("{api_version}/{plural}"), ns.to_string()))
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Answers TokenRequests with `minter(namespace, service account, audience)`.
    pub fn set_token_minter(&self, minter: impl Fn(&str, &str, &str) -> Option<String> + Send + Sync + 'static) {
        *self.inner.minter.lock().unwrap() = Some(Arc::new(minter));
    }

    /// Forgets the change log: watches from an older resourceVersion get `410 Gone`.
    pub fn compact(&self) {
        let mut st = self.inner.state.lock().unwrap();
        st.compacted = st.rv;
        st.log.clear();
    }

    /// Requests seen so far (`METHOD path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.inner.state.lock().unwrap().requests.clone()
    }
}

/// A kubeconfig pointing at `server`.
pub fn write_kubeconfig(path: &Path, server: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\nusers:\n- name: fake\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n"
        ),
    )
    .unwrap();
}

/// A SecretProviderClass object.
pub fn class(ns: &str, name: &str, provider: &str, params: &[(&str, &str)]) -> Value {
    let parameters: BTreeMap<&str, &str> = params.iter().copied().collect();
    json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "provider": provider, "parameters": parameters },
    })
}

/// A Deployment's ReplicaSet (only what owner references need).
pub fn replica_set(ns: &str, name: &str) -> Value {
    json!({ "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": { "name": name, "namespace": ns } })
}

/// A pod on `node`, owned by `owner` (a stored object) when given.
pub fn pod(ns: &str, name: &str, node: &str, owner: Option<&Value>) -> Value {
    let owners: Vec<Value> = owner
        .map(|o| {
            vec![json!({ "apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"],
                "uid": o["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true })]
        })
        .unwrap_or_default();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "ownerReferences": owners },
        "spec": { "nodeName": node, "containers": [{ "name": "app", "image": "busybox" }] },
        "status": { "phase": "Running" },
    })
}
