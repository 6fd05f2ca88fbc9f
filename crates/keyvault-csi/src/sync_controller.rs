//! `keyvault-csi sync-controller`: the SecretSync controller (a Deployment), with the Azure provider
//! in-process and other providers over their v1alpha1 sockets. Upstream's flag names where it has
//! them (`--token-request-audience`, `--provider-volume`, `--rotation-poll-interval`,
//! `--leader-elect`, ...).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use secrets_store::duration::parse_go_duration;
use secrets_store::external::ExternalProviders;
use secrets_store::provider::Providers;

use crate::app::App;
use crate::cli::{parse_go_bool, parse_listen_addr};
use keyvault_bridge::AzureArgs;

/// Flags of `keyvault-csi sync-controller`.
#[derive(Debug, Args)]
pub struct SyncControllerArgs {
    /// Kubeconfig file (default: in-cluster, else `KUBECONFIG`).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Audiences of the service-account tokens handed to the provider (comma-separated; empty: none).
    #[arg(long, default_value = "api://AzureADTokenExchange", value_delimiter = ',')]
    pub token_request_audience: Vec<String>,
    /// Directory of external provider sockets (`<dir>/<provider>.sock`).
    #[arg(long, default_value = "/provider")]
    pub provider_volume: PathBuf,
    /// How often every SecretSync is checked against its vault (Azure's extension: 1h).
    #[arg(long, default_value = "1h", value_parser = parse_go_duration, value_name = "DURATION")]
    pub rotation_poll_interval: Duration,
    /// The shortest interval a SecretSync may ask for with its `keyvault-csi.io/rotation-poll-interval`
    /// annotation (shorter ones are raised to this).
    #[arg(long, default_value = "30s", value_parser = parse_go_duration, value_name = "DURATION")]
    pub min_rotation_poll_interval: Duration,
    /// How far into each round a SecretSync's check may be spread (at most 4m, and half the interval).
    #[arg(long, default_value = "60s", value_parser = parse_go_duration, value_name = "DURATION")]
    pub jitter: Duration,
    /// Service accounts must list the SecretSyncs that may use them in the
    /// `keyvault-csi.io/allow-secret-syncs` annotation (false: any SecretSync may use any account of its
    /// namespace, as upstream).
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true",
          value_parser = parse_go_bool, value_name = "BOOL")]
    pub require_service_account_opt_in: bool,
    /// When some of a class's objects cannot be fetched, update the keys that were (Azure's
    /// `enablePartialSecretSync`); a key whose object failed keeps its value and the SecretSync reports
    /// `PartialSync`. Per SecretSync: the `keyvault-csi.io/partial-sync` annotation.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = parse_go_bool, value_name = "BOOL")]
    pub partial_sync: bool,
    /// The audit trail.
    #[command(flatten)]
    pub audit: crate::cli::AuditArgs,
    /// SecretSyncs checked at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Largest provider response accepted, in bytes.
    #[arg(long, default_value_t = 4_194_304, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_call_recv_msg_size: u32,
    /// `/metrics`, `/healthz` and `/readyz` address.
    #[arg(long, default_value = ":8085", value_parser = parse_listen_addr)]
    pub metrics_bind_address: SocketAddr,
    /// Who may read `/metrics`.
    #[command(flatten)]
    pub metrics_auth: crate::http::MetricsAuthArgs,
    /// Run only while holding the leader Lease (for more than one replica).
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true",
          value_parser = parse_go_bool, value_name = "BOOL")]
    pub leader_elect: bool,
    /// Namespace of the Lease and of the hash key Secret (default: this pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the Lease; the hash key Secret is `<name>-hash-key`.
    #[arg(long, default_value = "keyvault-csi-sync-controller")]
    pub leader_election_id: String,
    /// Azure provider settings.
    #[command(flatten)]
    pub azure: AzureArgs,
    /// Key Vault change events (ours).
    #[command(flatten)]
    pub events: EventArgs,
}

/// Runs the controller until SIGTERM/SIGINT (or until leadership is lost: exits non-zero, so the
/// pod restarts as a standby, as controller-runtime does).
pub async fn run(args: SyncControllerArgs) -> anyhow::Result<()> {
    let client = kube_bridge::client(args.kubeconfig.as_deref()).await.map_err(anyhow::Error::msg)?;
    let mut app = App::new();
    let (azure, _) = app.azure(&args.azure, Some(args.rotation_poll_interval), true)?;
    let queue = args
        .events
        .settings()
        .map(|q| keyvault_bridge::events::QueueSource::new(q, azure.provider.clone()))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let events = queue.map(|queue| {
        tracing::info!(queue = ?args.events.events_queue_url, identity = %args.events.events_identity, "change events on");
        let metrics = sync::events::EventMetrics::default();
        metrics.register(&mut app.registry);
        sync::service::Events { source: Arc::new(queue), max_dequeue: args.events.events_max_dequeue, metrics }
    });
    let external = ExternalProviders::new(vec![], args.provider_volume.clone(), args.max_call_recv_msg_size as usize);
    let metrics = sync::metrics::SyncMetrics::default();
    metrics.register(&mut app.registry);
    let audit = args.audit.start()?;
    audit.register(&mut app.registry);
    let ready = Arc::new(AtomicBool::new(false));
    let watching = ready.clone();
    let health = metrics_http::Health::with_registry(std::mem::take(&mut app.registry))
        .with_check("secretsyncs", Box::new(move || watching.load(std::sync::atomic::Ordering::SeqCst)));
    let server = args.metrics_auth.server(health.clone(), Some(&client), &["localhost"])?;
    let (http_addr, http_server) =
        crate::http::bind(server, args.metrics_bind_address, "--metrics-bind-address", app.stopped()).await?;
    app.spawn("metrics server", async move { http_server.await.context("metrics server") });
    health.set_ready(true);
    tracing::info!(metrics = %http_addr, "serving metrics");

    let service = sync::service::Service {
        client,
        namespace: sync::service::namespace(args.leader_election_namespace.as_deref()),
        lease: args.leader_election_id.clone(),
        leader_elect: args.leader_elect,
        config: sync::controller::Config {
            audiences: args
                .token_request_audience
                .iter()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect(),
            refresh_interval: args.rotation_poll_interval.max(Duration::from_secs(1)),
            min_interval: args.min_rotation_poll_interval,
            jitter: args.jitter,
            require_opt_in: args.require_service_account_opt_in,
            concurrency: args.concurrency,
            partial_sync: args.partial_sync,
            audit,
        },
        providers: Providers::new(external).with_builtin("azure", azure),
        metrics,
        ready,
        events,
    };
    let ended = service.run(crate::app::shutdown_signal()).await;
    let drained = app.stop_and_drain(Duration::from_secs(5)).await;
    if ended.map_err(anyhow::Error::msg)? == sync::service::Ended::LeadershipLost {
        anyhow::bail!("leadership lost: exiting so that only the new leader reconciles");
    }
    drained
}

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

impl EventArgs {
    /// The queue's settings; `None` when events are off.
    fn settings(&self) -> Option<keyvault_bridge::events::QueueSettings> {
        Some(keyvault_bridge::events::QueueSettings {
            url: self.events_queue_url.clone()?,
            identity: self.events_identity.clone(),
            tenant_id: self.events_tenant_id.clone(),
            client_id: self.events_client_id.clone(),
            token_file: self.events_token_file.clone(),
        })
    }
}
