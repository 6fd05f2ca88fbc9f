//! What polling costs a vault: GETs per 10 s against Key Vault's service limit, for the budget check
//! of `keyvault-csi check --live` and the capacity model in docs/change-events.md.

use std::time::Duration;

/// Key Vault's limit for GETs per vault per 10 s.
pub const VAULT_GETS_PER_10S: f64 = 4000.0;

/// The ways out of a budget past half of the limit.
pub const FIX: &str = "lengthen the class's keyvault-csi.io/rotation-poll-interval, turn on change events (events.enabled, docs/change-events.md: polls every hour, changes in seconds), or move widely shared objects to a SecretSync (one fetch per interval for the cluster)";

/// The GETs one class costs its vault when `nodes` nodes poll `objects` objects every `interval` (one
/// identity per class; more identities multiply it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// GETs per 10 s: nodes × objects × 10 / interval.
    pub per_10s: f64,
    /// Percent of [`VAULT_GETS_PER_10S`].
    pub share: f64,
    detail: (u64, u64, Duration),
}

impl Budget {
    /// The cost of `nodes` × `objects` every `interval`.
    pub fn of(nodes: u64, objects: u64, interval: Duration) -> Self {
        let per_10s = nodes as f64 * objects as f64 * 10.0 / interval.as_secs_f64().max(1.0);
        Self { per_10s, share: per_10s / VAULT_GETS_PER_10S * 100.0, detail: (nodes, objects, interval) }
    }

    /// Past half of the limit: a warning (other classes and clients share the vault).
    pub fn strained(&self) -> bool {
        self.share > 50.0
    }

    /// Past the limit: Key Vault throttles (429).
    pub fn throttled(&self) -> bool {
        self.share > 100.0
    }

    /// One line for an operator: the arithmetic, and when strained, the verdict and [`FIX`].
    pub fn describe(&self) -> String {
        let (nodes, objects, interval) = self.detail;
        let (per_10s, share) = (self.per_10s, self.share);
        let line = format!(
            "{nodes} node(s) × {objects} object(s) every {interval:?}: {per_10s:.0} GETs per 10 s, {share:.0} % of one vault's {VAULT_GETS_PER_10S:.0}"
        );
        match (self.strained(), self.throttled()) {
            (false, _) => line,
            (true, true) => format!("{line}: Key Vault will throttle (429); {FIX}"),
            (true, false) => format!("{line}; {FIX}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_strained_past_half_of_a_vaults_limit() {
        let two_min = Duration::from_secs(120);
        let small = Budget::of(100, 10, two_min);
        assert!(!small.strained());
        assert!(small.describe().contains("83 GETs per 10 s"), "{}", small.describe());
        let big = Budget::of(5000, 10, two_min);
        assert!(big.strained() && big.throttled());
        assert!(big.describe().contains("4167 GETs") && big.describe().contains("throttle"), "{}", big.describe());
        assert!(!Budget::of(5000, 10, Duration::from_secs(3600)).strained(), "events on: polls hourly");
        let strained = Budget::of(2500, 10, two_min);
        assert!(strained.strained() && !strained.throttled());
        assert!(strained.describe().contains("change events") && !strained.describe().contains("429"));
    }
}
