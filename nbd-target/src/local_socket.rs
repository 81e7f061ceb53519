//! Unix sockets that only the daemon's user and root may use (review M8,
//! docs/design/0017): the NBD socket (read and write the disk), the control
//! socket (restore, gc) and a warm-pool standby's socket all go through
//! here. Two layers, each enough alone: the socket file is 0600, so the
//! kernel refuses `connect` to anyone else; and every accepted connection's
//! peer credentials (`SO_PEERCRED`, taken by the kernel at `connect`) are
//! checked, which also covers the instant between `bind` and `chmod` and a
//! socket whose mode someone loosened later.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::net::{UnixListener, UnixStream};

/// The socket file's mode: read and write (connect) for its owner only.
pub const SOCKET_MODE: u32 = 0o600;

/// Binds a Unix socket at `path` and makes it 0600. In a tokio runtime.
pub fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    let listener = UnixListener::bind(path)?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

/// Whether a peer running as `peer_uid` may use a socket of a daemon
/// running as `daemon_uid`: root, or the same user.
pub fn uid_allowed(peer_uid: u32, daemon_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == daemon_uid
}

/// Checks an accepted connection's peer; the error says who was refused
/// (for the daemon's log: the peer itself only sees the connection close).
pub fn check_peer(stream: &UnixStream) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("refused a connection whose peer credentials are unreadable: {e}"))?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if uid_allowed(cred.uid(), me) {
        Ok(())
    } else {
        Err(format!(
            "refused a connection from uid {} (pid {}): only root and uid {me} may use this socket",
            cred.uid(),
            cred.pid().map_or_else(|| "?".into(), |p| p.to_string())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn only_root_and_the_daemons_user() {
        assert!(uid_allowed(0, 1000));
        assert!(uid_allowed(1000, 1000));
        assert!(!uid_allowed(1001, 1000));
        assert!(uid_allowed(0, 0));
        assert!(!uid_allowed(65534, 0));
    }

    #[tokio::test]
    async fn the_socket_is_0600_and_its_owner_passes_the_check() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("s.sock");
        let listener = bind_private(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let _client = UnixStream::connect(&path).await.unwrap();
        let (conn, _) = listener.accept().await.unwrap();
        check_peer(&conn).unwrap();
    }
}
