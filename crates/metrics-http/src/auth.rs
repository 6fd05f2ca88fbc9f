//! Who may read `/metrics`: a bearer token, authenticated and authorized by someone else (in the
//! cluster, a TokenReview and a SubjectAccessReview), with the reviews bounded.
//!
//! Anyone who can reach the port can send tokens, so each unknown token costs the API server two
//! reviews. The [`Guard`] keeps that bounded: decisions are cached by the token's SHA-256 (never the
//! token itself) for a short time and in a bounded map, and at most [`MAX_IN_FLIGHT`] reviews run at
//! once; a caller beyond that waits up to [`REVIEW_WAIT`] and is then told 503, so a flood of junk
//! tokens costs the API server at most a few reviews at a time and never blocks the probes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// Longest `Authorization` header considered (a projected service-account token is about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Reviews in flight at once, across all callers.
pub const MAX_IN_FLIGHT: usize = 4;
/// How long a caller waits for a review slot.
pub const REVIEW_WAIT: Duration = Duration::from_secs(5);
/// Decisions remembered at once.
pub const CACHE_ENTRIES: usize = 1024;
/// How long an allowed or forbidden decision is reused (kube-rbac-proxy's default is 2 minutes).
pub const DECIDED_TTL: Duration = Duration::from_secs(60);
/// How long an unauthenticated token is remembered (a new token may become valid: a clock skew, a
/// key rotation).
pub const UNAUTHENTICATED_TTL: Duration = Duration::from_secs(10);

/// The outcome of a review.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The token's user may `verb` the path.
    Allowed,
    /// The token is not valid (expired, unknown issuer, wrong audience, malformed).
    Unauthenticated,
    /// The token is valid, and its user may not.
    Forbidden {
        /// The authenticated user's name.
        user: String,
    },
    /// No answer (the API server unreachable, or too many reviews at once); not cached.
    Unavailable(String),
}

/// Reviews a bearer token for a request.
pub trait Authorizer: Send + Sync + 'static {
    /// May the holder of `token` do `verb` (lower-case HTTP method) on the non-resource URL `path`?
    fn review<'a>(
        &'a self,
        token: &'a str,
        verb: &'a str,
        path: &'a str,
    ) -> Pin<Box<dyn Future<Output = Decision> + Send + 'a>>;
}

type Key = ([u8; 32], String);

/// An [`Authorizer`] behind a bounded cache and a bounded number of reviews in flight.
pub struct Guard {
    authorizer: Box<dyn Authorizer>,
    cache: Mutex<HashMap<Key, (Decision, Instant)>>,
    slots: tokio::sync::Semaphore,
}

impl Guard {
    /// Guards `authorizer`.
    pub fn new(authorizer: impl Authorizer) -> Self {
        Self {
            authorizer: Box::new(authorizer),
            cache: Mutex::new(HashMap::new()),
            slots: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// The decision for `token`, from the cache or a review.
    pub async fn decide(&self, token: &str, verb: &str, path: &str) -> Decision {
        let key: Key = (Sha256::digest(token.as_bytes()).into(), format!("{verb} {path}"));
        if let Some(decision) = self.cached(&key) {
            return decision;
        }
        let Ok(Ok(_slot)) = tokio::time::timeout(REVIEW_WAIT, self.slots.acquire()).await else {
            return Decision::Unavailable("too many access reviews in flight".into());
        };
        // Another caller with the same token may have finished while this one waited.
        if let Some(decision) = self.cached(&key) {
            return decision;
        }
        let decision = self.authorizer.review(token, verb, path).await;
        let ttl = match decision {
            Decision::Allowed | Decision::Forbidden { .. } => DECIDED_TTL,
            Decision::Unauthenticated => UNAUTHENTICATED_TTL,
            Decision::Unavailable(_) => return decision,
        };
        self.remember(key, decision.clone(), ttl);
        decision
    }

    fn cached(&self, key: &Key) -> Option<Decision> {
        let cache = self.cache.lock().expect("cache lock");
        cache.get(key).filter(|(_, until)| *until > Instant::now()).map(|(d, _)| d.clone())
    }

    fn remember(&self, key: Key, decision: Decision, ttl: Duration) {
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= CACHE_ENTRIES && !cache.contains_key(&key) {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_ENTRIES {
                // Full of live entries: drop the one closest to expiry.
                let soonest = cache.iter().min_by_key(|(_, (_, until))| *until).map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(key, (decision, now + ttl));
    }

    /// Decisions held (for tests and bounds).
    pub fn cached_len(&self) -> usize {
        self.cache.lock().expect("cache lock").len()
    }
}

/// The bearer token of a request: `None` when there is no usable `Authorization: Bearer` header.
fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?;
    if value.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized() -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"metrics\""));
    response
}

/// The middleware: 401 without a valid token, 403 when its user may not, 503 without an answer.
/// The reply names the user, the verb and the path, never the token.
pub async fn require(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let Some(token) = bearer(&request) else {
        return unauthorized();
    };
    let verb = request.method().as_str().to_ascii_lowercase();
    let path = request.uri().path().to_string();
    match guard.decide(token, &verb, &path).await {
        Decision::Allowed => next.run(request).await,
        Decision::Unauthenticated => unauthorized(),
        Decision::Forbidden { user } => {
            tracing::debug!(%user, %verb, %path, "metrics request forbidden");
            (StatusCode::FORBIDDEN, format!("Forbidden (user={user}, verb={verb}, path={path})\n")).into_response()
        }
        Decision::Unavailable(reason) => {
            tracing::warn!(%reason, %path, "metrics request not reviewed");
            (StatusCode::SERVICE_UNAVAILABLE, format!("cannot review the request's token: {reason}\n")).into_response()
        }
    }
}
