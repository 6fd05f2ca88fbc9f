//! `keyvault-csi provider`: the Azure provider served on the upstream v1alpha1 protocol
//! (`/v1alpha1.CSIDriverProvider/{Version,Mount}` plus `grpc.health.v1.Health`), so the upstream
//! Secrets Store CSI driver can use it in place of the upstream Azure provider.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use csi_proto::provider::{
    self as pb,
    csi_driver_provider_server::{CsiDriverProvider, CsiDriverProviderServer},
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::azure::{AzureArgs, grpc_code};
use crate::cli::{Endpoint, parse_endpoint, parse_go_duration, parse_listen_addr};
use crate::metrics::ProviderMetrics;

/// Flags of `keyvault-csi provider` (the upstream Azure provider's names).
#[derive(Debug, Args)]
pub struct ProviderArgs {
    /// Where to serve: `unix://<path>` (e.g. `unix:///provider/azure.sock`).
    #[arg(long, default_value = "unix:///tmp/azure.sock", value_parser = parse_endpoint)]
    pub endpoint: Endpoint,
    /// `/metrics` (and `/healthz`, `/readyz`) address.
    #[arg(long, default_value = ":8898", value_parser = parse_listen_addr)]
    pub metrics_addr: SocketAddr,
    /// Health port of the upstream provider (`/healthz` is also served here).
    #[arg(long, default_value_t = 8989)]
    pub healthz_port: u16,
    /// Accepted for compatibility (the health endpoint answers `/healthz`).
    #[arg(long, default_value = "/healthz")]
    pub healthz_path: String,
    /// Accepted for compatibility.
    #[arg(long, default_value = "5s", value_parser = parse_go_duration)]
    pub healthz_timeout: Duration,
    /// Azure provider settings.
    #[command(flatten)]
    pub azure: AzureArgs,
}

struct Service {
    provider: Arc<keyvault::Provider>,
    metrics: ProviderMetrics,
}

#[tonic::async_trait]
impl CsiDriverProvider for Service {
    async fn version(&self, _: Request<pb::VersionRequest>) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: "v1alpha1".into(),
            runtime_name: "keyvault-csi".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn mount(&self, req: Request<pb::MountRequest>) -> Result<Response<pb::MountResponse>, Status> {
        let started = Instant::now();
        let deadline = driver::grpc::deadline_of(&req);
        let r = req.into_inner();
        let result = async {
            let attributes: BTreeMap<String, String> = serde_json::from_str(&r.attributes)
                .map_err(|e| Status::invalid_argument(format!("failed to unmarshal attributes, error: {e}")))?;
            // The driver sends JSON `null` when the pod has no node-publish secrets.
            let secrets: Option<BTreeMap<String, String>> = serde_json::from_str(&r.secrets).map_err(|_| {
                Status::invalid_argument("failed to unmarshal secrets, error: not a JSON object of strings")
            })?;
            let permission: u32 =
                r.permission.trim().parse().map_err(|e| {
                    Status::invalid_argument(format!("failed to unmarshal file permission, error: {e}"))
                })?;
            let current_is_empty = r.current_object_version.is_empty();
            let request = keyvault::MountRequest {
                attributes,
                secrets: secrets.unwrap_or_default(),
                default_mode: permission,
                current_versions: r.current_object_version.into_iter().map(|v| (v.id, v.version)).collect(),
                deadline,
                // The upstream driver sends current versions only from its rotation reconciler.
                priority: if current_is_empty { keyvault::Priority::Mount } else { keyvault::Priority::Background },
                cycle: None,
            };
            let resp = self
                .provider
                .mount(request)
                .await
                .map_err(|e| Status::new(grpc_code(e.kind), crate::azure::mount_failure(&e)))?;
            Ok(pb::MountResponse {
                object_version: resp
                    .object_versions
                    .into_iter()
                    .map(|(id, version)| pb::ObjectVersion { id, version })
                    .collect(),
                error: None,
                files: resp
                    .files
                    .into_iter()
                    .map(|f| pb::File { path: f.path, mode: f.mode as i32, contents: f.contents })
                    .collect(),
            })
        }
        .await;
        let code = result.as_ref().err().map(Status::code).unwrap_or(tonic::Code::Ok);
        self.metrics.grpc("/v1alpha1.CSIDriverProvider/Mount", code, started.elapsed());
        match &result {
            Ok(resp) => {
                tracing::info!(files = resp.files.len(), duration_s = started.elapsed().as_secs_f64(), "mount served")
            }
            Err(s) => tracing::error!(code = ?s.code(), error = %s.message(), "mount failed"),
        }
        result.map(Response::new)
    }
}

/// Runs the provider server until SIGTERM/SIGINT.
pub async fn run(args: ProviderArgs) -> anyhow::Result<()> {
    let Endpoint::Unix(path) = &args.endpoint else {
        anyhow::bail!("--endpoint: the provider protocol is served on a unix:// socket");
    };
    let metrics = ProviderMetrics::default();
    let provider = Arc::new(
        keyvault::Provider::new(args.azure.config(None)?)
            .map_err(|e| anyhow::anyhow!("Azure provider: {e}"))?
            .with_observer(Arc::new(metrics.clone())),
    );
    let mut registry = prometheus_client::registry::Registry::default();
    crate::metrics::register_provider(&mut registry, &metrics, provider.stats().clone());
    let health = crate::http::Health::with_registry(registry);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (metrics_addr, metrics_server) = crate::http::bind(args.metrics_addr, health.clone(), stopped()).await?;
    let healthz = SocketAddr::new(args.metrics_addr.ip(), args.healthz_port);
    let (healthz_addr, healthz_server) =
        crate::http::bind_as(healthz, "--healthz-port", health.clone(), stopped()).await?;

    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("--endpoint: cannot create {}", dir.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("--endpoint: cannot listen on {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<CsiDriverProviderServer<Service>>().await;
    let service = CsiDriverProviderServer::new(Service { provider, metrics });
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped());
    health.set_ready(true);
    tracing::info!(endpoint = %args.endpoint, metrics = %metrics_addr, healthz = %healthz_addr, "keyvault-csi Azure provider serving (v1alpha1)");
    let grpc = tokio::spawn(server);
    let m = tokio::spawn(metrics_server);
    let h = tokio::spawn(healthz_server);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop_tx.send(true);
    // Clients (the driver) keep their connections open; in-flight mounts get a grace period.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = grpc.await;
        let _ = m.await;
        let _ = h.await;
    })
    .await;
    let _ = std::fs::remove_file(path);
    Ok(())
}
