//! Mount-less sync: the `SecretSync` API of the Secrets Store Sync Controller
//! (`secret-sync.x-k8s.io/v1alpha1`, drop-in) and the decisions of reconciling one.
//!
//! [`api`] holds the typed resource and its CustomResourceDefinition (upstream's field names and
//! validations, CEL rules included, plus `observedGeneration`); [`decide`] turns a SecretSync, the
//! files its class yields and its last status into the Secret's data, a keyed hash and the
//! conditions, without I/O, so every decision is tested on its own. The controller that watches,
//! fetches and applies is not built yet (issue 18).

pub mod api;
pub mod decide;
pub mod lint;
