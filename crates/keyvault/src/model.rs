//! The JSON documents Key Vault, IMDS, NMI and Entra ID answer with, as typed models: only the fields
//! the provider reads, secret ones in `secrecy` types (zeroed when dropped), unknown fields ignored.

use secrecy::SecretString;
use serde::Deserialize;

/// `GET /secrets/{name}/{version}`.
#[derive(Debug, Deserialize)]
pub struct SecretBundle {
    /// The value.
    pub value: Option<SecretString>,
    /// `https://<vault>/secrets/<name>/<version>`.
    pub id: Option<String>,
    /// `application/x-pkcs12` or `application/x-pem-file` for a certificate's secret.
    #[serde(rename = "contentType")]
    pub content_type: Option<String>,
    /// Set when the secret backs a certificate (the key's id).
    pub kid: Option<String>,
}

/// `GET /keys/{name}/{version}`.
#[derive(Debug, Deserialize)]
pub struct KeyBundle {
    /// The public key.
    pub key: Option<JsonWebKey>,
}

/// A JSON Web Key as Key Vault returns it (public parts only).
#[derive(Debug, Default, Deserialize)]
pub struct JsonWebKey {
    /// `https://<vault>/keys/<name>/<version>`.
    pub kid: Option<String>,
    /// `RSA`, `RSA-HSM`, `EC`, `EC-HSM`, ...
    #[serde(default)]
    pub kty: String,
    /// EC curve.
    pub crv: Option<String>,
    /// RSA modulus (base64url).
    pub n: Option<String>,
    /// RSA exponent (base64url).
    pub e: Option<String>,
    /// EC x (base64url).
    pub x: Option<String>,
    /// EC y (base64url).
    pub y: Option<String>,
}

/// `GET /certificates/{name}/{version}`.
#[derive(Debug, Deserialize)]
pub struct CertificateBundle {
    /// The leaf certificate, DER in base64.
    pub cer: Option<String>,
    /// `https://<vault>/certificates/<name>/<version>`.
    pub id: Option<String>,
}

/// One page of `GET /{collection}/{name}/versions`.
#[derive(Debug, Deserialize)]
pub struct VersionPage {
    /// The versions on this page.
    #[serde(default)]
    pub value: Vec<VersionItem>,
    /// The next page, if any.
    #[serde(rename = "nextLink")]
    pub next_link: Option<String>,
}

/// One version of an object.
#[derive(Debug, Deserialize)]
pub struct VersionItem {
    /// Secrets and certificates: the version's id.
    pub id: Option<String>,
    /// Keys: the version's id.
    pub kid: Option<String>,
    /// Enabled flag and creation time.
    #[serde(default)]
    pub attributes: Attributes,
    /// Tags (in `GET /secrets` listings; `objectSelector` matches them).
    #[serde(default)]
    pub tags: Option<std::collections::BTreeMap<String, String>>,
    /// A certificate's backing secret (`GET /secrets` lists them; `objectSelector` skips them).
    #[serde(default)]
    pub managed: Option<bool>,
}

/// An object version's attributes.
#[derive(Debug, Default, Deserialize)]
pub struct Attributes {
    /// Whether the version may be read.
    pub enabled: Option<bool>,
    /// Creation time (Unix seconds).
    pub created: Option<i64>,
    /// Not valid before (Unix seconds).
    #[serde(default)]
    pub nbf: Option<i64>,
    /// Expiry (Unix seconds).
    #[serde(default)]
    pub exp: Option<i64>,
}

/// Key Vault's error body: `{"error": {"code", "message", "innererror": {"code"}}}`.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    /// The error.
    #[serde(default)]
    pub error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorDetail {
    /// `Forbidden`, `SecretNotFound`, `Throttled`, ...
    #[serde(default)]
    pub code: String,
    /// What happened.
    #[serde(default)]
    pub message: String,
    /// The more specific code (`AccessDenied`, `ForbiddenByPolicy`, ...).
    pub innererror: Option<Box<ErrorDetail>>,
}

/// A token response (IMDS, NMI; Entra ID's goes through `azure_identity`).
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: SecretString,
    /// Lifetime in seconds: a number from Entra ID, a string from IMDS and NMI.
    pub expires_in: Option<Seconds>,
}

/// Seconds, as a JSON number or a numeric string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Seconds {
    /// `3599`.
    Number(u64),
    /// `"3599"`.
    Text(String),
}

impl Seconds {
    /// The value, if it is one.
    pub fn get(&self) -> Option<u64> {
        match self {
            Self::Number(n) => Some(*n),
            Self::Text(s) => s.trim().parse().ok(),
        }
    }
}

/// An OAuth error body (IMDS): `{"error", "error_description"}`.
#[derive(Debug, Default, Deserialize)]
pub struct OAuthError {
    /// `invalid_request`, ...
    #[serde(default)]
    pub error: String,
    /// What happened (`AADSTS…` for Entra ID).
    #[serde(default)]
    pub error_description: String,
}

/// NMI's answer: the token response, and the client id it was issued to.
#[derive(Debug, Deserialize)]
pub struct NmiResponse {
    /// The token.
    pub token: Option<TokenResponse>,
    /// The identity's client id.
    pub clientid: Option<String>,
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn documents_parse_with_unknown_fields_and_secret_values_stay_redacted() {
        let s: SecretBundle = serde_json::from_str(
            r#"{"value":"hunter2","id":"https://kv/secrets/a/1","contentType":"application/x-pkcs12","kid":"k","attributes":{"enabled":true},"tags":{}}"#,
        )
        .unwrap();
        assert_eq!(s.value.as_ref().unwrap().expose_secret(), "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"tok","expires_in":"3599"}"#).unwrap();
        assert_eq!(t.expires_in.unwrap().get(), Some(3599));
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"tok","expires_in":60}"#).unwrap();
        assert_eq!(t.expires_in.unwrap().get(), Some(60));
        let e: ErrorBody = serde_json::from_str(
            r#"{"error":{"code":"Forbidden","message":"no","innererror":{"code":"AccessDenied"}}}"#,
        )
        .unwrap();
        assert_eq!(e.error.innererror.unwrap().code, "AccessDenied");
        let p: VersionPage = serde_json::from_str(
            r#"{"value":[{"kid":"https://kv/keys/k/2","attributes":{"enabled":false,"created":5}}],"nextLink":null}"#,
        )
        .unwrap();
        assert_eq!((p.value[0].attributes.enabled, p.value[0].attributes.created), (Some(false), Some(5)));
    }
}
