//! What the long-running commands (`node`, `provider`, `mount`) share: the Azure provider with its
//! metrics, the Prometheus registry, and one shutdown path. SIGTERM or SIGINT flips one stop signal
//! that every server and loop watches; the process then drains its tasks within a grace period and
//! runs its clean-ups (socket files) whatever happened.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use keyvault_bridge::{AzureArgs, AzureProvider};

/// A command being assembled, then run until a signal.
pub struct App {
    /// Every metric the process exports.
    pub registry: Registry,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    cleanups: Vec<Box<dyn FnOnce() + Send>>,
}

impl App {
    /// An empty app.
    pub fn new() -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        Self { registry: Registry::default(), stop_tx, stop_rx, tasks: Vec::new(), cleanups: Vec::new() }
    }

    /// The in-process Azure provider and its metrics, registered. `record_grpc` makes it record
    /// `grpc_request` itself (in-process calls; a v1alpha1 server records its own).
    pub fn azure(
        &mut self,
        args: &AzureArgs,
        poll_interval: Option<Duration>,
        record_grpc: bool,
    ) -> anyhow::Result<(Arc<AzureProvider>, keyvault::metrics::ProviderMetrics)> {
        let metrics = keyvault::metrics::ProviderMetrics::default();
        let provider = keyvault::Provider::new(args.config(poll_interval).map_err(anyhow::Error::msg)?)
            .map_err(|e| anyhow::anyhow!("Azure provider: {e}"))?
            .with_observer(Arc::new(metrics.clone()));
        keyvault::metrics::register_provider(&mut self.registry, &metrics, provider.stats().clone());
        let azure = AzureProvider { provider: Arc::new(provider), metrics: record_grpc.then(|| metrics.clone()) };
        Ok((Arc::new(azure), metrics))
    }

    /// Resolves once the process is stopping.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// A maker of [`App::stopped`] futures, for tasks that are restarted (see `kube_bridge::supervise`).
    pub fn stop_fn(&self) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static {
        let rx = self.stop_rx.clone();
        move || {
            let mut rx = rx.clone();
            Box::pin(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
        }
    }

    /// Runs `task` until it ends; after a stop it gets the grace period to finish.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Runs `f` on the way out (after draining, or when the grace period ran out).
    pub fn on_exit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.cleanups.push(Box::new(f));
    }

    /// Waits for SIGTERM or SIGINT, stops everything, and drains for up to `grace`.
    pub async fn run_until_signal(self, grace: Duration) -> anyhow::Result<()> {
        shutdown_signal().await;
        self.stop_and_drain(grace).await
    }

    /// Stops everything and drains for up to `grace`; a task's error is the result.
    pub async fn stop_and_drain(self, grace: Duration) -> anyhow::Result<()> {
        let _ = self.stop_tx.send(true);
        let drained = tokio::time::timeout(grace, async {
            let mut first_error = None;
            for (name, task) in self.tasks {
                let result = match task.await {
                    Ok(r) => r,
                    Err(e) => Err(anyhow::anyhow!("{name} task: {e}")),
                };
                if let Err(e) = result {
                    tracing::error!(task = name, error = %format!("{e:#}"), "task failed");
                    first_error.get_or_insert(e.context(name));
                }
            }
            first_error.map_or(Ok(()), Err)
        })
        .await;
        for cleanup in self.cleanups {
            cleanup();
        }
        match drained {
            Ok(result) => {
                result?;
                tracing::info!("shut down cleanly");
                Ok(())
            }
            Err(_) => anyhow::bail!("in-flight requests did not finish within {grace:?}; exiting anyway"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail");
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT, shutting down"),
    }
}
