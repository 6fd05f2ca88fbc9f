//! A faithful emulator of the Azure services a Key Vault CSI provider talks to, for tests, benchmarks
//! and the demo: the Key Vault data plane (secrets, keys, certificates), the Entra ID token endpoint
//! (client secret and federated client assertion), IMDS and aad-pod-identity's NMI.
//!
//! It impersonates the real host names over HTTPS with a CA it generates (or one you supply): vaults
//! answer on `https://<vault>.vault.azure.net:<port>/` and Entra ID on
//! `https://login.microsoftonline.com:<port>/`, routed by the `Host` header, so clients build the same
//! URLs as in production and only need to resolve those names to the emulator and trust its CA. Where
//! Azure is strict (challenge auth, token signature/expiry/audience/tenant, access policy, names, api
//! versions, paging limits), the emulator is strict too. IMDS and NMI are plain HTTP, as in Azure.
//!
//! Start at [`Emulator::builder`]; the [`Handle`] gives URLs, the CA, request statistics and the fault
//! controls. The crate depends on none of the project's other crates, so it cannot share a wire-format
//! bug with the provider it tests.

mod entra;
pub mod events;
mod handle;
mod http;
mod kv;
pub mod model;
pub mod proxy;
pub mod queue;
pub mod seed;

pub use handle::Handle;
mod state;
mod tokens;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::json;

pub use seed::Seed;
pub use state::{Faults, StatKey};

use state::State;

/// The emulator's default Key Vault DNS suffix (the real one, impersonated).
pub const DEFAULT_VAULT_SUFFIX: &str = "vault.azure.net";
/// The queue service's DNS suffix (the real one, impersonated): `<account>.queue.core.windows.net`.
pub const QUEUE_SUFFIX: &str = "queue.core.windows.net";
/// The emulator's default authority host (the real one, impersonated).
pub const DEFAULT_AUTHORITY_HOST: &str = "login.microsoftonline.com";

/// Entry point.
pub struct Emulator;

impl Emulator {
    /// A builder with the defaults: random ports on 127.0.0.1, a generated CA, an empty world.
    pub fn builder() -> Builder {
        Builder {
            seed: Seed::default(),
            https_addr: "127.0.0.1:0".parse().expect("literal"),
            http_addr: "127.0.0.1:0".parse().expect("literal"),
            token_proxy_addr: "127.0.0.1:0".parse().expect("literal"),
            vault_suffix: DEFAULT_VAULT_SUFFIX.into(),
            authority_host: DEFAULT_AUTHORITY_HOST.into(),
            ca: None,
            ca_file: None,
        }
    }
}

/// Configures an emulator.
pub struct Builder {
    seed: Seed,
    https_addr: SocketAddr,
    http_addr: SocketAddr,
    token_proxy_addr: SocketAddr,
    vault_suffix: String,
    authority_host: String,
    ca: Option<(String, String)>,
    ca_file: Option<PathBuf>,
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The seed is invalid.
    #[error("invalid seed: {0}")]
    Seed(String),
    /// TLS material could not be built.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

impl Builder {
    /// Vaults, objects, identities.
    pub fn seed(mut self, seed: Seed) -> Self {
        self.seed = seed;
        self
    }
    /// HTTPS listen address (Key Vault and Entra ID).
    pub fn https_addr(mut self, addr: SocketAddr) -> Self {
        self.https_addr = addr;
        self
    }
    /// Plain HTTP listen address (IMDS and NMI).
    pub fn http_addr(mut self, addr: SocketAddr) -> Self {
        self.http_addr = addr;
        self
    }
    /// HTTPS address of AKS's identity binding token proxy (and the API server it stands behind).
    pub fn token_proxy_addr(mut self, addr: SocketAddr) -> Self {
        self.token_proxy_addr = addr;
        self
    }
    /// Use this CA (certificate PEM, PKCS#8 key PEM) instead of generating one.
    pub fn ca(mut self, cert_pem: String, key_pem: String) -> Self {
        self.ca = Some((cert_pem, key_pem));
        self
    }
    /// Also write the CA certificate to this file, for clients to trust.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Starts serving.
    pub async fn start(self) -> Result<Handle, StartError> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let state = Arc::new(State::from_seed(&self.seed).map_err(StartError::Seed)?);
        let (ca_pem, server_cert, server_key, issuer) =
            tls_material(self.ca.as_ref(), &self.vault_suffix, &self.authority_host)?;
        let clusters: Vec<String> = {
            let mut ids: Vec<String> = self.seed.identity_bindings.iter().map(|b| b.cluster_id.clone()).collect();
            ids.dedup();
            ids
        };
        let proxy_tls = proxy::tls_config(&clusters, &issuer)?;
        let (proxy_listener, token_proxy_addr) = proxy::bind(self.token_proxy_addr).await?;
        let proxy_task = proxy::serve(proxy_listener, proxy_tls, state.clone());
        if let Some(path) = &self.ca_file {
            std::fs::write(path, &ca_pem)?;
        }
        let https = std::net::TcpListener::bind(self.https_addr)?;
        let https_addr = https.local_addr()?;
        *state.authority.lock().unwrap_or_else(|e| e.into_inner()) =
            format!("https://{}:{}", self.authority_host, https_addr.port());
        let app_state = AppState {
            state: state.clone(),
            vault_suffix: self.vault_suffix.clone(),
            authority_host: self.authority_host.clone(),
        };
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem(server_cert.into_bytes(), server_key.into_bytes())
            .await
            .map_err(|e| StartError::Tls(e.to_string()))?;
        let https_handle = serve_https(https, tls.clone(), app_state.clone())?;

        let http = tokio::net::TcpListener::bind(self.http_addr).await?;
        let http_addr = http.local_addr()?;
        let http_app = Router::new().fallback(dispatch_http).with_state(app_state.clone());
        let http_task = tokio::spawn(async move {
            let _ = axum::serve(http, http_app).await;
        });
        Ok(Handle {
            state,
            https_addr,
            http_addr,
            token_proxy_addr,
            ca_pem,
            vault_suffix: self.vault_suffix,
            authority_host: self.authority_host,
            server: Mutex::new(Some(https_handle)),
            tls,
            app_state,
            http_task,
            proxy_task,
        })
    }
}

/// CA PEM, server certificate PEM, server key PEM, and the CA to sign more with.
type Material = (String, String, String, rcgen::Issuer<'static, KeyPair>);

fn tls_material(ca: Option<&(String, String)>, suffix: &str, authority: &str) -> Result<Material, StartError> {
    let e = |e: rcgen::Error| StartError::Tls(e.to_string());
    let issuer = match ca {
        Some((cert, key)) => {
            let key = KeyPair::from_pem(key).map_err(e)?;
            rcgen::Issuer::from_ca_cert_pem(cert, key).map_err(e)?
        }
        None => {
            let mut p = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
            p.distinguished_name.push(DnType::CommonName, "keyvault-csi emulator CA");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().map_err(e)?).map_err(e)?;
            let pem = ca.pem();
            let key = KeyPair::from_pem(&ca.key().serialize_pem()).map_err(e)?;
            return finish(pem.clone(), rcgen::Issuer::from_ca_cert_pem(&pem, key).map_err(e)?, suffix, authority);
        }
    };
    let ca_pem = ca.map(|(c, _)| c.clone()).unwrap_or_default();
    finish(ca_pem, issuer, suffix, authority)
}

fn finish(
    ca_pem: String,
    issuer: rcgen::Issuer<'static, KeyPair>,
    suffix: &str,
    authority: &str,
) -> Result<Material, StartError> {
    let e = |e: rcgen::Error| StartError::Tls(e.to_string());
    let sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        authority.to_string(),
        format!("*.{suffix}"),
        format!("*.{QUEUE_SUFFIX}"),
    ];
    let mut params = CertificateParams::new(sans).map_err(e)?;
    params.distinguished_name.push(DnType::CommonName, format!("*.{suffix}"));
    let key = KeyPair::generate().map_err(e)?;
    let cert = params.signed_by(&key, &issuer).map_err(e)?;
    Ok((ca_pem, cert.pem(), key.serialize_pem(), issuer))
}

fn serve_https(
    listener: std::net::TcpListener,
    tls: axum_server::tls_rustls::RustlsConfig,
    app_state: AppState,
) -> std::io::Result<axum_server::Handle<SocketAddr>> {
    listener.set_nonblocking(true)?;
    let handle = axum_server::Handle::new();
    let app = Router::new().fallback(dispatch_https).with_state(app_state);
    // TCP_NODELAY: without it, Nagle and delayed ACKs add ~40 ms to concurrent HTTP/2 requests.
    let acceptor =
        axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(axum_server::accept::NoDelayAcceptor::new());
    let server = axum_server::from_tcp(listener)?.acceptor(acceptor).handle(handle.clone());
    tokio::spawn(async move {
        let _ = server.serve(app.into_make_service()).await;
    });
    Ok(handle)
}

#[derive(Clone)]
struct AppState {
    state: Arc<State>,
    vault_suffix: String,
    authority_host: String,
}

fn parse_query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query().map(form_urlencoded).unwrap_or_default()
}

/// Decodes `a=b&c=d` (application/x-www-form-urlencoded).
fn form_urlencoded(s: &str) -> BTreeMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn host_of(uri: &Uri, headers: &HeaderMap) -> String {
    uri.authority()
        .map(|a| a.to_string())
        .or_else(|| headers.get("host").and_then(|h| h.to_str().ok()).map(str::to_string))
        .unwrap_or_default()
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(text.to_string()));
    *r.status_mut() = status;
    r
}

async fn dispatch_https(
    AxState(app): AxState<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let host = host_of(&uri, &headers);
    let hostname = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(&host).to_ascii_lowercase();
    let path = uri.path().to_string();
    if let Some(rest) = path.strip_prefix("/_emulator/") {
        return control(&app, &method, rest, &uri, &body);
    }
    let query = parse_query(&uri);
    if hostname == app.authority_host || hostname == "localhost" || hostname == "127.0.0.1" {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        return match (&method, segs.as_slice()) {
            (&Method::GET, [tenant, "v2.0", ".well-known", "openid-configuration"]) => {
                entra::openid_configuration(&app.state, tenant)
            }
            (&Method::POST, [tenant, "oauth2", "v2.0", "token"]) => {
                let form = form_urlencoded(&String::from_utf8_lossy(&body));
                entra::token(&app.state, tenant, &form)
            }
            _ => plain(StatusCode::NOT_FOUND, "not an Entra ID endpoint"),
        };
    }
    if let Some(vault) = hostname.strip_suffix(&format!(".{}", app.vault_suffix)) {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let req = kv::KvRequest {
            vault: vault.to_string(),
            host: host.clone(),
            method,
            segments,
            query,
            headers: &headers,
            body: &body,
        };
        return kv::handle(&app.state, req).await;
    }
    if let Some(account) = hostname.strip_suffix(&format!(".{QUEUE_SUFFIX}")) {
        let req = queue::QueueRequest {
            account: account.to_string(),
            method,
            segments: path.trim_start_matches('/').split('/').collect(),
            query,
            headers: &headers,
            body: &body,
        };
        return queue::handle(&app.state, &app.vault_suffix, req);
    }
    plain(StatusCode::NOT_FOUND, &format!("unknown host {host}"))
}

async fn dispatch_http(AxState(app): AxState<AppState>, uri: Uri, headers: HeaderMap) -> Response<Body> {
    let query = parse_query(&uri);
    match uri.path() {
        "/metadata/identity/oauth2/token" => entra::imds(&app.state, &headers, &query),
        "/host/token/" | "/host/token" => entra::nmi(&app.state, &headers, &query),
        _ => plain(StatusCode::NOT_FOUND, "not an IMDS endpoint"),
    }
}

/// Test controls under `/_emulator/` (any host): stats, faults, throttling, secret updates, SA tokens.
fn control(app: &AppState, method: &Method, rest: &str, uri: &Uri, body: &[u8]) -> Response<Body> {
    let segs: Vec<&str> = rest.split('/').collect();
    let ok = |v: serde_json::Value| http::json_response(StatusCode::OK, &v);
    let bad = |m: String| http::json_response(StatusCode::BAD_REQUEST, &json!({ "error": m }));
    match (method, segs.as_slice()) {
        (&Method::GET, ["stats"]) => ok(stats_json(&app.state)),
        (&Method::DELETE, ["stats"]) => {
            app.state.world().stats.clear();
            ok(json!({}))
        }
        (&Method::PUT, ["faults", vault]) => match serde_json::from_slice::<Faults>(body) {
            Ok(f) => {
                app.state.world().faults.insert(vault.to_ascii_lowercase(), f);
                ok(json!({}))
            }
            Err(e) => bad(e.to_string()),
        },
        (&Method::DELETE, ["faults", vault]) => {
            app.state.world().faults.remove(&vault.to_ascii_lowercase());
            ok(json!({}))
        }
        (&Method::PUT, ["throttle", vault]) => {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let limit = v["limit"].as_u64().unwrap_or(state::DEFAULT_THROTTLE.0);
            let window = v["windowSeconds"].as_u64().unwrap_or(state::DEFAULT_THROTTLE.1);
            match app.state.world().vaults.get_mut(&vault.to_ascii_lowercase()) {
                Some(vt) => {
                    vt.throttle_limit = limit;
                    vt.throttle_window = std::time::Duration::from_secs(window.max(1));
                    ok(json!({}))
                }
                None => bad(format!("no vault {vault}")),
            }
        }
        (&Method::PUT, ["vaults", vault, "secrets", name]) => {
            let v: serde_json::Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return bad(e.to_string()),
            };
            let Some(value) = v["value"].as_str() else { return bad("value is required".into()) };
            let ct = v["contentType"].as_str().map(str::to_string);
            let enabled = v["enabled"].as_bool().unwrap_or(true);
            let tags: BTreeMap<String, String> = serde_json::from_value(v["tags"].clone()).unwrap_or_default();
            match app.state.world().vaults.get_mut(&vault.to_ascii_lowercase()) {
                Some(vt) => {
                    let s = vt.set_secret(name, value.to_string(), ct, tags, enabled);
                    ok(json!({ "version": s.version }))
                }
                None => bad(format!("no vault {vault}")),
            }
        }
        (_, ["queues", account, queue, rest @ ..]) => {
            let mut w = app.state.world();
            w.route_changes(&app.vault_suffix);
            match queue::control(&mut w, method, &account.to_ascii_lowercase(), queue, rest, body) {
                Ok(v) => ok(v),
                Err(e) => bad(e),
            }
        }
        (&Method::GET, ["sa-token"]) => {
            let q = parse_query(uri);
            let get = |k: &str| q.get(k).cloned().unwrap_or_default();
            let ttl = q.get("ttl").and_then(|t| t.parse().ok()).unwrap_or(3600);
            let w = app.state.world();
            match w
                .issuers
                .get(&get("issuer"))
                .and_then(|i| i.mint(&get("namespace"), &get("name"), &get("audience"), ttl))
            {
                Some(t) => ok(json!({ "token": t })),
                None => bad("unknown issuer, or one whose key the emulator does not hold".into()),
            }
        }
        _ => plain(StatusCode::NOT_FOUND, "unknown control endpoint"),
    }
}

fn stats_json(state: &State) -> serde_json::Value {
    let w = state.world();
    let requests: Vec<_> = w
        .stats
        .iter()
        .map(|(k, n)| json!({ "vault": k.vault, "kind": k.kind, "object": k.object, "method": k.method, "status": k.status, "identity": k.identity, "count": n }))
        .collect();
    json!({ "requests": requests, "total": w.stats.values().sum::<u64>() })
}

#[cfg(test)]
mod tests;
