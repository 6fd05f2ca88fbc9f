//! The node's volumes: what was published where, and one operation per target at a time.
//!
//! Operations on a target are serialised by a claim. kubelet serialises its own calls per volume, so
//! the only contention is between kubelet and our rotation poller, and kubelet must win: a kubelet
//! claim on a target the poller holds cancels the poller's refresh and waits for it to let go (the
//! refresh stops at its next cancellation point, before or during the provider call; a file swap in
//! progress finishes first, which takes milliseconds). Only two kubelet calls on one target at once
//! (which kubelet never makes) see `ABORTED`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use secrets_store::volume_context::PublishParams;

/// A volume this driver published successfully.
#[derive(Clone, Debug)]
pub struct Volume {
    /// The request that produced it (tokens and secrets stay redacted); rotation replays it.
    pub params: PublishParams,
    /// Provider that serves it.
    pub provider: String,
    /// Object id → version, as last fetched.
    pub object_versions: BTreeMap<String, String>,
    /// Objects served by a failover vault or from the last known good (see
    /// [`secrets_store::provider::MountResponse::provenance`]).
    pub provenance: secrets_store::provider::Provenance,
    /// (vault, object name) of what it holds, as the provider reported serving them: what a change
    /// event is matched against. Empty for a volume adopted after a restart until its first refresh.
    pub sources: std::collections::BTreeSet<(String, String)>,
    /// When the provider last answered successfully for this volume: the rotation clock.
    pub last_fetch: Instant,
    /// Consecutive failed refreshes (reset by a success).
    pub failures: u32,
    /// After a failed refresh, not before this.
    pub retry_at: Option<Instant>,
    /// The refresh-now values this volume was last refreshed (or mounted) with.
    pub refresh_seen: secrets_store::annotations::RefreshMarks,
    /// Its rotation interval (its class's, else the node's) as last planned; `None`: rotation off.
    pub interval: Option<Duration>,
    /// Certificate files → earliest `notAfter` (see [`crate::expiry`]).
    pub cert_expiry: crate::expiry::Expiries,
    /// (file, `notAfter`) already warned about on the pod.
    pub expiry_warned: std::collections::BTreeSet<(String, i64)>,
}

impl Volume {
    /// Whether it holds `name` from `vault`: by what the provider served, else (adopted, not yet
    /// refreshed) by object name in any vault; an extra refresh costs a fetch, a missed one a stale file.
    pub fn holds(&self, vault: &str, name: &str) -> bool {
        if self.sources.is_empty() {
            return self.object_versions.keys().any(|id| secrets_store::provider::object_name(id) == Some(name));
        }
        self.sources.contains(&(vault.to_ascii_lowercase(), name.to_string()))
    }

    /// A volume fetched just now.
    pub fn fresh(params: PublishParams, provider: String, object_versions: BTreeMap<String, String>) -> Self {
        Self {
            params,
            provider,
            object_versions,
            provenance: Default::default(),
            sources: Default::default(),
            last_fetch: Instant::now(),
            failures: 0,
            retry_at: None,
            refresh_seen: Default::default(),
            interval: None,
            cert_expiry: Default::default(),
            expiry_warned: Default::default(),
        }
    }
}

/// Who holds a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A kubelet call (`NodePublishVolume`, `NodeUnpublishVolume`).
    Kubelet,
    /// The rotation poller: background work that yields to kubelet.
    Poller,
}

#[derive(Debug)]
struct Claim {
    holder: Holder,
    cancel: watch::Sender<bool>,
    released: Arc<Notify>,
}

/// Volumes by target path, plus the claims of the operations in flight.
#[derive(Debug, Default)]
pub struct VolumeRegistry {
    volumes: Mutex<HashMap<PathBuf, Volume>>,
    claims: Mutex<HashMap<PathBuf, Claim>>,
}

/// Held while an operation runs on a target; releases it on drop.
#[derive(Debug)]
pub struct TargetGuard {
    registry: Arc<VolumeRegistry>,
    target: PathBuf,
    cancelled: watch::Receiver<bool>,
}

impl TargetGuard {
    /// Resolves when kubelet wants the target: the holder (the poller) should stop at its next
    /// cancellation point. Never resolves for a kubelet claim.
    pub async fn cancelled(&self) {
        let mut rx = self.cancelled.clone();
        // An error means the sender is gone, which only happens when this guard is dropped.
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Whether kubelet asked for the target.
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }
}

impl Drop for TargetGuard {
    fn drop(&mut self) {
        let claim = self.registry.claims.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.target);
        if let Some(claim) = claim {
            claim.released.notify_waiters();
        }
    }
}

/// Why a claim was not granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contended {
    /// Another kubelet call holds the target.
    ByKubelet,
    /// The poller did not let go in time.
    PollerTimedOut,
}

impl VolumeRegistry {
    /// Claims `target` if it is free.
    pub fn try_claim(self: &Arc<Self>, target: &Path, holder: Holder) -> Option<TargetGuard> {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        if claims.contains_key(target) {
            return None;
        }
        Some(self.insert_claim(&mut claims, target, holder))
    }

    /// Claims `target` for kubelet: a poller holding it is cancelled and awaited for up to `wait`.
    pub async fn claim_for_kubelet(self: &Arc<Self>, target: &Path, wait: Duration) -> Result<TargetGuard, Contended> {
        let deadline = secrets_store::duration::later(Instant::now(), wait);
        loop {
            let released = {
                let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
                match claims.get(target) {
                    None => return Ok(self.insert_claim(&mut claims, target, Holder::Kubelet)),
                    Some(c) if c.holder == Holder::Kubelet => return Err(Contended::ByKubelet),
                    Some(c) => {
                        c.cancel.send_replace(true);
                        c.released.clone()
                    }
                }
            };
            let notified = released.notified();
            tokio::pin!(notified);
            // Register before looking again, so a release between the two is not missed.
            notified.as_mut().enable();
            if !self.claims.lock().unwrap_or_else(|e| e.into_inner()).contains_key(target) {
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Contended::PollerTimedOut);
            }
        }
    }

    fn insert_claim(
        self: &Arc<Self>,
        claims: &mut HashMap<PathBuf, Claim>,
        target: &Path,
        holder: Holder,
    ) -> TargetGuard {
        let (cancel, cancelled) = watch::channel(false);
        claims.insert(target.to_path_buf(), Claim { holder, cancel, released: Arc::new(Notify::new()) });
        TargetGuard { registry: self.clone(), target: target.to_path_buf(), cancelled }
    }

    /// Who holds `target`, if anyone.
    pub fn holder(&self, target: &Path) -> Option<Holder> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner()).get(target).map(|c| c.holder)
    }

    /// The volume at `target`, if published.
    pub fn get(&self, target: &Path) -> Option<Volume> {
        self.volumes.lock().unwrap_or_else(|e| e.into_inner()).get(target).cloned()
    }

    /// Records or replaces a volume.
    pub fn insert(&self, target: PathBuf, volume: Volume) {
        self.volumes.lock().unwrap_or_else(|e| e.into_inner()).insert(target, volume);
    }

    /// Replaces the volume at `target` after a background refresh, keeping the parameters stored
    /// there now (in the same lock): kubelet may have brought fresh tokens while the refresh ran, and
    /// the refresh's copy of them is older.
    pub fn replace_keeping_params(&self, target: PathBuf, mut volume: Volume) {
        let mut volumes = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = volumes.get(&target) {
            volume.params = current.params.clone();
        }
        volumes.insert(target, volume);
    }

    /// Applies `f` to the volume at `target`, if any.
    pub fn update(&self, target: &Path, f: impl FnOnce(&mut Volume)) {
        if let Some(v) = self.volumes.lock().unwrap_or_else(|e| e.into_inner()).get_mut(target) {
            f(v);
        }
    }

    /// Forgets a volume.
    pub fn remove(&self, target: &Path) -> Option<Volume> {
        self.volumes.lock().unwrap_or_else(|e| e.into_inner()).remove(target)
    }

    /// Number of published volumes.
    pub fn len(&self) -> usize {
        self.volumes.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no volume is published.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of every volume.
    pub fn snapshot(&self) -> Vec<(PathBuf, Volume)> {
        self.volumes.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 26: kubelet's fresh tokens, stored while a poller refresh was recording, must not be
    /// overwritten by the poller's older copy when it stores its result.
    #[test]
    fn a_refresh_result_keeps_the_credentials_kubelet_stored_meanwhile() {
        use secrets_store::redact::{ExposeSecret, SecretString};
        let r = VolumeRegistry::default();
        let t = PathBuf::from("/t");
        let mut old = crate::publish::tests::params("/t");
        old.tokens = Some(SecretString::from("old-token"));
        r.insert(t.clone(), Volume::fresh(old.clone(), "p".into(), Default::default()));
        // kubelet's republish, while the refresh (which started with `old`) awaited the API:
        r.update(&t, |v| v.params.tokens = Some(SecretString::from("fresh-token")));
        let mut result = Volume::fresh(old, "p".into(), [("secret/a".to_string(), "v2".to_string())].into());
        result.failures = 0;
        r.replace_keeping_params(t.clone(), result);
        let v = r.get(&t).unwrap();
        assert_eq!(v.params.tokens.as_ref().unwrap().expose_secret(), "fresh-token");
        assert_eq!(v.object_versions["secret/a"], "v2", "the refresh's result is stored");
    }

    #[test]
    fn a_target_can_be_claimed_once_until_released() {
        let r = Arc::new(VolumeRegistry::default());
        let g = r.try_claim(Path::new("/t"), Holder::Poller).unwrap();
        assert!(r.try_claim(Path::new("/t"), Holder::Poller).is_none());
        assert!(r.try_claim(Path::new("/u"), Holder::Poller).is_some());
        drop(g);
        assert!(r.try_claim(Path::new("/t"), Holder::Poller).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn kubelet_cancels_the_poller_and_gets_the_target_when_it_lets_go() {
        let r = Arc::new(VolumeRegistry::default());
        let poller = r.try_claim(Path::new("/t"), Holder::Poller).unwrap();
        assert!(!poller.is_cancelled());
        let (r2, t) = (r.clone(), PathBuf::from("/t"));
        let kubelet = tokio::spawn(async move { r2.claim_for_kubelet(&t, Duration::from_secs(30)).await });
        // The poller sees the cancellation and lets go a little later.
        tokio::time::timeout(Duration::from_secs(1), poller.cancelled()).await.expect("cancelled");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!kubelet.is_finished(), "kubelet waits while the poller finishes its step");
        drop(poller);
        let guard = kubelet.await.unwrap().expect("kubelet gets the target");
        assert_eq!(r.holder(Path::new("/t")), Some(Holder::Kubelet));
        drop(guard);
        assert_eq!(r.holder(Path::new("/t")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poller_that_never_lets_go_times_out_and_two_kubelet_calls_conflict() {
        let r = Arc::new(VolumeRegistry::default());
        let _poller = r.try_claim(Path::new("/t"), Holder::Poller).unwrap();
        let err = r.claim_for_kubelet(Path::new("/t"), Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err, Contended::PollerTimedOut);
        let _k = r.claim_for_kubelet(Path::new("/u"), Duration::from_secs(5)).await.unwrap();
        let err = r.claim_for_kubelet(Path::new("/u"), Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err, Contended::ByKubelet);
    }
}
