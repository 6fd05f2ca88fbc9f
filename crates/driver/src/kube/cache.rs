//! Node-local caches fed by watches (kube's reflector), with the watcher's own backoff as the retry
//! loop when the API server is missing or unreachable. Readiness is exposed for `/readyz`.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

/// A watched set of objects.
#[derive(Clone)]
pub struct Cache<K: kube::Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    ready: Arc<AtomicBool>,
}

impl<K> Cache<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// Starts watching `api` with `config`; `trim` drops what the driver does not need before an
    /// object is stored (memory is per object on the node or in the cluster).
    pub fn start(
        what: &'static str,
        api: Api<K>,
        config: watcher::Config,
        trim: impl FnMut(&mut K) + Send + 'static,
    ) -> Self {
        let (store, writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));
        let stream = watcher(api, config).default_backoff().modify(trim).reflect(writer);
        tokio::spawn(async move {
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
        });
        let (s, r) = (store.clone(), ready.clone());
        tokio::spawn(async move {
            if s.wait_until_ready().await.is_ok() {
                r.store(true, Ordering::Relaxed);
                tracing::info!(cache = what, objects = s.state().len(), "cache synced");
            }
        });
        Self { store, ready }
    }

    /// The cached object, if the watch has seen it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// Whether the initial list has completed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
