//! Node-local caches fed by watches (kube's reflector), with the watcher's own backoff as the retry
//! loop when the API server is missing or unreachable. Readiness is exposed for `/readyz`.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

/// A watched set of objects.
#[derive(Clone)]
pub struct Cache<K: kube::Resource<DynamicType = ()> + 'static> {
    store: Arc<RwLock<Store<K>>>,
    ready: Arc<AtomicBool>,
}

impl<K> Cache<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// Starts watching `api` with `config`; `trim` drops what the driver does not need before an
    /// object is stored (memory is per object on the node or in the cluster).
    ///
    /// The watch is supervised: if it panics (counted in `task_panics_total{task="<what>"}`),
    /// it restarts with a fresh store after a backoff, and readiness is false until the new store has
    /// listed (lookups fall back to the API meanwhile).
    pub fn start(
        what: &'static str,
        api: Api<K>,
        config: watcher::Config,
        trim: impl FnMut(&mut K) + Clone + Send + 'static,
    ) -> Self {
        let (store, writer) = reflector::store();
        let shared = Arc::new(RwLock::new(store));
        let ready = Arc::new(AtomicBool::new(false));
        let (stores, r) = (shared.clone(), ready.clone());
        let mut first = Some(writer);
        tokio::spawn(async move {
            crate::supervise::Tasks::global()
                .supervise(what, std::future::pending::<()>, move |_| {
                    let writer = first.take().unwrap_or_else(|| {
                        let (store, writer) = reflector::store();
                        *stores.write().unwrap_or_else(|e| e.into_inner()) = store;
                        writer
                    });
                    r.store(false, Ordering::Relaxed);
                    let store = stores.read().unwrap_or_else(|e| e.into_inner()).clone();
                    watch(what, api.clone(), config.clone(), trim.clone(), writer, store, r.clone())
                })
                .await
        });
        Self { store: shared, ready }
    }

    /// The cached object, if the watch has seen it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.store.read().unwrap_or_else(|e| e.into_inner()).get(&ObjectRef::new(name).within(namespace))
    }

    /// Whether the initial list has completed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// One run of a watch: feeds the store until the stream ends, and marks it ready once listed.
async fn watch<K>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
    trim: impl FnMut(&mut K) + Send + 'static,
    writer: reflector::store::Writer<K>,
    store: Store<K>,
    ready: Arc<AtomicBool>,
) where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let stream = watcher(api, config).default_backoff().modify(trim).reflect(writer);
    let synced = async {
        if synced(&store).await {
            ready.store(true, Ordering::Relaxed);
            tracing::info!(cache = what, objects = store.state().len(), "cache synced");
        }
        std::future::pending::<()>().await
    };
    let feed = async {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(cache = what, error = %e, "watch failed; retrying with backoff (lookups fall back to the API)");
                }
                Err(e) => tracing::debug!(cache = what, error = %e, "watch still failing"),
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!(cache = what, "watch recovered");
                }
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = feed => {}
        _ = synced => {}
    }
}

/// Resolves once `store` has its first list (`false`: its writer is gone). The one readiness wait of
/// every watch (node caches and the SecretSync controller): asked again every second, because a wait
/// begun before the first list ends has been seen to miss its wake-up (kube-runtime 5's
/// `DelayedInit`), and a fresh wait does not.
pub async fn synced<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(r) = tokio::time::timeout(std::time::Duration::from_secs(1), store.wait_until_ready()).await {
            return r.is_ok();
        }
    }
}
