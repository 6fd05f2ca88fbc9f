//! The controller as its process runs it: behind the leader Lease when elected, with the hash key, the
//! token minter and the change-event consumer under the same Lease, until a signal or a lost Lease.
//! The binary only parses flags into a [`Service`] and serves `/metrics` beside it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use secrets_store::provider::Providers;

use crate::controller::{self, Config};
use crate::events::{self, EventMetrics, EventSource, Holders};
use crate::metrics::SyncMetrics;
use crate::{hash_key, leader, tokens};

/// The in-cluster service account's namespace file.
const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// How long the change-event consumer gets to finish its message after a stop.
const CONSUMER_GRACE: Duration = Duration::from_secs(10);

/// The change-event consumer's part.
pub struct Events {
    /// The queue the vaults' change events arrive on.
    pub source: Arc<dyn EventSource>,
    /// Times an unusable message is taken before it is deleted as poison.
    pub max_dequeue: u64,
    /// What it exports.
    pub metrics: EventMetrics,
}

/// Everything one controller process runs.
pub struct Service {
    /// The API server.
    pub client: kube::Client,
    /// The namespace of the Lease, the hash key Secret and the invalidations ConfigMap.
    pub namespace: String,
    /// The Lease's name; the hash key Secret is `<lease>-hash-key`.
    pub lease: String,
    /// Reconcile only while holding the Lease.
    pub leader_elect: bool,
    /// The controller's settings.
    pub config: Config,
    /// Who fetches the objects (the Azure provider in process, others over their sockets).
    pub providers: Providers,
    /// What the controller exports.
    pub metrics: SyncMetrics,
    /// Set once the SecretSync watch has synced (readiness).
    pub ready: Arc<AtomicBool>,
    /// Change events (off: `None`).
    pub events: Option<Events>,
}

/// Why [`Service::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A signal (or the controller's own end): the Lease was released for the next leader.
    Stopped,
    /// Another holder took the Lease: the process should exit so that only the new leader reconciles.
    LeadershipLost,
}

/// `flag` when set, else this pod's namespace (its service account's), else `default`.
pub fn namespace(flag: Option<&str>) -> String {
    match flag {
        Some(ns) if !ns.is_empty() => ns.to_string(),
        _ => std::fs::read_to_string(NAMESPACE_FILE).map(|s| s.trim().to_string()).unwrap_or_else(|_| "default".into()),
    }
}

/// The Lease holder's name: `POD_NAME` (the chart sets it), else one unique to this process.
pub fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("{}-{:08x}", std::process::id(), rand::random::<u32>()))
}

impl Service {
    /// Waits for the Lease (a standby stops on `signal` too), then reconciles until `signal`, the
    /// controller's end, or the loss of the Lease. Errors: the hash key could not be loaded or made.
    pub async fn run(self, signal: impl Future<Output = ()> + Send) -> Result<Ended, String> {
        tokio::pin!(signal);
        let identity = identity();
        let elector = self.leader_elect.then(|| {
            leader::Elector::new(self.client.clone(), &self.namespace, &self.lease, &identity, Default::default())
        });
        tracing::info!(namespace = %self.namespace, leader_elect = self.leader_elect, %identity,
            interval = ?self.config.refresh_interval, "keyvault-csi SecretSync controller starting");
        if let Some(elector) = &elector
            && !elector.acquire(&mut signal).await
        {
            return Ok(Ended::Stopped);
        }
        let key_name = format!("{}-hash-key", self.lease);
        let hash_key = hash_key::load_or_create(&self.client, &self.namespace, &key_name).await?;
        let tokens = tokens::Tokens::new(tokens::ApiMinter(self.client.clone()));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        // The change-event consumer runs beside the controller, under the same Lease.
        let (consumer, triggers) = match self.events {
            Some(e) => {
                let holders = Holders::default();
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let config = events::Config {
                    namespace: self.namespace.clone(),
                    max_dequeue: e.max_dequeue,
                    idle_wait: Duration::from_secs(1),
                };
                let run = events::run(self.client.clone(), config, e.source, holders.clone(), e.metrics, tx, stopped());
                (Some(tokio::spawn(run)), Some((holders, rx)))
            }
            None => (None, None),
        };
        let reconcile = controller::run(
            self.client,
            self.config,
            hash_key,
            self.providers,
            tokens,
            self.metrics,
            self.ready,
            triggers,
            stopped(),
        );
        let lost = async {
            match &elector {
                Some(elector) => elector.hold().await,
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            _ = reconcile => Ended::Stopped,
            _ = lost => Ended::LeadershipLost,
            _ = &mut signal => Ended::Stopped,
        };
        let _ = stop_tx.send(true);
        if let Some(consumer) = consumer
            && tokio::time::timeout(CONSUMER_GRACE, consumer).await.is_err()
        {
            tracing::warn!("the change-event consumer did not stop within {CONSUMER_GRACE:?}");
        }
        if let (Some(elector), Ended::Stopped) = (&elector, ended) {
            elector.release().await;
        }
        Ok(ended)
    }
}
