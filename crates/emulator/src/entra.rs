//! Entra ID (token endpoint, tenant metadata), IMDS and the aad-pod-identity NMI endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Response, StatusCode};
use serde_json::json;

use crate::http::{aad_error, json_response};
use crate::model::now;
use crate::state::{StatKey, State};
use crate::tokens::{AccessClaims, KEYVAULT_RESOURCE, STORAGE_RESOURCE, peek_claims};

/// Lifetime of issued access tokens.
pub const TOKEN_LIFETIME: i64 = 3599;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn count(state: &State, kind: &str, object: &str, method: &str, resp: &Response<Body>, identity: &str) {
    state.count(StatKey {
        vault: "entra".into(),
        kind: kind.into(),
        object: object.into(),
        method: method.into(),
        status: resp.status().as_u16(),
        identity: identity.into(),
    });
}

/// The resources the emulated Entra ID issues tokens for (its audience form, without a trailing
/// slash): Key Vault, and Storage (the change-event queue).
fn known_resource(resource: &str) -> Option<&'static str> {
    [KEYVAULT_RESOURCE, STORAGE_RESOURCE].into_iter().find(|r| *r == resource.trim_end_matches('/'))
}

fn access_token(state: &State, tenant: &str, oid: &str, appid: &str, aud: &str) -> String {
    let t = now();
    state.signer.sign(&AccessClaims {
        aud: aud.into(),
        iss: format!("https://sts.windows.net/{tenant}/"),
        tid: tenant.into(),
        oid: oid.into(),
        appid: appid.into(),
        sub: oid.into(),
        iat: t,
        nbf: t - 300,
        exp: t + TOKEN_LIFETIME,
    })
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
pub fn openid_configuration(state: &State, tenant: &str) -> Response<Body> {
    if !state.world().tenants.contains_key(tenant) {
        return aad_error(StatusCode::BAD_REQUEST, "invalid_tenant", 90002, &format!("Tenant '{tenant}' not found."));
    }
    let a = state.authority();
    json_response(
        StatusCode::OK,
        &json!({
            "token_endpoint": format!("{a}/{tenant}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{a}/{tenant}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": format!("{a}/{tenant}/v2.0"),
            "request_uri_parameter_supported": false,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": format!("{a}/{tenant}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{a}/{tenant}/oauth2/v2.0/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{a}/{tenant}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid", "oid"],
            "kerberos_endpoint": format!("{a}/{tenant}/kerberos"),
            "tenant_region_scope": "NA",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }),
    )
}

/// `POST /{tenant}/oauth2/v2.0/token` (client credentials with a secret or a federated assertion).
pub fn token(state: &Arc<State>, tenant: &str, form: &BTreeMap<String, String>) -> Response<Body> {
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let resp = issue(state, tenant, form);
    let identity = if resp.status().is_success() { client_id.clone() } else { String::new() };
    count(state, "token", &client_id, "POST", &resp, &identity);
    resp
}

fn issue(state: &State, tenant: &str, form: &BTreeMap<String, String>) -> Response<Body> {
    let bad = |code: u32, msg: &str| aad_error(StatusCode::BAD_REQUEST, "invalid_request", code, msg);
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    let Some(resource) = scope.strip_suffix("/.default") else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    };
    let Some(audience) = known_resource(resource) else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            &format!("The resource principal named {resource} was not found in the tenant named {tenant}."),
        );
    };
    let w = state.world();
    let Some(apps) = w.tenants.get(tenant) else {
        return bad(90002, &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID."));
    };
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let Some(app) = apps.get(&client_id) else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
        );
    };
    if let Some(secret) = form.get("client_secret") {
        if app.client_secret.as_deref() != Some(secret.as_str()) {
            return aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                ),
            );
        }
    } else if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str) != Some(ASSERTION_TYPE) {
            return bad(50027, "Invalid client_assertion_type.");
        }
        let issuer_url = peek_claims(assertion).and_then(|c| c["iss"].as_str().map(str::to_string)).unwrap_or_default();
        let Some(issuer) = w.issuers.get(&issuer_url) else {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                700211,
                &format!("No matching federated identity record found for presented assertion issuer '{issuer_url}'."),
            );
        };
        let claims = match issuer.verify(assertion) {
            Ok(c) => c,
            Err(e) => {
                return aad_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    5002738,
                    &format!("Invalid JWT token: signature verification failed ({e})."),
                );
            }
        };
        if claims.exp <= now() {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range.",
            );
        }
        let for_issuer: Vec<_> = app.federated.iter().filter(|f| f.issuer == issuer_url).collect();
        if for_issuer.is_empty() {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                700211,
                &format!(
                    "No matching federated identity record found for presented assertion issuer '{issuer_url}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion."
                ),
            );
        }
        if !for_issuer.iter().any(|f| f.subject == claims.sub) {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                700213,
                &format!(
                    "No matching federated identity record found for presented assertion subject '{}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion.",
                    claims.sub
                ),
            );
        }
        if !for_issuer.iter().any(|f| f.subject == claims.sub && claims.aud.contains(&f.audience)) {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                700212,
                &format!(
                    "No matching federated identity record found for presented assertion audience '{}'.",
                    claims.aud.join(",")
                ),
            );
        }
    } else {
        return aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    }
    let (oid, appid) = (app.object_id.clone(), app.client_id.clone());
    drop(w);
    json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "ext_expires_in": TOKEN_LIFETIME,
            "access_token": access_token(state, tenant, &oid, &appid, audience),
        }),
    )
}

/// `GET /metadata/identity/oauth2/token` (IMDS).
pub fn imds(state: &State, headers: &HeaderMap, query: &BTreeMap<String, String>) -> Response<Body> {
    let client_id = query.get("client_id").cloned().unwrap_or_default();
    let resp = imds_inner(state, headers, query);
    count(state, "imds", &client_id, "GET", &resp, if resp.status().is_success() { &client_id } else { "" });
    resp
}

fn imds_inner(state: &State, headers: &HeaderMap, query: &BTreeMap<String, String>) -> Response<Body> {
    let err = |status: StatusCode, error: &str, desc: &str| {
        json_response(status, &json!({ "error": error, "error_description": desc }))
    };
    if headers.get("metadata").and_then(|v| v.to_str().ok()).map(|v| v.eq_ignore_ascii_case("true")) != Some(true) {
        return err(StatusCode::BAD_REQUEST, "invalid_request", "Required metadata header not specified");
    }
    if query.get("api-version").is_none() {
        return err(StatusCode::BAD_REQUEST, "invalid_request", "Required query variable 'api-version' is missing");
    }
    let resource = query.get("resource").cloned().unwrap_or_default();
    let Some(audience) = known_resource(&resource) else {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            &format!("AADSTS500011: The resource principal named {resource} was not found"),
        );
    };
    let w = state.world();
    let identity = match query.get("client_id").filter(|c| !c.is_empty()) {
        Some(c) => w.managed.iter().find(|m| !m.system_assigned && &m.client_id == c),
        None => w.managed.iter().find(|m| m.system_assigned),
    };
    let Some(m) = identity.cloned() else {
        return err(StatusCode::BAD_REQUEST, "invalid_request", "Identity not found");
    };
    drop(w);
    let t = now();
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": access_token(state, &m.tenant, &m.object_id, &m.client_id, audience),
            "client_id": m.client_id,
            "expires_in": TOKEN_LIFETIME.to_string(),
            "expires_on": (t + TOKEN_LIFETIME).to_string(),
            "ext_expires_in": TOKEN_LIFETIME.to_string(),
            "not_before": (t - 300).to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}

/// `GET /host/token/` (aad-pod-identity NMI), with `podname`/`podns` headers.
pub fn nmi(state: &State, headers: &HeaderMap, query: &BTreeMap<String, String>) -> Response<Body> {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (pod, ns) = (h("podname"), h("podns"));
    let audience = query.get("resource").and_then(|r| known_resource(r)).unwrap_or(KEYVAULT_RESOURCE);
    let w = state.world();
    let client =
        w.pod_identities.iter().find(|(n, p, _)| *n == ns && (p.is_empty() || *p == pod)).map(|(_, _, c)| c.clone());
    let identity = client.and_then(|c| w.managed.iter().find(|m| m.client_id == c).cloned());
    drop(w);
    let resp = match identity {
        None => {
            let mut r = Response::new(Body::from(format!("no AzureAssignedIdentity found for pod:{ns}/{pod}\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
        Some(m) => {
            let t = now();
            json_response(
                StatusCode::OK,
                &json!({
                    "token": {
                        "access_token": access_token(state, &m.tenant, &m.object_id, &m.client_id, audience),
                        "refresh_token": "",
                        "expires_in": TOKEN_LIFETIME.to_string(),
                        "expires_on": (t + TOKEN_LIFETIME).to_string(),
                        "not_before": (t - 300).to_string(),
                        "resource": query.get("resource").cloned().unwrap_or_default(),
                        "token_type": "Bearer",
                    },
                    "clientid": m.client_id,
                }),
            )
        }
    };
    count(state, "nmi", &format!("{ns}/{pod}"), "GET", &resp, "");
    resp
}

/// `POST /{tenant}/oauth2/v2.0/token` at AKS's identity binding proxy of `cluster`: the assertion is
/// a service-account token for `api://AKSIdentityBinding`, checked against the cluster's issuer, the
/// binding and the service account's grant; the answer is Entra ID's, for the bound identity.
pub fn binding_token(
    state: &Arc<State>,
    cluster: &str,
    tenant: &str,
    form: &BTreeMap<String, String>,
) -> Response<Body> {
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let resp = exchange_binding(state, cluster, tenant, form);
    let identity = if resp.status().is_success() { client_id.clone() } else { String::new() };
    count(state, "binding-token", &client_id, "POST", &resp, &identity);
    resp
}

fn exchange_binding(state: &State, cluster: &str, tenant: &str, form: &BTreeMap<String, String>) -> Response<Body> {
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    let Some(audience) = scope.strip_suffix("/.default").and_then(known_resource) else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!("The provided value for scope {scope} is not valid."),
        );
    };
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let forbidden = |msg: String| proxy_error(StatusCode::FORBIDDEN, "unauthorized_client", &msg);
    let Some(assertion) = form
        .get("client_assertion")
        .filter(|_| form.get("client_assertion_type").map(String::as_str) == Some(ASSERTION_TYPE))
    else {
        return proxy_error(StatusCode::BAD_REQUEST, "invalid_request", "a jwt-bearer client_assertion is required");
    };
    let w = state.world();
    let Some(binding) = w.bindings.iter().find(|b| b.cluster_id == cluster && b.client_id == client_id).cloned() else {
        return forbidden(format!("no identity binding for client id '{client_id}' in this cluster"));
    };
    let Some(issuer) = w.issuers.get(&binding.issuer) else {
        return forbidden(format!("the cluster's issuer '{}' is unknown", binding.issuer));
    };
    let claims = match issuer.verify(assertion) {
        Ok(c) => c,
        Err(e) => {
            return proxy_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                &format!("invalid service account token: {e}"),
            );
        }
    };
    if claims.exp <= now() {
        return proxy_error(StatusCode::UNAUTHORIZED, "invalid_client", "the service account token has expired");
    }
    if !claims.aud.iter().any(|a| a == crate::proxy::BINDING_AUDIENCE) {
        // No quotes: the Rust SDK reads `error_description` as a borrowed string, which cannot hold escapes.
        let why = format!(
            "the service account token's audience '{}' is not {}",
            claims.aud.join(","),
            crate::proxy::BINDING_AUDIENCE
        );
        return proxy_error(StatusCode::UNAUTHORIZED, "invalid_client", &why);
    }
    if !binding.service_accounts.iter().any(|s| s == "*" || *s == claims.sub) {
        return forbidden(format!(
            "{} is not allowed to use managed identity '{client_id}' (use-managed-identity on cid.wi.aks.azure.com)",
            claims.sub
        ));
    }
    if binding.tenant != tenant {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
        );
    }
    let app = w.tenants.get(tenant).and_then(|apps| apps.get(&client_id)).map(|a| a.object_id.clone());
    let uami = w.managed.iter().find(|m| m.client_id == client_id && m.tenant == tenant).map(|m| m.object_id.clone());
    let Some(oid) = app.or(uami) else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
        );
    };
    drop(w);
    json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "ext_expires_in": TOKEN_LIFETIME,
            "access_token": access_token(state, tenant, &oid, &client_id, audience),
        }),
    )
}

/// The proxy's own refusals, in Entra ID's error shape (the SDKs parse `error_codes` and
/// `error_description`), without an AADSTS code: they are not Entra ID's.
fn proxy_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json_response(status, &json!({ "error": error, "error_description": description, "error_codes": [] }))
}
