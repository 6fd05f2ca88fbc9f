//! The change-event consumer: a task of the leader-elected controller that pulls Key Vault change
//! events from a queue ([`EventSource`]; the binary wires Azure Storage) and turns each into an
//! invalidation of one (vault, object type, name): an entry in the invalidations ConfigMap the nodes
//! watch (see [`secrets_store::invalidation`]), and a forced check of the SecretSyncs that hold the object.
//!
//! Messages are deleted only after their invalidation is written, so a crash or a failed write
//! redelivers them (at least once, like Event Grid). A message that is not a usable event is left for
//! the queue to hand out again, and deleted with a Warning once it has been taken `max_dequeue` times
//! (a poison message). While the queue cannot be read, the heartbeat stops, nodes fall back to their
//! normal poll interval, and a Warning on the ConfigMap says why; when it is back, a Normal event.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube_bridge::{EventType, Recorder};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use secrets_store::invalidation::{Board, CONFIGMAP, HEARTBEAT_EVERY, ObjectKey};

/// The component events are reported as.
pub const COMPONENT: &str = "keyvault-csi-change-events";

/// One message taken from the queue.
#[derive(Clone, Debug)]
pub struct Received {
    /// What deleting it needs (message id, pop receipt): opaque here.
    pub handle: (String, String),
    /// Times the queue has handed it out (1 the first time).
    pub dequeue_count: u64,
    /// The change it announces, or why it announces none.
    pub change: Result<Announced, Refused>,
}

/// A change an event announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    /// The object.
    pub object: ObjectKey,
    /// Its new version ("" when the event names none).
    pub version: String,
    /// The event's `eventTime`.
    pub event_time: Option<SystemTime>,
}

/// Why a message announces no change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A well-formed event about no object (another event type): deleted at once.
    Ignored(String),
    /// Not a usable event (bounded reason, never the message's content): poison after `max_dequeue`.
    Invalid(String),
}

/// Where events come from.
#[async_trait::async_trait]
pub trait EventSource: Send + Sync + 'static {
    /// Takes up to 32 messages (invisible to other readers for a while).
    async fn receive(&self) -> Result<Vec<Received>, String>;
    /// Deletes a message taken by [`Self::receive`].
    async fn delete(&self, handle: &(String, String)) -> Result<(), String>;
}

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace of the invalidations ConfigMap (the driver's).
    pub namespace: String,
    /// Takes before an unusable message is deleted as poison.
    pub max_dequeue: u64,
    /// Wait between reads of an empty queue.
    pub idle_wait: Duration,
}

/// `{outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `invalidated`, `ignored`, `retried`, `poison`.
    pub outcome: String,
}

/// The consumer's metrics.
#[derive(Clone)]
pub struct EventMetrics {
    /// `keyvault_events_received_total{outcome}`.
    pub received: Family<OutcomeLabels, Counter>,
    /// `keyvault_events_queue_errors_total`.
    pub queue_errors: Counter,
    /// `keyvault_events_queue_up`: 1 while the queue answers.
    pub queue_up: Gauge,
    /// `keyvault_events_lag_seconds`: `eventTime` to the invalidation written.
    pub lag: Histogram,
    /// `keyvault_events_fallbacks_total`: times the queue went away (nodes fell back to polling).
    pub fallbacks: Counter,
    /// `keyvault_events_secretsyncs_triggered_total`.
    pub secretsyncs_triggered: Counter,
}

impl Default for EventMetrics {
    fn default() -> Self {
        Self {
            received: Family::default(),
            queue_errors: Counter::default(),
            queue_up: Gauge::default(),
            lag: Histogram::new(secrets_store::invalidation::EVENT_BUCKETS),
            fallbacks: Counter::default(),
            secretsyncs_triggered: Counter::default(),
        }
    }
}

impl EventMetrics {
    /// Registers under `keyvault_events_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("keyvault_events");
        r.register("received", "Queue messages by outcome", self.received.clone());
        r.register("queue_errors", "Failed reads of the change-event queue", self.queue_errors.clone());
        r.register("queue_up", "1 while the change-event queue answers", self.queue_up.clone());
        r.register("lag_seconds", "From a change event's eventTime to its invalidation written", self.lag.clone());
        r.register(
            "fallbacks",
            "Times the change-event queue went away (nodes poll at their normal interval meanwhile)",
            self.fallbacks.clone(),
        );
        r.register(
            "secretsyncs_triggered",
            "SecretSync checks forced by change events",
            self.secretsyncs_triggered.clone(),
        );
    }
}

/// Which SecretSyncs hold which objects (recorded by the controller after each fetch), and the
/// forced checks change events ask of them.
#[derive(Clone, Default)]
pub struct Holders {
    inner: Arc<Mutex<HoldersInner>>,
}

#[derive(Default)]
struct HoldersInner {
    by_sync: HashMap<(String, String), BTreeSet<(String, String)>>,
    invalidations: HashMap<(String, String), u64>,
}

impl Holders {
    /// A SecretSync's last fetch served these (vault, object name) pairs.
    pub fn record(&self, sync: (String, String), sources: BTreeSet<(String, String)>) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).by_sync.insert(sync, sources);
    }

    /// A SecretSync is gone.
    pub fn forget(&self, sync: &(String, String)) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.by_sync.remove(sync);
        g.invalidations.remove(sync);
    }

    /// Marks the SecretSyncs holding `object` invalidated; returns them.
    pub fn invalidate(&self, object: &ObjectKey) -> Vec<(String, String)> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (object.vault.clone(), object.name.clone());
        let hit: Vec<_> = g.by_sync.iter().filter(|(_, s)| s.contains(&key)).map(|(k, _)| k.clone()).collect();
        for k in &hit {
            *g.invalidations.entry(k.clone()).or_default() += 1;
        }
        hit
    }

    /// How many times a SecretSync has been invalidated (a change of it forces a check).
    pub fn invalidations(&self, sync: &(String, String)) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).invalidations.get(sync).copied().unwrap_or(0)
    }
}

fn configmap_ref(ns: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        namespace: Some(ns.into()),
        name: Some(CONFIGMAP.into()),
        ..Default::default()
    }
}

/// Runs the consumer until `stop`. `triggered` receives the SecretSyncs to check now.
pub async fn run(
    client: kube::Client,
    config: Config,
    source: Arc<dyn EventSource>,
    holders: Holders,
    metrics: EventMetrics,
    triggered: tokio::sync::mpsc::UnboundedSender<(String, String)>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &config.namespace);
    let recorder = Recorder::new(client, COMPONENT);
    let involved = configmap_ref(&config.namespace);
    let mut board = loop {
        match api.get_opt(CONFIGMAP).await {
            Ok(found) => break Board::resume(&found.and_then(|c| c.data).unwrap_or_default()),
            Err(e) => {
                tracing::warn!(error = %kube_bridge::describe(&e), "reading the invalidations ConfigMap; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = &mut stop => return,
                }
            }
        }
    };
    let mut up: Option<bool> = None;
    let mut last_write = tokio::time::Instant::now() - HEARTBEAT_EVERY;
    let mut failures = 0u32;
    loop {
        let wait = match source.receive().await {
            Err(reason) => {
                metrics.queue_errors.inc();
                metrics.queue_up.set(0);
                failures = failures.saturating_add(1);
                if up != Some(false) {
                    metrics.fallbacks.inc();
                    tracing::warn!(%reason, "change-event queue unavailable; nodes fall back to polling");
                    let message = format!(
                        "cannot read the change-event queue: {reason}; nodes poll at their --rotation-poll-interval until it is back"
                    );
                    recorder
                        .object_event(&involved, COMPONENT, EventType::Warning, "ChangeEventsUnavailable", &message)
                        .await;
                    up = Some(false);
                }
                Duration::from_secs(1u64 << failures.min(5)).min(Duration::from_secs(30))
            }
            Ok(batch) => {
                failures = 0;
                metrics.queue_up.set(1);
                if up == Some(false) {
                    tracing::info!("change-event queue is back");
                    let message = "the change-event queue answers again; nodes return to --events-poll-interval";
                    recorder
                        .object_event(&involved, COMPONENT, EventType::Normal, "ChangeEventsRestored", message)
                        .await;
                }
                up = Some(true);
                let full = batch.len() >= 32;
                let heartbeat = last_write.elapsed() >= HEARTBEAT_EVERY;
                let handled =
                    handle_batch(&api, &config, &*source, &mut board, batch, heartbeat, &metrics, &recorder, &involved)
                        .await;
                match handled {
                    Ok((wrote, changed)) => {
                        if wrote {
                            last_write = tokio::time::Instant::now();
                        }
                        for object in changed {
                            for sync in holders.invalidate(&object) {
                                metrics.secretsyncs_triggered.inc();
                                let _ = triggered.send(sync);
                            }
                        }
                        if full { Duration::ZERO } else { config.idle_wait }
                    }
                    Err(reason) => {
                        tracing::warn!(%reason, "writing the invalidations ConfigMap; the events come back");
                        Duration::from_secs(5)
                    }
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => return,
        }
    }
}

/// Writes one batch's invalidations (and the heartbeat), then deletes what was handled. Returns
/// whether the ConfigMap was written and the objects invalidated.
#[allow(clippy::too_many_arguments)]
async fn handle_batch(
    api: &Api<ConfigMap>,
    config: &Config,
    source: &dyn EventSource,
    board: &mut Board,
    batch: Vec<Received>,
    heartbeat: bool,
    metrics: &EventMetrics,
    recorder: &Recorder,
    involved: &ObjectReference,
) -> Result<(bool, Vec<ObjectKey>), String> {
    let mut changes = Vec::new();
    let mut done = Vec::new();
    for m in batch {
        let outcome = match &m.change {
            Ok(a) => {
                changes.push(a.clone());
                done.push(m.handle.clone());
                "invalidated"
            }
            Err(Refused::Ignored(what)) => {
                tracing::debug!(%what, "ignoring an event that changes no object");
                done.push(m.handle.clone());
                "ignored"
            }
            Err(Refused::Invalid(reason)) if m.dequeue_count >= config.max_dequeue => {
                let message = format!(
                    "deleted queue message {} after {} attempts: {reason}",
                    m.handle.0.chars().take(64).collect::<String>(),
                    m.dequeue_count
                );
                tracing::warn!(%message, "poison message");
                recorder.object_event(involved, COMPONENT, EventType::Warning, "PoisonChangeEvent", &message).await;
                done.push(m.handle.clone());
                "poison"
            }
            Err(Refused::Invalid(_)) => "retried",
        };
        metrics.received.get_or_create(&OutcomeLabels { outcome: outcome.into() }).inc();
    }
    let now = SystemTime::now();
    let objects: Vec<ObjectKey> = changes.iter().map(|a| a.object.clone()).collect();
    let patch =
        board.apply(changes.iter().map(|a| (a.object.clone(), a.version.clone(), a.event_time)), now, heartbeat);
    if let Some(patch) = &patch {
        write(api, patch).await?;
        for a in &changes {
            if let Some(t) = a.event_time {
                metrics.lag.observe(now.duration_since(t).unwrap_or_default().as_secs_f64());
            }
            tracing::info!(vault = %a.object.vault, kind = %a.object.kind, object = %a.object.name, version = %a.version, "invalidated");
        }
    }
    for handle in &done {
        if let Err(e) = source.delete(handle).await {
            // It comes back after its visibility timeout: a duplicate, which changes nothing.
            tracing::warn!(error = %e, "deleting a handled queue message");
        }
    }
    Ok((patch.is_some(), objects))
}

/// Merge-patches the ConfigMap, creating it first if it is missing.
async fn write(api: &Api<ConfigMap>, patch: &serde_json::Value) -> Result<(), String> {
    match api.patch(CONFIGMAP, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let data: BTreeMap<String, String> = patch["data"]
                .as_object()
                .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
                .unwrap_or_default();
            let cm = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(CONFIGMAP.into()),
                    labels: Some([("app.kubernetes.io/managed-by".to_string(), "keyvault-csi".to_string())].into()),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await.map(|_| ()).map_err(|e| kube_bridge::describe(&e))
        }
        Err(e) => Err(kube_bridge::describe(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secretsyncs_holding_an_object_are_triggered() {
        let h = Holders::default();
        let a = ("ns".to_string(), "a".to_string());
        let b = ("ns".to_string(), "b".to_string());
        h.record(a.clone(), [("kv1".to_string(), "db".to_string())].into());
        h.record(b.clone(), [("kv2".to_string(), "db".to_string())].into());
        let db = ObjectKey { vault: "kv1".into(), kind: "secret".into(), name: "db".into() };
        assert_eq!(h.invalidate(&db), vec![a.clone()]);
        assert_eq!((h.invalidations(&a), h.invalidations(&b)), (1, 0));
        h.forget(&a);
        assert!(h.invalidate(&db).is_empty());
    }
}
