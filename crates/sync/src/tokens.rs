//! Service-account tokens for SecretSyncs: one `TokenRequest` per (namespace, service account,
//! audience), in upstream's shape (600 s, one audience, no bound object: the shape its admission
//! policy allows), cached and refreshed after 80 % of its life. A token that fails to refresh is
//! served while it is still valid, as kubelet's token manager does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use kube_bridge::credentials::{MintedToken, mint_token, tokens_json};
use secrecy::SecretString;

/// Upstream's token lifetime (its admission policy requires exactly this).
pub const EXPIRATION_SECONDS: i64 = 600;

#[derive(Clone)]
struct Cached {
    token: SecretString,
    expires: SystemTime,
    refresh_at: SystemTime,
}

/// Where tokens come from (the API server, or a test's fake).
#[async_trait::async_trait]
pub trait Minter: Send + Sync + 'static {
    /// A token for `namespace/service_account` with `audience`, and when it expires.
    async fn mint(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
    ) -> Result<(SecretString, SystemTime), String>;
}

/// `TokenRequest` through the API server.
pub struct ApiMinter(pub kube::Client);

#[async_trait::async_trait]
impl Minter for ApiMinter {
    async fn mint(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
    ) -> Result<(SecretString, SystemTime), String> {
        let t = mint_token(&self.0, namespace, service_account, audience, Some(EXPIRATION_SECONDS), None)
            .await
            .map_err(|e| e.to_string())?;
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(t.expires.as_second().max(0) as u64);
        Ok((t.token, expires))
    }
}

/// The token cache.
pub struct Tokens {
    minter: Box<dyn Minter>,
    cache: Mutex<HashMap<(String, String, String), Cached>>,
}

impl Tokens {
    /// Tokens from `minter`.
    pub fn new(minter: impl Minter) -> Self {
        Self { minter: Box::new(minter), cache: Mutex::default() }
    }

    /// The CSI attribute `csi.storage.k8s.io/serviceAccount.tokens` for these audiences:
    /// `{"<audience>": {"token": ..., "expirationTimestamp": ...}}` (the value is secret).
    pub async fn attribute(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[String],
    ) -> Result<SecretString, String> {
        let mut minted = Vec::new();
        for audience in audiences {
            let c = self.get(namespace, service_account, audience).await?;
            let expires = k8s_openapi::jiff::Timestamp::try_from(c.expires).map_err(|e| e.to_string())?;
            minted.push((audience.as_str(), MintedToken { token: c.token, expires }));
        }
        Ok(tokens_json(minted.iter().map(|(a, t)| (*a, t))))
    }

    async fn get(&self, namespace: &str, service_account: &str, audience: &str) -> Result<Cached, String> {
        let key = (namespace.to_string(), service_account.to_string(), audience.to_string());
        let now = SystemTime::now();
        let cached = self.lock().get(&key).cloned();
        if let Some(c) = &cached
            && now < c.refresh_at
        {
            return Ok(c.clone());
        }
        match self.minter.mint(namespace, service_account, audience).await {
            Ok((token, expires)) => {
                let life = expires.duration_since(now).unwrap_or_default();
                let c = Cached { token, expires, refresh_at: now + life.mul_f64(0.8) };
                let mut cache = self.lock();
                // Forget tokens nobody asked for during their life, so a deleted SecretSync's token goes.
                cache.retain(|_, c| c.expires > now);
                cache.insert(key, c.clone());
                Ok(c)
            }
            Err(e) => match cached {
                Some(c) if now + Duration::from_secs(30) < c.expires => {
                    tracing::warn!(namespace, service_account, audience, error = %e, "token refresh failed; the cached token is still valid");
                    Ok(c)
                }
                _ => Err(format!(
                    "failed to get a token for service account {namespace}/{service_account} (audience {audience}): {e}"
                )),
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, String), Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fake {
        calls: Arc<AtomicUsize>,
        life: Duration,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    #[async_trait::async_trait]
    impl Minter for Fake {
        async fn mint(&self, ns: &str, sa: &str, aud: &str) -> Result<(SecretString, SystemTime), String> {
            if self.fail.load(Ordering::SeqCst) {
                return Err("forbidden".into());
            }
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            Ok((SecretString::from(format!("{ns}/{sa}/{aud}/{n}")), SystemTime::now() + self.life))
        }
    }

    #[tokio::test]
    async fn tokens_are_cached_per_identity_refreshed_late_in_life_and_kept_when_refresh_fails() {
        let calls = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tokens = Tokens::new(Fake { calls: calls.clone(), life: Duration::from_secs(600), fail: fail.clone() });
        let aud = vec!["api://AzureADTokenExchange".to_string()];
        let a = tokens.attribute("ns", "sa", &aud).await.unwrap();
        let b = tokens.attribute("ns", "sa", &aud).await.unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one TokenRequest for two syncs");
        let v: serde_json::Value = serde_json::from_str(a.expose_secret()).unwrap();
        assert_eq!(v["api://AzureADTokenExchange"]["token"], "ns/sa/api://AzureADTokenExchange/0");
        assert!(v["api://AzureADTokenExchange"]["expirationTimestamp"].as_str().unwrap().ends_with('Z'));
        tokens.attribute("ns", "other", &aud).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "another service account, another token");

        // Past 80 % of its life the token is refreshed; if that fails, the valid one is served.
        {
            let mut cache = tokens.lock();
            for c in cache.values_mut() {
                c.refresh_at = SystemTime::now() - Duration::from_secs(1);
            }
        }
        fail.store(true, Ordering::SeqCst);
        let kept = tokens.attribute("ns", "sa", &aud).await.unwrap();
        assert_eq!(kept.expose_secret(), a.expose_secret());
        fail.store(false, Ordering::SeqCst);
        let fresh = tokens.attribute("ns", "sa", &aud).await.unwrap();
        assert_ne!(fresh.expose_secret(), a.expose_secret());
        fail.store(true, Ordering::SeqCst);
        let e = tokens.attribute("ns", "new", &aud).await.unwrap_err();
        assert_eq!(
            e,
            "failed to get a token for service account ns/new (audience api://AzureADTokenExchange): forbidden"
        );
    }
}
