//! One shared HTTP client (HTTP/2, connection pool, rustls on aws-lc-rs) with the retry policy and
//! per-vault throttling every call goes through.
//!
//! Retries: 408, 429, 500, 502, 503, 504 and transport errors, at most `max_attempts` tries, exponential
//! backoff with jitter (0.8 s × (2^n − 1) × [0.8, 1.3), capped), honouring `Retry-After`,
//! `retry-after-ms` and `x-ms-retry-after-ms`, and never sleeping past the caller's deadline.
//! Throttling is per vault: a token bucket keeps us well under Key Vault's 4,000 requests per 10 s, and
//! a congestion window bounds the requests in flight. One `429 Retry-After` pauses every caller of that
//! vault *and* halves the window (from what was in flight), so when the pause ends the waiters go out a
//! few at a time instead of all at once into the next throttle window. The window then widens by one
//! request per pause length (clamped to [`REGROW_STEP`]) without a 429: growth by time, not by
//! successes, because a fixed-window throttle answers a burst of successes right before it refuses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

use crate::error::{Error, ErrorKind, Origin, Result};

/// How requests are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Tries in all (first try included).
    pub max_attempts: u32,
    /// Base delay.
    pub base_delay: Duration,
    /// Longest single delay; a `Retry-After` beyond it is not waited for.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 4, base_delay: Duration::from_millis(800), max_delay: Duration::from_secs(60) }
    }
}

/// Who is asking: mounts (a pod is waiting) go first; background refreshes (rotation) only use the
/// rate limiter's tokens above a reserve kept for mounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Priority {
    /// A pod is waiting for this.
    #[default]
    Mount,
    /// Rotation: may wait.
    Background,
}

/// Share of the bucket kept for mounts.
const MOUNT_RESERVE: f64 = 0.25;

/// Per-vault limits.
#[derive(Clone, Debug)]
pub struct VaultLimits {
    /// Sustained requests per second (default 200/s = 2,000 per 10 s, half of Azure's limit).
    pub rate_per_sec: f64,
    /// Bucket size: requests that may go out at once after a quiet period.
    pub burst: f64,
    /// Concurrent requests per vault.
    pub concurrency: usize,
}

impl Default for VaultLimits {
    fn default() -> Self {
        Self { rate_per_sec: 200.0, burst: 400.0, concurrency: 64 }
    }
}

/// Network settings; tests and the demo point them at the emulator.
#[derive(Clone, Debug, Default)]
pub struct NetworkConfig {
    /// Extra CA certificates (PEM) to trust besides the system's.
    pub extra_ca_pem: Option<String>,
    /// Resolve every host name to this address (emulator, tests). Never set in production.
    pub resolve_all_to: Option<IpAddr>,
    /// Port to use for vault URLs (the emulator cannot listen on 443).
    pub vault_port: Option<u16>,
    /// Overrides the cloud's authority host (e.g. `https://login.microsoftonline.com:8443/`).
    pub authority_override: Option<String>,
    /// IMDS base URL (default `http://169.254.169.254`).
    pub imds_url: Option<String>,
    /// NMI base URL (default `http://localhost:2579`).
    pub nmi_url: Option<String>,
    /// AKS's token proxy, for identity binding.
    pub token_proxy: crate::identity::proxy::TokenProxyConfig,
}

/// Bounds of the time the window takes to widen by one request after a 429 (the pause length,
/// clamped): from one request to the default 64 in 32 s to 5 min.
pub const REGROW_STEP: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(5));

struct Bucket {
    tokens: f64,
    last: Instant,
    paused_until: Option<Instant>,
    /// Requests allowed in flight right after the last 429 (see [`Transport::window`]).
    window_base: f64,
    /// When the window starts widening again (the end of the last pause); `None`: full window.
    regrow_from: Option<Instant>,
    /// Time per extra request in the window.
    regrow_step: Duration,
    in_flight: usize,
}

struct VaultGate {
    bucket: Mutex<Bucket>,
    /// Woken when a request leaves flight.
    released: tokio::sync::Notify,
}

impl VaultGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request in flight; leaving flight wakes the callers waiting for the window.
struct Slot(Arc<VaultGate>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
        self.0.released.notify_waiters();
    }
}

/// An HTTP response, read in full.
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Vec<u8>,
}

/// The client.
pub struct Transport {
    client: reqwest::Client,
    /// Without keep-alive: for vaults not (or no longer) in `pooled_vaults`.
    unpooled: reqwest::Client,
    /// Vaults whose connections are kept alive, by the sequence number of their last 2xx.
    pooled_vaults: Mutex<HashMap<String, u64>>,
    answers: std::sync::atomic::AtomicU64,
    retry: RetryPolicy,
    limits: VaultLimits,
    gates: Mutex<HashMap<String, Arc<VaultGate>>>,
    stats: Arc<crate::Stats>,
}

struct ResolveAll(IpAddr);

impl reqwest::dns::Resolve for ResolveAll {
    fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = SocketAddr::new(self.0, 0);
        Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs) })
    }
}

impl Transport {
    /// Builds the shared client.
    pub fn new(net: &NetworkConfig, retry: RetryPolicy, limits: VaultLimits, stats: Arc<crate::Stats>) -> Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let build = |pooled: bool| {
            let mut b = reqwest::Client::builder()
                .user_agent(concat!("keyvault-csi/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(10))
                .pool_idle_timeout(Duration::from_secs(90))
                .https_only(false);
            if !pooled {
                b = b.pool_max_idle_per_host(0);
            }
            if let Some(pem) = &net.extra_ca_pem {
                let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                    .map_err(|e| Error::new(ErrorKind::Internal, format!("invalid extra CA certificates: {e}")))?;
                b = b.tls_certs_merge(certs);
            }
            if let Some(ip) = net.resolve_all_to {
                b = b.dns_resolver(Arc::new(ResolveAll(ip)));
            }
            b.build().map_err(|e| Error::new(ErrorKind::Internal, format!("cannot build the HTTP client: {e}")))
        };
        Ok(Self {
            client: build(true)?,
            unpooled: build(false)?,
            pooled_vaults: Mutex::default(),
            answers: Default::default(),
            retry,
            limits,
            gates: Mutex::new(HashMap::new()),
            stats,
        })
    }

    /// The client for `vault`: connections are kept alive only for vaults that answered a request
    /// successfully (at most [`MAX_POOLED_VAULTS`], most recent first). Vault names come from classes:
    /// idle TLS connections to every name a tenant can invent would grow the node's memory (measured:
    /// ~50 KiB per vault, 530 MiB after 10,000 names), so a vault earns its pool by answering 2xx.
    fn client_for(&self, vault: Option<&str>) -> &reqwest::Client {
        match vault {
            Some(v) if !self.pooled_vaults.lock().unwrap_or_else(|e| e.into_inner()).contains_key(v) => &self.unpooled,
            _ => &self.client,
        }
    }

    fn answered(&self, vault: &str) {
        let mut pooled = self.pooled_vaults.lock().unwrap_or_else(|e| e.into_inner());
        if !pooled.contains_key(vault) && pooled.len() >= MAX_POOLED_VAULTS {
            let oldest = pooled.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                pooled.remove(&k);
            }
        }
        let n = self.answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        pooled.insert(vault.to_string(), n);
    }

    fn gate(&self, vault: &str) -> Arc<VaultGate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if !gates.contains_key(vault) && gates.len() >= GATE_SWEEP_AT {
            // Vault names come from classes: drop gates nobody uses whose state is a fresh gate's
            // (bucket full, no pause, full window), so evicting them changes no one's limits.
            let now = Instant::now();
            gates.retain(|_, g| Arc::strong_count(g) > 1 || !self.is_idle(&mut g.lock(), now));
        }
        gates
            .entry(vault.to_string())
            .or_insert_with(|| {
                Arc::new(VaultGate {
                    bucket: Mutex::new(Bucket {
                        tokens: self.limits.burst,
                        last: Instant::now(),
                        paused_until: None,
                        window_base: self.max_window(),
                        regrow_from: None,
                        regrow_step: REGROW_STEP.0,
                        in_flight: 0,
                    }),
                    released: tokio::sync::Notify::new(),
                })
            })
            .clone()
    }

    fn is_idle(&self, b: &mut Bucket, now: Instant) -> bool {
        let refilled = b.tokens + now.duration_since(b.last).as_secs_f64() * self.limits.rate_per_sec;
        b.in_flight == 0
            && b.paused_until.is_none_or(|p| p <= now)
            && self.window(b, now) >= self.max_window()
            && refilled >= self.limits.burst
    }

    /// Vaults with a gate now.
    pub fn gates(&self) -> usize {
        self.gates.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn max_window(&self) -> f64 {
        self.limits.concurrency.max(1) as f64
    }

    /// Requests the vault may have in flight now: the configured concurrency, or after a 429 the
    /// halved window plus one request per `regrow_step` since the pause ended.
    fn window(&self, b: &mut Bucket, now: Instant) -> f64 {
        let max = self.max_window();
        let Some(from) = b.regrow_from else { return max };
        let grown = b.window_base + now.saturating_duration_since(from).as_secs_f64() / b.regrow_step.as_secs_f64();
        if grown >= max {
            b.regrow_from = None;
            return max;
        }
        grown
    }

    /// Waits until no 429 pause is in force, the vault's bucket has a token and its window has room;
    /// the returned slot holds the request's place in the window.
    async fn admit(&self, gate: &Arc<VaultGate>, deadline: Instant, priority: Priority) -> Result<Slot> {
        let needed = match priority {
            Priority::Mount => 1.0,
            Priority::Background => 1.0 + self.limits.burst * MOUNT_RESERVE,
        };
        let started = Instant::now();
        loop {
            // Registered before the check, so a release between the check and the wait is not missed.
            let released = gate.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            // (how long, whether a release may end the wait early)
            let (wait, window_bound) = {
                let mut b = gate.lock();
                let now = Instant::now();
                let elapsed = now.duration_since(b.last).as_secs_f64();
                b.tokens = (b.tokens + elapsed * self.limits.rate_per_sec).min(self.limits.burst);
                b.last = now;
                let paused_until = b.paused_until;
                match paused_until {
                    Some(until) if until > now => (until - now, false),
                    _ if (b.in_flight as f64) + 1.0 > self.window(&mut b, now).floor() => {
                        // Woken by a release, or when the window has grown by one.
                        let step = if b.regrow_from.is_some() { b.regrow_step } else { deadline - now };
                        (step, true)
                    }
                    _ if b.tokens >= needed => {
                        b.tokens -= 1.0;
                        b.in_flight += 1;
                        self.stats.record_limiter_wait(started.elapsed());
                        return Ok(Slot(gate.clone()));
                    }
                    _ => (Duration::from_secs_f64((needed - b.tokens) / self.limits.rate_per_sec), false),
                }
            };
            let now = Instant::now();
            // A pause or an empty bucket that outlasts the deadline fails now; a full window may free
            // up at any moment, so that wait runs to the deadline.
            if now >= deadline || (!window_bound && now.checked_add(wait).is_none_or(|t| t > deadline)) {
                return Err(Error::new(
                    ErrorKind::DeadlineExceeded,
                    "the request deadline passed while waiting for the vault's rate limit",
                ));
            }
            let limit = now.checked_add(wait).map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                _ = &mut released => {}
                _ = tokio::time::sleep_until(limit.into()) => {}
            }
        }
    }

    /// A 429: pause every caller of the vault and halve the window, from what was actually in flight
    /// (a window of 64 with 3 requests out becomes 1, not 32). Every 429 halves it again, so a round of
    /// refusals brings the vault down to one request at a time: cooperative when other nodes share
    /// the vault's limit, and the slow regrowth keeps the next windows from being refused wholesale.
    fn throttled(&self, vault: &str, gate: &VaultGate, d: Duration) {
        let mut b = gate.lock();
        let now = Instant::now();
        let before = self.window(&mut b, now);
        let until = now.checked_add(d.min(MAX_RETRY_AFTER)).unwrap_or(now);
        if b.paused_until.is_none_or(|p| p < until) {
            b.paused_until = Some(until);
        }
        b.window_base = (before.min(b.in_flight as f64) / 2.0).max(1.0);
        b.regrow_from = b.paused_until;
        b.regrow_step = d.clamp(REGROW_STEP.0, REGROW_STEP.1);
        if b.window_base.floor() < before.floor() {
            tracing::info!(
                vault,
                window = b.window_base as u64,
                pause_ms = d.as_millis() as u64,
                "Key Vault throttled us: fewer requests in flight to this vault until it recovers"
            );
        }
    }

    /// The HTTP client itself, for SDK credentials that bring their own retries.
    pub fn http_client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends a request with retries. `vault` (if any) selects the throttle and the caller's priority.
    /// Returns the last response (success or not) or a transport error.
    pub async fn send(
        &self,
        vault: Option<(&str, Priority)>,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        form: Option<&[(&str, &str)]>,
        deadline: Instant,
    ) -> Result<Reply> {
        let (vault, priority) = match vault {
            Some((v, p)) => (Some(v), p),
            None => (None, Priority::Mount),
        };
        let gate = vault.map(|v| self.gate(v));
        let mut attempt = 1;
        loop {
            let slot = match &gate {
                Some(g) => Some(self.admit(g, deadline, priority).await?),
                None => None,
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::new(ErrorKind::DeadlineExceeded, format!("{method} {url}: deadline exceeded")));
            }
            let mut rb = self.client_for(vault).request(method.clone(), url).timeout(remaining);
            for (k, v) in headers {
                rb = rb.header(*k, v);
            }
            if let Some(f) = form {
                rb = rb.form(f);
            }
            let result = rb.send().await;
            let outcome = match result {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    match resp.bytes().await {
                        Ok(body) => Ok(Reply { status, headers, body: body.to_vec() }),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            if let Some(v) = vault {
                let status = outcome.as_ref().map(|r| r.status.as_u16()).unwrap_or(0);
                self.stats.record_request(v, status);
                if (200..300).contains(&status) {
                    self.answered(v);
                }
            }
            let (retryable, retry_after) = match &outcome {
                Ok(r) => (matches!(r.status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504), retry_after(&r.headers)),
                Err(e) => (!e.is_builder(), None),
            };
            if let (Some(v), Some(g), Ok(r)) = (vault, &gate, &outcome)
                && r.status == StatusCode::TOO_MANY_REQUESTS
            {
                // One throttled caller slows every caller of the vault.
                self.throttled(v, g, retry_after.unwrap_or(self.retry.base_delay));
            }
            if !retryable || attempt >= self.retry.max_attempts {
                return outcome.map_err(|e| transport_error(&method, url, e));
            }
            let backoff = {
                let exp = self.retry.base_delay.mul_f64((1u64 << attempt.min(16)) as f64 - 1.0);
                exp.mul_f64(0.8 + rand::random::<f64>() * 0.5).min(self.retry.max_delay)
            };
            let delay = match retry_after {
                Some(ra) if ra > self.retry.max_delay => return outcome.map_err(|e| transport_error(&method, url, e)),
                Some(ra) => ra.max(Duration::from_millis(10)),
                None => backoff,
            };
            if Instant::now().checked_add(delay).is_none_or(|t| t >= deadline) {
                return outcome.map_err(|e| transport_error(&method, url, e));
            }
            tracing::debug!(%url, attempt, delay_ms = delay.as_millis() as u64, "retrying");
            drop(slot);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

fn transport_error(method: &Method, url: &str, e: reqwest::Error) -> Error {
    let kind = if e.is_timeout() { ErrorKind::DeadlineExceeded } else { ErrorKind::Unavailable };
    // reqwest errors name the URL, never headers or bodies.
    let mut msg = format!("{method} {url}: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    Error::new(kind, msg).from(Origin::Network).caused_by(e)
}

/// `Retry-After` (seconds), `retry-after-ms`, `x-ms-retry-after-ms`. A negative, non-finite or
/// absurd value is ignored or capped at [`MAX_RETRY_AFTER`] (a response must never panic the driver
/// or pause a vault for days).
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
    let secs =
        |s: f64| (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64())));
    get("retry-after-ms")
        .or_else(|| get("x-ms-retry-after-ms"))
        .and_then(|ms| secs(ms / 1000.0))
        .or_else(|| get("retry-after").and_then(secs))
}

/// Vaults whose connections are kept alive at once (see [`Transport::client_for`]).
pub const MAX_POOLED_VAULTS: usize = 256;

/// Gates held before a new vault triggers a sweep of idle ones.
const GATE_SWEEP_AT: usize = 256;

/// The longest pause a `Retry-After` can impose on a vault.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(k: &'static str, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(k, v.parse().unwrap());
        h
    }

    /// `Duration::from_secs_f64` panics on these; a vault's (or a proxy's) header must not.
    #[test]
    fn hostile_retry_after_values_never_panic_and_are_bounded() {
        for k in ["retry-after", "retry-after-ms", "x-ms-retry-after-ms"] {
            for v in ["-1", "NaN", "inf", "-inf", "1e400", "99999999999999999999", "1e19"] {
                let d = retry_after(&headers(k, v));
                assert!(d.is_none_or(|d| d <= MAX_RETRY_AFTER), "{k}: {v} -> {d:?}");
            }
        }
        assert_eq!(retry_after(&headers("retry-after", "2")), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(&headers("retry-after-ms", "1500")), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after(&headers("retry-after", "1e9")), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn gates_of_vaults_nobody_uses_are_dropped() {
        let stats = Arc::new(crate::Stats::default());
        let t =
            Transport::new(&NetworkConfig::default(), RetryPolicy::default(), VaultLimits::default(), stats).unwrap();
        let busy = t.gate("https://busy.vault.azure.net");
        for i in 0..10_000 {
            let _ = t.gate(&format!("https://hostile-{i}.vault.azure.net"));
            assert!(t.gates() <= GATE_SWEEP_AT + 1, "{}", t.gates());
        }
        t.throttled("https://paused", &t.gate("https://paused.vault.azure.net"), Duration::from_secs(60));
        for i in 0..1000 {
            let _ = t.gate(&format!("https://more-{i}.vault.azure.net"));
        }
        let gates = t.gates.lock().unwrap();
        assert!(gates.contains_key("https://busy.vault.azure.net"), "a gate in use stays");
        assert!(gates.contains_key("https://paused.vault.azure.net"), "a paused vault keeps its pause");
        drop(busy);
    }

    /// Measured by the hostile bench: idle TLS connections to every vault name a tenant invents grew
    /// the driver by ~50 KiB per name. Only vaults that answered 2xx keep connections, at most 256.
    #[test]
    fn only_vaults_that_answered_keep_connections_and_they_are_bounded() {
        let stats = Arc::new(crate::Stats::default());
        let t =
            Transport::new(&NetworkConfig::default(), RetryPolicy::default(), VaultLimits::default(), stats).unwrap();
        let pooled = |v: &str| std::ptr::eq(t.client_for(Some(v)), &t.client);
        assert!(!pooled("https://new.vault.azure.net"), "a vault never heard from gets no pool");
        assert!(std::ptr::eq(t.client_for(None), &t.client), "Entra ID and IMDS are pooled");
        t.answered("https://good.vault.azure.net");
        assert!(pooled("https://good.vault.azure.net"));
        for i in 0..1000 {
            t.answered(&format!("https://v{i}.vault.azure.net"));
        }
        assert_eq!(t.pooled_vaults.lock().unwrap().len(), MAX_POOLED_VAULTS);
        assert!(pooled("https://v999.vault.azure.net") && !pooled("https://good.vault.azure.net"), "oldest out first");
    }
}
