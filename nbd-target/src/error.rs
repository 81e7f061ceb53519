//! The crate's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("I/O on the NBD connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("client sent unknown handshake flags {0:#x}; closing the connection")]
    UnknownClientFlags(u32),
    #[error("client sent option magic {0:#018x} instead of IHAVEOPT; closing the connection")]
    BadOptionMagic(u64),
    #[error("client asked for export {0:?} with NBD_OPT_EXPORT_NAME, which does not exist; closing the connection")]
    UnknownExport(String),
    #[error("NBD_OPT_EXPORT_NAME with a {0}-byte name (at most 4096); closing the connection")]
    ExportNameTooLong(u32),
    #[error("request with bad magic {0:#010x}: the stream is out of sync; closing the connection")]
    BadRequestMagic(u32),
    #[error("the client did not finish the handshake within {0:?}; closing the connection")]
    HandshakeTimeout(std::time::Duration),
    #[error("the connection's reply writer stopped")]
    WriterGone,
}
