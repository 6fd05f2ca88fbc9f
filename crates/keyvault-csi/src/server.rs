//! Serves the CSI Identity and Node services on the `--endpoint` socket until shutdown.

use std::sync::Arc;

use anyhow::Context;
use csi_proto::csi::{identity_server::IdentityServer, node_server::NodeServer};
use driver::Driver;
use driver::grpc::{IdentityService, NodeService};
use tokio_stream::wrappers::TcpListenerStream;

use crate::cli::Endpoint;

/// The running CSI server; completes after shutdown once in-flight RPCs have finished.
pub type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Binds the endpoint (removing a stale socket first) and returns the serving future, and the socket
/// file to remove on the way out.
pub async fn bind(
    endpoint: &Endpoint,
    driver: Arc<Driver>,
    max_recv: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(Serving, Option<driver::socket::SocketFile>)> {
    let identity = IdentityServer::new(IdentityService::new(driver.clone())).max_decoding_message_size(max_recv);
    let node = NodeServer::new(NodeService::new(driver)).max_decoding_message_size(max_recv);
    let router = tonic::transport::Server::builder().add_service(identity).add_service(node);
    match endpoint {
        Endpoint::Unix(path) => {
            // Only root (kubelet, the registrar) talks to the socket; any gRPC client library may
            // (grpc-core sends the socket path as `:authority`: see uds_authority).
            let (listener, file) = driver::socket::bind_private(path, "--endpoint")?;
            let incoming = driver::socket::incoming(listener);
            Ok((Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown)), Some(file)))
        }
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--endpoint: cannot listen on {addr}"))?;
            Ok((Box::pin(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)), None))
        }
    }
}
