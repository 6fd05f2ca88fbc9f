//! The Secrets Store CSI node driver: everything between kubelet's `NodePublishVolume` and the files in
//! a pod's volume, except the Azure specifics.
//!
//! Start reading at [`node::Driver`]: [`publish`] validates, resolves the SecretProviderClass
//! ([`class::ClassSource`]), mounts a tmpfs ([`mounter::Mounter`]), asks a [`provider::Provider`] for
//! the files (in-process, or [`external`] over the upstream v1alpha1 socket protocol) and swaps them in
//! with the [`atomic_writer`]. [`grpc`] adapts it to the CSI services; [`error`] maps failures to gRPC
//! status codes in one place. This crate knows nothing about Azure; the binary wires the Azure provider in.

pub mod annotations;
pub mod atomic_writer;
pub mod audit;
pub mod bounded;
pub mod class;
pub mod duration;
pub mod error;
pub mod expiry;
pub mod external;
pub mod grpc;
pub mod invalidation;
pub mod kube;
pub mod lint;
pub mod metrics;
pub mod mounter;
pub mod node;
pub mod provider;
pub mod provider_server;
pub mod publish;
pub mod redact;
pub mod registry;
pub mod rotation;
pub mod supervise;
pub mod volume_context;

pub use node::{Config, Driver, Providers};
