//! Writes through the data plane: set a secret, create a key, import or create a certificate (what
//! the SDKs do to seed a vault).

use super::*;

pub(super) fn body_json(body: &[u8]) -> Result<Value, Response<Body>> {
    serde_json::from_slice(body).map_err(|e| bad_parameter(&format!("The request body is not valid JSON: {e}")))
}

pub(super) fn set_secret(vault: &mut crate::state::Vault, base: &str, name: &str, body: &[u8]) -> Response<Body> {
    let b = match body_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(value) = b.get("value").and_then(Value::as_str) else {
        return bad_parameter("Property 'value' is required.");
    };
    if value.len() > MAX_SECRET_BYTES {
        return bad_parameter("Secret value is too large: the maximum is 25 KB.");
    }
    let content_type = b.get("contentType").and_then(Value::as_str).map(str::to_string);
    let tags = b.get("tags").and_then(|t| serde_json::from_value(t.clone()).ok()).unwrap_or_default();
    let enabled = b.pointer("/attributes/enabled").and_then(Value::as_bool).unwrap_or(true);
    let (nbf, exp) =
        (b.pointer("/attributes/nbf").and_then(Value::as_i64), b.pointer("/attributes/exp").and_then(Value::as_i64));
    let mut v = vault.set_secret(name, value.to_string(), content_type, tags, enabled);
    if nbf.is_some() || exp.is_some() {
        v = vault.set_secret_window(name, nbf, exp).unwrap_or(v);
    }
    json_response(StatusCode::OK, &secret_json(base, name, &v, true))
}

pub(super) fn create_key(vault: &mut crate::state::Vault, base: &str, name: &str, body: &[u8]) -> Response<Body> {
    let b = match body_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let kty = b.get("kty").and_then(Value::as_str).unwrap_or("");
    let size = b.get("key_size").and_then(Value::as_u64).map(|s| s as u32);
    let spec = match KeySpec::parse(kty, size, b.get("crv").and_then(Value::as_str)) {
        Ok(s) => s,
        Err(e) => return bad_parameter(&e),
    };
    match vault.create_key(name, spec) {
        Ok(k) => json_response(StatusCode::OK, &key_json(base, name, &k)),
        Err(e) => kv_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", &e, None),
    }
}

pub(super) fn import_certificate(
    vault: &mut crate::state::Vault,
    base: &str,
    name: &str,
    body: &[u8],
) -> Response<Body> {
    let b = match body_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(value) = b.get("value").and_then(Value::as_str) else {
        return bad_parameter("Property 'value' is required.");
    };
    let pwd = b.get("pwd").and_then(Value::as_str).unwrap_or("");
    let preserve_order = b.get("preserveCertOrder").and_then(Value::as_bool).unwrap_or(false);
    let material = match CertMaterial::import(value, pwd, preserve_order) {
        Ok(m) => m,
        Err(e) => return bad_parameter(&e),
    };
    let ct = match secret_content_type(&b) {
        Ok(ct) => ct.unwrap_or(if value.contains("-----BEGIN") { PEM } else { PKCS12 }),
        Err(r) => return r,
    };
    match vault.add_certificate(name, &material, ct) {
        Ok(c) => json_response(StatusCode::OK, &cert_json(base, name, &c, true)),
        Err(e) => kv_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", &e, None),
    }
}

/// `policy.secret_props.contentType`, if given; only the two Key Vault knows.
pub(super) fn secret_content_type(body: &Value) -> Result<Option<&'static str>, Response<Body>> {
    match body.pointer("/policy/secret_props/contentType").and_then(Value::as_str) {
        None => Ok(None),
        Some(PEM) => Ok(Some(PEM)),
        Some(PKCS12) => Ok(Some(PKCS12)),
        Some(other) => Err(bad_parameter(&format!("The content type {other} is not supported."))),
    }
}

/// `POST /certificates/{name}/create`: a self-signed certificate from the policy. Key Vault answers
/// 202 with an operation in progress; the SDKs poll `GET …/pending` until it is `completed`.
/// Certificates from a CA issuer (or `Unknown`, merged later) are not emulated.
pub(super) fn create_certificate(
    vault: &mut crate::state::Vault,
    base: &str,
    name: &str,
    body: &[u8],
) -> Response<Body> {
    let b = match body_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(policy) = b.get("policy").filter(|p| p.is_object()) else {
        return bad_parameter("Property 'policy' is required.");
    };
    let issuer = policy.pointer("/issuer/name").and_then(Value::as_str).unwrap_or("");
    if !issuer.eq_ignore_ascii_case("Self") {
        return bad_parameter(&format!("Issuer '{issuer}' is not supported by this emulator: only 'Self' is."));
    }
    let Some(subject) = policy.pointer("/x509_props/subject").and_then(Value::as_str).filter(|s| !s.is_empty()) else {
        return bad_parameter("Property 'x509_props.subject' is required.");
    };
    let dns_names = policy
        .pointer("/x509_props/sans/dns_names")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let key_props = policy.get("key_props").cloned().unwrap_or(Value::Null);
    let kty = key_props.get("kty").and_then(Value::as_str).unwrap_or("RSA");
    let size = key_props.get("key_size").and_then(Value::as_u64).map(|s| s as u32);
    let key = match KeySpec::parse(kty, size, key_props.get("crv").and_then(Value::as_str)) {
        Ok(k) => k,
        Err(e) => return bad_parameter(&e),
    };
    let ct = match secret_content_type(&b) {
        Ok(ct) => ct.unwrap_or(PKCS12),
        Err(r) => return r,
    };
    let validity_months = policy.pointer("/x509_props/validity_months").and_then(Value::as_u64).unwrap_or(12) as u32;
    let spec = crate::model::SelfSignedPolicy { subject: subject.to_string(), dns_names, validity_months, key };
    let (material, csr) = match CertMaterial::self_signed(&spec) {
        Ok(m) => m,
        Err(e) => return bad_parameter(&e),
    };
    if let Err(e) = vault.add_certificate(name, &material, ct) {
        return kv_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", &e, None);
    }
    let op = crate::state::CertOperation {
        request_id: uuid::Uuid::new_v4().simple().to_string(),
        csr,
        issuer: "Self".into(),
    };
    vault.operations.insert(name.to_string(), op);
    let mut resp = certificate_operation(vault, base, name, true);
    *resp.status_mut() = StatusCode::ACCEPTED;
    let location =
        format!("{base}/certificates/{name}/pending?api-version=7.4&request_id={}", vault.operations[name].request_id);
    resp.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&location).expect("ascii location"));
    resp
}

/// The certificate operation: `inProgress` when just created, `completed` on every later look.
pub(super) fn certificate_operation(
    vault: &crate::state::Vault,
    base: &str,
    name: &str,
    just_created: bool,
) -> Response<Body> {
    let Some(op) = vault.operations.get(name) else {
        return kv_error(
            StatusCode::NOT_FOUND,
            "PendingCertificateNotFound",
            &format!("Pending certificate not found: {name}"),
            None,
        );
    };
    let mut j = json!({
        "id": format!("{base}/certificates/{name}/pending"),
        "issuer": { "name": op.issuer },
        "csr": STANDARD.encode(&op.csr),
        "cancellation_requested": false,
        "request_id": op.request_id,
    });
    if just_created {
        j["status"] = json!("inProgress");
        j["status_details"] = json!(
            "Pending certificate created. Certificate request is in progress. This may take some time based on the issuer provider. Please check again later."
        );
    } else {
        j["status"] = json!("completed");
        j["target"] = json!(format!("{base}/certificates/{name}"));
    }
    json_response(StatusCode::OK, &j)
}

/// `PATCH /secrets/{name}/{version}` (an empty version: the latest), as the SDKs'
/// `update_secret_properties` sends it: attributes, tags and content type change, the value does not,
/// and the reply is the bundle without the value.
pub(super) fn update_secret(
    vault: &mut crate::state::Vault,
    base: &str,
    name: &str,
    version: Option<&str>,
    body: &[u8],
) -> Response<Body> {
    let b = match body_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(versions) = vault.secrets.get_mut(name) else {
        return not_found("secrets", name, version);
    };
    let found = match version.filter(|v| !v.is_empty()) {
        None => versions.last_mut(),
        Some(v) => versions.iter_mut().find(|s| s.version.eq_ignore_ascii_case(v)),
    };
    let Some(s) = found else {
        return not_found("secrets", name, version);
    };
    if let Some(enabled) = b.pointer("/attributes/enabled").and_then(Value::as_bool) {
        s.attributes.enabled = enabled;
    }
    if let Some(nbf) = b.pointer("/attributes/nbf") {
        s.attributes.nbf = nbf.as_i64();
    }
    if let Some(exp) = b.pointer("/attributes/exp") {
        s.attributes.exp = exp.as_i64();
    }
    if let Some(tags) = b.get("tags").and_then(|t| serde_json::from_value(t.clone()).ok()) {
        s.tags = tags;
    }
    if let Some(ct) = b.get("contentType") {
        s.content_type = ct.as_str().map(str::to_string);
    }
    s.attributes.updated = jiff::Timestamp::now().as_second();
    json_response(StatusCode::OK, &secret_json(base, name, s, false))
}
