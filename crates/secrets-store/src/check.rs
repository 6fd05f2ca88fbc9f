//! The result of one live check (`keyvault-csi check --live`): what a mount of a class would meet in
//! the cluster and the vault, decided before a pod tries. The crates that know each fact make their
//! own checks (the Kubernetes bridge, SecretSync, the Azure provider); this is the shape they share.

use serde::Serialize;

/// Result of one live check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Pass,
    /// A mount would fail (or misbehave).
    Fail,
    /// Could not be checked from here.
    Skip,
    /// Works now, but will not at scale (the Key Vault budget).
    Warn,
}

/// One live check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub check: String,
    /// Outcome.
    pub status: Status,
    /// Details (never a secret value).
    pub detail: String,
    /// The error a pod would get (`kubectl describe pod`), when the check fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prevents: Option<String>,
}

impl Check {
    /// A check that passed.
    pub fn pass(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(check, Status::Pass, detail, None)
    }

    /// A check that failed, with the error a pod would get.
    pub fn fail(check: impl Into<String>, detail: impl Into<String>, prevents: Option<String>) -> Self {
        Self::new(check, Status::Fail, detail, prevents)
    }

    /// A check that could not be made from here.
    pub fn skip(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(check, Status::Skip, detail, None)
    }

    /// Works now, not at scale.
    pub fn warn(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(check, Status::Warn, detail, None)
    }

    fn new(check: impl Into<String>, status: Status, detail: impl Into<String>, prevents: Option<String>) -> Self {
        Self { check: check.into(), status, detail: detail.into(), prevents }
    }
}
