//! `keyvault-csi`: parses flags, builds the driver, serves until SIGTERM/SIGINT, drains.

mod app;
mod cli;
mod http;
mod logging;
mod provider_server;
mod standalone;
mod sync_controller;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use driver::mounter::TmpfsMounter;
use driver::{Config, Driver};
use secrets_store::class::{ClassSource, DirClassSource, NoClassSource};
use secrets_store::external::ExternalProviders;
use secrets_store::provider::Providers;

use app::App;
use cli::{Cli, NodeArgs};

/// How long in-flight RPCs get to finish after SIGTERM before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One clear line, exit code 2 (clap's own rendering adds usage and hints over several lines).
            let rendered = e.render().to_string();
            eprintln!("{}", rendered.lines().next().unwrap_or("invalid arguments"));
            return ExitCode::from(2);
        }
    };
    if cli.version {
        println!("{}", version_json());
        return ExitCode::SUCCESS;
    }
    if let Some(cli::Command::Crds) = cli.command {
        print!("{}", kube_bridge::crd::crds_yaml());
        // The SecretSync CRD as its own document stream (the chart ships it as a second file).
        print!("{}", sync::api::crd_yaml());
        return std::process::ExitCode::SUCCESS;
    }
    if let Some(cli::Command::Check(args)) = cli.command {
        return ExitCode::from(keyvault_bridge::check::run(&args.check, || args.azure.config(None)));
    }
    logging::init(cli.verbosity, cli.log_format_json);
    let runtime = match runtime().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        None => runtime.block_on(run_node(cli.node)),
        Some(cli::Command::Mount(args)) => runtime.block_on(standalone::run(args)),
        Some(cli::Command::Provider(args)) => runtime.block_on(provider_server::run(args)),
        Some(cli::Command::SyncController(args)) => runtime.block_on(sync_controller::run(*args)),
        Some(cli::Command::Check(_) | cli::Command::Crds) => unreachable!("handled before the runtime starts"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn version_json() -> String {
    serde_json::json!({
        "BuildVersion": env!("CARGO_PKG_VERSION"),
        "GitCommit": env!("KEYVAULT_CSI_GIT_COMMIT"),
        "BuildDate": env!("KEYVAULT_CSI_BUILD_DATE"),
    })
    .to_string()
}

async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    if args.enable_pprof {
        tracing::warn!("--enable-pprof is accepted for compatibility but has no effect");
    }
    if args.provider_health_check {
        // Upstream polls each provider's socket and only logs the result; a provider that is down
        // shows here as a failed mount naming the provider, and in `grpc_request` by code.
        tracing::warn!("--provider-health-check is accepted for compatibility but has no effect");
    }
    let config = Config {
        driver_name: args.drivername.clone(),
        node_id: args.nodeid.clone(),
        vendor_version: format!("v{}", env!("CARGO_PKG_VERSION")),
        rotation_interval: args.enable_secret_rotation.then_some(args.rotation_poll_interval),
        min_class_interval: args.min_rotation_poll_interval,
        cert_expiry_warning: (!args.cert_expiry_warning.is_zero()).then_some(args.cert_expiry_warning),
        events_poll_interval: args.events_poll_interval,
    };
    let mut cluster: Option<Arc<dyn driver::node::Cluster>> = None;
    let mut readiness: Vec<(&'static str, metrics_http::ReadyCheck)> = Vec::new();
    let mut api = None;
    let classes: Arc<dyn ClassSource> = match &args.class_dir {
        Some(dir) => Arc::new(DirClassSource::new(dir)),
        None => match kube_bridge::client(args.kubeconfig.as_deref()).await {
            Ok(client) => {
                api = Some(client.clone());
                // Watches retry with backoff while the API server is away; lookups fall back to GETs.
                let source = kube_bridge::KubeClassSource::watching(client.clone());
                let mut kube = driver::cluster::KubeCluster::new(client, &args.nodeid, &args.drivername)
                    .with_classes(source.cache().clone())
                    .with_restart_tokens(args.restart_token_requests);
                if args.events_poll_interval.is_some() {
                    kube = kube.with_invalidations(&args.events_namespace);
                }
                let (pods, spcs) = (kube.pods().clone(), source.cache().clone());
                readiness.push(("pods watch not synced", Box::new(move || pods.is_ready())));
                readiness.push(("secretproviderclasses watch not synced", Box::new(move || spcs.is_ready())));
                cluster = Some(Arc::new(kube));
                Arc::new(source)
            }
            Err(reason) => {
                tracing::error!(%reason, "no Kubernetes API: every mount will fail until this is fixed");
                Arc::new(NoClassSource(reason))
            }
        },
    };
    let max_recv = args.max_call_recv_msg_size as usize;
    let mut external =
        ExternalProviders::new(args.additional_provider_volume_paths.clone(), args.provider_volume.clone(), max_recv);
    if let Some(dir) = &args.internal_provider_dir {
        external = external.with_internal(dir.clone());
    }
    let mut app = App::new();
    let mut providers = Providers::new(external);
    if args.builtin_azure_provider {
        // In process (`provider.isolation: none`). Otherwise none of the Azure provider (its HTTP
        // clients, PFX decoder, cloud-file reader) exists in this privileged process at all.
        let (azure, _) = app.azure(&args.azure, config.rotation_interval, true)?;
        providers = providers.with_builtin("azure", azure);
    }
    let mut driver = Driver::new(config, Arc::new(TmpfsMounter), classes, providers);
    if let Some(cluster) = cluster {
        let writes = driver::api_writes::WriterSettings {
            mode: args.api_writes,
            limit: args.api_writes_limit as usize,
            ..Default::default()
        };
        driver = driver.with_cluster_writes(cluster, writes);
    }
    let audit = args.audit.start()?;
    audit.register(&mut app.registry);
    driver = driver.with_audit(audit);
    driver.register(&mut app.registry);
    readiness.extend(driver.readiness());
    let tasks = driver.tasks().clone();
    let driver = Arc::new(driver);
    driver.spawn_rediscovery();

    let mut health = metrics_http::Health::with_registry(std::mem::take(&mut app.registry));
    for (name, check) in readiness {
        health = health.with_check(name, check);
    }
    let mut metrics = args.metrics_auth.server(health.clone(), api.as_ref(), &[&args.nodeid, "localhost"])?;
    if let Some(socket) = &args.provider_metrics_socket {
        metrics = metrics.with_provider_metrics(socket.clone());
    }
    let (http_addr, http_server) = http::bind(metrics, args.metrics_addr, "--metrics-addr", app.stopped()).await?;
    let (csi_server, socket) =
        driver::grpc::bind(&args.endpoint, "--endpoint", driver.clone(), max_recv, app.stopped()).await?;
    health.set_ready(true);
    tracing::info!(
        endpoint = %args.endpoint, metrics = %http_addr, driver = %args.drivername, node = %args.nodeid,
        version = env!("CARGO_PKG_VERSION"), rotation = args.enable_secret_rotation,
        rotation_poll_interval = ?args.rotation_poll_interval, "keyvault-csi node driver serving"
    );
    app.spawn("CSI server", async move { csi_server.await.context("CSI server") });
    app.spawn("metrics server", async move { http_server.await.context("metrics server") });
    // Supervised: a panic is logged, counted in task_panics_total{task} and the task restarts.
    if args.rotation_poller {
        let (driver, tasks, stop) = (driver.clone(), tasks.clone(), app.stop_fn());
        app.spawn("rotation poller", async move {
            tasks.supervise(driver::rotation::ROTATION_TASK, stop, |stop| driver.clone().run_rotation(stop)).await;
            Ok(())
        });
    }
    let stop = app.stop_fn();
    app.spawn("refresh-now requests", async move {
        tasks.supervise(driver::rotation::REFRESH_TASK, stop, |stop| driver.clone().run_refresh_requests(stop)).await;
        Ok(())
    });
    if let Some(socket) = socket {
        app.on_exit(move || socket.remove_if_ours());
    }
    app::shutdown_signal().await;
    health.set_ready(false);
    app.stop_and_drain(SHUTDOWN_GRACE).await
}

/// The async runtime, sized for an I/O-bound node agent rather than for the node: at most 4 worker
/// threads (Tokio's default is one per CPU, 96 on a large node, each with its stack and queues) unless
/// `TOKIO_WORKER_THREADS` says otherwise. The blocking pool keeps Tokio's bound: CPU-heavy tenant work
/// (PFX decoding) runs there, and a smaller pool would queue another tenant's file swap behind it.
fn runtime() -> tokio::runtime::Builder {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        b.worker_threads(cpus.clamp(1, 4));
    }
    b
}
