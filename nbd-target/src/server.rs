//! Listeners: accept connections on a Unix or TCP socket and serve each one.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use spritedisk_volume::BlockIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::handshake::{self, Export, Outcome};
use crate::{local_socket, transmission, NbdError};

/// Pause after a failed accept (e.g. EMFILE) so we do not spin.
const ACCEPT_RETRY_DELAY_MS: u64 = 100;

/// Connections one server serves at once unless told otherwise (review
/// M9): each may pin [`transmission::INFLIGHT_READ_LEN_MAX_BYTES`] of read
/// data (a worst case: 64 reads of 4 MiB each in flight). Clients open
/// several connections: nbdcopy and qemu's multi-conn 4, fio's nbd engine
/// one per job (`make bench` runs 16 jobs; a default of 8 broke it).
pub const CONNECTIONS_MAX_DEFAULT: usize = 32;
/// How long a client may take from its connection to the end of option
/// haggling (qemu-nbd's default handshake limit is also 10 s): a client
/// that connects and says nothing holds a connection slot no longer.
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// What one server lets its clients hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; one more is closed at once, before the
    /// greeting, and the refusal logged.
    pub connections_max: usize,
    /// From accept to the end of the handshake; then the connection is closed.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_max: CONNECTIONS_MAX_DEFAULT,
            handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
        }
    }
}

/// An NBD server exporting one device under one name (the empty name also
/// selects it).
pub struct NbdServer<D: BlockIo> {
    dev: Arc<D>,
    export_name: String,
    limits: Limits,
    /// One permit per connection being served.
    slots: Arc<Semaphore>,
    /// True once a listener is bound (see [`Self::listening`]).
    listening: watch::Sender<bool>,
}

impl<D: BlockIo> NbdServer<D> {
    pub fn new(dev: Arc<D>, export_name: String) -> Self {
        Self::with_limits(dev, export_name, Limits::default())
    }

    pub fn with_limits(dev: Arc<D>, export_name: String, limits: Limits) -> Self {
        assert!(
            limits.connections_max > 0,
            "an NBD server must accept a connection"
        );
        NbdServer {
            dev,
            export_name,
            limits,
            slots: Arc::new(Semaphore::new(limits.connections_max)),
            listening: watch::Sender::new(false),
        }
    }

    /// Returns once a `serve_*` call has its listener bound and accepting:
    /// what a caller waits for before telling anyone to connect (without
    /// a probe connection, which would hold one of the connection slots
    /// until the server saw it hang up).
    pub async fn listening(&self) {
        let mut rx = self.listening.subscribe();
        let _ = rx.wait_for(|up| *up).await;
    }

    /// Serves on a Unix socket at `path` until `*shutdown` becomes true.
    ///
    /// A leftover socket file nobody listens on is removed first; a live one,
    /// or a non-socket file, is an error. The socket file is removed on return.
    /// The socket is 0600 and serves only root and this process's user
    /// ([`local_socket`]); anyone else's connection is closed and logged.
    ///
    /// On shutdown we stop accepting and return `Ok`; connections already
    /// accepted keep running as detached tasks until their client disconnects
    /// (or the runtime is dropped). They are not cut off because cancelling
    /// an engine call half-way is not known to be safe. If the shutdown
    /// sender is dropped without sending `true`, we serve forever.
    pub async fn serve_unix(
        self: Arc<Self>,
        path: &Path,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), NbdError> {
        remove_stale_socket(path)?;
        let listener = local_socket::bind_private(path).map_err(|source| NbdError::Listen {
            addr: path.display().to_string(),
            source,
        })?;
        info!(path = %path.display(), export = %self.export_name, "nbd server listening");
        self.listening.send_replace(true);
        let listener = &listener;
        let result = self
            .accept_loop(
                || async move {
                    loop {
                        let (s, _) = listener.accept().await?;
                        match local_socket::check_peer(&s) {
                            Ok(()) => return Ok((s, "unix".to_string())),
                            Err(why) => warn!("nbd: {why}"),
                        }
                    }
                },
                shutdown,
            )
            .await;
        let _ = std::fs::remove_file(path);
        result
    }

    /// Serves on TCP at `addr` until `*shutdown` becomes true (same shutdown
    /// behaviour as [`Self::serve_unix`]).
    pub async fn serve_tcp(
        self: Arc<Self>,
        addr: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), NbdError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| NbdError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        self.serve_tcp_listener(listener, shutdown).await
    }

    /// Like [`Self::serve_tcp`] on an already-bound listener (e.g. port 0).
    pub async fn serve_tcp_listener(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), NbdError> {
        info!(addr = ?listener.local_addr().ok(), export = %self.export_name, "nbd server listening");
        self.listening.send_replace(true);
        let listener = &listener;
        self.accept_loop(
            || async move {
                let (s, peer) = listener.accept().await?;
                // Small replies (write acks) must not wait for Nagle.
                s.set_nodelay(true)?;
                Ok((s, peer.to_string()))
            },
            shutdown,
        )
        .await
    }

    /// Serves one accepted connection: handshake (within the limit's
    /// timeout), then transmission until the client disconnects. `Ok` on
    /// NBD_OPT_ABORT, NBD_CMD_DISC or a hang-up between requests; `Err` on
    /// protocol violations, I/O errors and a handshake that took too long.
    pub async fn serve_conn<S>(self: Arc<Self>, mut stream: S) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let export = Export {
            name: self.export_name.clone(),
            size_bytes: self.dev.size_bytes(),
            block_size: self.dev.block_size(),
        };
        let limit = self.limits.handshake_timeout;
        let negotiated = tokio::time::timeout(limit, handshake::negotiate(&mut stream, &export))
            .await
            .map_err(|_| NbdError::HandshakeTimeout(limit))??;
        match negotiated {
            Outcome::Closed => Ok(()),
            Outcome::Transmission => transmission::serve(self.dev.clone(), stream).await,
        }
    }

    async fn accept_loop<S, F, Fut>(
        self: Arc<Self>,
        mut accept: F,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = std::io::Result<(S, String)>>,
    {
        let mut shutdown_open = true;
        loop {
            if *shutdown.borrow_and_update() {
                info!("nbd server shutting down");
                return Ok(());
            }
            tokio::select! {
                accepted = accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                            warn!(%peer, max = self.limits.connections_max,
                                "nbd: refused a connection: the server already serves its maximum (--nbd-max-connections)");
                            drop(stream);
                            continue;
                        };
                        debug!(%peer, "nbd connection accepted");
                        let server = self.clone();
                        tokio::spawn(async move {
                            let _slot = slot;
                            match server.serve_conn(stream).await {
                                Ok(()) => debug!(%peer, "nbd connection closed"),
                                // A client hanging up mid-stream (or a liveness probe) is not worth a warning.
                                Err(NbdError::Io(e))
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::ConnectionReset
                                            | std::io::ErrorKind::BrokenPipe
                                            | std::io::ErrorKind::UnexpectedEof
                                    ) =>
                                {
                                    debug!(%peer, error = %e, "nbd client hung up")
                                }
                                Err(e) => warn!(%peer, error = %e, "nbd connection ended with an error"),
                            }
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "nbd accept failed");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_DELAY_MS)).await;
                    }
                },
                changed = shutdown.changed(), if shutdown_open => {
                    // A dropped sender can never ask for shutdown: keep serving.
                    shutdown_open = changed.is_ok();
                }
            }
        }
    }
}

fn remove_stale_socket(path: &Path) -> Result<(), NbdError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !meta.file_type().is_socket() {
        return Err(NbdError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    // Someone still answering means another server owns it.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(NbdError::Listen {
            addr: path.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process is serving on this socket",
            ),
        });
    }
    std::fs::remove_file(path)?;
    Ok(())
}
