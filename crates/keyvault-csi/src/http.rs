//! Wiring of the HTTP side (`metrics_http`): the `--metrics-secure` flags every Kubernetes-facing
//! process takes, and the API server's access reviews as the metrics guard.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use clap::Args;
use metrics_http::auth::{Authorizer, Decision, Guard};
use metrics_http::{Health, Serving, tls};

use crate::cli::parse_go_bool;

/// Who may read `/metrics` (kubebuilder's flag names).
#[derive(Debug, Args, Clone)]
pub struct MetricsAuthArgs {
    /// Serve `/metrics` over HTTPS, and only to bearer tokens whose user may `get` the path (a
    /// TokenReview and a SubjectAccessReview; the chart's `metrics.auth`). `/healthz` and `/readyz`
    /// stay open.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = parse_go_bool, value_name = "BOOL")]
    pub metrics_secure: bool,
    /// Directory of the serving certificate (empty: a self-signed one made at start).
    #[arg(long, value_name = "DIR")]
    pub metrics_cert_path: Option<PathBuf>,
    /// The certificate chain's file in `--metrics-cert-path`.
    #[arg(long, default_value = "tls.crt")]
    pub metrics_cert_name: String,
    /// The private key's file in `--metrics-cert-path`.
    #[arg(long, default_value = "tls.key")]
    pub metrics_cert_key: String,
}

/// The API server's reviews as the guard's authorizer.
struct Reviews(kube_bridge::access_review::AccessReviewer);

impl Authorizer for Reviews {
    fn review<'a>(
        &'a self,
        token: &'a str,
        verb: &'a str,
        path: &'a str,
    ) -> Pin<Box<dyn Future<Output = Decision> + Send + 'a>> {
        use kube_bridge::access_review::Review;
        Box::pin(async move {
            match self.0.review(token, verb, path).await {
                Review::Allowed => Decision::Allowed,
                Review::Unauthenticated => Decision::Unauthenticated,
                Review::Forbidden { user } => Decision::Forbidden { user },
                Review::Unavailable(reason) => Decision::Unavailable(reason),
            }
        })
    }
}

/// No Kubernetes API to review with.
struct NoApi;

impl Authorizer for NoApi {
    fn review<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> Pin<Box<dyn Future<Output = Decision> + Send + 'a>> {
        Box::pin(async { Decision::Unavailable("no Kubernetes API to review the token with".into()) })
    }
}

impl MetricsAuthArgs {
    /// The metrics server these flags ask for: secure reviews callers through `client`; `names` go in
    /// a self-signed certificate.
    pub fn server(
        &self,
        health: Health,
        client: Option<&kube::Client>,
        names: &[&str],
    ) -> anyhow::Result<metrics_http::Server> {
        let server = metrics_http::Server::new(health);
        if !self.metrics_secure {
            return Ok(server);
        }
        let source = match self.metrics_cert_path.as_deref().filter(|p| !p.as_os_str().is_empty()) {
            None => tls::Source::SelfSigned(names.iter().filter(|n| !n.is_empty()).map(|n| n.to_string()).collect()),
            Some(dir) => {
                tls::Source::Files { cert: dir.join(&self.metrics_cert_name), key: dir.join(&self.metrics_cert_key) }
            }
        };
        // Without an API (the driver keeps serving so kubelet's probes answer), nothing can be reviewed:
        // every scrape is 503 naming why, never open.
        let guard = match client {
            Some(client) => {
                Guard::new(Reviews(kube_bridge::access_review::AccessReviewer::new(client.clone(), vec![])))
            }
            None => Guard::new(NoApi),
        };
        Ok(server.with_tls(source).with_auth(Arc::new(guard)))
    }
}

/// Binds `server` on `addr`, naming `flag` in errors.
pub async fn bind(
    server: metrics_http::Server,
    addr: SocketAddr,
    flag: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, Serving)> {
    Ok(server.bind(addr, flag, shutdown).await?)
}
