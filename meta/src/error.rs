use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open metadata database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("metadata database is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "segment {seq} (following segment {prev}, epoch {epoch}) cannot follow the last applied segment {applied} (epoch {applied_epoch}, successor at {next})"
    )]
    OutOfOrder {
        applied: u64,
        prev: u64,
        seq: u64,
        epoch: u64,
        applied_epoch: u64,
        next: u64,
    },
    #[error("{0}")]
    Checkpoint(String),
    #[error("metadata replica: {0}")]
    Ltx(String),
    #[error("metadata mismatch: {0}")]
    Mismatch(String),
}

impl MetaError {
    /// The database could not grow: its disk is full. Worth retrying once
    /// space is freed (nothing was applied; the transaction rolled back).
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            MetaError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DiskFull
        )
    }

    pub(crate) fn open(path: &Path, source: rusqlite::Error) -> Self {
        MetaError::Open {
            path: path.display().to_string(),
            source,
        }
    }
}
