//! The Key Vault data plane: secrets, keys and certificates, with challenge auth, access policy,
//! throttling and Azure's error bodies.

// Handlers return ready-made error responses as `Err`; they are built once per failed request.
#![allow(clippy::result_large_err)]

mod write;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::http::{json_response, kv_error};
use crate::model::{CertMaterial, KeySpec, PEM, PKCS12, x5t};
use crate::state::{StatKey, State};
use crate::tokens::{AccessClaims, KEYVAULT_RESOURCE};

/// API versions real clients send (the Go provider 7.4, the SDKs up to 2025-07-01).
pub const API_VERSIONS: &[&str] =
    &["2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"];
const MAX_PAGE: usize = 25;
const MAX_SECRET_BYTES: usize = 25 * 1024;

/// One data-plane request.
pub struct KvRequest<'a> {
    /// Vault name (first DNS label of the host).
    pub vault: String,
    /// `Host` header as sent (used in ids and links).
    pub host: String,
    /// Method.
    pub method: Method,
    /// Path segments after the leading `/` (a trailing slash gives a final empty segment).
    pub segments: Vec<&'a str>,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Body.
    pub body: &'a [u8],
}

struct Ctx<'a> {
    state: &'a Arc<State>,
    req: &'a KvRequest<'a>,
    kind: String,
    object: String,
    identity: String,
}

impl Ctx<'_> {
    fn done(&self, resp: Response<Body>) -> Response<Body> {
        self.state.count(StatKey {
            vault: self.req.vault.clone(),
            kind: self.kind.clone(),
            object: self.object.clone(),
            method: self.req.method.to_string(),
            status: resp.status().as_u16(),
            identity: self.identity.clone(),
        });
        resp
    }
}

fn challenge(state: &State, tenant: &str, code: &str, message: &str) -> Response<Body> {
    let mut r = kv_error(StatusCode::UNAUTHORIZED, code, message, None);
    let value = format!("Bearer authorization=\"{}/{tenant}\", resource=\"{KEYVAULT_RESOURCE}\"", state.authority());
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_str(&value).expect("ascii challenge"));
    r
}

fn not_found(kind: &str, name: &str, version: Option<&str>) -> Response<Body> {
    let (code, noun) = match kind {
        "keys" => ("KeyNotFound", "key"),
        "certificates" => ("CertificateNotFound", "certificate"),
        _ => ("SecretNotFound", "secret"),
    };
    let id = version.map(|v| format!("{name}/{v}")).unwrap_or_else(|| name.to_string());
    kv_error(
        StatusCode::NOT_FOUND,
        code,
        &format!(
            "A {noun} with (name/id) {id} was not found in this key vault. If you recently deleted this {noun} you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
        ),
        None,
    )
}

fn bad_parameter(message: &str) -> Response<Body> {
    kv_error(StatusCode::BAD_REQUEST, "BadParameter", message, None)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 127 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Serves one data-plane request.
pub async fn handle(state: &Arc<State>, req: KvRequest<'_>) -> Response<Body> {
    let kind = req.segments.first().copied().unwrap_or("").to_string();
    let object = req.segments.get(1).copied().unwrap_or("").to_string();
    let mut ctx = Ctx { state, req: &req, kind, object, identity: String::new() };

    // Faults first: latency, outages and injected errors happen before anything else, as in a real outage.
    let faults = {
        let w = state.world();
        w.faults.get(&req.vault).or_else(|| w.faults.get("*")).cloned().unwrap_or_default()
    };
    if faults.latency_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(faults.latency_ms)).await;
    }
    if faults.outage {
        return ctx.done(kv_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The service is unavailable.",
            None,
        ));
    }
    if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
        let status =
            StatusCode::from_u16(faults.error_status.unwrap_or(500)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return ctx.done(kv_error(
            status,
            "InternalServerError",
            "An unexpected error occurred (injected fault).",
            None,
        ));
    }

    let tenant = {
        let mut w = state.world();
        let Some(vault) = w.vaults.get_mut(&req.vault) else {
            drop(w);
            return ctx.done(kv_error(
                StatusCode::NOT_FOUND,
                "VaultNotFound",
                &format!("Vault {} does not exist.", req.vault),
                None,
            ));
        };
        if let Err(retry_after) = vault.admit() {
            drop(w);
            let mut r = kv_error(
                StatusCode::TOO_MANY_REQUESTS,
                "Throttled",
                "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached",
                None,
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            r.headers_mut().insert("x-ms-retry-after-ms", HeaderValue::from(retry_after * 1000));
            return ctx.done(r);
        }
        vault.tenant.clone()
    };

    match req.query.get("api-version").map(String::as_str) {
        None => return ctx.done(bad_parameter("The 'api-version' query parameter is missing.")),
        Some(v) if !API_VERSIONS.contains(&v) => {
            return ctx.done(bad_parameter(&format!(
                "The specified version ({v}) is not recognized. Consider using the latest supported version (7.6)."
            )));
        }
        Some(_) => {}
    }

    // Challenge-based auth: no bearer → 401 with the challenge; bad bearer → 401 saying why.
    let token = req
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let Some(token) = token else {
        return ctx.done(challenge(
            state,
            &tenant,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.",
        ));
    };
    let claims: AccessClaims = match state.signer.verify(token) {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
            return ctx.done(challenge(
                state,
                &tenant,
                "Unauthorized",
                "AKV10022: Invalid token: the token has expired.",
            ));
        }
        Err(_) => {
            return ctx.done(challenge(
                state,
                &tenant,
                "Unauthorized",
                "AKV10031: Invalid token: the signature is not valid.",
            ));
        }
    };
    if claims.aud.trim_end_matches('/') != KEYVAULT_RESOURCE {
        return ctx.done(challenge(
            state,
            &tenant,
            "Unauthorized",
            &format!("AKV10022: Invalid audience. Expected {KEYVAULT_RESOURCE}, found: {}.", claims.aud),
        ));
    }
    if claims.tid != tenant {
        return ctx.done(challenge(
            state,
            &tenant,
            "Unauthorized",
            &format!(
                "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{tenant}/, found https://sts.windows.net/{}/.",
                claims.tid
            ),
        ));
    }
    ctx.identity = claims.oid.clone();

    let resp = route(&ctx, &claims);
    ctx.done(resp)
}

fn route(ctx: &Ctx<'_>, claims: &AccessClaims) -> Response<Body> {
    let req = ctx.req;
    let segs = &req.segments;
    let kind = ctx.kind.as_str();
    if !matches!(kind, "secrets" | "keys" | "certificates") {
        return bad_parameter(&format!("The request URI is not valid: /{}", segs.join("/")));
    }
    let name = ctx.object.as_str();
    if segs.len() >= 2 && !valid_name(name) {
        return bad_parameter(&format!("The request URI contains an invalid name: {name}"));
    }
    let (op, version) = match (&req.method, &segs[1..]) {
        (&Method::GET, []) | (&Method::GET, [""]) => ("list", None),
        (&Method::GET, [_]) | (&Method::GET, [_, ""]) => ("get", None),
        (&Method::GET, [_, "versions"]) => ("list", None),
        (&Method::GET, [_, "pending"]) if kind == "certificates" => ("get", Some("pending")),
        (&Method::GET, [_, v]) => ("get", Some(*v)),
        (&Method::PUT, [_]) if kind == "secrets" => ("set", None),
        // Key Vault's access policies grant updates with `set`.
        (&Method::PATCH, [_]) | (&Method::PATCH, [_, ""]) if kind == "secrets" => ("update", None),
        (&Method::PATCH, [_, v]) if kind == "secrets" => ("update", Some(*v)),
        (&Method::POST, [_, "create"]) if kind == "keys" || kind == "certificates" => ("create", None),
        (&Method::POST, [_, "import"]) if kind == "certificates" => ("import", None),
        _ => return bad_parameter(&format!("The request URI is not valid: {} /{}", req.method, segs.join("/"))),
    };
    let principals = [claims.oid.as_str(), claims.appid.as_str()];
    let mut w = ctx.state.world();
    let vault = w.vaults.get_mut(&req.vault).expect("vault checked before");
    let permission = if op == "update" { "set" } else { op };
    if !vault.allows(&principals, kind, permission) {
        let message = format!(
            "The user, group or application 'appid={};oid={};iss=https://sts.windows.net/{}/' does not have {kind} {permission} permission on key vault '{};location=eastus'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
            claims.appid, claims.oid, claims.tid, vault.name
        );
        return kv_error(StatusCode::FORBIDDEN, "Forbidden", &message, Some("AccessDenied"));
    }
    let base = format!("https://{}", req.host);
    let api_version = req.query.get("api-version").cloned().unwrap_or_default();
    match op {
        "get" if version == Some("pending") => write::certificate_operation(vault, &base, name, false),
        "get" => get_object(vault, &base, kind, name, version),
        "list" if segs.len() <= 2 && segs.get(1).is_none_or(|s| s.is_empty()) => {
            list_objects(vault, &base, kind, &req.query, &api_version)
        }
        "list" => list_versions(vault, &base, kind, name, &req.query, &api_version),
        "set" => write::set_secret(vault, &base, name, req.body),
        "update" => write::update_secret(vault, &base, name, version, req.body),
        "create" if kind == "certificates" => write::create_certificate(vault, &base, name, req.body),
        "create" => write::create_key(vault, &base, name, req.body),
        "import" => write::import_certificate(vault, &base, name, req.body),
        _ => unreachable!("every op is matched above"),
    }
}

fn secret_json(base: &str, name: &str, v: &crate::model::SecretVersion, with_value: bool) -> Value {
    let mut j = json!({
        "id": format!("{base}/secrets/{name}/{}", v.version),
        "attributes": v.attributes,
        "tags": v.tags,
    });
    if with_value {
        j["value"] = json!(v.value);
    }
    if let Some(ct) = &v.content_type {
        j["contentType"] = json!(ct);
    }
    if v.managed_key {
        j["kid"] = json!(format!("{base}/keys/{name}/{}", v.version));
        j["managed"] = json!(true);
    }
    j
}

fn key_json(base: &str, name: &str, k: &crate::model::KeyVersion) -> Value {
    let mut key = serde_json::to_value(&k.jwk).expect("jwk serialises");
    key["kid"] = json!(format!("{base}/keys/{name}/{}", k.version));
    let mut j = json!({ "key": key, "attributes": k.attributes, "tags": k.tags });
    if k.managed {
        j["managed"] = json!(true);
    }
    j
}

fn cert_json(base: &str, name: &str, c: &crate::model::CertVersion, full: bool) -> Value {
    let mut j = json!({
        "id": format!("{base}/certificates/{name}/{}", c.version),
        "x5t": x5t(&c.cer),
        "attributes": c.attributes,
        "tags": c.tags,
    });
    if full {
        let (kty, size, crv) = match c.key_spec {
            KeySpec::Rsa(bits) => ("RSA", Some(bits), None),
            other => ("EC", None, other.curve()),
        };
        j["kid"] = json!(format!("{base}/keys/{name}/{}", c.version));
        j["sid"] = json!(format!("{base}/secrets/{name}/{}", c.version));
        j["cer"] = json!(STANDARD.encode(&c.cer));
        j["policy"] = json!({
            "id": format!("{base}/certificates/{name}/policy"),
            "key_props": { "exportable": true, "kty": kty, "key_size": size, "crv": crv, "reuse_key": false },
            "secret_props": { "contentType": c.content_type },
            "x509_props": { "subject": c.subject, "sans": {}, "key_usage": ["digitalSignature", "keyEncipherment"], "validity_months": 12 },
            "lifetime_actions": [{ "trigger": { "lifetime_percentage": 80 }, "action": { "action_type": "AutoRenew" } }],
            "issuer": { "name": "Self" },
            "attributes": { "enabled": true, "created": c.attributes.created, "updated": c.attributes.updated },
        });
    }
    j
}

fn disabled(kind: &str) -> Response<Body> {
    let (noun, inner) = match kind {
        "keys" => ("key", "KeyDisabled"),
        "certificates" => ("certificate", "CertificateDisabled"),
        _ => ("secret", "SecretDisabled"),
    };
    kv_error(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!("Operation get is not allowed on a disabled {noun}."),
        Some(inner),
    )
}

fn get_object(
    vault: &crate::state::Vault,
    base: &str,
    kind: &str,
    name: &str,
    version: Option<&str>,
) -> Response<Body> {
    macro_rules! pick {
        ($map:expr) => {{
            let Some(versions) = $map.get(name) else { return not_found(kind, name, None) };
            let found = match version {
                None => versions.last(),
                Some(v) => versions.iter().find(|x| x.version.eq_ignore_ascii_case(v)),
            };
            let Some(found) = found else { return not_found(kind, name, version) };
            if !found.attributes.enabled {
                return disabled(kind);
            }
            found
        }};
    }
    match kind {
        "secrets" => json_response(StatusCode::OK, &secret_json(base, name, pick!(vault.secrets), true)),
        "keys" => json_response(StatusCode::OK, &key_json(base, name, pick!(vault.keys))),
        _ => json_response(StatusCode::OK, &cert_json(base, name, pick!(vault.certificates), true)),
    }
}

fn page_params(query: &BTreeMap<String, String>) -> Result<(usize, usize), Response<Body>> {
    let max = match query.get("maxresults") {
        None => MAX_PAGE,
        Some(m) => match m.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(bad_parameter(&format!("Invalid maxresults value {m}: must be between 1 and {MAX_PAGE}.")));
            }
        },
    };
    let skip = match query.get("$skiptoken") {
        None => 0,
        Some(t) => URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse().ok()))
            .ok_or_else(|| bad_parameter("The $skiptoken parameter is not valid."))?,
    };
    Ok((max, skip))
}

fn page(items: Vec<Value>, base_link: String, api_version: &str, max: usize, skip: usize) -> Response<Body> {
    let total = items.len();
    let slice: Vec<Value> = items.into_iter().skip(skip).take(max).collect();
    let next = if skip + max < total {
        let token = URL_SAFE_NO_PAD.encode(format!("offset:{}", skip + max));
        json!(format!("{base_link}?api-version={api_version}&$skiptoken={token}&maxresults={max}"))
    } else {
        Value::Null
    };
    json_response(StatusCode::OK, &json!({ "value": slice, "nextLink": next }))
}

fn list_versions(
    vault: &crate::state::Vault,
    base: &str,
    kind: &str,
    name: &str,
    query: &BTreeMap<String, String>,
    api_version: &str,
) -> Response<Body> {
    let (max, skip) = match page_params(query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let items: Vec<Value> = match kind {
        "secrets" => match vault.secrets.get(name) {
            Some(v) => v.iter().map(|s| secret_json(base, name, s, false)).collect(),
            None => return not_found(kind, name, None),
        },
        "keys" => match vault.keys.get(name) {
            // Version list items of keys carry `kid`, not `id`, and no key material beyond it.
            Some(v) => v
                .iter()
                .map(|k| {
                    let mut j = json!({ "kid": format!("{base}/keys/{name}/{}", k.version), "attributes": k.attributes, "tags": k.tags });
                    if k.managed {
                        j["managed"] = json!(true);
                    }
                    j
                })
                .collect(),
            None => return not_found(kind, name, None),
        },
        _ => match vault.certificates.get(name) {
            Some(v) => v.iter().map(|c| cert_json(base, name, c, false)).collect(),
            None => return not_found(kind, name, None),
        },
    };
    page(items, format!("{base}/{kind}/{name}/versions"), api_version, max, skip)
}

fn list_objects(
    vault: &crate::state::Vault,
    base: &str,
    kind: &str,
    query: &BTreeMap<String, String>,
    api_version: &str,
) -> Response<Body> {
    let (max, skip) = match page_params(query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let items: Vec<Value> = match kind {
        "secrets" => vault
            .secrets
            .iter()
            .filter_map(|(n, v)| v.last().map(|s| (n, s)))
            .map(|(n, s)| {
                let mut j = secret_json(base, n, s, false);
                j["id"] = json!(format!("{base}/secrets/{n}"));
                j
            })
            .collect(),
        "keys" => vault
            .keys
            .iter()
            .filter_map(|(n, v)| {
                v.last()
                    .map(|k| json!({ "kid": format!("{base}/keys/{n}"), "attributes": k.attributes, "tags": k.tags }))
            })
            .collect(),
        _ => vault
            .certificates
            .iter()
            .filter_map(|(n, v)| v.last().map(|c| (n, c)))
            .map(|(n, c)| {
                let mut j = cert_json(base, n, c, false);
                j["id"] = json!(format!("{base}/certificates/{n}"));
                j
            })
            .collect(),
    };
    page(items, format!("{base}/{kind}"), api_version, max, skip)
}
