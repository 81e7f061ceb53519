//! The object-store client of spritedisk: one narrow async trait, [`ObjectStore`],
//! with a `file://` implementation (the embedded default), an in-memory one and
//! a fault-injecting wrapper for tests, and `s3://` on aws-sdk-s3.
//!
//! The trait is deliberately narrow: only what every S3-compatible server
//! serves (get, ranged get, put, conditional put, head, delete, list).

pub mod blocking;
mod error;
mod fault;
mod file;
mod memory;
mod s3;
pub mod testing;
mod url;

pub use error::StoreError;
pub use fault::{CrashPolicy, FaultConfig, FaultStore};
pub use file::{write_all_parts, FileStore};
pub use memory::MemStore;
pub use s3::{share_client as share_s3_client, S3Store};
pub use url::{open_url, warm_up, StoreUrl};

use async_trait::async_trait;
use bytes::Bytes;

/// What `head` and `list` say about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Opaque version tag for conditional puts (S3's ETag).
    pub etag: String,
}

/// An object store addressed by `/`-separated keys relative to the store's root.
///
/// Puts are atomic: a reader sees the whole old object or the whole new one,
/// never a mixture. Conditional puts are atomic among concurrent callers.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug + 'static {
    /// Whole object. `StoreError::NotFound` when absent.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    /// `len` bytes from `offset`. A range past the end is `StoreError::OutOfRange`
    /// (a truncated object must never read as a short success).
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError>;
    /// Create or replace. Returns the new etag.
    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError>;
    /// Create only if absent (S3 If-None-Match: *), else `StoreError::PreconditionFailed`.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<String, StoreError>;
    /// [`ObjectStore::put_if_absent`] of the concatenation of `parts` (a
    /// segment: its index, then its pieces, which are the write buffer's
    /// own bytes). A store that can write them without joining them does
    /// (a file: one write per part); by default they are joined, one copy.
    async fn put_parts_if_absent(&self, key: &str, parts: &[Bytes]) -> Result<String, StoreError> {
        let data = match parts {
            [one] => one.clone(),
            parts => {
                let mut all = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
                for p in parts {
                    all.extend_from_slice(p);
                }
                Bytes::from(all)
            }
        };
        self.put_if_absent(key, data).await
    }
    /// Replace only if the current etag is `etag` (S3 If-Match), else
    /// `StoreError::PreconditionFailed` (also when the object is gone).
    async fn put_if_match(&self, key: &str, data: Bytes, etag: &str) -> Result<String, StoreError>;
    /// `None` when absent.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;
    /// Deleting an absent object succeeds (as on S3).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;
    /// Human-readable location of the store, for messages (`file:///srv/vol1`).
    fn describe(&self) -> String;
}

/// Etag of an object's bytes: length and crc32c, enough to tell versions of
/// the small objects that conditional puts guard (config, lease).
pub fn etag_of(data: &[u8]) -> String {
    format!("{:x}-{:08x}", data.len(), crc32c::crc32c(data))
}

/// Checks a key before it touches a path or a URL: no empty, absolute,
/// `.`/`..` or hidden-temp components.
pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with(".tmp-"))
        || key == ".lock";
    if bad {
        return Err(StoreError::InvalidKey(key.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod conformance;
