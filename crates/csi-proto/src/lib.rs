//! Generated gRPC code for the two wire protocols the driver speaks:
//!
//! * [`csi`]: the Container Storage Interface v1 (`csi.v1`) Identity and Node services, served to kubelet.
//! * [`provider`]: the Secrets Store CSI driver's provider protocol (`v1alpha1.CSIDriverProvider`),
//!   spoken to external providers over `<dir>/<provider>.sock` and served by `keyvault-csi provider`.
//!
//! Nothing here is written by hand: edit `proto/*.proto`, then `UPDATE_PROTO=1 cargo test -p csi-proto`
//! regenerates `src/generated/` (protox and tonic-prost-build, pure Rust: no `protoc`). The code is
//! checked in so that no build compiles a protobuf compiler; the test fails when it no longer matches
//! the protos. The `secrets` maps (fields the CSI spec marks `csi_secret`) derive `Debug` like every
//! prost message, so never log a whole request: the driver logs requests only through its sanitiser.
#![allow(missing_docs, clippy::all)]

/// CSI v1 (`csi.v1`).
pub mod csi {
    include!("generated/csi.v1.rs");
}

/// Secrets Store CSI provider protocol (`v1alpha1`).
pub mod provider {
    include!("generated/v1alpha1.rs");
}
