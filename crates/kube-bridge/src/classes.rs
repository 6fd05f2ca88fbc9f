//! SecretProviderClasses from the Kubernetes API: a cluster-wide watch cache (classes are few and
//! small; upstream watches them unfiltered too), falling back to a direct GET on a miss (a class
//! created a moment ago). The caller gets its own copy: the cache is never mutated by a mount.

use async_trait::async_trait;
use kube::Api;
use kube::runtime::watcher;

use super::cache::Cache;
use super::crd::v1::SecretProviderClass;
use secrets_store::class::{ClassError, ClassSource, SecretProviderClassSpec};

/// How long a cache miss waits for the API server.
const MISS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads classes through the API.
#[derive(Clone)]
pub struct KubeClassSource {
    client: kube::Client,
    cache: Cache<SecretProviderClass>,
}

impl KubeClassSource {
    /// Watches every class in the cluster and serves lookups from that cache.
    pub fn watching(client: kube::Client) -> Self {
        let cache = Cache::start(
            "secretproviderclasses",
            Api::all(client.clone()),
            watcher::Config::default(),
            |c: &mut SecretProviderClass| {
                c.metadata.managed_fields = None;
                secrets_store::annotations::retain_ours(&mut c.metadata.annotations);
            },
        );
        Self { client, cache }
    }

    /// The watch cache.
    pub fn cache(&self) -> &Cache<SecretProviderClass> {
        &self.cache
    }
}

#[async_trait]
impl ClassSource for KubeClassSource {
    async fn get(&self, namespace: &str, name: &str) -> Result<SecretProviderClassSpec, ClassError> {
        if let Some(c) = self.cache.get(namespace, name) {
            return Ok(c.spec.spec.clone());
        }
        let api: Api<SecretProviderClass> = Api::namespaced(self.client.clone(), namespace);
        // A class in the cache needs no API server; one never seen does, and must not hold kubelet's
        // call for the client's 295 s read timeout when the API server is hung.
        let got = match tokio::time::timeout(MISS_TIMEOUT, api.get(name)).await {
            Ok(got) => got,
            Err(_) => {
                return Err(ClassError::Unavailable {
                    namespace: namespace.into(),
                    name: name.into(),
                    message: format!(
                        "not in this node's class cache, and the API server did not answer within {MISS_TIMEOUT:?}"
                    ),
                });
            }
        };
        match got {
            Ok(obj) => Ok(obj.spec.spec),
            Err(e) if super::api_code(&e) == Some(404) => {
                Err(ClassError::NotFound { namespace: namespace.into(), name: name.into() })
            }
            Err(kube::Error::SerdeError(e)) => Err(ClassError::Unavailable {
                namespace: namespace.into(),
                name: name.into(),
                message: format!("malformed spec: {e}"),
            }),
            Err(e) => Err(ClassError::Unavailable {
                namespace: namespace.into(),
                name: name.into(),
                message: format!("not in this node's class cache, and the API server failed: {}", super::describe(&e)),
            }),
        }
    }
}
