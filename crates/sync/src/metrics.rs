//! The SecretSync controller's metrics (ours: upstream's controller exports only controller-runtime's
//! generic ones). Per SecretSync: the last successful check and failures by reason, so an alert can
//! name the object; per process: reconciles by result and API writes by kind (a round in which nothing
//! changed writes nothing).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `{namespace, name}` of a SecretSync.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// Namespace.
    pub namespace: String,
    /// SecretSync (and Secret) name.
    pub name: String,
}

/// `{namespace, name, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Namespace.
    pub namespace: String,
    /// SecretSync name.
    pub name: String,
    /// Upstream's condition reason (`ProviderError`, ...).
    pub reason: String,
}

/// `{result}`: `written`, `unchanged`, `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// Outcome.
    pub result: String,
}

/// `{kind}`: `secret`, `status`, `event`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// What was written.
    pub kind: String,
}

/// The controller's metrics.
#[derive(Clone, Default)]
pub struct SyncMetrics {
    /// `secretsync_last_success_timestamp_seconds`.
    pub last_success: Family<SyncLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `secretsync_ready`: 1 when the last check ended Ready.
    pub ready: Family<SyncLabels, Gauge>,
    /// `secretsync_failures_total`.
    pub failures: Family<FailureLabels, Counter>,
    /// `secretsync_reconcile_total`.
    pub reconciles: Family<ResultLabels, Counter>,
    /// `secretsync_api_writes_total`.
    pub writes: Family<WriteLabels, Counter>,
    /// `task_panics_total{task}`: panics caught in one SecretSync's check (the controller goes on).
    pub tasks: kube_bridge::supervise::Tasks,
}

impl SyncMetrics {
    /// Registers every family.
    pub fn register(&self, registry: &mut Registry) {
        self.tasks.register(registry);
        registry.register(
            "secretsync_last_success_timestamp_seconds",
            "Unix time of the last check that left the SecretSync's Secret up to date",
            self.last_success.clone(),
        );
        registry.register("secretsync_ready", "1 when the SecretSync's last check ended Ready", self.ready.clone());
        registry.register("secretsync_failures", "Failed SecretSync checks by condition reason", self.failures.clone());
        registry.register("secretsync_reconcile", "SecretSync checks by result", self.reconciles.clone());
        registry.register(
            "secretsync_api_writes",
            "Writes to the Kubernetes API by kind (secret, status, event)",
            self.writes.clone(),
        );
    }

    /// Counts one API write.
    pub fn wrote(&self, kind: &str) {
        self.writes.get_or_create(&WriteLabels { kind: kind.into() }).inc();
    }

    /// Forgets a deleted SecretSync's series.
    pub fn forget(&self, namespace: &str, name: &str) {
        let l = SyncLabels { namespace: namespace.into(), name: name.into() };
        self.last_success.remove(&l);
        self.ready.remove(&l);
        // Failure series are few per object; they are dropped with the object's other series.
        for reason in crate::decide::FailureReason::ALL {
            self.failures.remove(&FailureLabels {
                namespace: namespace.into(),
                name: name.into(),
                reason: reason.as_str().into(),
            });
        }
    }
}
