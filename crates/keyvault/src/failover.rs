//! Failover vaults (ours; `failoverKeyvaultNames`): an object the class's vault cannot serve because
//! the vault is down (5xx after retries, a timeout, a connection or DNS failure) is fetched from the
//! next vault of the class's ordered list. A 401, 403 or 404 is the vault's answer, never a reason to
//! ask another vault: it stays the mount's error.
//!
//! A vault that failed is skipped for a back-off (10 s, doubling to 5 min) while another vault of the
//! list remains; when the back-off ends, the next fetch tries it first again, so a mount returns to
//! the primary as soon as it answers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Origin};

/// The longest a vault that is not the list's last may take before the next one is asked.
pub const ATTEMPT_BUDGET: Duration = Duration::from_secs(10);
/// The first back-off of a vault that failed (the default of [`crate::Config::failover_backoff`]).
pub const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Vaults whose health is remembered at once (names come from classes: bounded like the rest).
const MAX_TRACKED: usize = 1024;

/// Whether an error means "this vault is down", so the next vault may be asked.
pub fn fails_over(e: &Error) -> bool {
    match e.kind {
        ErrorKind::Unavailable => matches!(e.origin, Origin::KeyVault | Origin::Network),
        ErrorKind::DeadlineExceeded => true,
        _ => false,
    }
}

#[derive(Clone, Copy)]
struct Down {
    until: Instant,
    failures: u32,
}

/// Which vaults failed recently, by base URL.
pub struct Health {
    down: Mutex<HashMap<String, Down>>,
    first_backoff: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(FIRST_BACKOFF)
    }
}

impl Health {
    /// Vaults that fail back off for `first_backoff`, doubling to 5 min.
    pub fn new(first_backoff: Duration) -> Self {
        Self { down: Mutex::new(HashMap::new()), first_backoff }
    }

    /// Whether `base` is backing off now.
    pub fn is_down(&self, base: &str) -> bool {
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        down.get(base).is_some_and(|d| d.until > Instant::now())
    }

    /// `base` failed: back off for longer each time in a row.
    pub fn failed(&self, base: &str) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if !down.contains_key(base) && down.len() >= MAX_TRACKED {
            down.retain(|_, d| d.until > now);
            if down.len() >= MAX_TRACKED {
                return;
            }
        }
        let failures = down.get(base).map_or(0, |d| d.failures).saturating_add(1);
        let backoff = self.first_backoff.saturating_mul(1 << failures.saturating_sub(1).min(5)).min(MAX_BACKOFF);
        down.insert(base.to_string(), Down { until: now + backoff, failures });
    }

    /// `base` answered: no back-off.
    pub fn answered(&self, base: &str) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if !down.is_empty() {
            down.remove(base);
        }
    }

    /// Vaults remembered now.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.down.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// How long the vault at `index` of `count` may take: the last one gets what remains; the others an
/// equal share of it, at most [`ATTEMPT_BUDGET`].
pub fn attempt_deadline(deadline: Instant, index: usize, count: usize) -> Instant {
    if index + 1 >= count {
        return deadline;
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    let share = remaining / (count - index) as u32;
    Instant::now() + share.min(ATTEMPT_BUDGET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outages_fail_over() {
        let e = |k, o| Error::new(k, "x").from(o);
        assert!(fails_over(&e(ErrorKind::Unavailable, Origin::KeyVault)));
        assert!(fails_over(&e(ErrorKind::Unavailable, Origin::Network)));
        assert!(fails_over(&e(ErrorKind::DeadlineExceeded, Origin::Network)));
        for k in [ErrorKind::Forbidden, ErrorKind::NotFound, ErrorKind::InvalidInput, ErrorKind::Throttled] {
            assert!(!fails_over(&e(k, Origin::KeyVault)), "{k:?} is the vault's answer");
        }
        // Entra ID down is not the vault's outage: another vault needs the same token.
        assert!(!fails_over(&e(ErrorKind::Unavailable, Origin::EntraId)));
    }

    #[test]
    fn back_off_doubles_and_ends_on_an_answer() {
        let h = Health::default();
        assert!(!h.is_down("a"));
        h.failed("a");
        assert!(h.is_down("a"));
        let first = h.down.lock().unwrap()["a"].until;
        h.failed("a");
        let second = h.down.lock().unwrap()["a"].until;
        assert!(second > first + Duration::from_secs(9), "the second back-off is longer");
        h.answered("a");
        assert!(!h.is_down("a"));
        for i in 0..MAX_TRACKED + 10 {
            h.failed(&format!("v{i}"));
        }
        assert!(h.len() <= MAX_TRACKED, "bounded");
    }

    #[test]
    fn the_last_vault_gets_the_rest_of_the_deadline() {
        let d = Instant::now() + Duration::from_secs(100);
        assert_eq!(attempt_deadline(d, 1, 2), d);
        let first = attempt_deadline(d, 0, 2);
        assert!(first <= Instant::now() + ATTEMPT_BUDGET);
        let short = Instant::now() + Duration::from_secs(4);
        assert!(attempt_deadline(short, 0, 2) <= Instant::now() + Duration::from_secs(2));
    }
}
