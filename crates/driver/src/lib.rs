//! The Secrets Store CSI node driver: everything between kubelet's `NodePublishVolume` and the files in
//! a pod's volume, except the Azure specifics.
//!
//! Start reading at [`node::Driver`]: [`publish`] validates, resolves the SecretProviderClass
//! ([`secrets_store::class::ClassSource`]), mounts a tmpfs ([`mounter::Mounter`]), asks a
//! [`secrets_store::provider::Provider`] for the files and swaps them in with the [`atomic_writer`].
//! [`grpc`] adapts it to the CSI services; [`error`] maps failures to gRPC status codes in one place;
//! [`cluster`] tells the API server (through [`kube_bridge`]) what the node did. This crate knows
//! nothing about Azure; the binary wires the Azure provider in.

pub mod api_writes;
pub mod atomic_writer;
pub mod bounded;
pub mod cluster;
pub mod error;
pub mod expiry;
pub mod grpc;
pub mod metrics;
pub mod mounter;
pub mod node;
pub mod provider_server;
pub mod publish;
pub mod registry;
pub mod rotation;
pub mod socket;
pub mod standalone;
pub mod uds_authority;

pub use node::{Config, Driver};
