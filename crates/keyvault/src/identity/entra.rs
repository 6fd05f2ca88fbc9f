//! Entra ID tokens for a client secret (service principal) or a client assertion (workload identity)
//! through the Azure SDK's `azure_identity`, behind our per-identity cache.
//!
//! The SDK's credentials get our one `reqwest` client as their transport (the emulator's CA, the
//! `--azure-resolve-to` override, one TLS stack) and the cloud's (or `--azure-authority-host`'s)
//! authority. What the SDK does not do, we keep around it: the token is shared across mounts by our
//! cache, dropped after Key Vault answers 401, and the request is bounded by the mount's deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::cloud::CustomConfiguration;
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientMethodOptions, ClientOptions, Transport};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions,
};

use crate::error::{Error, ErrorKind, Origin, Result};
use crate::params::{ExposeSecret, SecretString};

/// What proves the application's identity to Entra ID.
pub enum Proof<'a> {
    /// A service principal's client secret.
    ClientSecret(&'a SecretString),
    /// A federated credential: the pod's service-account token.
    Assertion(&'a SecretString),
}

/// The service-account token, handed to the SDK as the client assertion.
struct ServiceAccountToken(SecretString);

impl std::fmt::Debug for ServiceAccountToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceAccountToken([REDACTED])")
    }
}

#[async_trait::async_trait]
impl ClientAssertion for ServiceAccountToken {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        Ok(self.0.expose_secret().to_string())
    }
}

/// A token for `scope`, and how long it lives.
pub async fn token(
    http: Arc<dyn azure_core::http::HttpClient>,
    authority_host: &str,
    tenant: &str,
    client_id: &str,
    proof: Proof<'_>,
    scope: &str,
    deadline: Instant,
) -> Result<(SecretString, Duration)> {
    let who = format!("failed to acquire a token for client {client_id} in tenant {tenant}");
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = authority_host.to_string();
    // A few quick retries of a failed connection or a 5xx: the mount's deadline bounds the rest, and
    // the SDK's default (8 retries over a minute) would hold a mount on an unreachable endpoint.
    let retry = azure_core::http::RetryOptions::exponential(azure_core::http::ExponentialRetryOptions {
        max_retries: 3,
        max_total_elapsed: azure_core::time::Duration::seconds(10),
        ..Default::default()
    });
    let client_options = ClientOptions {
        transport: Some(Transport::new(http)),
        retry,
        cloud: Some(Arc::new(cloud.into())),
        ..Default::default()
    };
    let sdk_error = |e: azure_core::Error| sdk_error(&who, e);
    let credential: Arc<dyn TokenCredential> = match proof {
        Proof::ClientSecret(secret) => ClientSecretCredential::new(
            tenant,
            client_id.to_string(),
            Secret::new(secret.expose_secret().to_string()),
            Some(ClientSecretCredentialOptions { client_options }),
        )
        .map_err(sdk_error)?,
        Proof::Assertion(token) => ClientAssertionCredential::new(
            tenant.to_string(),
            client_id.to_string(),
            ServiceAccountToken(token.clone()),
            Some(ClientAssertionCredentialOptions { client_options }),
        )
        .map_err(sdk_error)?,
    };
    let scopes = [scope];
    let call = credential.get_token(&scopes, None);
    let token = match tokio::time::timeout_at(deadline.into(), call).await {
        Ok(result) => result.map_err(sdk_error)?,
        Err(_) => {
            return Err(
                Error::new(ErrorKind::DeadlineExceeded, format!("{who}: deadline exceeded")).from(Origin::EntraId)
            );
        }
    };
    let remaining = token.expires_on - azure_core::time::OffsetDateTime::now_utc();
    let lifetime = if remaining.is_positive() { remaining.unsigned_abs() } else { Duration::ZERO };
    Ok((SecretString::from(token.token.secret()), lifetime))
}

/// The SDK's error as ours: Entra ID's refusal keeps its description (`AADSTS…`), without the trace
/// and correlation ids or the SDK's troubleshooting link; no HTTP answer at all is a network error.
fn sdk_error(who: &str, e: azure_core::Error) -> Error {
    use azure_core::error::ErrorKind as Sdk;
    // The credentials wrap the pipeline's error in a `Credential` error: look through it.
    let mut inner: &azure_core::Error = &e;
    while matches!(inner.kind(), Sdk::Credential) {
        match std::error::Error::source(inner).and_then(|s| s.downcast_ref::<azure_core::Error>()) {
            Some(cause) => inner = cause,
            None => break,
        }
    }
    match inner.kind() {
        Sdk::HttpResponse { status, .. } => {
            let status = u16::from(*status);
            let kind = match status {
                429 => ErrorKind::Throttled,
                500..=599 => ErrorKind::Unavailable,
                _ => ErrorKind::Forbidden,
            };
            let text = inner.to_string();
            let detail = text.split(" Trace ID:").next().unwrap_or(&text).trim();
            Error::new(kind, format!("{who}: {status}: {detail}")).from(Origin::EntraId)
        }
        Sdk::Io | Sdk::Connection => {
            let message = format!("{who}: {inner}");
            Error::new(ErrorKind::Unavailable, message).from(Origin::Network).caused_by(e)
        }
        Sdk::DataConversion => {
            // Not the parser's own text: a successful token response holds the token.
            let message = format!("{who}: malformed token response");
            Error::new(ErrorKind::Internal, message).from(Origin::EntraId)
        }
        Sdk::Credential => {
            let message = format!("{who}: {inner}");
            Error::new(ErrorKind::InvalidInput, message).from(Origin::Parameters).caused_by(e)
        }
        _ => Error::new(ErrorKind::Internal, format!("{who}: {inner}")).from(Origin::EntraId).caused_by(e),
    }
}
