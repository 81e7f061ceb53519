//! The volume's identity object in the store (`volume.json`) and the
//! engine's tunable bounds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Key of the volume's identity object, written once by `create`.
pub const CONFIG_KEY: &str = "volume.json";
pub const CONFIG_FORMAT: u32 = 1;
/// The only block size: ublk and NBD both serve 4 KiB logical blocks, and
/// it keeps the map 8× smaller than 512-byte sectors would.
pub const BLOCK_SIZE: u32 = 4096;
pub const DEFAULT_SIZE_BYTES: u64 = 100 << 30;

/// What `create` stores under [`CONFIG_KEY`]; it never changes afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeConfig {
    pub format: u32,
    pub id: String,
    pub size_bytes: u64,
    pub block_size: u32,
    pub created_unix: i64,
    /// A fork's parent: the URL whose `forks/<id>.json` pins it. Recorded
    /// before the pin is written, so `rm` of a fork can release its pin
    /// even when the fork failed before its metadata reached the store.
    /// Absent in volumes that are not forks, and in forks made before it
    /// was recorded (their replica names the parent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_of: Option<String>,
}

impl VolumeConfig {
    pub fn new(size_bytes: u64) -> Self {
        VolumeConfig {
            format: CONFIG_FORMAT,
            id: uuid::Uuid::new_v4().to_string(),
            size_bytes,
            block_size: BLOCK_SIZE,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            fork_of: None,
        }
    }

    /// Checks what a config read from the store claims before trusting it.
    pub fn validate(&self) -> Result<[u8; 16], String> {
        if self.format != CONFIG_FORMAT {
            return Err(format!(
                "unsupported volume format {} (this build reads {CONFIG_FORMAT})",
                self.format
            ));
        }
        if self.block_size != BLOCK_SIZE {
            return Err(format!(
                "block size {} is not supported (only {BLOCK_SIZE})",
                self.block_size
            ));
        }
        if self.size_bytes == 0 || !self.size_bytes.is_multiple_of(self.block_size as u64) {
            return Err(format!(
                "size {} is not a positive multiple of the block size",
                self.size_bytes
            ));
        }
        uuid::Uuid::parse_str(&self.id)
            .map(|u| *u.as_bytes())
            .map_err(|e| format!("bad volume id {:?}: {e}", self.id))
    }
}

/// What a FLUSH (or a FUA write) waits for before it returns
/// (docs/design/0014).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The writes are in a segment in the object store, applied to the
    /// map: they survive the loss of the machine.
    #[default]
    Store,
    /// The writes are in the local write journal, `fdatasync`ed; segments
    /// are uploaded afterwards. They survive a daemon crash and a power
    /// cut with the disk intact, not the loss of the machine.
    Local,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Store => "store",
            Durability::Local => "local",
        }
    }
}

/// Bounds and timings of the engine. Every queue and retry has a named bound.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// A segment is sealed and uploaded when the write buffer holds this much
    /// data. 8 MiB: one PUT amortises its ~20–50 ms of S3 latency over enough
    /// data to run near a stream's bandwidth, while a flush-heavy workload
    /// still seals small segments early.
    pub segment_bytes: u64,
    /// Data held in memory (write buffer + segments not yet durable). Writers
    /// wait (backpressure) above it.
    pub dirty_bytes_max: u64,
    /// Segment PUTs in flight at once.
    pub upload_inflight_max: usize,
    /// A FLUSH that cannot reach the store for this long fails with EIO
    /// (its data stays buffered and is retried).
    pub flush_timeout: Duration,
    /// Buffered writes older than this are sealed and uploaded even without
    /// a FLUSH, bounding what a crash of an idle client can lose.
    pub writeback_delay: Duration,
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    /// Size of the local read cache under the cache directory (0: none).
    pub cache_bytes: u64,
    /// How far ahead of a sequential reader flushed data is fetched into the
    /// cache (0: no read-ahead).
    pub prefetch_window_bytes: u64,
    /// Seed of the retry jitter, so fault tests replay exactly.
    pub seed: u64,
    /// How often metadata changes are shipped to the replica in the store.
    pub replica_interval: Duration,
    /// A holder that has not renewed its lease for this long is presumed
    /// dead and may be taken over; renewals come every third of it.
    pub lease_ttl: Duration,
    /// Take the lease even from a live holder (`--force`), fencing it.
    pub take_over: bool,
    /// Resume after this directory's daemon died (`spritedisk recover`):
    /// the lease is taken back only as any attach would (from a holder
    /// certainly gone from this kernel, or released, or expired), and local
    /// state that another writer has moved past is refused, never silently
    /// discarded: its write log holds writes the dead daemon acknowledged.
    pub reclaim: bool,
    /// Map lookups of reads on read-only connections of their own (on-disk
    /// metadata); false: on the writer's connection, under its lock, as
    /// with metadata in memory (the engine benchmark's baseline).
    pub map_readers: bool,
    /// Map lookups of reads remembered until the map changes
    /// (docs/design/0018); false: every read looks the map up (the engine
    /// benchmark's baseline).
    pub lookup_memo: bool,
    /// What a FLUSH waits for (needs a cache directory for `Local`).
    pub durability: Durability,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            segment_bytes: 8 << 20,
            dirty_bytes_max: 64 << 20,
            upload_inflight_max: 4,
            flush_timeout: Duration::from_secs(60),
            writeback_delay: Duration::from_secs(5),
            retry_backoff_min: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(5),
            cache_bytes: 0,
            prefetch_window_bytes: 4 << 20,
            seed: 0,
            replica_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(30),
            take_over: false,
            reclaim: false,
            map_readers: true,
            lookup_memo: true,
            durability: Durability::Store,
        }
    }
}
