//! `keyvault-csi provider`: the Azure provider served on the upstream v1alpha1 protocol
//! (`/v1alpha1.CSIDriverProvider/{Version,Mount}` plus `grpc.health.v1.Health`), so the upstream
//! Secrets Store CSI driver can use it in place of the upstream Azure provider.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use csi_proto::provider::csi_driver_provider_server::CsiDriverProviderServer;
use driver::provider_server::ProviderService;

use crate::app::App;
use crate::cli::{Endpoint, parse_endpoint, parse_go_duration, parse_listen_addr};
use keyvault_bridge::AzureArgs;

/// Flags of `keyvault-csi provider` (the upstream Azure provider's names).
#[derive(Debug, Args)]
pub struct ProviderArgs {
    /// Where to serve: `unix://<path>` (e.g. `unix:///provider/azure.sock`).
    #[arg(long, default_value = "unix:///tmp/azure.sock", value_parser = parse_endpoint)]
    pub endpoint: Endpoint,
    /// `/metrics` (and `/healthz`, `/readyz`) address.
    #[arg(long, default_value = ":8898", value_parser = parse_listen_addr)]
    pub metrics_addr: SocketAddr,
    /// Serve `/metrics` on this Unix socket instead of `--metrics-addr` (ours): the node driver
    /// relays it as `/metrics/provider` behind its `--metrics-secure` checks, which this process,
    /// holding no Kubernetes credential, cannot make. `/readyz` is then on `--healthz-port`.
    #[arg(long, value_name = "PATH")]
    pub metrics_socket: Option<PathBuf>,
    /// Health port of the upstream provider (`/healthz` and `/readyz`; no metrics).
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

/// Runs the provider server until SIGTERM/SIGINT.
pub async fn run(args: ProviderArgs) -> anyhow::Result<()> {
    let Endpoint::Unix(path) = &args.endpoint else {
        anyhow::bail!("--endpoint: the provider protocol is served on a unix:// socket");
    };
    let mut app = App::new();
    let (azure, metrics) = app.azure(&args.azure, None, false)?;
    let health = metrics_http::Health::with_registry(std::mem::take(&mut app.registry));
    let server = metrics_http::Server::new(health.clone());
    let (metrics_at, metrics_server) = match &args.metrics_socket {
        Some(path) => {
            let (listener, socket) = driver::socket::bind_private(path, "--metrics-socket")?;
            app.on_exit(move || socket.remove_if_ours());
            (format!("unix://{}", path.display()), server.clone().serve_unix(listener, app.stopped()))
        }
        None => {
            let (addr, serving) =
                crate::http::bind(server.clone(), args.metrics_addr, "--metrics-addr", app.stopped()).await?;
            (addr.to_string(), serving)
        }
    };
    let healthz = SocketAddr::new(args.metrics_addr.ip(), args.healthz_port);
    let (healthz_addr, healthz_server) =
        crate::http::bind(server.probes_only(), healthz, "--healthz-port", app.stopped()).await?;

    let (listener, socket) = driver::socket::bind_private(path, "--endpoint")?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<CsiDriverProviderServer<ProviderService>>().await;
    let observe = move |code: tonic::Code, took: Duration| {
        metrics.grpc("/v1alpha1.CSIDriverProvider/Mount", &format!("{code:?}"), took)
    };
    let service =
        CsiDriverProviderServer::new(ProviderService::new(azure, "keyvault-csi").with_observer(Arc::new(observe)));
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(driver::socket::incoming(listener), app.stopped());
    health.set_ready(true);
    tracing::info!(endpoint = %args.endpoint, metrics = %metrics_at, healthz = %healthz_addr, "keyvault-csi Azure provider serving (v1alpha1)");
    app.spawn("provider server", async move { server.await.context("provider server") });
    app.spawn("metrics server", async move { metrics_server.await.context("metrics server") });
    app.spawn("health server", async move { healthz_server.await.context("health server") });
    app.on_exit(move || socket.remove_if_ours());
    // Clients (the driver) keep their connections open; in-flight mounts get a grace period.
    app.run_until_signal(Duration::from_secs(10)).await
}
