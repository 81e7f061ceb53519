//! The read-through cache tier: local disk that makes reads fast and never
//! holds the only copy of anything (every line is a copy of immutable
//! segment bytes that stay in the object store).
//!
//! Lines are keyed by (segment, byte offset in the segment) — never by LBA —
//! so a line stays valid across restore and fork and an overwritten LBA can
//! never be served stale bytes: new data lives in a new segment.
//!
//! [`DiskCache`] (`disk.rs`) is the tier; [`NoCache`] turns it off.

mod disk;
mod index;

pub use disk::{DiskCache, CHECK_BYTES, LINE_BYTES};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Counters of a cache, since it was opened.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub hit_bytes: u64,
    pub inserts: u64,
    pub evictions: u64,
    /// Lines whose checksum failed on read: dropped, and refetched by the caller.
    pub corrupt_drops: u64,
    /// Inserts that could not be written (e.g. a full disk): reads stay uncached.
    pub write_errors: u64,
    /// Lines read ahead of a sequential reader, and how many of them were then read.
    pub prefetch_inserts: u64,
    pub prefetch_hits: u64,
    pub lines: u64,
    pub capacity_bytes: u64,
    /// Space the cache file really occupies on disk.
    pub physical_bytes: u64,
}

/// A cache of immutable segment bytes.
pub trait ReadCache: Send + Sync + std::fmt::Debug + 'static {
    /// Fills `dst` with bytes `from..from + dst.len()` of the line at
    /// `offset` of segment `seg` (`len` bytes, map checksum `crc`) if it is
    /// cached and intact; `from` and the end are 4 KiB aligned or the end is
    /// the line's. Callers trust what this returns without checking again.
    fn read_into(
        &self,
        seg: u64,
        offset: u64,
        len: u64,
        crc: u32,
        from: u64,
        dst: &mut [u8],
    ) -> bool;
    /// The whole line, if cached and intact (see [`ReadCache::read_into`]).
    fn get(&self, seg: u64, offset: u64, len: u64, crc: u32) -> Option<Bytes> {
        let mut buf = vec![0u8; len as usize];
        self.read_into(seg, offset, len, crc, 0, &mut buf)
            .then(|| Bytes::from(buf))
    }
    /// Offers bytes that were just written or fetched (and verified).
    fn insert(&self, seg: u64, offset: u64, data: Bytes);
    /// [`ReadCache::insert`] with the checksums the caller already has: the
    /// whole line's crc32c and each 4 KiB block's (the engine computes them
    /// once, as the data is written or verified), so the cache need not
    /// read the bytes again. `prefetched`: as [`ReadCache::insert_prefetched`].
    fn insert_checked(
        &self,
        seg: u64,
        offset: u64,
        data: Bytes,
        _checks: (u32, &[u32]),
        prefetched: bool,
    ) {
        match prefetched {
            true => self.insert_prefetched(seg, offset, data),
            false => self.insert(seg, offset, data),
        }
    }
    /// Whether the line is cached (no counters touched, no data read).
    fn contains(&self, _seg: u64, _offset: u64) -> bool {
        false
    }
    /// Offers bytes fetched ahead of a sequential reader (counted apart, so
    /// `stats` can tell how often read-ahead was used).
    fn insert_prefetched(&self, seg: u64, offset: u64, data: Bytes) {
        self.insert(seg, offset, data)
    }
    /// Whether inserts are kept at all (read-ahead is pointless otherwise).
    fn enabled(&self) -> bool {
        false
    }
    /// Bytes the cache holds at most (read-ahead stays well inside it).
    fn capacity_bytes(&self) -> u64 {
        0
    }
    /// Gives back at least `bytes` of disk space by dropping cold lines, for
    /// a neighbour that needs it more (the metadata database on a full disk).
    /// Returns the bytes freed.
    fn release(&self, _bytes: u64) -> u64 {
        0
    }
    /// Makes the cache's contents usable by the next process (clean detach).
    fn persist(&self) {}
    fn stats(&self) -> CacheStats {
        CacheStats::default()
    }
}

/// No cache: every read of flushed data goes to the object store.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCache;

impl ReadCache for NoCache {
    fn read_into(&self, _: u64, _: u64, _: u64, _: u32, _: u64, _: &mut [u8]) -> bool {
        false
    }
    fn insert(&self, _seg: u64, _offset: u64, _data: Bytes) {}
}
