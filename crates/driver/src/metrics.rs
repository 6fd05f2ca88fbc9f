//! The node driver's Prometheus metrics, with the upstream driver's wire names, types, labels and
//! buckets (upstream's `pkg/secrets-store/stats_reporter.go`), so dashboards and alerts keep working; plus what users asked for: mounted
//! volumes and rotation lag. `sync_k8s_secret_total` and `k8s_secret_duration_sec` are defined here for
//! the secret-sync code to record (upstream defines them and never records them).

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::registry::VolumeRegistry;

/// `os_type` label value (Go's `runtime.GOOS`).
pub const OS_TYPE: &str = "linux";

/// `ExponentialBucketsRange(0.1, 2, 11)`: 0.1 s … 2 s, factor 20^(1/10), as upstream.
pub fn driver_buckets() -> Vec<f64> {
    (0..11).map(|i| 0.1 * 20f64.powf(i as f64 / 10.0)).collect()
}

/// `node_publish_duration_seconds` buckets: up to kubelet's 2-minute `NodePublishVolume` timeout, so
/// an alert can fire before pods start failing to mount.
pub const PUBLISH_BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 90.0, 110.0, 120.0];

/// `{os_type}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OsLabels {
    /// `linux`.
    pub os_type: String,
}

/// `{provider, os_type}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider name (may be empty when the class could not be read).
    pub provider: String,
    /// `linux`.
    pub os_type: String,
}

/// `{provider, error_type, os_type}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Provider name.
    pub provider: String,
    /// Bounded error label.
    pub error_type: String,
    /// `linux`.
    pub os_type: String,
    /// `throttled`, `auth`, `not_found`, `network` or `other` (ours).
    pub error_class: String,
}

/// `{provider, os_type, rotated}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabels {
    /// Provider name.
    pub provider: String,
    /// `linux`.
    pub os_type: String,
    /// Whether contents changed.
    pub rotated: String,
}

/// `{provider, error_type, os_type, rotated}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationErrorLabels {
    /// Provider name.
    pub provider: String,
    /// Bounded error label.
    pub error_type: String,
    /// `linux`.
    pub os_type: String,
    /// Whether contents changed.
    pub rotated: String,
    /// `throttled`, `auth`, `not_found`, `network` or `other` (ours).
    pub error_class: String,
}

/// `{namespace, class, object}` of a certificate file (bounded by classes, not pods).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CertLabels {
    /// The pods' namespace.
    pub namespace: String,
    /// SecretProviderClass name.
    pub class: String,
    /// The file in the volume (`objectAlias`, else `objectName`).
    pub object: String,
}

fn os() -> OsLabels {
    OsLabels { os_type: OS_TYPE.into() }
}

/// The driver's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// `node_publish_total`.
    pub node_publish: Family<ProviderLabels, Counter>,
    /// `node_unpublish_total`.
    pub node_unpublish: Family<OsLabels, Counter>,
    /// `node_publish_error_total`.
    pub node_publish_error: Family<ErrorLabels, Counter>,
    /// `node_unpublish_error_total`.
    pub node_unpublish_error: Family<OsLabels, Counter>,
    /// `rotation_reconcile_total`.
    pub rotation_reconcile: Family<RotationLabels, Counter>,
    /// `rotation_reconcile_error_total`.
    pub rotation_reconcile_error: Family<RotationErrorLabels, Counter>,
    /// `rotation_reconcile_duration_sec`.
    pub rotation_reconcile_duration: Family<OsLabels, Histogram>,
    /// `sync_k8s_secret_total`.
    pub sync_k8s_secret: Family<ProviderLabels, Counter>,
    /// `k8s_secret_duration_sec`.
    pub k8s_secret_duration: Family<OsLabels, Histogram>,
    /// `node_publish_duration_seconds` (ours): kubelet's publish calls, up to its 2-minute limit.
    pub node_publish_duration: Family<OsLabels, Histogram>,
    /// `events_invalidations_total{outcome}` (ours): Key Vault change events this node acted on
    /// (`refreshed`: it held the object) or dropped (`unused`).
    pub events_invalidations: Family<OutcomeLabels, Counter>,
    /// `event_to_file_seconds` (ours): from a change event's `eventTime` to the new files.
    pub event_to_file: Histogram,
    /// `events_healthy` (ours): 1 while the event consumer's heartbeat is fresh (long polls), 0 when
    /// this node polls at its normal interval.
    pub events_healthy: Gauge,
}

/// `{outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What happened.
    pub outcome: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let hist = || Histogram::new(driver_buckets());
        Self {
            node_publish: Family::default(),
            node_unpublish: Family::default(),
            node_publish_error: Family::default(),
            node_unpublish_error: Family::default(),
            rotation_reconcile: Family::default(),
            rotation_reconcile_error: Family::default(),
            rotation_reconcile_duration: Family::new_with_constructor(hist),
            sync_k8s_secret: Family::default(),
            k8s_secret_duration: Family::new_with_constructor(hist),
            node_publish_duration: Family::new_with_constructor(|| Histogram::new(PUBLISH_BUCKETS)),
            events_invalidations: Family::default(),
            event_to_file: Histogram::new(secrets_store::invalidation::EVENT_BUCKETS),
            events_healthy: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric, and the volume gauges read from `volumes` at scrape time.
    pub fn register(&self, registry: &mut Registry, volumes: Arc<VolumeRegistry>) {
        registry.register("node_publish", "Total number of node publish calls", self.node_publish.clone());
        registry.register("node_unpublish", "Total number of node unpublish calls", self.node_unpublish.clone());
        registry.register(
            "node_publish_error",
            "Total number of node publish calls with error",
            self.node_publish_error.clone(),
        );
        registry.register(
            "node_unpublish_error",
            "Total number of node unpublish calls with error",
            self.node_unpublish_error.clone(),
        );
        registry.register("rotation_reconcile", "Total number of rotation reconciles", self.rotation_reconcile.clone());
        registry.register(
            "rotation_reconcile_error",
            "Total number of rotation reconciles with error",
            self.rotation_reconcile_error.clone(),
        );
        registry.register(
            "rotation_reconcile_duration_sec",
            "Distribution of how long it took to rotate secrets-store content for pods",
            self.rotation_reconcile_duration.clone(),
        );
        registry.register("sync_k8s_secret", "Total number of k8s secrets synced", self.sync_k8s_secret.clone());
        registry.register(
            "k8s_secret_duration_sec",
            "Distribution of how long it took to sync k8s secret",
            self.k8s_secret_duration.clone(),
        );
        registry.register(
            "node_publish_duration_seconds",
            "Distribution of how long kubelet's NodePublishVolume calls took (kubelet gives up at 120 s)",
            self.node_publish_duration.clone(),
        );
        registry.register(
            "events_invalidations",
            "Key Vault change events this node acted on (outcome=refreshed) or dropped (outcome=unused)",
            self.events_invalidations.clone(),
        );
        registry.register(
            "event_to_file_seconds",
            "Distribution of the time from a Key Vault change event's eventTime to the changed files",
            self.event_to_file.clone(),
        );
        registry.register(
            "events_healthy",
            "1 while the change-event consumer's heartbeat is fresh; 0 when the node polls at its normal interval",
            self.events_healthy.clone(),
        );
        registry.register_collector(Box::new(VolumeGauges(volumes)));
    }

    /// A publish that succeeded (including skipped republishes, as upstream v1.6 counts them).
    pub fn publish_ok(&self, provider: &str) {
        self.node_publish.get_or_create(&ProviderLabels { provider: provider.into(), os_type: OS_TYPE.into() }).inc();
    }

    /// A publish that failed, or a republish whose failure was masked.
    pub fn publish_error(&self, provider: &str, error: &crate::error::PublishError) {
        let l = ErrorLabels {
            provider: provider.into(),
            error_type: error.label().into(),
            os_type: OS_TYPE.into(),
            error_class: error.class().into(),
        };
        self.node_publish_error.get_or_create(&l).inc();
    }

    /// How long one kubelet publish took, whatever its outcome.
    pub fn publish_duration(&self, started: Instant) {
        self.node_publish_duration.get_or_create(&os()).observe(started.elapsed().as_secs_f64());
    }

    /// A rotation (a refresh of a live volume).
    pub fn rotation(&self, provider: &str, rotated: bool, started: Instant) {
        let l = RotationLabels { provider: provider.into(), os_type: OS_TYPE.into(), rotated: rotated.to_string() };
        self.rotation_reconcile.get_or_create(&l).inc();
        self.rotation_reconcile_duration.get_or_create(&os()).observe(started.elapsed().as_secs_f64());
    }

    /// A failed rotation (the old files stay).
    pub fn rotation_error(&self, provider: &str, error: &crate::error::PublishError) {
        let l = RotationErrorLabels {
            provider: provider.into(),
            error_type: error.label().into(),
            os_type: OS_TYPE.into(),
            rotated: "true".into(),
            error_class: error.class().into(),
        };
        self.rotation_reconcile_error.get_or_create(&l).inc();
    }

    /// Secrets synced for one volume (`sync_k8s_secret_total`, `k8s_secret_duration_sec`).
    pub fn secrets_synced(&self, provider: &str, n: usize, started: Instant) {
        if n == 0 {
            return;
        }
        let l = ProviderLabels { provider: provider.into(), os_type: OS_TYPE.into() };
        self.sync_k8s_secret.get_or_create(&l).inc_by(n as u64);
        self.k8s_secret_duration.get_or_create(&os()).observe(started.elapsed().as_secs_f64());
    }

    /// An unpublish.
    pub fn unpublish(&self, ok: bool) {
        self.node_unpublish.get_or_create(&os()).inc();
        if !ok {
            self.node_unpublish_error.get_or_create(&os()).inc();
        }
    }
}

/// `mounted_volumes` and `rotation_lag_seconds`, computed from the registry at scrape time.
#[derive(Debug)]
struct VolumeGauges(Arc<VolumeRegistry>);

impl Collector for VolumeGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let volumes = self.0.snapshot();
        // How far the most overdue volume is past its own interval (its class's, else the node's):
        // 0 while every volume is on schedule, whatever the intervals.
        let lag = volumes
            .iter()
            .filter_map(|(_, v)| Some(v.last_fetch.elapsed().saturating_sub(v.interval?).as_secs_f64()))
            .fold(0.0, f64::max);
        let g = ConstGauge::new(volumes.len() as i64);
        g.encode(encoder.encode_descriptor(
            "mounted_volumes",
            "Volumes currently published by this driver",
            None,
            MetricType::Gauge,
        )?)?;
        // One series per (namespace, class, file): pods sharing a class share it (the earliest wins).
        let mut expiry: std::collections::BTreeMap<CertLabels, i64> = Default::default();
        for (_, v) in &volumes {
            for (file, &not_after) in &v.cert_expiry {
                let key = CertLabels {
                    namespace: v.params.pod.namespace.clone(),
                    class: v.params.class_name.clone(),
                    object: file.clone(),
                };
                expiry.entry(key).and_modify(|t| *t = (*t).min(not_after)).or_insert(not_after);
            }
        }
        let certs: Family<CertLabels, Gauge<i64>> = Family::default();
        for (labels, not_after) in expiry {
            certs.get_or_create(&labels).set(not_after);
        }
        certs.encode(encoder.encode_descriptor(
            "certificate_expiry_timestamp_seconds",
            "notAfter (Unix seconds) of the earliest-expiring certificate in each mounted file, by namespace, class and file",
            None,
            MetricType::Gauge,
        )?)?;
        let g = ConstGauge::new(lag);
        g.encode(encoder.encode_descriptor(
            "rotation_lag_seconds",
            "How long the most overdue volume is past its rotation interval (its class's, else the node's)",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_upstreams_exponential_range() {
        let b = driver_buckets();
        assert_eq!(b.len(), 11);
        assert!((b[0] - 0.1).abs() < 1e-9 && (b[10] - 2.0).abs() < 1e-9);
        assert!((b[1] - 0.1349).abs() < 1e-3);
    }
}
