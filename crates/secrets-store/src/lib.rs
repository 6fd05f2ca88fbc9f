//! The Secrets Store's provider boundary: what a mount, a SecretSync and `check` share, with no CSI
//! node, no mounts and no Kubernetes client.
//!
//! A [`class::SecretProviderClass`] names a provider and its parameters; [`volume_context`] turns
//! kubelet's request (or a SecretSync standing in for a pod) into provider attributes; a
//! [`provider::Provider`] answers with files, in-process or over the upstream v1alpha1 socket protocol
//! ([`external`]). [`lint`] finds what is wrong with a class before a pod mounts it, [`audit`] records
//! what was served to whom, and [`invalidation`] is the change-event board nodes read.

pub mod annotations;
pub mod audit;
pub mod check;
pub mod class;
pub mod duration;
pub mod external;
pub mod invalidation;
pub mod lint;
pub mod provider;
pub mod redact;
pub mod volume_context;
