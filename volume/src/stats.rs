//! Counters and the `stats` view of an attached volume.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::engine::Inner;
use crate::VolumeError;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub writes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    /// FLUSHes that sealed (the rest shared a round or had nothing new).
    pub flush_rounds: AtomicU64,
    /// Sync rounds of the write journal (local durability: one per group
    /// of FLUSHes).
    pub journal_syncs: AtomicU64,
    /// Time their `fdatasync`s took (nanoseconds, summed).
    pub journal_sync_ns: AtomicU64,
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    pub replica_files: AtomicU64,
    pub replica_bytes: AtomicU64,
    /// Map lookups of the read path, and the time they took.
    pub read_lookups: AtomicU64,
    pub read_lookup_ns: AtomicU64,
    /// Reads whose lookup the memo answered (0018).
    pub read_memo_hits: AtomicU64,
    /// Time the read path waited to take an engine-wide lock.
    pub read_lock_wait_ns: AtomicU64,
    /// Bytes of sealed segments still in memory, whoever holds them.
    pub segment_bytes_alive: std::sync::Arc<AtomicU64>,
    /// Where written bytes spend their time (nanoseconds, summed).
    pub write_path: WritePathCounters,
}

/// The write pipeline's stages, in nanoseconds summed over this session:
/// what the engine benchmark reports to say where a sequential write's time
/// goes (issue 21).
#[derive(Debug, Default)]
pub(crate) struct WritePathCounters {
    /// Writes waiting for room under the dirty-memory bound (backpressure).
    pub room_wait_ns: AtomicU64,
    /// Admission under the state lock: the write log's append and the buffer.
    pub admit_ns: AtomicU64,
    /// Sealing the buffer into a segment (under the state lock).
    pub seal_ns: AtomicU64,
    /// Segment PUTs, from the first attempt to success.
    pub put_ns: AtomicU64,
    /// Offering a durable segment's pieces to the read cache.
    pub cache_fill_ns: AtomicU64,
    /// Applying durable segments to the map.
    pub apply_ns: AtomicU64,
}

impl WritePathCounters {
    pub fn add(counter: &AtomicU64, since: std::time::Instant) {
        counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn view(&self) -> WritePathStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WritePathStats {
            room_wait_ns: l(&self.room_wait_ns),
            admit_ns: l(&self.admit_ns),
            seal_ns: l(&self.seal_ns),
            put_ns: l(&self.put_ns),
            cache_fill_ns: l(&self.cache_fill_ns),
            apply_ns: l(&self.apply_ns),
        }
    }
}

/// [`WritePathCounters`] as `stats` shows them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WritePathStats {
    pub room_wait_ns: u64,
    pub admit_ns: u64,
    pub seal_ns: u64,
    pub put_ns: u64,
    pub cache_fill_ns: u64,
    pub apply_ns: u64,
}

impl Counters {
    pub fn add_write(&self, bytes: u64) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn read_lookup(&self, took: std::time::Duration) {
        self.read_lookups.fetch_add(1, Ordering::Relaxed);
        self.read_lookup_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
    pub fn read_memo_hit(&self) {
        self.read_memo_hits.fetch_add(1, Ordering::Relaxed);
    }
    pub fn read_lock_wait(&self, took: std::time::Duration) {
        self.read_lock_wait_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
    pub fn add_flush(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_flush_round(&self) {
        self.flush_rounds.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_journal_sync(&self) {
        self.journal_syncs.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_journal_sync_time(&self, took: std::time::Duration) {
        self.journal_sync_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
    pub fn add_put(&self, bytes: u64) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.put_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn add_replica_file(&self, bytes: u64) {
        self.replica_files.fetch_add(1, Ordering::Relaxed);
        self.replica_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn add_get(&self, bytes: u64) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.get_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// What an operator sees of a volume (`spritedisk stats`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeStats {
    pub volume_id: String,
    pub size_bytes: u64,
    pub block_size: u32,
    /// Bytes clients wrote, all time (overwrites count again).
    pub client_bytes_written: u64,
    /// Bytes of segment objects in the store (what storage bills).
    pub stored_bytes: u64,
    /// Bytes of segment data the map still references.
    pub live_bytes: u64,
    pub segments: u64,
    pub extents: u64,
    pub applied_seq: u64,
    /// Bytes of every segment ever PUT, compaction's copies included: over
    /// client_bytes_written, the write amplification.
    pub segment_bytes_put: u64,
    /// Map rows kept only for checkpoints.
    pub dead_extents: u64,
    /// What FLUSH waits for: "store" or "local" (docs/design/0014).
    #[serde(default)]
    pub durability: String,
    /// Data not yet in the object store (write buffer + segments
    /// uploading), held in memory; with local durability, flushed writes
    /// among it are in the local journal only.
    pub dirty_bytes: u64,
    /// Age of the oldest write not yet in the object store (0: none).
    #[serde(default)]
    pub oldest_unreplicated_ms: u64,
    /// Segments sealed but not yet durable and applied.
    pub upload_backlog_segments: u64,
    /// Memory held by sealed segments (queued or not): bounded by the dirty limit.
    pub segment_memory_bytes: u64,
    /// Since attach: requests and object-store traffic of this process.
    pub session_puts: u64,
    pub session_put_bytes: u64,
    pub session_gets: u64,
    pub session_get_bytes: u64,
    pub session_flushes: u64,
    /// FLUSH rounds (one seal, PUT and map commit each): concurrent
    /// FLUSHes share one (group commit), so fewer rounds than FLUSHes.
    #[serde(default)]
    pub session_flush_rounds: u64,
    /// Sync rounds of the local write journal (local durability): each
    /// `fdatasync`s every journal file with new records, for every FLUSH
    /// waiting then.
    #[serde(default)]
    pub session_journal_syncs: u64,
    /// Time those rounds spent in `fdatasync` (nanoseconds, summed).
    #[serde(default)]
    pub session_journal_sync_ns: u64,
    /// Lease epoch of this writer (0 offline).
    pub lease_epoch: u64,
    /// Newest TXID durable in the metadata replica, and what this session shipped.
    pub replica_txid: u64,
    pub session_replica_files: u64,
    pub session_replica_bytes: u64,
    /// Map lookups of this session's reads, the nanoseconds they took, and
    /// the nanoseconds reads waited for an engine-wide lock (0011).
    #[serde(default)]
    pub session_read_lookups: u64,
    #[serde(default)]
    pub session_read_lookup_ns: u64,
    /// Reads whose lookup the memo answered instead (docs/design/0018).
    #[serde(default)]
    pub session_read_memo_hits: u64,
    #[serde(default)]
    pub session_read_lock_wait_ns: u64,
    /// This session's write pipeline, stage by stage (nanoseconds summed).
    #[serde(default)]
    pub session_write_path: WritePathStats,
    /// The local read cache (zeros when there is none, or offline).
    pub cache: spritedisk_cache::CacheStats,
}

impl Inner {
    pub fn stats(&self) -> Result<VolumeStats, VolumeError> {
        let (dirty, backlog, client, oldest) = {
            let st = self.state.lock().unwrap();
            let oldest = st
                .sealed
                .iter()
                .find_map(|s| s.first_write)
                .or(st.active_since)
                .map_or(0, |t| t.elapsed().as_millis() as u64);
            (
                st.dirty_bytes(),
                st.sealed.len() as u64,
                st.client_bytes_total,
                oldest,
            )
        };
        let m = self.meta.lock().stats()?;
        let c = &self.counters;
        Ok(VolumeStats {
            volume_id: self.config.id.clone(),
            size_bytes: self.config.size_bytes,
            block_size: self.config.block_size,
            client_bytes_written: client,
            stored_bytes: m.stored_bytes,
            live_bytes: m.live_bytes,
            segments: m.segments,
            extents: m.extents,
            applied_seq: m.applied_seq,
            segment_bytes_put: m.segment_bytes_put,
            dead_extents: m.dead_extents,
            durability: self.opts.durability.as_str().to_string(),
            dirty_bytes: dirty,
            oldest_unreplicated_ms: oldest,
            upload_backlog_segments: backlog,
            segment_memory_bytes: c.segment_bytes_alive.load(Ordering::Relaxed),
            session_puts: c.puts.load(Ordering::Relaxed),
            session_put_bytes: c.put_bytes.load(Ordering::Relaxed),
            session_gets: c.gets.load(Ordering::Relaxed),
            session_get_bytes: c.get_bytes.load(Ordering::Relaxed),
            session_flushes: c.flushes.load(Ordering::Relaxed),
            session_flush_rounds: c.flush_rounds.load(Ordering::Relaxed),
            session_journal_syncs: c.journal_syncs.load(Ordering::Relaxed),
            session_journal_sync_ns: c.journal_sync_ns.load(Ordering::Relaxed),
            lease_epoch: self.epoch,
            replica_txid: self.replica_txid.load(Ordering::Relaxed),
            session_replica_files: c.replica_files.load(Ordering::Relaxed),
            session_replica_bytes: c.replica_bytes.load(Ordering::Relaxed),
            session_read_lookups: c.read_lookups.load(Ordering::Relaxed),
            session_read_lookup_ns: c.read_lookup_ns.load(Ordering::Relaxed),
            session_read_memo_hits: c.read_memo_hits.load(Ordering::Relaxed),
            session_read_lock_wait_ns: c.read_lock_wait_ns.load(Ordering::Relaxed),
            session_write_path: c.write_path.view(),
            cache: self.cache.stats(),
        })
    }
}

impl VolumeStats {
    /// Stats of a volume that is not attached here (from an inspection).
    pub fn offline(insp: &crate::Inspection) -> Result<Self, VolumeError> {
        let m = insp.meta.stats()?;
        Ok(VolumeStats {
            volume_id: insp.config.id.clone(),
            size_bytes: insp.config.size_bytes,
            block_size: insp.config.block_size,
            client_bytes_written: m.client_bytes_written,
            stored_bytes: m.stored_bytes,
            live_bytes: m.live_bytes,
            segments: m.segments,
            extents: m.extents,
            applied_seq: m.applied_seq,
            segment_bytes_put: m.segment_bytes_put,
            dead_extents: m.dead_extents,
            ..Default::default()
        })
    }
}
