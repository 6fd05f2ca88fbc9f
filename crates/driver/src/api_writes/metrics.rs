//! The writer's metrics: `api_write_failures_total{kind}`, and the queue's depth and age read at
//! scrape time.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{KindLabels, Shared};

pub(super) fn register(
    registry: &mut Registry,
    failures: Family<KindLabels, Counter>,
    shared: std::sync::Weak<Shared>,
) {
    registry.register(
        "api_write_failures",
        "API writes (kind=pod_status|secret|pod_status_delete) that failed and are retried",
        failures,
    );
    registry.register_collector(Box::new(QueueGauges(shared)));
}

/// `api_writes_pending` and `api_writes_oldest_pending_seconds`, read at scrape time.
#[derive(Debug)]
struct QueueGauges(std::sync::Weak<Shared>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiWriter").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for QueueGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (depth, oldest) = match self.0.upgrade() {
            Some(s) => {
                let st = s.state.lock().unwrap();
                let oldest = st.entries.values().map(|e| e.since.elapsed().as_secs_f64()).fold(0.0, f64::max);
                (st.entries.len() as i64, oldest)
            }
            None => (0, 0.0),
        };
        ConstGauge::new(depth).encode(encoder.encode_descriptor(
            "api_writes_pending",
            "Volumes whose pod status, synced Secrets or pod-status deletion is not yet written",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(oldest).encode(encoder.encode_descriptor(
            "api_writes_oldest_pending_seconds",
            "How long the oldest pending API write has been owed (0: none)",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}
