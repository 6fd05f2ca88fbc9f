//! The tmpfs that holds a volume's files, behind a small [`Mounter`] seam.
//!
//! Mounting needs `CAP_SYS_ADMIN` (root in the DaemonSet; `unshare -rm` for tests as a normal user).
//! Every call here blocks; the node service runs them on `spawn_blocking`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sys_mount::{Mount, MountFlags, UnmountFlags};

/// What the mount table says about a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPoint {
    /// Filesystem type, e.g. `tmpfs`.
    pub fs_type: String,
}

/// Mounts and unmounts volume filesystems.
pub trait Mounter: Send + Sync + 'static {
    /// Mounts a fresh tmpfs at `target` (which exists).
    fn mount(&self, target: &Path) -> io::Result<()>;
    /// Unmounts `target`.
    fn unmount(&self, target: &Path) -> io::Result<()>;
    /// Returns the mount at exactly `target`, if any.
    fn mount_point(&self, target: &Path) -> io::Result<Option<MountPoint>>;
}

/// The real thing: a per-volume tmpfs, so secrets never touch the node's disk.
#[derive(Debug, Default, Clone)]
pub struct TmpfsMounter;

impl Mounter for TmpfsMounter {
    fn mount(&self, target: &Path) -> io::Result<()> {
        // Upstream mounts with no options at all (mode 1777, setuid/devices allowed). Files here are
        // never devices or setuid programs, so nosuid+nodev cost nothing; mode 0755 keeps the root of
        // the volume traversable by non-root containers without making it world-writable.
        Mount::builder()
            .fstype("tmpfs")
            .flags(MountFlags::NOSUID | MountFlags::NODEV)
            .data("mode=0755")
            .mount("tmpfs", target)
            .map(|_| ())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        match sys_mount::unmount(target, UnmountFlags::empty()) {
            Ok(()) => Ok(()),
            // A process still holds the volume open: detach it so the pod can terminate; the kernel
            // frees the tmpfs when the last user goes away.
            Err(e) if e.kind() == io::ErrorKind::ResourceBusy => sys_mount::unmount(target, UnmountFlags::DETACH),
            Err(e) => Err(e),
        }
    }

    fn mount_point(&self, target: &Path) -> io::Result<Option<MountPoint>> {
        // Fast path (kubelet's IsLikelyNotMountPoint): a mount has another device than its parent.
        // It keeps a rotation cycle over 1,000 volumes from parsing a 1,000-line mount table 1,000 times.
        use std::os::unix::fs::MetadataExt;
        let meta = match fs::metadata(target) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // A broken mount (e.g. ENOTCONN) is still a mount: let the mount table decide.
            Err(_) => return self.mount_point_from_table(target),
        };
        if let Some(parent) = target.parent()
            && fs::metadata(parent).is_ok_and(|p| p.dev() != meta.dev())
        {
            return Ok(Some(MountPoint { fs_type: String::new() }));
        }
        // Same device: not a mount, unless it is a bind mount of the same filesystem.
        self.mount_point_from_table(target)
    }
}

impl TmpfsMounter {
    fn mount_point_from_table(&self, target: &Path) -> io::Result<Option<MountPoint>> {
        let table = fs::read_to_string("/proc/self/mountinfo")?;
        let wanted = fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
        Ok(find_mount(&table, &wanted))
    }
}

/// No mount at all: files go into the target directory itself. For standalone use by a user who cannot
/// mount (the files then live on whatever filesystem holds the directory; say so to the user).
/// A directory counts as "mounted" once it holds a generation (`..data`).
#[derive(Debug, Default, Clone)]
pub struct PlainDirMounter;

impl Mounter for PlainDirMounter {
    fn mount(&self, _target: &Path) -> io::Result<()> {
        Ok(())
    }

    fn unmount(&self, _target: &Path) -> io::Result<()> {
        Ok(())
    }

    fn mount_point(&self, target: &Path) -> io::Result<Option<MountPoint>> {
        Ok(target.join("..data").exists().then(|| MountPoint { fs_type: "none".into() }))
    }
}

/// Finds the last (top-most) mount at `target` in a `/proc/self/mountinfo` table.
pub fn find_mount(mountinfo: &str, target: &Path) -> Option<MountPoint> {
    parse_mountinfo(mountinfo).into_iter().filter(|(p, _)| p == target).map(|(_, m)| m).next_back()
}

/// Parses `/proc/self/mountinfo` into (mount point, info) pairs.
pub fn parse_mountinfo(mountinfo: &str) -> Vec<(PathBuf, MountPoint)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = unescape(fields.get(4)?);
            let sep = fields.iter().position(|f| *f == "-")?;
            let fs_type = fields.get(sep + 1)?.to_string();
            Some((PathBuf::from(mount_point), MountPoint { fs_type }))
        })
        .collect()
}

/// The kernel escapes space, tab, newline and backslash in mount points as `\ooo` octal.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
98 22 0:50 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/secrets/mount rw,nosuid,nodev - tmpfs tmpfs rw,mode=755
99 22 0:51 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn finds_a_tmpfs_by_exact_mount_point() {
        let p = Path::new("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/secrets/mount");
        assert_eq!(find_mount(TABLE, p), Some(MountPoint { fs_type: "tmpfs".into() }));
        assert_eq!(find_mount(TABLE, Path::new("/var/lib/kubelet")), None);
    }

    #[test]
    fn unescapes_octal_mount_points() {
        assert!(find_mount(TABLE, Path::new("/mnt/with space")).is_some());
    }
}
