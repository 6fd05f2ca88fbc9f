//! The Azure Storage queue as the change-event consumer's [`sync::events::EventSource`] (the pull and the parsing live in `keyvault::events`,
//! the consumer's logic in `sync::events`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyvault::events::{EventError, QueueClient};
use keyvault::params::Identity;
use sync::events::{Announced, Received, Refused};

/// Where and as whom the consumer reads the queue (the controller's `--events-*` flags).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// `https://<account>.queue.core.windows.net/<queue>` (`--events-queue-url`).
    pub url: String,
    /// `workload` (the controller's service account, federated) or `managed` (IMDS).
    pub identity: String,
    /// Tenant of the identity.
    pub tenant_id: String,
    /// Client id of the identity (managed: empty for the system-assigned one).
    pub client_id: String,
    /// The service-account token file for workload identity, re-read at every pull.
    pub token_file: PathBuf,
}

/// The queue, read with the controller's identity through the Azure provider's transport and token
/// cache.
pub struct QueueSource {
    provider: Arc<keyvault::Provider>,
    url: String,
    settings: QueueSettings,
    cloud: keyvault::cloud::Cloud,
}

impl QueueSource {
    /// Checks the settings; errors name the flag to fix.
    pub fn new(settings: QueueSettings, provider: Arc<keyvault::Provider>) -> Result<Self, String> {
        let url = keyvault::events::check_queue_url(&settings.url).map_err(|e| format!("--events-queue-url: {e}"))?;
        let workload = settings.identity == "workload";
        if settings.tenant_id.is_empty() && workload {
            return Err("--events-tenant-id (or AZURE_TENANT_ID) is required with --events-identity=workload".into());
        }
        if settings.client_id.is_empty() && workload {
            return Err("--events-client-id (or AZURE_CLIENT_ID) is required with --events-identity=workload".into());
        }
        let cloud = provider.default_cloud().map_err(|e| format!("cloud for the event queue: {e}"))?;
        Ok(Self { provider, url, settings, cloud })
    }

    fn client(&self) -> Result<QueueClient, String> {
        let identity = match self.settings.identity.as_str() {
            "managed" => {
                Identity::ManagedIdentity { client_id: Some(self.settings.client_id.clone()).filter(|c| !c.is_empty()) }
            }
            _ => {
                // Re-read every time: kubelet rotates the projected token.
                let token = std::fs::read_to_string(&self.settings.token_file)
                    .map_err(|e| format!("reading {}: {e}", self.settings.token_file.display()))?;
                keyvault::params::own_workload_identity(&self.settings.client_id, &token)?
            }
        };
        Ok(QueueClient {
            url: self.url.clone(),
            tenant: self.settings.tenant_id.clone(),
            identity,
            cloud: self.cloud.clone(),
        })
    }
}

fn received(m: keyvault::events::Message) -> Received {
    let change = match keyvault::events::parse(&m.text) {
        Ok(c) => Ok(Announced {
            object: secrets_store::invalidation::ObjectKey {
                vault: c.vault,
                kind: c.kind.class_type().into(),
                name: c.name,
            },
            version: c.version,
            event_time: c.event_time,
        }),
        Err(EventError::Ignored(t)) => Err(Refused::Ignored(t)),
        Err(e) => Err(Refused::Invalid(e.to_string())),
    };
    Received { handle: (m.id, m.pop_receipt), dequeue_count: m.dequeue_count, change }
}

#[async_trait::async_trait]
impl sync::events::EventSource for QueueSource {
    async fn receive(&self) -> Result<Vec<Received>, String> {
        let q = self.client()?;
        let batch = self
            .provider
            .queue_receive(&q, keyvault::events::MAX_BATCH, Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        Ok(batch.into_iter().map(received).collect())
    }

    async fn delete(&self, handle: &(String, String)) -> Result<(), String> {
        let q = self.client()?;
        self.provider.queue_delete(&q, &handle.0, &handle.1).await.map_err(|e| e.to_string())
    }
}
