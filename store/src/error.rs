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
    #[error("injected fault: {0}")]
    Injected(String),
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
        matches!(self, StoreError::Io { .. } | StoreError::Injected(_))
    }
}
