//! The HTTP side of every keyvault-csi process: `/metrics` (OpenMetrics), `/healthz` (the process
//! serves) and `/readyz` (its conditions hold).
//!
//! By default it is plain HTTP and open, as upstream's. With [`Server::with_auth`] it is what
//! kube-rbac-proxy and controller-runtime's `--metrics-secure` give: TLS, and `/metrics` only for a
//! bearer token that a TokenReview authenticates and a SubjectAccessReview allows (`get` on the
//! non-resource URL). The probes stay open: kubelet sends no token, and they reveal nothing.
//!
//! Nothing here knows Kubernetes: an [`auth::Authorizer`] does the reviews (the binary wires
//! `kube_bridge`'s), and [`auth::Guard`] bounds them (a token cache, a cap on reviews in flight).

pub mod auth;
pub mod proxy;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

/// A readiness condition (e.g. a watch cache has synced).
pub type ReadyCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// A server's future: resolves when it has shut down.
pub type Serving = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// How long in-flight scrapes may finish after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Readiness and the metrics registry, shared between the servers of a process.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    checks: Arc<Vec<(&'static str, ReadyCheck)>>,
    registry: Arc<prometheus_client::registry::Registry>,
}

impl Health {
    /// Serves `registry` on `/metrics`.
    pub fn with_registry(registry: prometheus_client::registry::Registry) -> Self {
        Self { ready: Arc::default(), checks: Arc::default(), registry: Arc::new(registry) }
    }

    /// Adds a readiness condition: `/readyz` answers 503 naming it until it holds. Call before
    /// cloning.
    pub fn with_check(mut self, name: &'static str, check: ReadyCheck) -> Self {
        Arc::get_mut(&mut self.checks).expect("checks are added before the health is shared").push((name, check));
        self
    }

    /// Marks the process ready (its socket bound and serving).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

/// Renders a registry (OpenMetrics text).
pub fn render(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

/// The content type of [`render`]'s text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A listener that could not be set up, naming the flag that chose it.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address cannot be listened on.
    #[error("{flag} {addr}: cannot listen: {source}")]
    Listen {
        /// The flag that chose the address.
        flag: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS certificate cannot be loaded or made.
    #[error("{flag}: {source}")]
    Tls {
        /// The flag that named the certificate.
        flag: String,
        /// Why.
        source: tls::TlsError,
    },
}

/// One HTTP server: which routes, and how `/metrics` is guarded.
#[derive(Clone)]
pub struct Server {
    health: Health,
    metrics: bool,
    guard: Option<Arc<auth::Guard>>,
    tls: Option<tls::Source>,
    provider_metrics: Option<PathBuf>,
}

impl Server {
    /// `/metrics`, `/healthz` and `/readyz`, plain and open.
    pub fn new(health: Health) -> Self {
        Self { health, metrics: true, guard: None, tls: None, provider_metrics: None }
    }

    /// Only `/healthz` and `/readyz` (a probe port).
    pub fn probes_only(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// `/metrics` (and `/metrics/provider`) only for callers `guard` allows.
    pub fn with_auth(mut self, guard: Arc<auth::Guard>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Serves over TLS with this certificate.
    pub fn with_tls(mut self, tls: tls::Source) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Also serves `/metrics/provider`: the `/metrics` of the HTTP server on this Unix socket (the
    /// unprivileged provider's, which holds no Kubernetes credential to check callers itself).
    pub fn with_provider_metrics(mut self, socket: PathBuf) -> Self {
        self.provider_metrics = Some(socket);
        self
    }

    fn router(&self) -> Router {
        let probes =
            Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(self.health.clone());
        if !self.metrics {
            return probes;
        }
        let mut metrics = Router::new().route("/metrics", get(metrics)).with_state(self.health.clone());
        if let Some(socket) = &self.provider_metrics {
            metrics = metrics.merge(proxy::router(socket.clone()));
        }
        if let Some(guard) = &self.guard {
            metrics = metrics.route_layer(axum::middleware::from_fn_with_state(guard.clone(), auth::require));
        }
        probes.merge(metrics)
    }

    /// Binds `addr` (`flag` names it in errors); returns the bound address and the serving future,
    /// which ends when `shutdown` resolves and in-flight requests are done.
    pub async fn bind(
        self,
        addr: SocketAddr,
        flag: &str,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(SocketAddr, Serving), BindError> {
        let listen = |source| BindError::Listen { flag: flag.into(), addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(listen)?;
        listener.set_nonblocking(true).map_err(listen)?;
        let local = listener.local_addr().map_err(listen)?;
        let app = self.router();
        let Some(source) = self.tls else {
            let listener = tokio::net::TcpListener::from_std(listener).map_err(listen)?;
            let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown);
            return Ok((local, Box::pin(async move { serve.await })));
        };
        let tls_error = |source| BindError::Tls { flag: flag.into(), source };
        let (config, reload) = tls::config(&source).await.map_err(tls_error)?;
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(listener, config).map_err(listen)?.handle(handle.clone());
        Ok((
            local,
            Box::pin(async move {
                tokio::spawn(async move {
                    shutdown.await;
                    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
                });
                let serving = server.serve(app.into_make_service());
                // Certificate files are watched for as long as the server runs.
                match reload {
                    None => serving.await,
                    Some(reload) => tokio::select! {
                        served = serving => served,
                        () = reload.run() => unreachable!("the reloader runs until dropped"),
                    },
                }
            }),
        ))
    }

    /// Serves on a Unix socket the caller bound (its mode is the caller's choice); TLS and auth do not
    /// apply: who can connect is who the socket's directory admits.
    pub fn serve_unix(
        self,
        listener: tokio::net::UnixListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Serving {
        let serve = axum::serve(listener, self.router()).with_graceful_shutdown(shutdown);
        Box::pin(async move { serve.await })
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics(State(health): State<Health>) -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, OPENMETRICS)], render(&health.registry))
}

async fn readyz(State(health): State<Health>) -> (StatusCode, String) {
    if !health.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready".into());
    }
    let waiting: Vec<&str> = health.checks.iter().filter(|(_, c)| !c()).map(|(n, _)| *n).collect();
    if waiting.is_empty() {
        (StatusCode::OK, "ok".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}", waiting.join(", ")))
    }
}

#[cfg(test)]
mod tests;
