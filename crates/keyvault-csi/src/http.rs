//! The HTTP side: `/metrics` (Prometheus), `/healthz` (the process serves) and `/readyz` (the gRPC
//! socket answers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

/// A readiness condition (e.g. a watch cache has synced).
pub type ReadyCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// Readiness and the metrics registry, shared between the servers.
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

    /// Marks the driver ready (socket bound and serving).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics(State(health): State<Health>) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::metrics::render(&health.registry),
    )
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

/// Binds the HTTP server; returns the bound address and the serving future.
pub async fn bind(
    addr: SocketAddr,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    bind_as(addr, "--metrics-addr", health, shutdown).await
}

/// Like [`bind`], naming `flag` in errors.
pub async fn bind_as(
    addr: SocketAddr,
    flag: &str,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("{flag} {addr}: cannot listen: {e}"))?;
    let local = listener.local_addr()?;
    Ok((local, async move { axum::serve(listener, app).with_graceful_shutdown(shutdown).await }))
}
