//! The Azure provider's metrics: `keyvault_request` and `grpc_request` histograms (upstream names, but
//! a bounded error code instead of upstream's free-text `error`/`grpc_message` labels), and our
//! additions: Key Vault requests by vault and status, fetch dedup hits, token acquisitions and cache
//! hits, rate-limiter wait.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `os_type` label, as upstream.
const OS_TYPE: &str = "linux";

/// A label whose values tenants choose (object names, vault names): the first `cap` distinct values
/// are exported as they are, later ones as [`OVERFLOW`], so no namespace can grow Prometheus' series
/// or the driver's memory without bound. Values are never evicted: a series, once exported, keeps its
/// name for the life of the process.
#[derive(Debug)]
pub struct BoundedLabel {
    cap: usize,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The value a [`BoundedLabel`] exports once its cap is reached.
pub const OVERFLOW: &str = "_overflow";

/// Distinct `object_name` values exported by `keyvault_request`.
pub const MAX_OBJECT_NAMES: usize = 2000;

/// Distinct `vault` values exported by `keyvault_requests`.
pub const MAX_VAULTS: usize = 500;

impl BoundedLabel {
    /// At most `cap` distinct values.
    pub fn new(cap: usize) -> Self {
        Self { cap, seen: Default::default() }
    }

    /// The value to export for `value`.
    pub fn label(&self, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            return value.to_string();
        }
        if seen.len() >= self.cap {
            return OVERFLOW.to_string();
        }
        seen.insert(value.to_string());
        value.to_string()
    }
}

/// The Azure provider's histogram buckets (seconds), as upstream.
pub const PROVIDER_BUCKETS: [f64; 14] = [0.1, 0.2, 0.3, 0.4, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0, 15.0, 30.0];

/// `keyvault_request` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyvaultLabels {
    object_type: String,
    object_name: String,
    /// Bounded error code (`NotFound`, `Forbidden`, `Throttled`, ...), empty on success.
    error: String,
    /// `throttled`, `auth`, `not_found`, `network` or `other`; empty on success.
    error_class: String,
    os_type: String,
    provider: String,
    service_name: String,
}

/// `grpc_request` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    grpc_method: String,
    grpc_code: String,
    os_type: String,
    provider: String,
    service_name: String,
}

/// The provider's histograms.
#[derive(Clone)]
pub struct ProviderMetrics {
    keyvault_request: Family<KeyvaultLabels, Histogram>,
    grpc_request: Family<GrpcLabels, Histogram>,
    object_names: Arc<BoundedLabel>,
}

impl Default for ProviderMetrics {
    fn default() -> Self {
        let h = || Histogram::new(PROVIDER_BUCKETS);
        Self {
            keyvault_request: Family::new_with_constructor(h),
            grpc_request: Family::new_with_constructor(h),
            object_names: Arc::new(BoundedLabel::new(MAX_OBJECT_NAMES)),
        }
    }
}

const SERVICE_NAME: &str = "csi-secrets-store-provider-azure";

impl ProviderMetrics {
    /// Records one provider RPC (`/v1alpha1.CSIDriverProvider/Mount`), served or in-process, with its
    /// gRPC status code's name (`Ok`, `InvalidArgument`, ...).
    pub fn grpc(&self, method: &str, code: &str, duration: Duration) {
        let l = GrpcLabels {
            grpc_method: method.into(),
            grpc_code: code.into(),
            os_type: OS_TYPE.into(),
            provider: "azure".into(),
            service_name: SERVICE_NAME.into(),
        };
        self.grpc_request.get_or_create(&l).observe(duration.as_secs_f64());
    }
}

impl crate::Observer for ProviderMetrics {
    fn object_fetched(
        &self,
        object_type: &str,
        object_name: &str,
        duration: Duration,
        error: Option<crate::ErrorKind>,
    ) {
        let l = KeyvaultLabels {
            object_type: object_type.into(),
            object_name: self.object_names.label(object_name),
            error: error.map(|e| e.label().to_string()).unwrap_or_default(),
            error_class: error.map(|e| e.class().to_string()).unwrap_or_default(),
            os_type: OS_TYPE.into(),
            provider: "azure".into(),
            service_name: SERVICE_NAME.into(),
        };
        self.keyvault_request.get_or_create(&l).observe(duration.as_secs_f64());
    }
}

/// Counters read from the provider's `Stats` at scrape time.
#[derive(Debug)]
struct KeyvaultStats(Arc<crate::Stats>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VaultStatus {
    vault: String,
    status: String,
    error_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Vault {
    vault: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Result_ {
    result: String,
}

impl Collector for KeyvaultStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        {
            let mut m = encoder.encode_descriptor(
                "keyvault_requests",
                "HTTP requests to Key Vault by vault and status (0: no response)",
                None,
                MetricType::Counter,
            )?;
            for ((vault, status), n) in s.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let l = VaultStatus {
                    vault: vault.trim_start_matches("https://").to_string(),
                    status: status.to_string(),
                    error_class: crate::ErrorKind::class_of_status(*status).to_string(),
                };
                ConstCounter::new(*n).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "keyvault_fetch_dedup",
                "Object fetches served by an identical fetch of the same identity (hit) or sent to Key Vault (miss)",
                None,
                MetricType::Counter,
            )?;
            for (r, v) in [("hit", &s.dedup_hits), ("miss", &s.dedup_misses)] {
                ConstCounter::new(v.load(Ordering::Relaxed)).encode(m.encode_family(&Result_ { result: r.into() })?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "keyvault_token_requests",
                "Access tokens acquired from Entra ID, IMDS or NMI (acquired) or served from the cache (cache_hit)",
                None,
                MetricType::Counter,
            )?;
            for (r, v) in [("acquired", &s.token_acquisitions), ("cache_hit", &s.token_cache_hits)] {
                ConstCounter::new(v.load(Ordering::Relaxed)).encode(m.encode_family(&Result_ { result: r.into() })?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "keyvault_failover_objects",
                "Objects served by a failover vault (failoverKeyvaultNames) because the class's vault was down",
                None,
                MetricType::Counter,
            )?;
            for (vault, n) in s.failovers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                ConstCounter::new(*n).encode(m.encode_family(&Vault { vault: vault.clone() })?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "keyvault_stale_objects",
                "Objects served from the node's last known good (maxStaleness) because their vault could not be reached",
                None,
                MetricType::Counter,
            )?;
            for (vault, n) in s.stale_served.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                ConstCounter::new(*n).encode(m.encode_family(&Vault { vault: vault.clone() })?)?;
            }
        }
        let waited = s.limiter_wait_micros.load(Ordering::Relaxed) as f64 / 1e6;
        ConstCounter::new(waited).encode(encoder.encode_descriptor(
            "keyvault_rate_limiter_wait_seconds",
            "Time Key Vault requests spent waiting for the per-vault rate limiter",
            None,
            MetricType::Counter,
        )?)?;
        Ok(())
    }
}

/// Registers the provider's metrics.
pub fn register_provider(registry: &mut Registry, metrics: &ProviderMetrics, stats: Arc<crate::Stats>) {
    registry.register(
        "keyvault_request",
        "Distribution of how long it took to get from Key Vault",
        metrics.keyvault_request.clone(),
    );
    registry.register(
        "grpc_request",
        "Distribution of how long it took for the gRPC requests",
        metrics.grpc_request.clone(),
    );
    registry.register_collector(Box::new(KeyvaultStats(stats)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Observer;

    fn series(metrics: &ProviderMetrics, stats: Arc<crate::Stats>) -> Vec<String> {
        let mut registry = Registry::default();
        register_provider(&mut registry, metrics, stats);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect()
    }

    /// Object and vault names are the tenant's: a namespace inventing names cannot grow the series.
    #[test]
    fn object_and_vault_labels_are_capped_with_an_overflow_series() {
        let metrics = ProviderMetrics::default();
        let stats = Arc::new(crate::Stats::default());
        for i in 0..MAX_OBJECT_NAMES + 500 {
            metrics.object_fetched("secret", &format!("hostile-{i}"), Duration::from_millis(1), None);
        }
        for i in 0..MAX_VAULTS + 500 {
            stats.record_request(&format!("https://v{i}.vault.azure.net"), 404);
        }
        let lines = series(&metrics, stats.clone());
        let objects: std::collections::BTreeSet<&str> = lines
            .iter()
            .filter(|l| l.starts_with("keyvault_request_count"))
            .filter_map(|l| l.split("object_name=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(objects.len(), MAX_OBJECT_NAMES + 1, "the first names, then one overflow series");
        assert!(objects.contains(OVERFLOW) && objects.contains("hostile-0") && !objects.contains("hostile-2400"));
        let vaults = lines.iter().filter(|l| l.starts_with("keyvault_requests_total")).count();
        assert_eq!(vaults, MAX_VAULTS + 1);
        assert_eq!(stats.total_requests(), (MAX_VAULTS + 500) as u64, "every request still counted");
    }
}
