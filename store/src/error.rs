#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("conditional put of {0} failed: the object exists or changed")]
    PreconditionFailed(String),
    #[error("range {offset}+{len} is past the end of {key} ({size} bytes)")]
    OutOfRange {
        key: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{op} {key}: {source}")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} was written but cannot be made durable (fsync of its directory failed: {source}); stopping rather than trusting it")]
    NotDurable {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("injected fault: {0}")]
    Injected(String),
    /// A remote store's answer or silence (S3).
    #[error("{op} {key}: {detail}")]
    Remote {
        op: &'static str,
        key: String,
        detail: String,
        transient: bool,
    },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, key: &str, source: std::io::Error) -> Self {
        StoreError::Io {
            op,
            key: key.to_string(),
            source,
        }
    }

    /// Whether retrying the same request may succeed (an outage, a full disk
    /// being freed), as opposed to an answer that will not change.
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind as K;
        match self {
            StoreError::Injected(_) => true,
            StoreError::Remote { transient, .. } => *transient,
            // A full disk can be freed and a network can come back; a
            // permission, a read-only mount or a wrong path will not change.
            StoreError::Io { source, .. } => !matches!(
                source.kind(),
                K::PermissionDenied
                    | K::ReadOnlyFilesystem
                    | K::NotADirectory
                    | K::IsADirectory
                    | K::InvalidInput
                    | K::InvalidFilename
                    | K::Unsupported
            ),
            _ => false,
        }
    }
}
