//! The engine's one error type; frontends map it to an errno with [`VolumeError::errno`].

use spritedisk_meta::MetaError;
use spritedisk_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("I/O not aligned to the {block_size}-byte block size: offset {offset}, length {len}")]
    Unaligned {
        offset: u64,
        len: u64,
        block_size: u32,
    },
    #[error("I/O beyond the end of the volume: offset {offset}, length {len}, volume size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("request too large: {len} bytes (at most {max} bytes per request)")]
    TooLarge { len: u64, max: u64 },
    #[error("object store: {0}")]
    Store(#[from] StoreError),
    #[error("metadata database: {0}")]
    Meta(#[from] MetaError),
    #[error("corrupt segment {key}: {reason}")]
    CorruptSegment { key: String, reason: String },
    #[error("flush did not complete within {timeout_ms} ms: the object store keeps failing ({last_error})")]
    FlushTimeout { timeout_ms: u64, last_error: String },
    #[error("no volume at {url}: run 'spritedisk create {url}' first")]
    NoVolume { url: String },
    #[error("a volume already exists at {url}: pick another URL or delete it first (spritedisk rm {url})")]
    AlreadyExists { url: String },
    #[error("{url} is not empty (it holds {keys}): the leftovers of a deleted volume? Remove them with 'spritedisk rm {url}', or pick another URL")]
    NotEmpty { url: String, keys: String },
    #[error("{url} has forks that read its segments: {forks}; remove them first (spritedisk rm FORK_URL)")]
    HasForks { url: String, forks: String },
    #[error("invalid volume configuration: {0}")]
    BadConfig(String),
    #[error("the local metadata in {path} does not belong to this volume ({reason}); delete that directory (it is only a cache) and attach again")]
    ForeignMetadata { path: String, reason: String },
    #[error("{0}")]
    WriteLog(String),
    #[error("volume is stopped: {0}")]
    Stopped(String),
    #[error("checkpoint not taken: its deadline passed {late_ms} ms before the map could be recorded ({busy_ms} ms spent flushing); nothing was recorded")]
    CheckpointTooLate { late_ms: u64, busy_ms: u64 },
    #[error("checkpoint not taken: cancelled by its caller; nothing was recorded")]
    CheckpointCancelled,
    #[error("{url} is attached by {holder} (lease renewed {renewed_secs_ago} s ago): detach it there, or take it over with --force (that daemon is then fenced: its next flush fails)")]
    Leased {
        url: String,
        holder: String,
        renewed_secs_ago: u64,
    },
    #[error("checkpoint {checkpoint:?} is the base of the fork at {fork}: it stays while that volume exists")]
    ForkBase { checkpoint: String, fork: String },
    #[error("fenced: another writer took this volume over ({0}); this daemon stopped writing")]
    Fenced(String),
    #[error("cannot recover: {0}")]
    NotRecoverable(String),
}

impl VolumeError {
    /// The errno a block-device frontend reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            VolumeError::Unaligned { .. } | VolumeError::OutOfRange { .. } => libc_errno::EINVAL,
            VolumeError::TooLarge { .. } => libc_errno::EOVERFLOW,
            VolumeError::Stopped(_) => libc_errno::ESHUTDOWN,
            _ => libc_errno::EIO,
        }
    }
}

/// The few errno values the engine reports (Linux numbering, as NBD and ublk use).
pub mod libc_errno {
    pub const EIO: i32 = 5;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EOVERFLOW: i32 = 75;
    pub const ESHUTDOWN: i32 = 108;
}
