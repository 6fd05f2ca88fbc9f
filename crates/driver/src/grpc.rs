//! Thin tonic adapters for the CSI Identity and Node services: span → parse → `Driver` → status → log;
//! and [`bind`], which serves both on the `--endpoint`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_proto::csi::{self, identity_server::Identity, node_server::Node};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::PublishError;
use crate::node::{Driver, PublishOutcome};
use secrets_store::redact::{keys_only, sanitized_map};
use secrets_store::volume_context::PublishParams;

/// The CSI Identity service.
#[derive(Clone)]
pub struct IdentityService {
    driver: Arc<Driver>,
}

impl IdentityService {
    /// Serves `driver`'s identity.
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        let c = self.driver.config();
        if c.driver_name.is_empty() {
            return Err(Status::unavailable("driver name not configured"));
        }
        if c.vendor_version.is_empty() {
            return Err(Status::unavailable("driver version not configured"));
        }
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: c.driver_name.clone(),
            vendor_version: c.vendor_version.clone(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        // Upstream advertises CONTROLLER_SERVICE without serving it (csi-sanity's strict run fails on
        // that). This driver advertises only what it serves: nothing beyond the node service.
        Ok(Response::new(csi::GetPluginCapabilitiesResponse { capabilities: vec![] }))
    }

    async fn probe(&self, _: Request<csi::ProbeRequest>) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

/// The CSI Node service.
#[derive(Clone)]
pub struct NodeService {
    driver: Arc<Driver>,
}

impl NodeService {
    /// Serves `driver`'s node operations.
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }
}

/// The caller's deadline from gRPC's `grpc-timeout` header (`<digits><H|M|S|m|u|n>`), if it sent one.
pub fn deadline_of<T>(req: &Request<T>) -> Option<Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    // An absurd timeout is no deadline rather than a panic.
    Instant::now().checked_add(d)
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let r = req.into_inner();
        if r.volume_id.is_empty() {
            return Err(Status::invalid_argument("Volume ID missing in request"));
        }
        if r.staging_target_path.is_empty() {
            return Err(Status::invalid_argument("Target path missing in request"));
        }
        if r.volume_capability.is_none() {
            return Err(Status::invalid_argument("Volume capability missing in request"));
        }
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let r = req.into_inner();
        if r.volume_id.is_empty() {
            return Err(Status::invalid_argument("Volume ID missing in request"));
        }
        if r.staging_target_path.is_empty() {
            return Err(Status::invalid_argument("Target path missing in request"));
        }
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let deadline = deadline_of(&req);
        let r = req.into_inner();
        let context = r.volume_context.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let secrets = r.secrets.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let span = tracing::info_span!(
            "node_publish",
            pod = r.volume_context.get("csi.storage.k8s.io/pod.name").map(String::as_str).unwrap_or(""),
            namespace = r.volume_context.get("csi.storage.k8s.io/pod.namespace").map(String::as_str).unwrap_or(""),
            class = r.volume_context.get("secretProviderClass").map(String::as_str).unwrap_or(""),
            target = %r.target_path,
        );
        tracing::trace!(parent: &span, volume_id = %r.volume_id, readonly = r.readonly, volume_context = %sanitized_map(&context),
            secrets = %keys_only(&secrets), "NodePublishVolume request");
        let params = PublishParams::parse(r).map_err(|e| PublishError::from(e).to_status())?;
        let driver = self.driver.clone();
        let started = Instant::now();
        // Run to completion even if kubelet gives up on the call: a half-done publish must still clean up.
        let task = tokio::spawn(async move { driver.publish(params, deadline).await }.instrument(span.clone()));
        let result = task.await.map_err(|e| Status::internal(format!("publish task failed: {e}")))?;
        let _enter = span.enter();
        let elapsed = started.elapsed().as_secs_f64();
        match result {
            Ok(PublishOutcome::Published { provider, files, changed, remount }) => {
                tracing::info!(provider, files, changed, remount, duration_s = elapsed, "node publish volume complete");
                Ok(Response::new(csi::NodePublishVolumeResponse {}))
            }
            Ok(PublishOutcome::Skipped) => {
                tracing::debug!("target path is already mounted");
                Ok(Response::new(csi::NodePublishVolumeResponse {}))
            }
            Ok(PublishOutcome::KeptAfterError(e)) => {
                tracing::warn!(error = %e, error_type = %e.label(), duration_s = elapsed,
                    "failed to refresh a mounted volume; keeping its current files");
                Ok(Response::new(csi::NodePublishVolumeResponse {}))
            }
            Err(e) => {
                tracing::error!(error = %e, error_type = %e.label(), duration_s = elapsed, "node publish volume failed");
                Err(e.to_status())
            }
        }
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let deadline = deadline_of(&req);
        let r = req.into_inner();
        let span = tracing::info_span!("node_unpublish", target = %r.target_path);
        let driver = self.driver.clone();
        let result = tokio::spawn(
            async move { driver.unpublish(&r.volume_id, &r.target_path, deadline).await }.instrument(span.clone()),
        )
        .await
        .map_err(|e| Status::internal(format!("unpublish task failed: {e}")))?;
        let _enter = span.enter();
        match result {
            Ok(()) => {
                tracing::info!("node unpublish volume complete");
                Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
            }
            Err(e) => {
                tracing::error!(error = %e, "node unpublish volume failed");
                Err(e.to_status())
            }
        }
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn node_expand_volume(
        &self,
        _: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeExpandVolume is not implemented"))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        // Nothing optional is served: kubelet never stages an inline ephemeral volume, and advertising
        // STAGE_UNSTAGE_VOLUME (as upstream does) makes csi-sanity expect NodeStageVolume to work.
        Ok(Response::new(csi::NodeGetCapabilitiesResponse { capabilities: vec![] }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.driver.config().node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

/// The running CSI server; completes after shutdown once in-flight RPCs have finished.
pub type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Binds `endpoint` (a stale socket is replaced; see [`crate::socket`]) and returns the serving future
/// and, for a Unix socket, the file to remove on the way out. Errors name `flag`.
pub async fn bind(
    endpoint: &crate::socket::Endpoint,
    flag: &str,
    driver: Arc<Driver>,
    max_recv: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(Serving, Option<crate::socket::SocketFile>)> {
    use csi_proto::csi::{identity_server::IdentityServer, node_server::NodeServer};
    let identity = IdentityServer::new(IdentityService::new(driver.clone())).max_decoding_message_size(max_recv);
    let node = NodeServer::new(NodeService::new(driver)).max_decoding_message_size(max_recv);
    let router = tonic::transport::Server::builder().add_service(identity).add_service(node);
    match endpoint {
        crate::socket::Endpoint::Unix(path) => {
            // Only root (kubelet, the registrar) talks to the socket; any gRPC client library may
            // (grpc-core sends the socket path as `:authority`: see uds_authority).
            let (listener, file) = crate::socket::bind_private(path, flag)?;
            let incoming = crate::socket::incoming(listener);
            Ok((Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown)), Some(file)))
        }
        crate::socket::Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("{flag}: cannot listen on {addr}: {e}")))?;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            Ok((Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown)), None))
        }
    }
}
