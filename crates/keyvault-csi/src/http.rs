//! The HTTP side: `/metrics` (Prometheus), `/healthz` (the process serves) and `/readyz` (the gRPC
//! socket answers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

/// Readiness and the metrics registry, shared between the servers.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    registry: Arc<prometheus_client::registry::Registry>,
}

impl Health {
    /// Serves `registry` on `/metrics`.
    pub fn with_registry(registry: prometheus_client::registry::Registry) -> Self {
        Self { ready: Arc::default(), registry: Arc::new(registry) }
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

async fn readyz(State(health): State<Health>) -> (StatusCode, &'static str) {
    if health.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
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
