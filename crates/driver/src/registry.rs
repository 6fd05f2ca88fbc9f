//! The node's volumes: what was published where, and one operation per target at a time.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::volume_context::PublishParams;

/// A volume this driver published successfully.
#[derive(Clone, Debug)]
pub struct Volume {
    /// The request that produced it (tokens and secrets stay redacted); rotation replays it.
    pub params: PublishParams,
    /// Provider that serves it.
    pub provider: String,
    /// Object id → version, as last fetched.
    pub object_versions: std::collections::BTreeMap<String, String>,
    /// When the provider last answered successfully for this volume: the rotation clock.
    pub last_fetch: Instant,
    /// Consecutive failed refreshes (reset by a success).
    pub failures: u32,
    /// After a failed refresh, not before this.
    pub retry_at: Option<Instant>,
}

/// Volumes by target path, plus the set of targets with an operation in flight.
#[derive(Debug, Default)]
pub struct VolumeRegistry {
    volumes: Mutex<HashMap<PathBuf, Volume>>,
    busy: Mutex<HashSet<PathBuf>>,
}

/// Held while an operation runs on a target; releases it on drop.
#[derive(Debug)]
pub struct TargetGuard {
    registry: Arc<VolumeRegistry>,
    target: PathBuf,
}

impl Drop for TargetGuard {
    fn drop(&mut self) {
        self.registry.busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.target);
    }
}

impl VolumeRegistry {
    /// Claims `target`, or returns `None` when another operation holds it (CSI wants `ABORTED` then).
    pub fn try_claim(self: &Arc<Self>, target: &Path) -> Option<TargetGuard> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.insert(target.to_path_buf()).then(|| TargetGuard { registry: self.clone(), target: target.to_path_buf() })
    }

    /// The volume at `target`, if published.
    pub fn get(&self, target: &Path) -> Option<Volume> {
        self.volumes.lock().unwrap_or_else(|e| e.into_inner()).get(target).cloned()
    }

    /// Records or replaces a volume.
    pub fn insert(&self, target: PathBuf, volume: Volume) {
        self.volumes.lock().unwrap_or_else(|e| e.into_inner()).insert(target, volume);
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

    #[test]
    fn a_target_can_be_claimed_once_until_released() {
        let r = Arc::new(VolumeRegistry::default());
        let g = r.try_claim(Path::new("/t")).unwrap();
        assert!(r.try_claim(Path::new("/t")).is_none());
        assert!(r.try_claim(Path::new("/u")).is_some());
        drop(g);
        assert!(r.try_claim(Path::new("/t")).is_some());
    }
}
