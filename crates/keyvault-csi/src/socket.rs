//! Unix sockets only root can use (upstream #1981 created them with the process umask). The socket is
//! bound inside a fresh 0700 directory, made 0600, and only then renamed to its public path: there is
//! no moment at which another user could connect, whatever the umask.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Binds `path` (removing a stale socket first) with mode 0600; `flag` names the setting in errors.
pub fn bind_private(path: &Path, flag: &str) -> anyhow::Result<tokio::net::UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{flag}: cannot remove stale socket {}", path.display())),
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("{flag}: cannot create {}", dir.display()))?;
    let private = dir.join(format!(".keyvault-csi-bind-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("{flag}: cannot create {}", private.display()))?;
    let result = (|| {
        let staged = private.join("sock");
        let listener = tokio::net::UnixListener::bind(&staged)
            .with_context(|| format!("{flag}: cannot listen on {}", path.display()))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)
            .with_context(|| format!("{flag}: cannot move the socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[tokio::test]
    async fn the_socket_is_0600_from_its_first_moment_and_serves_at_its_public_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/csi.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "stale").unwrap();
        let listener = bind_private(&path, "--endpoint").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        tokio::net::UnixStream::connect(&path).await.unwrap();
        accept.await.unwrap().unwrap();
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["csi.sock"], "no staging directory is left behind");
    }
}
