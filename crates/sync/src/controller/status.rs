//! The SecretSync's status: conditions, hash and observed generation written only when they change,
//! and a Warning event when a failure is new or its message changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use kube_bridge::EventType;

use super::secret::reference;
use super::{COMPONENT, Context, Done, failure_of};
use crate::api::{SecretSync, SecretSyncStatus};
use crate::decide::{self, Failure, FailureReason, Written};

/// Writes the status when it changed (conditions, hash, observedGeneration), and a Warning event when
/// a failure is new or its message changed.
pub(super) async fn write_status(
    ss: &SecretSync,
    ctx: &Context,
    before: &SecretSyncStatus,
    generation: i64,
    outcome: Result<&Done, &Failure>,
) {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut after = before.clone();
    after.observed_generation = Some(generation);
    if let Ok(done) = outcome {
        // What the Secret now holds, even after a partial sync.
        after.sync_hash = done.hash.clone();
    }
    match (failure_of(outcome), outcome) {
        (None, Ok(done)) => {
            let written = done.written.unwrap_or(Written::Updated);
            // (After any success the Secret exists: SecretCreated is True.)
            after.conditions = decide::conditions(&before.conditions, generation, &now, Ok(written));
            if done.written.is_some() || before.sync_hash != done.hash || !is_ready(before) {
                after.last_successful_sync_time = Some(now.clone());
            }
        }
        (Some(f), _) | (None, Err(f)) => {
            after.conditions = decide::conditions(&before.conditions, generation, &now, Err(f));
            let old = before.conditions.iter().find(|c| c.type_ == decide::READY);
            if old.is_none_or(|c| c.message != f.message) {
                ctx.recorder
                    .object_event(&reference(ss), COMPONENT, EventType::Warning, f.reason.as_str(), &f.message)
                    .await;
                ctx.metrics.wrote("event");
            }
        }
    }
    if after == *before {
        return;
    }
    let api: Api<SecretSync> = Api::namespaced(ctx.client.clone(), &ss.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": after });
    match api.patch_status(&ss.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => ctx.metrics.wrote("status"),
        Err(e) => tracing::warn!(error = %kube_bridge::describe(&e), "failed to write the SecretSync's status"),
    }
}

pub(super) fn is_ready(status: &SecretSyncStatus) -> bool {
    status.conditions.iter().any(|c| c.type_ == decide::READY && c.status == "True")
}

pub(super) fn misconfigured(class: &str, cause: &str) -> Failure {
    Failure::new(
        FailureReason::SecretProviderClassMisconfigured,
        format!("failed to get SecretProviderClass {class:?}: {cause}"),
    )
}

pub(super) fn patch_failed(ns: &str, name: &str, cause: &str) -> Failure {
    Failure::new(FailureReason::ControllerPatchError, format!("failed to patch secret {ns}/{name}: {cause}"))
}
