//! SecretProviderClasses from the Kubernetes API (a direct GET per mount; the class is small and the
//! API server's watch cache serves it).

use async_trait::async_trait;
use kube::Api;
use kube::core::DynamicObject;

use crate::class::{ClassError, ClassSource, SecretProviderClassSpec};

/// Reads classes through the API.
#[derive(Clone)]
pub struct KubeClassSource {
    client: kube::Client,
}

impl KubeClassSource {
    /// Uses `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl ClassSource for KubeClassSource {
    async fn get(&self, namespace: &str, name: &str) -> Result<SecretProviderClassSpec, ClassError> {
        let ar = super::resource("SecretProviderClass", "secretproviderclasses");
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
        match api.get(name).await {
            Ok(obj) => serde_json::from_value(obj.data.get("spec").cloned().unwrap_or_default()).map_err(|e| {
                ClassError::Unavailable {
                    namespace: namespace.into(),
                    name: name.into(),
                    message: format!("malformed spec: {e}"),
                }
            }),
            Err(e) if super::api_code(&e) == Some(404) => {
                Err(ClassError::NotFound { namespace: namespace.into(), name: name.into() })
            }
            Err(e) => Err(ClassError::Unavailable {
                namespace: namespace.into(),
                name: name.into(),
                message: super::describe(&e),
            }),
        }
    }
}
