//! Counters the binary exports as metrics: Key Vault requests by vault and status, dedup hits, token
//! acquisitions and cache hits, time spent waiting for the rate limiter.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Provider counters.
#[derive(Debug)]
pub struct Stats {
    /// HTTP requests to Key Vault by (vault base URL, status; 0 = transport error).
    pub requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Fetches served by an identical in-flight or recent fetch.
    pub dedup_hits: AtomicU64,
    /// Fetches that went to Key Vault.
    pub dedup_misses: AtomicU64,
    /// Tokens acquired from Entra ID, IMDS or NMI.
    pub token_acquisitions: AtomicU64,
    /// Tokens served from the cache.
    pub token_cache_hits: AtomicU64,
    /// Total time requests waited for a vault's rate limiter (µs).
    pub limiter_wait_micros: AtomicU64,
    /// Objects served by a failover vault, by vault name (`failoverKeyvaultNames`).
    pub failovers: Mutex<BTreeMap<String, u64>>,
    /// Objects served from the last known good while their vault was unreachable, by vault name.
    pub stale_served: Mutex<BTreeMap<String, u64>>,
    /// Bounds the vaults `requests` is kept by (vault names come from classes).
    vaults: crate::metrics::BoundedLabel,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            requests: Default::default(),
            dedup_hits: Default::default(),
            dedup_misses: Default::default(),
            token_acquisitions: Default::default(),
            token_cache_hits: Default::default(),
            limiter_wait_micros: Default::default(),
            failovers: Default::default(),
            stale_served: Default::default(),
            vaults: crate::metrics::BoundedLabel::new(crate::metrics::MAX_VAULTS),
        }
    }
}

impl Stats {
    /// Counts one Key Vault request.
    pub fn record_request(&self, vault: &str, status: u16) {
        let vault = self.vaults.label(vault);
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()).entry((vault, status)).or_default() += 1;
    }

    /// Counts one object served by the failover vault `vault`.
    pub fn record_failover(&self, vault: &str) {
        let vault = self.vaults.label(vault);
        *self.failovers.lock().unwrap_or_else(|e| e.into_inner()).entry(vault).or_default() += 1;
    }

    /// Counts one object served from the last known good of `vault`.
    pub fn record_stale(&self, vault: &str) {
        let vault = self.vaults.label(vault);
        *self.stale_served.lock().unwrap_or_else(|e| e.into_inner()).entry(vault).or_default() += 1;
    }

    /// Adds rate-limiter wait time.
    pub fn record_limiter_wait(&self, d: Duration) {
        self.limiter_wait_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Requests to Key Vault so far.
    pub fn total_requests(&self) -> u64 {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }
}
