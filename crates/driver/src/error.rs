//! The node service's errors and their one mapping to gRPC status codes.
//!
//! Messages keep upstream's wording where operators and e2e suites grep them (upstream's `pkg/secrets-store/nodeserver.go`);
//! codes are more precise than upstream's blanket `Unknown`, which kubelet shows either way.

use std::io;
use std::path::PathBuf;

use tonic::{Code, Status};

use crate::atomic_writer::{PayloadError, WriteError};
use secrets_store::class::ClassError;
use secrets_store::external::LookupError;
use secrets_store::provider::ProviderError;

impl From<secrets_store::volume_context::InvalidRequest> for PublishError {
    fn from(e: secrets_store::volume_context::InvalidRequest) -> Self {
        PublishError::InvalidArgument(e.0)
    }
}

/// Why `NodePublishVolume` failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A request field is missing or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume has no `secretProviderClass` attribute.
    #[error("secretProviderClass is not set")]
    ClassNotSet,
    /// The class could not be resolved.
    #[error(transparent)]
    Class(#[from] ClassError),
    /// The class names no provider.
    #[error("provider not set in {namespace}/{name}")]
    ProviderNotSet {
        /// Namespace.
        namespace: String,
        /// Class name.
        name: String,
    },
    /// The class has no parameters.
    #[error("parameters not set in {namespace}/{name}")]
    ParametersNotSet {
        /// Namespace.
        namespace: String,
        /// Class name.
        name: String,
    },
    /// kubelet did not ask for a read-only volume.
    #[error("Readonly is not true in request")]
    NotReadonly,
    /// The target could not be inspected or created.
    #[error("failed to check if target path {path} is mount point, err: {source}")]
    EnsureMountPoint {
        /// Target path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The tmpfs could not be mounted.
    #[error("failed to mount tmpfs at {path}, err: {source}")]
    Mount {
        /// Target path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The provider socket could not be found.
    #[error(
        "failed to mount secrets store objects for pod {pod}, err: error connecting to provider \"{provider}\": {source}"
    )]
    ProviderLookup {
        /// `<namespace>/<name>` of the pod.
        pod: String,
        /// Provider name.
        provider: String,
        /// Cause.
        #[source]
        source: LookupError,
    },
    /// The provider failed.
    #[error("failed to mount secrets store objects for pod {pod}, err: {source}")]
    Provider {
        /// `<namespace>/<name>` of the pod.
        pod: String,
        /// Cause (names the object, never holds a value).
        #[source]
        source: ProviderError,
    },
    /// The provider returned files the driver refuses to write.
    #[error("failed to mount secrets store objects for pod {pod}, err: {source}")]
    Payload {
        /// `<namespace>/<name>` of the pod.
        pod: String,
        /// Which path and why.
        #[source]
        source: PayloadError,
    },
    /// Writing the files failed.
    #[error("failed to mount secrets store objects for pod {pod}, err: {source}")]
    FileWrite {
        /// `<namespace>/<name>` of the pod.
        pod: String,
        /// Cause.
        #[source]
        source: WriteError,
    },
    /// The pod status could not be written.
    #[error("failed to create secret provider class pod status for pod {pod}, err: {source}")]
    PodStatus {
        /// `<namespace>/<name>` of the pod.
        pod: String,
        /// Cause.
        #[source]
        source: kube_bridge::PodStatusError,
    },
    /// Too many volumes on this node already owe API writes (the API server has not answered for a while).
    #[error(
        "failed to mount secrets store objects for pod {pod}: {pending} volumes on this node are waiting for the API server to record their pod status (--api-writes-limit); retrying once it answers"
    )]
    ApiBacklog {
        /// `<namespace>/<name>` of the pod.
        pod: String,
        /// Volumes owing writes.
        pending: usize,
    },
    /// Another operation on the same target is in progress (CSI: `ABORTED`).
    #[error("an operation on target path {0} is already in progress")]
    Busy(PathBuf),
}

impl PublishError {
    /// The `error_type` label of `node_publish_error_total`: bounded, stable, upstream's names.
    pub fn label(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) | Self::NotReadonly | Self::Busy(_) => "FailedToMount",
            Self::ClassNotSet | Self::Class(_) | Self::ProviderNotSet { .. } | Self::ParametersNotSet { .. } => {
                "SecretProviderClassNotFound"
            }
            Self::EnsureMountPoint { .. } => "FailedToEnsureMountPoint",
            Self::Mount { .. } => "FailedToMount",
            Self::ProviderLookup { .. } => "FailedToLookupProviderGRPCClient",
            Self::Provider { source, .. } => source.code,
            Self::Payload { .. } | Self::FileWrite { .. } => "FileWriteError",
            Self::PodStatus { .. } | Self::ApiBacklog { .. } => "FailedToCreatePodStatus",
        }
    }

    /// The bounded `error_class` label (`throttled`, `auth`, `not_found`, `network`, `other`): what an
    /// alert tells apart without matching free text.
    pub fn class(&self) -> &'static str {
        use secrets_store::provider::ErrorKind as K;
        match self {
            Self::Provider { source, .. } => match source.kind {
                K::ResourceExhausted => "throttled",
                K::PermissionDenied => "auth",
                K::NotFound => "not_found",
                K::Unavailable | K::DeadlineExceeded => "network",
                K::InvalidArgument | K::Internal => "other",
            },
            Self::Class(ClassError::NotFound { .. }) => "not_found",
            Self::Class(ClassError::Unavailable { .. }) | Self::PodStatus { .. } | Self::ApiBacklog { .. } => "network",
            _ => "other",
        }
    }

    /// The gRPC status kubelet receives.
    pub fn to_status(&self) -> Status {
        let code = match self {
            Self::InvalidArgument(_) | Self::NotReadonly | Self::ClassNotSet => Code::InvalidArgument,
            Self::ProviderNotSet { .. } | Self::ParametersNotSet { .. } => Code::FailedPrecondition,
            Self::Class(ClassError::NotFound { .. }) => Code::NotFound,
            Self::Class(ClassError::Unavailable { .. }) => Code::Unavailable,
            Self::EnsureMountPoint { .. } | Self::Mount { .. } | Self::FileWrite { .. } => Code::Internal,
            Self::ProviderLookup { .. } => Code::FailedPrecondition,
            Self::Provider { source, .. } => source.kind.grpc_code(),
            Self::Payload { .. } => Code::InvalidArgument,
            Self::PodStatus { .. } | Self::ApiBacklog { .. } => Code::Unavailable,
            Self::Busy(_) => Code::Aborted,
        };
        Status::new(code, self.to_string())
    }
}

/// Why `NodeUnpublishVolume` failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpublishError {
    /// A request field is missing.
    #[error("{0}")]
    InvalidArgument(String),
    /// Unmounting or removing the target failed.
    #[error("failed to clean and unmount target path {path}, err: {source}")]
    Cleanup {
        /// Target path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Another operation on the same target is in progress.
    #[error("an operation on target path {0} is already in progress")]
    Busy(PathBuf),
}

impl UnpublishError {
    /// The gRPC status kubelet receives.
    pub fn to_status(&self) -> Status {
        let code = match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::Cleanup { .. } => Code::Internal,
            Self::Busy(_) => Code::Aborted,
        };
        Status::new(code, self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrets_store::provider::ErrorKind;

    #[test]
    fn every_error_has_one_of_five_classes() {
        let provider = |kind| PublishError::Provider {
            pod: "ns/p".into(),
            source: secrets_store::provider::ProviderError::new(kind, "GRPCProviderError", "x"),
        };
        let classes: Vec<&str> = ErrorKind::ALL.iter().map(|k| provider(*k).class()).collect();
        for c in ["throttled", "auth", "not_found", "network", "other"] {
            assert!(classes.contains(&c), "{c} missing from {classes:?}");
        }
        assert_eq!(provider(ErrorKind::ResourceExhausted).class(), "throttled");
        assert_eq!(provider(ErrorKind::PermissionDenied).class(), "auth");
        let missing = PublishError::Class(ClassError::NotFound { namespace: "ns".into(), name: "c".into() });
        assert_eq!(missing.class(), "not_found");
        assert_eq!(PublishError::NotReadonly.class(), "other");
    }
}
