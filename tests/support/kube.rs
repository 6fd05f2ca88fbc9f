//! An in-process fake Kubernetes API server (plain HTTP) for the driver's real kube client: objects per
//! resource with resourceVersions; GET, LIST (with label selectors), CREATE, UPDATE and DELETE; Kubernetes
//! `Status` bodies for errors. Enough for class resolution and pod statuses.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

type Store = BTreeMap<(String, String), BTreeMap<String, Value>>;

#[derive(Clone, Default)]
struct Inner {
    store: Arc<Mutex<Store>>,
    rv: Arc<Mutex<u64>>,
    requests: Arc<Mutex<Vec<String>>>,
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

/// (collection key, namespace, name) of `/apis/<g>/<v>/namespaces/<ns>/<plural>[/<name>]` or `/api/v1/...`.
fn parse(path: &str) -> Option<(String, String, Option<String>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match *segs.first()? {
        "apis" => &segs[3..],
        "api" => &segs[2..],
        _ => return None,
    };
    let gv = if segs[0] == "apis" { format!("{}/{}", segs[1], segs[2]) } else { "v1".into() };
    match rest {
        ["namespaces", ns, plural] => Some((format!("{gv}/{plural}"), ns.to_string(), None)),
        ["namespaces", ns, plural, name] => Some((format!("{gv}/{plural}"), ns.to_string(), Some(name.to_string()))),
        _ => None,
    }
}

async fn handle(State(s): State<Inner>, method: Method, uri: Uri, body: Bytes) -> Response {
    s.requests.lock().unwrap().push(format!("{method} {}", uri.path()));
    let Some((coll, ns, name)) = parse(uri.path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({})", uri.path()),
        );
    };
    let plural = coll.rsplit('/').next().unwrap_or("").to_string();
    let group = coll.split('/').next().unwrap_or("").to_string();
    let not_found = |n: &str| status(StatusCode::NOT_FOUND, "NotFound", format!("{plural}.{group} \"{n}\" not found"));
    let mut store = s.store.lock().unwrap();
    let objects = store.entry((coll.clone(), ns.clone())).or_default();
    let next_rv = || {
        let mut rv = s.rv.lock().unwrap();
        *rv += 1;
        rv.to_string()
    };
    let ok =
        |code: StatusCode, v: &Value| (code, [("content-type", "application/json")], v.to_string()).into_response();
    match (method, name) {
        (Method::GET, Some(n)) => match objects.get(&n) {
            Some(o) => ok(StatusCode::OK, o),
            None => not_found(&n),
        },
        (Method::GET, None) => {
            let selector: Vec<(String, String)> = uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.strip_prefix("labelSelector="))
                .flat_map(|sel| sel.split("%2C").map(str::to_string).collect::<Vec<_>>())
                .filter_map(|kv| {
                    kv.replace("%3D", "=").split_once('=').map(|(k, v)| (k.replace("%2F", "/"), v.to_string()))
                })
                .collect();
            let items: Vec<Value> = objects
                .values()
                .filter(|o| selector.iter().all(|(k, v)| o["metadata"]["labels"][k.as_str()] == v.as_str()))
                .cloned()
                .collect();
            ok(
                StatusCode::OK,
                &json!({ "apiVersion": coll.rsplit_once('/').map(|x| x.0).unwrap_or("v1"), "kind": "List", "metadata": { "resourceVersion": "1" }, "items": items }),
            )
        }
        (Method::POST, None) => {
            let mut obj: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
            };
            let n = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            if objects.contains_key(&n) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{plural}.{group} \"{n}\" already exists"),
                );
            }
            obj["metadata"]["resourceVersion"] = json!(next_rv());
            obj["metadata"]["uid"] = json!(format!("uid-{n}"));
            obj["metadata"]["namespace"] = json!(ns);
            objects.insert(n, obj.clone());
            ok(StatusCode::CREATED, &obj)
        }
        (Method::PUT, Some(n)) => {
            let mut obj: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
            };
            let Some(current) = objects.get(&n) else { return not_found(&n) };
            if obj["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("Operation cannot be fulfilled on {plural}.{group} \"{n}\": the object has been modified"),
                );
            }
            obj["metadata"]["resourceVersion"] = json!(next_rv());
            objects.insert(n, obj.clone());
            ok(StatusCode::OK, &obj)
        }
        (Method::DELETE, Some(n)) => match objects.remove(&n) {
            Some(_) => ok(StatusCode::OK, &json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" })),
            None => not_found(&n),
        },
        (m, _) => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{m} is not supported here")),
    }
}

impl FakeApi {
    pub async fn start() -> Self {
        let inner = Inner::default();
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

    /// Stores an object (its `apiVersion`, `metadata.namespace` and `metadata.name` say where).
    pub fn put(&self, plural: &str, obj: Value) {
        let api_version = obj["apiVersion"].as_str().unwrap().to_string();
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!("1");
        self.inner.store.lock().unwrap().entry((format!("{api_version}/{plural}"), ns)).or_default().insert(name, obj);
    }

    /// An object, if stored.
    pub fn get(&self, api_version: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.inner.store.lock().unwrap().get(&(format!("{api_version}/{plural}"), ns.to_string()))?.get(name).cloned()
    }

    /// Requests seen so far (`METHOD path`).
    pub fn requests(&self) -> Vec<String> {
        self.inner.requests.lock().unwrap().clone()
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
