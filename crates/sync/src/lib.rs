//! Mount-less sync: the `SecretSync` API of the Secrets Store Sync Controller
//! (`secret-sync.x-k8s.io/v1alpha1`, drop-in) and the decisions of reconciling one.
//!
//! [`api`] holds the typed resource and its CustomResourceDefinition (upstream's field names and
//! validations, CEL rules included, plus `observedGeneration`); [`decide`] turns a SecretSync, the
//! files its class yields and its last status into the Secret's data, a keyed hash and the
//! conditions, without I/O, so every decision is tested on its own; [`controller`] watches, fetches
//! and applies (`keyvault-csi sync-controller`), with [`tokens`] for service-account tokens,
//! [`leader`] for leader election and [`metrics`] for what it exports; [`service`] runs them as the
//! process does.

pub mod api;
pub mod check;
pub mod controller;
pub mod decide;
pub mod events;
pub mod hash_key;
pub mod leader;
pub mod lint;
pub mod metrics;
pub mod service;
pub mod tokens;
