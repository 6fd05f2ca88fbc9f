//! Response helpers shared by the emulated services: Azure's error envelopes and headers.

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

/// A JSON response with Key Vault's standard headers.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-ms-request-id", HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("uuid is ascii"));
    h.insert("x-ms-keyvault-service-version", HeaderValue::from_static("1.9.2585.1"));
    h.insert("x-ms-keyvault-region", HeaderValue::from_static("eastus"));
    h.insert(
        "x-ms-keyvault-network-info",
        HeaderValue::from_static("conn_type=Ipv4;addr=127.0.0.1;act_addr_fam=InterNetwork;"),
    );
    r
}

/// Key Vault's error envelope: `{"error":{"code","message"[,"innererror":{"code"}]}}`.
pub fn kv_error(status: StatusCode, code: &str, message: &str, inner: Option<&str>) -> Response<Body> {
    let mut err = json!({ "code": code, "message": message });
    if let Some(i) = inner {
        err["innererror"] = json!({ "code": i });
    }
    json_response(status, &json!({ "error": err }))
}

/// Entra ID's OAuth error body.
pub fn aad_error(status: StatusCode, error: &str, aadsts: u32, description: &str) -> Response<Body> {
    let now = chrono_like_now();
    let trace = uuid::Uuid::new_v4().to_string();
    let corr = uuid::Uuid::new_v4().to_string();
    json_response(
        status,
        &json!({
            "error": error,
            "error_description": format!("AADSTS{aadsts}: {description} Trace ID: {trace} Correlation ID: {corr} Timestamp: {now}"),
            "error_codes": [aadsts],
            "timestamp": now,
            "trace_id": trace,
            "correlation_id": corr,
        }),
    )
}

/// `YYYY-MM-DD hh:mm:ssZ`, the format Entra uses in error bodies.
fn chrono_like_now() -> String {
    let secs = crate::model::now();
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_415), (2025, 11, 23));
    }
}
