//! Unix sockets only root can use (upstream #1981 created them with the process umask). The socket is
//! bound inside a fresh 0700 directory, made 0600, and only then renamed to its public path: there is
//! no moment at which another user could connect, whatever the umask.
//!
//! On the way out a process removes its socket only if the path still holds that socket: during a
//! rolling update or a migration the successor (our next pod, or the add-on's) has already bound the
//! same path, and removing it would make the successor unreachable ("provider not found").

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The socket file a process bound: removed on exit only while it is still this one.
#[derive(Debug, Clone)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    /// Removes the socket unless another process has bound the path since.
    pub fn remove_if_ours(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => {
                let _ = std::fs::remove_file(&self.path);
            }
            Ok(_) => tracing::info!(socket = %self.path.display(), "socket rebound by a successor; left in place"),
            Err(_) => {}
        }
    }
}

/// An I/O error with what was being done (`flag: cannot ... path`).
fn context(flag: &str, what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> std::io::Error {
    let message = format!("{flag}: cannot {what} {}", path.display());
    move |e| std::io::Error::new(e.kind(), format!("{message}: {e}"))
}

/// Binds `path` (removing a stale socket first) with mode 0600; `flag` names the setting in errors.
pub fn bind_private(path: &Path, flag: &str) -> std::io::Result<(tokio::net::UnixListener, SocketFile)> {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(context(flag, "remove stale socket", path)(e)),
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(context(flag, "create", dir))?;
    let private = dir.join(format!(".keyvault-csi-bind-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    std::fs::DirBuilder::new().mode(0o700).create(&private).map_err(context(flag, "create", &private))?;
    let result = (|| {
        let staged = private.join("sock");
        let listener = tokio::net::UnixListener::bind(&staged).map_err(context(flag, "listen on", path))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        let m = std::fs::symlink_metadata(&staged)?;
        std::fs::rename(&staged, path).map_err(context(flag, "move the socket to", path))?;
        Ok((listener, SocketFile { path: path.to_path_buf(), identity: (m.dev(), m.ino()) }))
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// The connections of a listener, as tonic serves them: any `:authority` a Unix-socket client sends
/// is accepted (grpc-core sends the socket path; see [`crate::uds_authority`]).
pub fn incoming(
    listener: tokio::net::UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<crate::uds_authority::LenientAuthority<tokio::net::UnixStream>>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|c| c.map(crate::uds_authority::LenientAuthority::new))
}

/// Where the CSI server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(std::path::PathBuf),
    /// A TCP address.
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// `unix://tmp/csi.sock` → `/tmp/csi.sock` (upstream prepends `/`), `unix:///csi/csi.sock` → `/csi/csi.sock`.
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("unix://") {
        let rest = s[7..].trim_start_matches('/');
        if rest.is_empty() {
            return Err(format!("invalid endpoint {s:?}: empty socket path"));
        }
        Ok(Endpoint::Unix(std::path::PathBuf::from(format!("/{rest}"))))
    } else if lower.starts_with("tcp://") {
        let addr = &s[6..];
        if addr.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()) {
            return Err(format!("invalid endpoint {s:?}: expected tcp://host:port"));
        }
        Ok(Endpoint::Tcp(addr.to_string()))
    } else {
        Err(format!("invalid endpoint {s:?}: must start with unix:// or tcp://"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn endpoints_follow_upstream() {
        assert_eq!(parse_endpoint("unix://tmp/csi.sock").unwrap(), Endpoint::Unix("/tmp/csi.sock".into()));
        assert_eq!(parse_endpoint("unix:///csi/csi.sock").unwrap(), Endpoint::Unix("/csi/csi.sock".into()));
        assert_eq!(parse_endpoint("UNIX:///csi/csi.sock").unwrap(), Endpoint::Unix("/csi/csi.sock".into()));
        assert_eq!(parse_endpoint("tcp://127.0.0.1:10000").unwrap(), Endpoint::Tcp("127.0.0.1:10000".into()));
        assert!(parse_endpoint("http://x").is_err());
        assert!(parse_endpoint("unix://").is_err());
    }

    #[tokio::test]
    async fn the_socket_is_0600_from_its_first_moment_and_serves_at_its_public_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/csi.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "stale").unwrap();
        let (listener, file) = bind_private(&path, "--endpoint").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        tokio::net::UnixStream::connect(&path).await.unwrap();
        accept.await.unwrap().unwrap();
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["csi.sock"], "no staging directory is left behind");
        file.remove_if_ours();
        assert!(!path.exists(), "removed on the way out");
    }

    #[tokio::test]
    async fn a_process_on_its_way_out_leaves_its_successors_socket_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("azure.sock");
        let (_old, old_file) = bind_private(&path, "--endpoint").unwrap();
        let (new, _new_file) = bind_private(&path, "--endpoint").unwrap();
        old_file.remove_if_ours();
        assert!(path.exists(), "the successor's socket stays");
        let accept = tokio::spawn(async move { new.accept().await.map(|_| ()) });
        tokio::net::UnixStream::connect(&path).await.unwrap();
        accept.await.unwrap().unwrap();
    }
}
