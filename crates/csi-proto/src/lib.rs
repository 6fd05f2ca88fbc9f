//! Generated gRPC code for the two wire protocols the driver speaks:
//!
//! * [`csi`]: the Container Storage Interface v1 (`csi.v1`) Identity and Node services, served to kubelet.
//! * [`provider`]: the Secrets Store CSI driver's provider protocol (`v1alpha1.CSIDriverProvider`),
//!   spoken to external providers over `<dir>/<provider>.sock` and served by `keyvault-csi provider`.
//!
//! Nothing here is written by hand: edit `proto/*.proto` instead. The `secrets` maps (fields the CSI spec
//! marks `csi_secret`) derive `Debug` like every prost message, so never log a whole request: the driver
//! logs requests only through its sanitiser.
#![allow(missing_docs, clippy::all)]

/// CSI v1 (`csi.v1`).
pub mod csi {
    tonic::include_proto!("csi.v1");
}

/// Secrets Store CSI provider protocol (`v1alpha1`).
pub mod provider {
    tonic::include_proto!("v1alpha1");
}
