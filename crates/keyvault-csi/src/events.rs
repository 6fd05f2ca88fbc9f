//! Wiring of the change-event consumer: the controller's flags, and the Azure Storage queue as the
//! consumer's [`sync::events::EventSource`] (the pull and the parsing live in `keyvault::events`,
//! the consumer's logic in `sync::events`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use keyvault::events::{EventError, QueueClient};
use keyvault::params::Identity;
use sync::events::{Announced, Received, Refused};

/// Where the projected service-account token for workload identity is (Azure Workload Identity's
/// webhook sets `AZURE_FEDERATED_TOKEN_FILE` to it; the chart mounts it there).
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/azure/tokens/azure-identity-token";

/// The change-event consumer's flags (off unless `--events-queue-url` is set).
#[derive(Debug, Clone, Args)]
pub struct EventArgs {
    /// The Storage queue an Event Grid subscription on the vaults' system topic delivers to:
    /// `https://<account>.queue.core.windows.net/<queue>`. Unset: no change events.
    #[arg(long, value_name = "URL")]
    pub events_queue_url: Option<String>,
    /// How the consumer authenticates to the queue: `workload` (the controller's service account,
    /// federated) or `managed` (the node's managed identity through IMDS).
    #[arg(long, default_value = "workload", value_parser = ["workload", "managed"])]
    pub events_identity: String,
    /// Tenant of the identity.
    #[arg(long, env = "AZURE_TENANT_ID", default_value = "")]
    pub events_tenant_id: String,
    /// Client id of the identity (managed: empty for the system-assigned one).
    #[arg(long, env = "AZURE_CLIENT_ID", default_value = "")]
    pub events_client_id: String,
    /// The service-account token file for workload identity (audience `api://AzureADTokenExchange`).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE", default_value = DEFAULT_TOKEN_FILE)]
    pub events_token_file: PathBuf,
    /// Times an unusable message is taken before it is deleted as poison (with a Warning event).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub events_max_dequeue: u64,
}

/// The queue, read with the controller's identity through the Azure provider's transport and token
/// cache.
pub struct QueueSource {
    provider: Arc<keyvault::Provider>,
    url: String,
    args: EventArgs,
    cloud: keyvault::cloud::Cloud,
}

impl QueueSource {
    /// Checks the flags; `Ok(None)` when events are off.
    pub fn from_args(args: &EventArgs, provider: Arc<keyvault::Provider>) -> anyhow::Result<Option<Self>> {
        let Some(url) = &args.events_queue_url else { return Ok(None) };
        let url = keyvault::events::check_queue_url(url).map_err(|e| anyhow::anyhow!("--events-queue-url: {e}"))?;
        if args.events_tenant_id.is_empty() && args.events_identity == "workload" {
            anyhow::bail!("--events-tenant-id (or AZURE_TENANT_ID) is required with --events-identity=workload");
        }
        if args.events_client_id.is_empty() && args.events_identity == "workload" {
            anyhow::bail!("--events-client-id (or AZURE_CLIENT_ID) is required with --events-identity=workload");
        }
        let cloud = provider.default_cloud().map_err(|e| anyhow::anyhow!("cloud for the event queue: {e}"))?;
        Ok(Some(Self { provider, url, args: args.clone(), cloud }))
    }

    fn client(&self) -> Result<QueueClient, String> {
        let identity = match self.args.events_identity.as_str() {
            "managed" => Identity::ManagedIdentity {
                client_id: Some(self.args.events_client_id.clone()).filter(|c| !c.is_empty()),
            },
            _ => {
                // Re-read every time: kubelet rotates the projected token.
                let token = std::fs::read_to_string(&self.args.events_token_file)
                    .map_err(|e| format!("reading {}: {e}", self.args.events_token_file.display()))?;
                keyvault::params::own_workload_identity(&self.args.events_client_id, &token)?
            }
        };
        Ok(QueueClient {
            url: self.url.clone(),
            tenant: self.args.events_tenant_id.clone(),
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
