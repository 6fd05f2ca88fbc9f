//! The running emulator, as tests and the demo drive it: its URLs, its request statistics, and
//! switches for faults, throttling and object changes.

use super::*;

/// A running emulator.
pub struct Handle {
    pub(crate) state: Arc<State>,
    /// HTTPS address (Key Vault, Entra ID).
    pub https_addr: SocketAddr,
    /// Plain HTTP address (IMDS, NMI).
    pub http_addr: SocketAddr,
    /// HTTPS address of the identity binding token proxy.
    pub token_proxy_addr: SocketAddr,
    /// CA certificate (PEM) clients must trust.
    pub ca_pem: String,
    pub(crate) vault_suffix: String,
    pub(crate) authority_host: String,
    pub(crate) server: Mutex<Option<axum_server::Handle<SocketAddr>>>,
    pub(crate) tls: axum_server::tls_rustls::RustlsConfig,
    pub(crate) app_state: AppState,
    pub(crate) http_task: tokio::task::JoinHandle<()>,
    pub(crate) proxy_task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// `https://<vault>.vault.azure.net:<port>/`.
    pub fn vault_url(&self, vault: &str) -> String {
        format!("https://{vault}.{}:{}/", self.vault_suffix, self.https_addr.port())
    }
    /// `https://<account>.queue.core.windows.net:<port>/<queue>`.
    pub fn queue_url(&self, account: &str, queue: &str) -> String {
        format!("https://{account}.{}:{}/{queue}", crate::QUEUE_SUFFIX, self.https_addr.port())
    }
    /// Delivers what the vaults recorded, then empties a queue (a fresh start for the next reader).
    pub fn purge_queue(&self, account: &str, queue: &str) {
        let mut w = self.state.world();
        w.route_changes(&self.vault_suffix);
        if let Some(q) = w.storage.get_mut(account).and_then(|a| a.queues.get_mut(queue)) {
            q.purge();
        }
    }
    /// Sets a queue's faults.
    pub fn set_queue_faults(&self, account: &str, queue: &str, faults: crate::queue::QueueFaults) {
        let mut w = self.state.world();
        if let Some(q) = w.storage.get_mut(account).and_then(|a| a.queues.get_mut(queue)) {
            q.faults = faults;
        }
    }
    /// `https://login.microsoftonline.com:<port>`.
    pub fn authority_url(&self) -> String {
        format!("https://{}:{}", self.authority_host, self.https_addr.port())
    }
    /// Key Vault DNS suffix.
    pub fn vault_suffix(&self) -> &str {
        &self.vault_suffix
    }
    /// Authority host name.
    pub fn authority_host(&self) -> &str {
        &self.authority_host
    }
    /// The token proxy's port (its URL names the API server's host; resolve it to the emulator).
    pub fn token_proxy_port(&self) -> u16 {
        self.token_proxy_addr.port()
    }
    /// `http://127.0.0.1:<port>` for IMDS and NMI.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Requests counted so far matching `f`.
    pub fn count(&self, f: impl Fn(&StatKey) -> bool) -> u64 {
        self.state.world().stats.iter().filter(|(k, _)| f(k)).map(|(_, n)| n).sum()
    }
    /// Every counted request.
    pub fn stats(&self) -> Vec<(StatKey, u64)> {
        self.state.world().stats.iter().map(|(k, n)| (k.clone(), *n)).collect()
    }
    /// Forgets the counts.
    pub fn reset_stats(&self) {
        self.state.world().stats.clear();
    }
    /// Sets faults for `vault` (`*` for every vault).
    pub fn set_faults(&self, vault: &str, faults: Faults) {
        self.state.world().faults.insert(vault.to_ascii_lowercase(), faults);
    }
    /// Clears faults for `vault`.
    pub fn clear_faults(&self, vault: &str) {
        self.state.world().faults.remove(&vault.to_ascii_lowercase());
    }
    /// Sets the throttle of `vault`.
    pub fn set_throttle(&self, vault: &str, limit: u64, window: std::time::Duration) {
        if let Some(v) = self.state.world().vaults.get_mut(&vault.to_ascii_lowercase()) {
            v.throttle_limit = limit;
            v.throttle_window = window;
        }
    }
    /// Adds a secret version (as an administrator would); returns the version id.
    pub fn set_secret(&self, vault: &str, name: &str, value: &str) -> Option<String> {
        let mut w = self.state.world();
        let v = w.vaults.get_mut(&vault.to_ascii_lowercase())?;
        Some(v.set_secret(name, value.into(), None, BTreeMap::new(), true).version)
    }
    /// Sets the validity window (`nbf`, `exp`, Unix seconds) of a secret's newest version.
    pub fn set_secret_window(&self, vault: &str, name: &str, nbf: Option<i64>, exp: Option<i64>) {
        let mut w = self.state.world();
        if let Some(v) = w.vaults.get_mut(&vault.to_ascii_lowercase()) {
            v.set_secret_window(name, nbf, exp);
        }
    }
    /// A secret's versions, oldest first: (version id, created, enabled).
    pub fn secret_versions(&self, vault: &str, name: &str) -> Vec<(String, i64, bool)> {
        let w = self.state.world();
        w.vaults
            .get(&vault.to_ascii_lowercase())
            .and_then(|v| v.secrets.get(name))
            .map(|vs| vs.iter().map(|s| (s.version.clone(), s.attributes.created, s.attributes.enabled)).collect())
            .unwrap_or_default()
    }
    /// Disables (or enables) every version of a secret.
    pub fn set_secret_enabled(&self, vault: &str, name: &str, enabled: bool) {
        let mut w = self.state.world();
        if let Some(vs) = w.vaults.get_mut(&vault.to_ascii_lowercase()).and_then(|v| v.secrets.get_mut(name)) {
            for s in vs {
                s.attributes.enabled = enabled;
            }
        }
    }
    /// The PEM/PFX secret value and chain of a certificate's latest version, for checking conversions.
    pub fn certificate_secret(&self, vault: &str, name: &str) -> Option<(String, Option<String>)> {
        let w = self.state.world();
        let s = w.vaults.get(&vault.to_ascii_lowercase())?.secrets.get(name)?.last()?;
        Some((s.value.clone(), s.content_type.clone()))
    }
    /// The latest version id of an object (`secrets`, `keys`, `certificates`).
    pub fn latest_version(&self, vault: &str, kind: &str, name: &str) -> Option<String> {
        let w = self.state.world();
        let v = w.vaults.get(&vault.to_ascii_lowercase())?;
        match kind {
            "secrets" => v.secrets.get(name)?.last().map(|x| x.version.clone()),
            "keys" => v.keys.get(name)?.last().map(|x| x.version.clone()),
            _ => v.certificates.get(name)?.last().map(|x| x.version.clone()),
        }
    }
    /// The latest JWK of a key, as JSON.
    pub fn key_jwk(&self, vault: &str, name: &str) -> Option<serde_json::Value> {
        let w = self.state.world();
        let k = w.vaults.get(&vault.to_ascii_lowercase())?.keys.get(name)?.last()?;
        serde_json::to_value(&k.jwk).ok()
    }
    /// Mints a service-account token from an issuer whose key the emulator holds.
    pub fn service_account_token(
        &self,
        issuer: &str,
        namespace: &str,
        name: &str,
        audience: &str,
        ttl_secs: i64,
    ) -> Option<String> {
        self.state.world().issuers.get(issuer)?.mint(namespace, name, audience, ttl_secs)
    }

    /// Stops accepting connections (clients get "connection refused"), e.g. for an outage test.
    pub fn stop_listening(&self) {
        if let Some(h) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.shutdown();
        }
    }
    /// Listens again on the same port after [`Handle::stop_listening`].
    pub async fn resume_listening(&self) -> std::io::Result<()> {
        let mut last = None;
        for _ in 0..50 {
            match std::net::TcpListener::bind(self.https_addr) {
                Ok(l) => {
                    let h = serve_https(l, self.tls.clone(), self.app_state.clone())?;
                    *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("could not rebind")))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop_listening();
        self.http_task.abort();
        self.proxy_task.abort();
    }
}
