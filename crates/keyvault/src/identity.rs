//! Access tokens for Key Vault: workload identity (federated client assertion), service principal
//! (client secret), managed identity (IMDS) and pod identity (NMI), cached per identity until shortly
//! before they expire, with one acquisition in flight per identity.
//!
//! The cache key keeps authorization intact: a cached token is only reused for the same identity, i.e.
//! (tenant, client id, issuer, service-account subject) for workload identity, (tenant, client id,
//! SHA-256 of the secret) for a service principal, the identity id for managed identity, and the pod
//! for pod identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use sha2::Digest;

use crate::error::{Error, ErrorKind, Origin, Result};
use crate::model::{NmiResponse, OAuthError, TokenResponse};
use crate::params::{ExposeSecret, Identity, SecretString};
use crate::transport::{NetworkConfig, Transport};

mod entra;
pub mod proxy;

/// Refresh this long before expiry.
const EXPIRY_SKEW: Duration = Duration::from_secs(300);
/// The longest a token is cached, whatever `expires_in` says (Entra ID issues at most 24 h).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(86_400);

/// Who a token is for; the unit of sharing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityKey {
    /// Workload identity.
    Workload {
        /// Tenant.
        tenant: String,
        /// Client id.
        client_id: String,
        /// Token issuer.
        issuer: String,
        /// Service-account subject.
        subject: String,
    },
    /// Service principal.
    Secret {
        /// Tenant.
        tenant: String,
        /// Client id.
        client_id: String,
        /// SHA-256 of the client secret (hex), never the secret.
        digest: String,
    },
    /// Managed identity (`system` for the system-assigned one).
    Managed {
        /// Client id or `system`.
        client_id: String,
    },
    /// Identity binding (through the token proxy).
    Binding {
        /// Tenant.
        tenant: String,
        /// Client id.
        client_id: String,
        /// Token issuer.
        issuer: String,
        /// Service-account subject.
        subject: String,
    },
    /// aad-pod-identity.
    Pod {
        /// Namespace.
        namespace: String,
        /// Pod.
        pod: String,
    },
}

impl IdentityKey {
    /// The key of `identity` in `tenant`.
    pub fn of(tenant: &str, identity: &Identity) -> Self {
        match identity {
            Identity::Workload { client_id, subject, issuer, .. } => Self::Workload {
                tenant: tenant.into(),
                client_id: client_id.clone(),
                issuer: issuer.clone(),
                subject: subject.clone(),
            },
            Identity::Binding { client_id, subject, issuer, .. } => Self::Binding {
                tenant: tenant.into(),
                client_id: client_id.clone(),
                issuer: issuer.clone(),
                subject: subject.clone(),
            },
            Identity::ServicePrincipal { client_id, secret } => Self::Secret {
                tenant: tenant.into(),
                client_id: client_id.clone(),
                digest: hex::encode(sha2::Sha256::digest(secret.expose_secret().as_bytes())),
            },
            Identity::ManagedIdentity { client_id } => {
                Self::Managed { client_id: client_id.clone().unwrap_or_else(|| "system".into()) }
            }
            Identity::PodIdentity { pod, namespace } => Self::Pod { namespace: namespace.clone(), pod: pod.clone() },
        }
    }
}

#[derive(Clone)]
struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

/// One identity's cached token; its lock is held while a token is acquired (one acquisition in flight).
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// The token cache.
#[derive(Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<(IdentityKey, String), Slot>>,
}

/// Where tokens come from.
pub struct TokenSource<'a> {
    /// HTTP client.
    pub transport: &'a Transport,
    /// Endpoint overrides.
    pub net: &'a NetworkConfig,
    /// The cloud's authority host (`https://login.microsoftonline.com/`).
    pub authority_host: &'a str,
    /// The cloud's Key Vault resource (`https://vault.azure.net/`), for NMI.
    pub keyvault_resource: &'a str,
    /// AKS's token proxy, for identity binding.
    pub token_proxy: &'a proxy::TokenProxy,
    /// Deadline.
    pub deadline: Instant,
}

impl TokenCache {
    /// A token for `identity` and `scope` (e.g. `https://vault.azure.net/.default`).
    pub async fn get(
        &self,
        src: &TokenSource<'_>,
        tenant: &str,
        identity: &Identity,
        scope: &str,
        stats: &crate::Stats,
    ) -> Result<SecretString> {
        let key = (IdentityKey::of(tenant, identity), scope.to_string());
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if !slots.contains_key(&key) && slots.len() >= SWEEP_AT {
                evict(&mut slots);
            }
            slots.entry(key).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| c.refresh_at > Instant::now()) {
            stats.token_cache_hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(c.token.clone());
        }
        let (token, lifetime) = acquire(src, tenant, identity, scope).await?;
        stats.token_acquisitions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // `expires_in` is the token service's word: bounded, so no answer can panic or pin a token.
        let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
        let refresh_at = Instant::now() + lifetime.saturating_sub(EXPIRY_SKEW).max(lifetime / 2);
        *guard = Some(Cached { token: token.clone(), refresh_at });
        Ok(token)
    }

    /// Identities (with scopes) cached now.
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops a token Key Vault rejected.
    pub fn invalidate(&self, tenant: &str, identity: &Identity, scope: &str) {
        let key = (IdentityKey::of(tenant, identity), scope.to_string());
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }
}

/// Slots held before a new identity triggers a sweep of expired tokens.
const SWEEP_AT: usize = 1024;
/// The most identities (with scopes) cached at once: every tenant's service accounts and client
/// secrets are keys, so the cache must not grow with them. Past it, idle slots are dropped (a dropped
/// token is simply acquired again).
pub const MAX_CACHED_TOKENS: usize = 10_000;

/// Drops slots whose token needs refreshing (or never came), then, if still at the cap, idle ones.
/// A slot in use (its lock held by an acquisition) is never dropped.
fn evict(slots: &mut HashMap<(IdentityKey, String), Slot>) {
    let now = Instant::now();
    let idle_and = |slot: &Slot, stale_only: bool| match slot.try_lock() {
        Ok(c) => !stale_only || c.as_ref().is_none_or(|c| c.refresh_at <= now),
        Err(_) => false,
    };
    slots.retain(|_, slot| !idle_and(slot, true));
    if slots.len() >= MAX_CACHED_TOKENS {
        let excess = slots.len() + 1 - MAX_CACHED_TOKENS;
        let victims: Vec<_> =
            slots.iter().filter(|(_, s)| idle_and(s, false)).map(|(k, _)| k.clone()).take(excess).collect();
        for k in victims {
            slots.remove(&k);
        }
    }
}

fn token_error(origin: Origin, what: &str, status: u16, body: &[u8]) -> Error {
    let v: OAuthError = serde_json::from_slice(body).unwrap_or_default();
    let d = &v.error_description;
    let detail = if !d.is_empty() {
        d.split(" Trace ID:").next().unwrap_or(d).trim().to_string()
    } else if !v.error.is_empty() {
        v.error
    } else {
        String::from_utf8_lossy(body).chars().take(300).collect()
    };
    let kind = match status {
        429 => ErrorKind::Throttled,
        500..=599 => ErrorKind::Unavailable,
        _ => ErrorKind::Forbidden,
    };
    Error::new(kind, format!("{what}: {status}: {detail}")).from(origin)
}

async fn acquire(
    src: &TokenSource<'_>,
    tenant: &str,
    identity: &Identity,
    scope: &str,
) -> Result<(SecretString, Duration)> {
    let resource = scope.trim_end_matches("/.default");
    match identity {
        Identity::Workload { client_id, token, .. } => {
            entra_token(src, tenant, client_id, entra::Proof::Assertion(token), scope).await
        }
        Identity::Binding { client_id, token, .. } => {
            let http = src.token_proxy.client(src.deadline).await?;
            let authority = src.net.authority_override.as_deref().unwrap_or(src.authority_host);
            let (proof, deadline) = (entra::Proof::Assertion(token), src.deadline);
            entra::token(http, authority, tenant, client_id, proof, scope, deadline)
                .await
                .map_err(|e| if e.origin == Origin::EntraId { e.from(Origin::TokenProxy) } else { e })
        }
        Identity::ServicePrincipal { client_id, secret } => {
            entra_token(src, tenant, client_id, entra::Proof::ClientSecret(secret), scope).await
        }
        Identity::ManagedIdentity { client_id } => {
            let base = src.net.imds_url.as_deref().unwrap_or("http://169.254.169.254").trim_end_matches('/');
            let mut url = format!(
                "{base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
                urlencode(resource)
            );
            if let Some(c) = client_id {
                url.push_str(&format!("&client_id={}", urlencode(c)));
            }
            let r =
                src.transport.send(None, Method::GET, &url, &[("Metadata", "true".into())], None, src.deadline).await?;
            let who = format!(
                "failed to get a managed identity token{}",
                client_id.as_ref().map(|c| format!(" for client id {c}")).unwrap_or_default()
            );
            if !r.status.is_success() {
                return Err(token_error(Origin::Imds, &who, r.status.as_u16(), &r.body));
            }
            parse_token(&r.body, &who).map_err(|e| e.from(Origin::Imds))
        }
        Identity::PodIdentity { pod, namespace } => {
            let base = src.net.nmi_url.as_deref().unwrap_or("http://localhost:2579").trim_end_matches('/');
            let res = src.keyvault_resource.trim_end_matches('/');
            let url = format!("{base}/host/token/?resource={}", urlencode(res));
            let headers = [("podname", pod.clone()), ("podns", namespace.clone())];
            let r = src.transport.send(None, Method::GET, &url, &headers, None, src.deadline).await?;
            if !r.status.is_success() {
                let body: String = String::from_utf8_lossy(&r.body).chars().take(300).collect();
                return Err(Error::new(
                    ErrorKind::Forbidden,
                    format!(
                        "nmi response failed with status code: {}, response body: {}",
                        r.status.as_u16(),
                        body.trim()
                    ),
                )
                .from(Origin::Nmi));
            }
            let missing = || {
                Error::new(ErrorKind::Internal, "nmi did not return expected values in response: token and clientid")
                    .from(Origin::Nmi)
            };
            let v: NmiResponse = serde_json::from_slice(&r.body).map_err(|_| missing())?;
            match (v.token, v.clientid) {
                (Some(token), Some(_)) => Ok(lifetime_of(token)),
                _ => Err(missing()),
            }
        }
    }
}

async fn entra_token(
    src: &TokenSource<'_>,
    tenant: &str,
    client_id: &str,
    proof: entra::Proof<'_>,
    scope: &str,
) -> Result<(SecretString, Duration)> {
    let authority = src.net.authority_override.as_deref().unwrap_or(src.authority_host);
    let http: std::sync::Arc<dyn azure_core::http::HttpClient> =
        std::sync::Arc::new(src.transport.http_client().clone());
    entra::token(http, authority, tenant, client_id, proof, scope, src.deadline).await
}

/// Reads a token response (Entra ID, IMDS, NMI); errors never quote the body.
pub fn parse_token(body: &[u8], who: &str) -> Result<(SecretString, Duration)> {
    // Only the category of a parse error: serde_json's own message can quote the token.
    let v: TokenResponse = serde_json::from_slice(body).map_err(|e| {
        let why = match e.classify() {
            serde_json::error::Category::Data => "the response has no access_token".to_string(),
            other => format!("malformed token response ({other:?} error)"),
        };
        Error::new(ErrorKind::Internal, format!("{who}: {why}"))
    })?;
    Ok(lifetime_of(v))
}

/// The token and how long it lives (a number from Entra ID, a string from IMDS and NMI; 5 minutes if
/// neither).
fn lifetime_of(v: TokenResponse) -> (SecretString, Duration) {
    let expires_in = v.expires_in.and_then(|s| s.get()).unwrap_or(300);
    (v.access_token, Duration::from_secs(expires_in))
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    fn slot(refresh_in: Option<i64>) -> Slot {
        let now = Instant::now();
        let cached = refresh_in.map(|s| Cached {
            token: SecretString::from("t"),
            refresh_at: if s >= 0 {
                now + Duration::from_secs(s as u64)
            } else {
                now - Duration::from_secs((-s) as u64)
            },
        });
        Arc::new(tokio::sync::Mutex::new(cached))
    }

    fn key(i: usize) -> (IdentityKey, String) {
        (IdentityKey::Managed { client_id: format!("hostile-{i}") }, "https://vault.azure.net/.default".into())
    }

    /// A tenant minting identities (service accounts, client secrets) cannot grow the cache: expired
    /// tokens go first, then idle ones, and a slot being acquired is never dropped.
    #[test]
    fn expired_tokens_are_swept_and_the_cache_has_a_cap() {
        let mut slots = HashMap::new();
        for i in 0..600 {
            slots.insert(key(i), slot(Some(-10)));
        }
        for i in 600..1200 {
            slots.insert(key(i), slot(Some(3600)));
        }
        evict(&mut slots);
        assert_eq!(slots.len(), 600, "expired tokens are dropped");
        for i in 1200..(MAX_CACHED_TOKENS + 2000) {
            slots.insert(key(i), slot(Some(3600)));
        }
        let busy = slot(Some(3600));
        let _held = busy.try_lock().unwrap();
        slots.insert(key(usize::MAX), busy.clone());
        evict(&mut slots);
        assert!(slots.len() < MAX_CACHED_TOKENS, "{}", slots.len());
        assert!(slots.contains_key(&key(usize::MAX)), "a slot in use stays");
    }
}
