//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's leader election does it
//! (holder, lease duration, renew time; optimistic concurrency on the resourceVersion), so two
//! replicas never reconcile at once and a standby takes over within one lease duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{PostParams, ResourceExt};

/// The lease's timing: client-go's 15 s lease; renewals every 5 s.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How long a lease holds without renewal.
    pub lease: Duration,
    /// How often the holder renews, and a candidate retries.
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self { lease: Duration::from_secs(15), retry: Duration::from_secs(5) }
    }
}

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
}

impl Elector {
    /// Candidate `identity` for the lease `namespace/name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str, timing: Timing) -> Self {
        Self { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into(), timing }
    }

    /// Waits until this candidate holds the lease (or `stop` resolves: `false`).
    pub async fn acquire(&self, stop: impl std::future::Future<Output = ()>) -> bool {
        let mut stop = std::pin::pin!(stop);
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return true;
                }
                Ok(false) if !logged => {
                    logged = true;
                    tracing::info!(lease = %self.name, "another replica leads; standing by");
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "leader election failed; retrying"),
            }
            tokio::select! {
                _ = &mut stop => return false,
                _ = tokio::time::sleep(self.timing.retry) => {}
            }
        }
    }

    /// Renews until the lease is lost, then returns. Losing it means another replica may be
    /// reconciling: the caller must stop at once. On shutdown the caller drops this future and calls
    /// [`Elector::release`].
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.name, "leadership lost to another replica");
                    return;
                }
                Err(e) if last_renewed.elapsed() + self.timing.retry >= self.timing.lease => {
                    tracing::error!(lease = %self.name, error = %e, "could not renew the lease before it expired");
                    return;
                }
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "lease renewal failed; retrying"),
            }
        }
    }

    /// Gives the lease up (on shutdown), so a standby takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(&self.identity) {
                spec.holder_identity = None;
                spec.renew_time = None;
                match self.api.replace(&self.name, &PostParams::default(), &lease).await {
                    Ok(_) => tracing::info!(lease = %self.name, "lease released"),
                    Err(e) => {
                        tracing::warn!(lease = %self.name, error = %kube_bridge::describe(&e), "could not release the lease")
                    }
                }
            }
        }
    }

    /// `Ok(true)`: this candidate holds the lease now.
    async fn try_acquire_or_renew(&self) -> Result<bool, String> {
        let now = Timestamp::now();
        let seconds = self.timing.lease.as_secs() as i32;
        let describe = |e: kube::Error| kube_bridge::describe(&e);
        let Some(mut lease) = self.api.get_opt(&self.name).await.map_err(describe)? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(describe(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let ours = spec.holder_identity.as_deref() == Some(&self.identity);
        let held = spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(d)) => renewed.0.as_second() + i64::from(d) < now.as_second(),
            _ => true,
        };
        if held && !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(now));
        // The resourceVersion read above makes this a compare-and-swap: a concurrent winner gets 409.
        let name = lease.name_any();
        match self.api.replace(&name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(describe(e)),
        }
    }
}
