//! `/metrics/provider`: the unprivileged provider's `/metrics`, read over its Unix socket and served
//! behind this server's guard. The provider holds no Kubernetes credential, so it cannot review
//! callers itself; the privileged process that can, does.

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, Limited};

/// The provider's whole answer must arrive within this.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest exposition relayed (the provider's is a few KiB; a runaway one must not grow this process).
pub const MAX_BYTES: usize = 8 << 20;

/// The route.
pub fn router(socket: PathBuf) -> Router {
    Router::new().route("/metrics/provider", get(relay)).with_state(socket)
}

async fn relay(State(socket): State<PathBuf>) -> Response {
    match tokio::time::timeout(TIMEOUT, fetch(&socket)).await {
        Ok(Ok((content_type, body))) => {
            let mut response = Body::from(body).into_response();
            if let Some(content_type) = content_type {
                response.headers_mut().insert(header::CONTENT_TYPE, content_type);
            }
            response
        }
        Ok(Err(reason)) => unavailable(&socket, &reason),
        Err(_) => unavailable(&socket, &format!("no answer within {TIMEOUT:?}")),
    }
}

fn unavailable(socket: &std::path::Path, reason: &str) -> Response {
    tracing::warn!(socket = %socket.display(), %reason, "provider metrics unavailable");
    (StatusCode::BAD_GATEWAY, format!("provider metrics at {}: {reason}\n", socket.display())).into_response()
}

async fn fetch(socket: &std::path::Path) -> Result<(Option<header::HeaderValue>, axum::body::Bytes), String> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("/metrics")
        .header(header::HOST, "localhost")
        .body(http_body_util::Empty::<axum::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let body = Limited::new(response.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body (at most {MAX_BYTES} bytes): {e}"))?
        .to_bytes();
    connection.abort();
    Ok((content_type, body))
}
