//! The read-through cache tier's interface. The NVMe tier itself (sparse
//! file, checksummed lines, eviction, warm restart) has its own issue; the
//! engine already talks to it through this trait so that tier drops in.
//!
//! Lines are keyed by (segment, byte offset in the segment) — never by LBA —
//! so a line stays valid across restore and fork and an overwritten LBA can
//! never be served stale bytes: new data lives in a new segment.

use bytes::Bytes;

/// A cache of immutable segment bytes.
pub trait ReadCache: Send + Sync + std::fmt::Debug + 'static {
    /// The `len` bytes at `offset` of segment `seg`, if cached and intact.
    fn get(&self, seg: u64, offset: u64, len: u64) -> Option<Bytes>;
    /// Offers bytes that were just written or fetched (and verified).
    fn insert(&self, seg: u64, offset: u64, data: Bytes);
}

/// No cache: every read of flushed data goes to the object store.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCache;

impl ReadCache for NoCache {
    fn get(&self, _seg: u64, _offset: u64, _len: u64) -> Option<Bytes> {
        None
    }
    fn insert(&self, _seg: u64, _offset: u64, _data: Bytes) {}
}
