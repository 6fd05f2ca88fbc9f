//! Volumes found after a restart: taken back when their tmpfs is still mounted and populated.

use std::io;

use super::Holder;
use crate::node::{Driver, blocking};
use crate::registry::Volume;

impl Driver {
    /// After a restart: takes back the volumes the cluster says this node published whose tmpfs is
    /// still mounted and populated, so the poller rotates them again without waiting for kubelet's
    /// republish (which also brings fresh service-account tokens). A volume kubelet already
    /// republished, or one whose mount is gone, is left alone: nothing is mounted twice. Returns the
    /// number adopted.
    pub async fn adopt(&self, volumes: Vec<crate::node::Rediscovered>) -> usize {
        let mut adopted = 0;
        for (params, versions) in volumes {
            let target = params.target_path.clone();
            if self.volumes.get(&target).is_some() {
                continue;
            }
            // Claimed before the mount is checked: kubelet unpublishing meanwhile would otherwise leave
            // a volume recorded for a plain directory, which rotation would then write secrets into.
            let Some(_claim) = self.volumes.try_claim(&target, Holder::Poller) else { continue };
            let mounter = self.mounter.clone();
            let t = target.clone();
            let populated =
                blocking(move || Ok::<_, io::Error>(mounter.mount_point(&t)?.is_some() && t.join("..data").exists()))
                    .await;
            if !matches!(populated, Ok(true)) {
                continue;
            }
            if self.volumes.get(&target).is_none() {
                // The recorded versions: the first refresh rewrites the status only if one changed.
                let mut volume = Volume::fresh(params, String::new(), versions);
                volume.refresh_seen = self.refresh_marks(&volume.params);
                volume.interval = self.volume_interval(&volume.params);
                // Nodes restarted together (a driver rollout) would otherwise all poll at the same
                // moments: each node's first poll comes at its own phase of the whole interval (when
                // the volume was last fetched is not known here).
                self.phase_first_poll(&mut volume, 1);
                self.volumes.insert(target.clone(), volume);
                adopted += 1;
            }
        }
        adopted
    }
}
