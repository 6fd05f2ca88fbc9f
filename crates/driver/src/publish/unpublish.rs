//! kubelet's `NodeUnpublishVolume`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::wait_budget;
use crate::error::UnpublishError;
use crate::mounter::Mounter;
use crate::node::{Driver, blocking};

impl Driver {
    /// `NodeUnpublishVolume`: remove the files, unmount, remove the directory, forget the volume.
    /// Idempotent: an unknown or already removed target succeeds. A refresh of the same volume by the
    /// poller is cancelled and awaited, never reported as a conflict.
    pub async fn unpublish(
        &self,
        volume_id: &str,
        target_path: &str,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), UnpublishError> {
        if volume_id.is_empty() {
            return Err(UnpublishError::InvalidArgument("Volume ID missing in request".into()));
        }
        if target_path.is_empty() {
            return Err(UnpublishError::InvalidArgument("Target path missing in request".into()));
        }
        let target = PathBuf::from(target_path);
        let _claim = self
            .volumes
            .claim_for_kubelet(&target, wait_budget(deadline))
            .await
            .map_err(|_| UnpublishError::Busy(target.clone()))?;
        let mounter = self.mounter.clone();
        let t = target.clone();
        let result = blocking(move || clean_and_unmount(&*mounter, &t))
            .await
            .map_err(|source| UnpublishError::Cleanup { path: target.clone(), source });
        self.metrics.unpublish(result.is_ok());
        result?;
        if let Some(volume) = self.volumes.remove(&target)
            && let Some(writer) = &self.writer
        {
            // Deleting the pod status is bookkeeping (the API server also garbage-collects it with the
            // pod, which owns it), so kubelet does not wait for an API round trip: upstream's unpublish
            // makes none. The writer drops whatever this volume still owed, then deletes the status.
            if !writer.try_submit(crate::api_writes::Job::Remove(volume.params)) {
                tracing::warn!(target = %target.display(), pending = writer.pending(), "the API write queue is full; the pod status is left to the API server's garbage collection");
            }
        }
        Ok(())
    }
}

/// Deletes the contents first (fixes "directory not empty" unmount failures, upstream #936), then
/// unmounts and removes the directory. `ENOENT` anywhere means someone already did it.
fn clean_and_unmount(mounter: &dyn Mounter, target: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(target) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let res = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        if let Err(e) = res {
            tracing::warn!(path = %path.display(), error = %e, "failed to remove volume entry");
        }
    }
    if mounter.mount_point(target)?.is_some() {
        mounter.unmount(target)?;
    }
    match fs::remove_dir(target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
