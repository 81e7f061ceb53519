//! The volume: admission of writes into the write buffer (with backpressure),
//! flush, and the frontends' `handle_io` entry point.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use spritedisk_cache::{DiskCache, NoCache, ReadCache};
use spritedisk_store::ObjectStore;
use tokio::sync::{Notify, Semaphore};

use crate::blockcrc::Checked;
use crate::buffer::WriteBuffer;
use crate::config::{Durability, EngineOptions, VolumeConfig};
use crate::io::{BlockIo, IoReply, IoRequest};
use crate::lease;
use crate::recovery;
use crate::reserve::MetaReserve;
use crate::stats::{Counters, VolumeStats};
use crate::upload::Sealed;
use crate::wlog::{LeftFile, SyncPlan, WriteLog};
use crate::VolumeError;

/// Largest single request: bounds the memory one request can pin.
pub const REQUEST_BYTES_MAX: u64 = 64 << 20;

/// An attached volume. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Volume {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub store: Arc<dyn ObjectStore>,
    pub cache: Arc<dyn ReadCache>,
    /// Room for the metadata database on a local disk that fills up.
    pub reserve: Mutex<Option<MetaReserve>>,
    /// Metadata shipping to the replica (on-disk metadata only).
    pub(crate) replica: Option<tokio::sync::Mutex<crate::replicate::Shipper>>,
    /// Local state directory (metadata, write log, cache), if any.
    pub(crate) cache_dir: Option<std::path::PathBuf>,
    /// This writer's lease epoch.
    pub(crate) epoch: u64,
    /// The lease this writer holds, renewed since it was taken: it says who
    /// is attached; the chain's fences say who may write (0009).
    pub(crate) lease: lease::Keeper,
    /// Newest TXID durable in the replica.
    pub(crate) replica_txid: std::sync::atomic::AtomicU64,
    /// Pieces being fetched from the store, so each is fetched once at a time.
    pub(crate) fetches: crate::fetch::Fetches,
    /// Fork parents' stores, for segments numbered in their range.
    pub(crate) origins: crate::fork::Origins,
    pub config: VolumeConfig,
    pub volume_id: [u8; 16],
    pub block_size: u64,
    pub opts: EngineOptions,
    pub state: Mutex<State>,
    /// Read-only connections for the read path's map lookups (on-disk
    /// metadata only; in memory, lookups take `meta`). Declared before
    /// `meta`, so dropped before it: the writer's connection must be the
    /// last one to close, which folds the log into the database file as
    /// the clean mark expects (a reader still open would keep the log, and
    /// the next attach would fold commits the replica never had into a
    /// file it trusts).
    pub(crate) map_readers: Option<spritedisk_meta::MapReaders>,
    /// Lock order: `state` before `meta`, never the reverse.
    pub meta: crate::memo::MetaCell,
    /// Woken whenever a segment is applied, the engine stops, or memory frees up.
    pub changed: Notify,
    pub upload_slots: Semaphore,
    /// Wakes uploads sleeping in retry backoff (a FLUSH asks to try now).
    pub retry_now: Notify,
    /// One task at a time applies durable segments to the map, in order.
    pub apply_lock: tokio::sync::Mutex<()>,
    pub rng: Mutex<SmallRng>,
    pub counters: Counters,
    pub readahead: Mutex<crate::prefetch::ReadAhead>,
    /// Read-ahead's bytes in flight, in 1 MiB permits (`prefetch.rs`).
    pub prefetch_slots: Arc<Semaphore>,
}

pub(crate) struct State {
    /// Writes since the last seal.
    pub active: WriteBuffer,
    pub active_since: Option<Instant>,
    /// Sealed segments not yet applied to the map, in sequence order. Reads
    /// consult them (newest first) between the active buffer and the map.
    pub sealed: VecDeque<Arc<Sealed>>,
    pub sealed_bytes: u64,
    pub next_seq: u64,
    /// The segment the next one follows (the chain roll-forward walks).
    pub prev_seq: u64,
    pub applied_seq: u64,
    pub client_bytes_total: u64,
    pub last_store_error: Option<String>,
    /// Set when the engine must stop writing (fenced, metadata failure, closed).
    pub stopped: Option<String>,
    /// Set with `stopped` when a newer writer fenced this one: who did.
    pub fenced_by: Option<String>,
    /// Local log of acknowledged writes not yet durable (None: no cache dir, or disabled).
    pub wlog: Option<WriteLog>,
    /// Group commit's rounds (0013, 0016).
    pub rounds: crate::rounds::Rounds,
}

/// What a FLUSH waits for.
enum Wait {
    /// The round in flight, before sealing its own.
    Round(u64),
    /// Its own round (or the segment that already holds its writes).
    Own(u64),
    /// Until then, for the FLUSHes the last round released (0016).
    Gather(tokio::time::Instant),
}

impl State {
    pub fn dirty_bytes(&self) -> u64 {
        self.active.data_bytes() + self.sealed_bytes
    }
}

impl Volume {
    /// Attaches the volume at `url`: loads its config, opens (or rebuilds)
    /// the local metadata in `cache_dir`, rolls forward over newer segments
    /// and removes the debris of a crashed writer past the first gap.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        url: &str,
        cache_dir: Option<&Path>,
        opts: EngineOptions,
    ) -> Result<Volume, VolumeError> {
        let t0 = Instant::now();
        if opts.durability == Durability::Local && cache_dir.is_none() {
            return Err(VolumeError::BadConfig(
                "--durability local needs a cache directory: the write journal that FLUSH syncs lives there".into(),
            ));
        }
        if let Some(dir) = cache_dir {
            // Before anything is opened in it (docs/design/0017).
            crate::ensure_private_dir(dir)?;
        }
        let config = recovery::load_config(&store, url).await?;
        let volume_id = config.validate().map_err(VolumeError::BadConfig)?;
        // The lease first: the store is listed and debris deleted only by
        // the one writer (docs/design/0003).
        let held = lease::acquire(&store, url, opts.lease_ttl, opts.take_over, cache_dir).await?;
        // Still a volume now that we hold it: `rm` deletes the config first
        // and reads the lease after that (docs/design/0010).
        recovery::load_config(&store, url).await?;
        // Renewed from now on, however long the rest of the attach takes.
        let keeper = lease::Keeper::start(store.clone(), held.clone(), opts.lease_ttl);
        // Only a holder from before 0009's second step acknowledges FLUSHes
        // in a grace without the chain's protection (0007).
        lease::wait_out_previous(&held).await;
        let lease_ms = t0.elapsed().as_millis() as u64;
        let (mut meta, rolled) =
            recovery::recover(&store, url, &config, cache_dir, &keeper.held, opts.reclaim).await?;
        if let Some(by) = keeper.lost() {
            return Err(VolumeError::Fenced(by));
        }
        let epoch = keeper.held.lock().await.doc.epoch;
        if opts.durability == Durability::Local {
            // The journal is replayed only while this database says it is
            // ours: its epoch must survive a power cut, and so must every
            // commit (a database set back behind the store's required
            // position would be rebuilt and its journal dropped). Committed
            // again under FULL, which syncs every earlier commit with it
            // (docs/design/0014).
            meta.commit_fully()?;
            meta.set_writer_epoch(epoch)?;
        }
        let meta_ms = t0.elapsed().as_millis() as u64 - lease_ms;
        let origins = crate::fork::Origins::open(&meta)?;
        let (wlog, left) = match cache_dir {
            Some(dir) => {
                let recycle = opts.durability == Durability::Local;
                let (log, left) = WriteLog::open(dir, recycle).map_err(VolumeError::WriteLog)?;
                (Some(log), left)
            }
            None => (None, vec![]),
        };
        let state = State {
            active: WriteBuffer::default(),
            active_since: None,
            sealed: VecDeque::new(),
            sealed_bytes: 0,
            next_seq: rolled.next_seq,
            prev_seq: rolled.tail,
            applied_seq: rolled.tail,
            client_bytes_total: meta.stats()?.client_bytes_written,
            last_store_error: None,
            stopped: None,
            fenced_by: None,
            // Installed by the replay, once the files it found are this
            // daemon's segments.
            wlog: None,
            rounds: Default::default(),
        };
        let map_readers = meta.readers().filter(|_| opts.map_readers);
        let inner = Arc::new(Inner {
            store,
            cache: open_cache(cache_dir, opts.cache_bytes, volume_id),
            reserve: Mutex::new(cache_dir.map(MetaReserve::open)),
            block_size: config.block_size as u64,
            config,
            volume_id,
            upload_slots: Semaphore::new(opts.upload_inflight_max.max(1)),
            rng: Mutex::new(SmallRng::seed_from_u64(opts.seed)),
            opts,
            state: Mutex::new(state),
            map_readers,
            meta: crate::memo::MetaCell::new(meta),
            changed: Notify::new(),
            retry_now: Notify::new(),
            apply_lock: tokio::sync::Mutex::new(()),
            counters: Counters::default(),
            readahead: Mutex::new(Default::default()),
            fetches: Default::default(),
            origins,
            replica: cache_dir.map(|_| {
                tokio::sync::Mutex::new(crate::replicate::Shipper::new(
                    crate::replicate::layout_for(url),
                ))
            }),
            replica_txid: Default::default(),
            epoch,
            cache_dir: cache_dir.map(Path::to_path_buf),
            lease: keeper,
            prefetch_slots: Arc::new(Semaphore::new(crate::prefetch::PREFETCH_PERMITS)),
        });
        tokio::spawn(crate::upload::writeback_loop(Arc::downgrade(&inner)));
        let vol = Volume { inner };
        if let Some(log) = wlog {
            vol.replay(rolled.history_tail, log, left).await?;
        }
        vol.inner.start_replica(rolled.replica_txid).await?;
        tokio::spawn(crate::replicate::replica_loop(Arc::downgrade(&vol.inner)));
        tokio::spawn(watch_lease(Arc::downgrade(&vol.inner)));
        // Where an attach's time goes (the warm pool's attach is this open).
        tracing::info!(
            url,
            ms = t0.elapsed().as_millis() as u64,
            config_and_lease_ms = lease_ms,
            metadata_ms = meta_ms,
            "volume open"
        );
        Ok(vol)
    }

    /// Re-applies the writes a dead daemon had acknowledged but not made
    /// durable (the files of the local write log it left), in their
    /// original order, then starts this daemon's log.
    ///
    /// Atomic and idempotent under interruption (D6 of the 5bc5be0
    /// review): each file `F_i` that the history does not hold (its segment
    /// is after `history_tail`) is given, in place and durably, the number
    /// `base + i` of the segment that replays it, before any of them is
    /// sealed; then each is sealed as exactly that one segment. A file is
    /// retired only once its segment is applied, so whenever this stops, the history
    /// holds `F_1 … F_k` and the files left are `F_{k+1} …` (numbered after
    /// the history's tail), and the next attach replays just those. The
    /// store shows the state before the writes plus a prefix of them at
    /// every step. Nothing is logged twice.
    async fn replay(
        &self,
        history_tail: u64,
        mut log: WriteLog,
        left: Vec<LeftFile>,
    ) -> Result<(), VolumeError> {
        let inner = &self.inner;
        // Files to replay, and after each the files kept in place without
        // being replayed (empty ones, e.g. what a seal rotated to). Only a
        // leading run is deleted: a gap in the generations means a file
        // lost in a machine crash, and the next open stops there.
        let mut todo: Vec<LeftFile> = vec![];
        let mut kept: Vec<(usize, LeftFile)> = vec![];
        for f in left {
            let skip = f.seq <= history_tail || f.writes.is_empty();
            match (skip, todo.len()) {
                // Applied before the daemon died (not yet retired), or empty.
                (true, 0) => log.delete(f.gen),
                (true, n) => kept.push((n - 1, f)),
                (false, _) => todo.push(f),
            }
        }
        if !todo.is_empty() {
            tracing::info!(
                segments = todo.len(),
                "replaying acknowledged writes from the local write log"
            );
        }
        let base = inner.state.lock().unwrap().next_seq;
        for (i, f) in todo.iter().enumerate() {
            log.rehome(f, base + i as u64, false)
                .map_err(VolumeError::WriteLog)?;
        }
        // A kept file retires with the replayed file before it; its
        // records (an applied segment's, which a consistent log never has
        // after an unapplied one) are cut, never to be replayed.
        for (i, f) in &kept {
            log.rehome(f, base + *i as u64, true)
                .map_err(VolumeError::WriteLog)?;
        }
        let mut count = 0u64;
        for (i, f) in todo.iter().enumerate() {
            let seq = base + i as u64;
            let len: u64 = f
                .writes
                .iter()
                .map(|w| w.data.as_ref().map_or(0, |d| d.len() as u64))
                .sum();
            self.when_room(len, |st| {
                assert!(
                    st.active.is_empty() && st.next_seq == seq,
                    "replayed file {} must become segment {seq}, the next is {}",
                    f.gen,
                    st.next_seq
                );
                for w in &f.writes {
                    // A version-1 file has no block checksums: the seal
                    // computes them.
                    let data = w.data.clone();
                    match w.crcs.is_empty() {
                        true => st.active.insert(w.lba, w.blocks, data, inner.block_size),
                        false => {
                            let data = data.map(|bytes| Checked {
                                bytes,
                                crcs: w.crcs.clone(),
                            });
                            st.active
                                .insert_checked(w.lba, w.blocks, data, inner.block_size)
                        }
                    }
                }
                st.client_bytes_total += len;
                st.active_since.get_or_insert_with(Instant::now);
                inner.seal_locked(st);
            })
            .await?;
            count += f.writes.len() as u64;
        }
        {
            let mut st = inner.state.lock().unwrap();
            let mut adopted: Vec<(u64, u64)> = todo
                .iter()
                .enumerate()
                .map(|(i, f)| (f.gen, base + i as u64))
                .chain(kept.iter().map(|(i, f)| (f.gen, base + *i as u64)))
                .collect();
            adopted.sort_unstable();
            for (gen, seq) in adopted {
                log.adopt(gen, seq);
            }
            log.rotate(st.next_seq).map_err(VolumeError::WriteLog)?;
            log.retire(st.applied_seq);
            st.wlog = Some(log);
        }
        if count > 0 {
            tracing::info!(
                writes = count,
                segments = todo.len(),
                "replayed the acknowledged writes of the local write log"
            );
        }
        Ok(())
    }

    pub fn config(&self) -> &VolumeConfig {
        &self.inner.config
    }

    pub fn size_bytes(&self) -> u64 {
        self.inner.config.size_bytes
    }

    /// Validates a request's range; returns it in blocks.
    fn blocks_of(&self, offset: u64, len: u64) -> Result<(u64, u64), VolumeError> {
        let bs = self.inner.block_size;
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(VolumeError::Unaligned {
                offset,
                len,
                block_size: bs as u32,
            });
        }
        let size = self.size_bytes();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(VolumeError::OutOfRange { offset, len, size });
        }
        Ok((offset / bs, len / bs))
    }

    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes, VolumeError> {
        if len > REQUEST_BYTES_MAX {
            return Err(VolumeError::TooLarge {
                len,
                max: REQUEST_BYTES_MAX,
            });
        }
        let (lba, blocks) = self.blocks_of(offset, len)?;
        self.inner.note_read(lba, blocks);
        self.inner.read(lba, blocks).await
    }

    /// Buffers a write; with `fua`, returns only once it is durable.
    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), VolumeError> {
        let len = data.len() as u64;
        if len > REQUEST_BYTES_MAX {
            return Err(VolumeError::TooLarge {
                len,
                max: REQUEST_BYTES_MAX,
            });
        }
        let (lba, blocks) = self.blocks_of(offset, len)?;
        if blocks > 0 {
            // The one checksum pass over the written bytes, outside every
            // lock (docs/design/0012).
            self.admit(lba, blocks, Some(Checked::new(data))).await?;
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    /// Unmaps a range: it reads as zeros and its old data stops counting as live.
    pub async fn discard(&self, offset: u64, len: u64, fua: bool) -> Result<(), VolumeError> {
        let (lba, blocks) = self.blocks_of(offset, len)?;
        if blocks > 0 {
            self.admit(lba, blocks, None).await?;
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    /// Zeros are never stored: the same map change as a discard.
    pub async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), VolumeError> {
        self.discard(offset, len, fua).await
    }

    /// Puts a change into the write buffer once memory allows (backpressure).
    async fn admit(&self, lba: u64, blocks: u64, data: Option<Checked>) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let len = data.as_ref().map_or(0, |d| d.bytes.len() as u64);
        self.when_room(len, |st| {
            if let Some(Err(e)) = st
                .wlog
                .as_mut()
                .map(|log| log.append(lba, blocks, data.as_ref()))
            {
                inner.write_log_failed(st, &e);
            }
            st.active
                .insert_checked(lba, blocks, data, inner.block_size);
            st.active_since.get_or_insert_with(Instant::now);
            st.client_bytes_total += len;
            inner.counters.add_write(len);
            if st.active.data_bytes() >= inner.opts.segment_bytes
                || st.active.run_count() >= crate::segment::BUFFER_RUNS_MAX
            {
                inner.seal_locked(st);
            }
        })
        .await
    }

    /// Runs `put` on the state once `len` more bytes fit in the dirty
    /// memory bound (one request larger than the bound is let in alone).
    /// A writer waiting for memory gives up when a FLUSH would: the store
    /// has been failing for that long.
    async fn when_room(&self, len: u64, put: impl FnOnce(&mut State)) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.opts.flush_timeout;
        let mut put = Some(put);
        let arrived = Instant::now();
        loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = inner.state.lock().unwrap();
                if let Some(why) = &st.stopped {
                    return Err(VolumeError::Stopped(why.clone()));
                }
                if st.dirty_bytes() + len <= inner.opts.dirty_bytes_max || st.dirty_bytes() == 0 {
                    let wp = &inner.counters.write_path;
                    let admitted = Instant::now();
                    wp.room_wait_ns.fetch_add(
                        (admitted - arrived).as_nanos() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    if let Some(put) = put.take() {
                        put(&mut st);
                    }
                    crate::stats::WritePathCounters::add(&wp.admit_ns, admitted);
                    return Ok(());
                }
                // Full: make sure what is buffered is on its way out, then wait.
                inner.seal_locked(&mut st);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let st = inner.state.lock().unwrap();
                let last_error = st
                    .last_store_error
                    .clone()
                    .unwrap_or_else(|| "uploads still in progress".into());
                return Err(VolumeError::FlushTimeout {
                    timeout_ms: inner.opts.flush_timeout.as_millis() as u64,
                    last_error,
                });
            }
        }
    }

    /// A client's FLUSH: returns once every write admitted before the call
    /// is durable as the volume's durability says (docs/design/0014): in
    /// the object store and applied to the map, or in the local journal.
    pub async fn flush(&self) -> Result<(), VolumeError> {
        match self.inner.opts.durability {
            Durability::Store => self.flush_to_store().await,
            Durability::Local => self.flush_local().await,
        }
    }

    /// A FLUSH in local mode: returns once a sync round of the write
    /// journal covers every record appended before it began. Rounds are
    /// shared: one runs at a time, and the FLUSHes that come meanwhile wait
    /// for it and then, if it did not cover them, start the next one for
    /// all (a FLUSH waits for at most the round in flight plus its own).
    /// A journal that failed sends the FLUSH to the store.
    async fn flush_local(&self) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.opts.flush_timeout;
        // The journal's append count when this FLUSH began: every write
        // acknowledged before it was appended before it was acknowledged.
        let mut want = None;
        loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let plan = {
                let mut st = inner.state.lock().unwrap();
                if let Some(by) = &st.fenced_by {
                    return Err(VolumeError::Fenced(by.clone()));
                }
                if let Some(why) = &st.stopped {
                    return Err(VolumeError::Stopped(why.clone()));
                }
                match st.wlog.as_mut().filter(|log| log.trusted()) {
                    // No journal to trust (it failed): the store it is.
                    None => None,
                    Some(log) => {
                        let want = *want.get_or_insert_with(|| {
                            inner.counters.add_flush();
                            log.appends()
                        });
                        if log.synced() >= want {
                            return Ok(());
                        }
                        Some(log.begin_sync())
                    }
                }
            };
            let Some(plan) = plan else {
                return self.flush_to_store().await;
            };
            if let Some(plan) = plan {
                inner.counters.add_journal_sync();
                // Its own task: a FLUSH dropped mid-round cannot leave the
                // round in flight forever.
                tokio::spawn(sync_journal(inner.clone(), plan));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(VolumeError::FlushTimeout {
                    timeout_ms: inner.opts.flush_timeout.as_millis() as u64,
                    last_error: "the local write journal's fdatasync has not returned".into(),
                });
            }
        }
    }

    /// Returns once every write admitted before the call is durable in the
    /// object store and applied to the map, whatever the durability mode:
    /// what a store-mode FLUSH, a checkpoint, GC and a detach wait for.
    pub async fn flush_to_store(&self) -> Result<(), VolumeError> {
        let inner = &self.inner;
        // One deadline for the whole FLUSH, the round it may wait out included.
        let deadline = tokio::time::Instant::now() + inner.opts.flush_timeout;
        // The number the next seal takes, when this FLUSH began: every seal
        // takes the whole buffer (barriers and compaction's copies seal it
        // first), so once a segment numbered `start` exists, it or one
        // before it holds every write acknowledged before this FLUSH.
        let mut start = None;
        // Counted in the rounds once it has writes to wait for (0016).
        let mut counted = false;
        loop {
            // Registered before the state is read: a FLUSH that gathers is
            // woken by the one that seals.
            let sealed = inner.changed.notified();
            tokio::pin!(sealed);
            sealed.as_mut().enable();
            let wait = {
                let mut st = inner.state.lock().unwrap();
                let sealed_since = start.filter(|&s| st.next_seq > s);
                if let Some(s) = sealed_since {
                    // Sealed since it began (by another FLUSH, the
                    // writeback, a barrier): that segment is its own, not
                    // whatever gathered in the buffer after it (so it never
                    // waits for more than the round in flight plus one).
                    // Before the checks below: if it is applied, the FLUSH
                    // succeeded even if the engine stopped since.
                    Wait::Own(s)
                } else {
                    if let Some(by) = &st.fenced_by {
                        return Err(VolumeError::Fenced(by.clone()));
                    }
                    if let Some(why) = &st.stopped {
                        return Err(VolumeError::Stopped(why.clone()));
                    }
                    if start.is_none() {
                        start = Some(st.next_seq);
                        // Counted once it decides what it waits for
                        // (tests order FLUSHes by it).
                        inner.counters.add_flush();
                    }
                    Self::flush_step(inner, &mut st, &mut counted, deadline)
                }
            };
            // A PUT in backoff is retried now: a FLUSH waits on it.
            inner.retry_now.notify_waiters();
            match wait {
                Wait::Round(round) => inner.wait_applied_until(round, deadline).await?,
                Wait::Gather(until) => {
                    // Before the deadline (`Rounds::next`); a seal wakes it.
                    let _ = tokio::time::timeout_at(until, sealed).await;
                }
                Wait::Own(target) => {
                    // Applied means on the chain, every position before it
                    // filled by records this writer walked or wrote: every
                    // later writer follows it. A writer that took over
                    // claimed the next position first, so our record there
                    // failed (412) and this wait fails as fenced. No lease
                    // read and no clock (docs/design/0009).
                    return inner.wait_applied_until(target, deadline).await;
                }
            }
        }
    }

    /// A FLUSH's step once nothing was sealed since it began (0013): wait
    /// out the round in flight, or seal the buffer as a new round, once the
    /// FLUSHes the last round released are back or a bound passed (0016).
    fn flush_step(
        inner: &Arc<Inner>,
        st: &mut State,
        counted: &mut bool,
        deadline: tokio::time::Instant,
    ) -> Wait {
        // A FLUSH that finds its writes sealed already (by the writeback,
        // say) waits for no round and is not counted as one a round
        // carried: a lone client's next FLUSH would gather for it.
        if !st.active.is_empty() && !std::mem::replace(counted, true) {
            st.rounds.begin();
        }
        match st.rounds.in_flight {
            // Group commit: a FLUSH's round (its seal, PUT and map commit)
            // is in flight and our writes are not in it. Wait it out, then
            // seal everything that gathered meanwhile as one round: the
            // FLUSHes that came during a round share the next.
            Some(round) if st.applied_seq < round && !st.active.is_empty() => Wait::Round(round),
            _ => {
                if !st.active.is_empty() {
                    let now = tokio::time::Instant::now();
                    if let crate::rounds::Next::Gather(until) = st.rounds.next(now, deadline) {
                        return Wait::Gather(until);
                    }
                    inner.seal_locked(st);
                    st.rounds.sealed(st.prev_seq, now);
                    inner.counters.add_flush_round();
                }
                // The newest segment sealed holds every write acknowledged
                // before us (numbers jump after a takeover).
                Wait::Own(st.prev_seq)
            }
        }
    }

    /// Flushes and stops the engine: later I/O fails with ESHUTDOWN. The
    /// read cache is saved for a warm restart.
    pub async fn close(&self) -> Result<(), VolumeError> {
        // Everything into the store, in either durability mode: the next
        // attach may be on another machine.
        let mut res = self.flush_to_store().await;
        if res.is_ok() {
            // A clean detach leaves a replica that needs no roll-forward.
            res = self.inner.ship_meta().await;
        }
        if let (Ok(()), Some(dir)) = (&res, &self.inner.cache_dir) {
            let txid = self
                .inner
                .replica_txid
                .load(std::sync::atomic::Ordering::Relaxed);
            crate::replicate::write_clean_mark(dir, txid);
        }
        self.inner.stop("volume closed");
        if res.is_ok() {
            // Released: the next attach (anywhere) continues without waiting.
            let held = self.inner.lease.held.lock().await;
            if let Err(e) = lease::release(&self.inner.store, &held).await {
                tracing::warn!(error = %e, "could not release the lease: the next attach waits for it to expire or needs --force");
            }
        }
        let cache = self.inner.cache.clone();
        let _ = spritedisk_store::blocking::unblock(move || cache.persist()).await;
        res
    }

    /// Stops without flushing, as a crash would (tests).
    pub fn abandon(&self) {
        self.inner.stop("volume abandoned");
    }

    pub fn stats(&self) -> Result<VolumeStats, VolumeError> {
        self.inner.stats()
    }

    /// The frontends' entry point.
    pub async fn handle_io(&self, req: IoRequest) -> Result<IoReply, VolumeError> {
        match req {
            IoRequest::Read { offset, len } => {
                self.read(offset, len as u64).await.map(IoReply::Data)
            }
            IoRequest::Write { offset, data, fua } => {
                self.write(offset, data, fua).await.map(|_| IoReply::Done)
            }
            IoRequest::Flush => self.flush().await.map(|_| IoReply::Done),
            IoRequest::Discard { offset, len, fua } => {
                self.discard(offset, len, fua).await.map(|_| IoReply::Done)
            }
            IoRequest::WriteZeroes { offset, len, fua } => self
                .write_zeroes(offset, len, fua)
                .await
                .map(|_| IoReply::Done),
        }
    }
}

/// Runs one sync round of the write journal and reports it back.
async fn sync_journal(inner: Arc<Inner>, plan: SyncPlan) {
    let plan = Arc::new(plan);
    let run = plan.clone();
    if inner.is_stopped() {
        // Nobody waits any more (a stopped engine fails its FLUSHes), and
        // a dead process syncs nothing: the simulation's power cut relies
        // on it.
        if let Some(log) = inner.state.lock().unwrap().wlog.as_mut() {
            log.cancel_sync();
        }
        inner.changed.notify_waiters();
        return;
    }
    let res = spritedisk_store::blocking::unblock(move || {
        let t0 = Instant::now();
        run.run().map(|()| t0.elapsed())
    })
    .await
    .unwrap_or_else(|e| Err(format!("write log sync: {e}")))
    .map(|took| inner.counters.add_journal_sync_time(took));
    if let Some(log) = inner.state.lock().unwrap().wlog.as_mut() {
        log.end_sync(&plan, res);
    }
    inner.changed.notify_waiters();
}

/// Tries at reading the lease before GC deletes, on transient errors.
const LEASE_CHECK_ATTEMPTS_MAX: u32 = 8;

impl Inner {
    /// Fails, and stops the engine as fenced, unless the lease is still
    /// ours. Only GC asks, before it deletes (gc.rs says why); a FLUSH never.
    pub(crate) async fn check_lease(&self) -> Result<(), VolumeError> {
        let mut backoff = self.opts.retry_backoff_min;
        for attempt in 1.. {
            // Locked per attempt: renewals go on while we back off.
            let checked = {
                let mut held = self.lease.held.lock().await;
                lease::check(&self.store, &mut held).await
            };
            match checked {
                Ok(lease::LeaseState::Ours) => return Ok(()),
                Ok(lease::LeaseState::Lost(by)) => return Err(self.fenced(by)),
                Err(e) if e.is_transient() && attempt < LEASE_CHECK_ATTEMPTS_MAX => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.opts.retry_backoff_max);
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns")
    }

    /// Writes the restore mark (replicate.rs) for a change at replica TXID
    /// `txid` sealed by the barrier at `barrier`; a newer writer's mark
    /// means we were taken over: the engine stops.
    pub(crate) async fn mark(&self, txid: u64, barrier: u64) -> Result<(), VolumeError> {
        match crate::replicate::mark_restore(&self.store, self.epoch, txid, barrier).await {
            Err(VolumeError::Fenced(by)) => Err(self.fenced(by)),
            other => other,
        }
    }

    /// Stops the engine because a newer writer took the volume over.
    pub(crate) fn fenced(&self, by: String) -> VolumeError {
        tracing::error!(%by, "fenced: another writer took the volume over; stopping");
        self.state
            .lock()
            .unwrap()
            .fenced_by
            .get_or_insert_with(|| by.clone());
        self.stop(&format!("fenced: the volume was taken over ({by})"));
        VolumeError::Fenced(by)
    }
}

/// Stops the engine as fenced once a renewal finds the lease taken.
async fn watch_lease(inner: std::sync::Weak<Inner>) {
    let Some(lost) = inner.upgrade().map(|i| i.lease.watch_lost()) else {
        return;
    };
    // Not holding the engine alive while it waits.
    let Some(lost) = crate::lease::Keeper::wait(lost).await else {
        return;
    };
    if let Some(inner) = inner.upgrade() {
        inner.fenced(lost);
    }
}

/// Empties `cache_dir` of everything a volume left there (metadata, write
/// log, read cache lines) and sets up an empty read cache of `cache_bytes`
/// that the next [`Volume::open`] with this directory takes as it is: what
/// a warm-pool device does between two volumes. Only for a directory whose
/// volume was closed cleanly (its write log holds nothing unflushed).
pub fn reset_cache_dir(cache_dir: &Path, cache_bytes: u64) -> std::io::Result<()> {
    match std::fs::remove_dir_all(cache_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    crate::ensure_private_dir(cache_dir).map_err(std::io::Error::other)?;
    if cache_bytes > 0 {
        // An empty cache that is saved opens warm (with nothing in it)
        // instead of being deleted and made again.
        DiskCache::open(&cache_dir.join("cache"), cache_bytes, None)?.persist();
    }
    Ok(())
}

/// The read cache in `cache_dir/cache`. A cache that cannot be opened (a
/// full or read-only disk) is not an error: reads go to the store.
fn open_cache(cache_dir: Option<&Path>, bytes: u64, volume_id: [u8; 16]) -> Arc<dyn ReadCache> {
    match cache_dir {
        Some(dir) if bytes > 0 => match DiskCache::open(&dir.join("cache"), bytes, Some(volume_id))
        {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::warn!(error = %e, "read cache unavailable: reads go to the object store");
                Arc::new(NoCache)
            }
        },
        _ => Arc::new(NoCache),
    }
}

#[async_trait::async_trait]
impl BlockIo for Volume {
    fn size_bytes(&self) -> u64 {
        self.inner.config.size_bytes
    }
    fn block_size(&self) -> u32 {
        self.inner.block_size as u32
    }
    async fn handle_io(&self, req: IoRequest) -> Result<IoReply, VolumeError> {
        Volume::handle_io(self, req).await
    }
    fn read_now(&self, offset: u64, out: &mut [u8]) -> Option<Result<(), VolumeError>> {
        let len = out.len() as u64;
        if len > REQUEST_BYTES_MAX {
            return Some(Err(VolumeError::TooLarge {
                len,
                max: REQUEST_BYTES_MAX,
            }));
        }
        let (lba, blocks) = match self.blocks_of(offset, len) {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        match self.inner.read_ready(lba, blocks, out) {
            // Read-ahead hears of the reads served here; one that must wait
            // is noted once, by `read`.
            Ok(true) => {
                self.inner.note_read(lba, blocks);
                Some(Ok(()))
            }
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

impl Inner {
    /// The store holding segment `seg` (a fork parent's, or this volume's).
    pub(crate) fn segment_store(&self, seg: u64) -> &Arc<dyn ObjectStore> {
        self.origins.store_for(seg, &self.store)
    }

    pub fn stop(&self, why: &str) {
        self.state
            .lock()
            .unwrap()
            .stopped
            .get_or_insert_with(|| why.to_string());
        self.lease.stop();
        self.changed.notify_waiters();
    }

    /// The write log failed to take a record or start a file (e.g. a full
    /// cache disk): it is frozen (no more records) and its files are kept.
    /// They hold a prefix of the writes, retired as their segments are
    /// applied; in local mode (or inherited from a local-mode daemon, e.g.
    /// by `recover`) they hold flushed writes not yet uploaded, so deleting
    /// them would lose those. FLUSHes wait for the store from now on (0014).
    pub(crate) fn write_log_failed(&self, st: &mut State, e: &str) {
        match self.opts.durability {
            Durability::Store => {
                tracing::warn!(error = %e, "write log disabled: unflushed writes will not survive a daemon crash");
            }
            Durability::Local => {
                tracing::error!(error = %e, "write journal failed: FLUSHes wait for the object store from now on; its files are kept (they hold flushed writes not yet uploaded)");
            }
        }
        if let Some(log) = st.wlog.as_mut() {
            log.freeze();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.state.lock().unwrap().stopped.is_some()
    }

    /// Waits until segment `target` is applied, the engine stops, or the flush deadline passes.
    pub async fn wait_applied(&self, target: u64) -> Result<(), VolumeError> {
        let deadline = tokio::time::Instant::now() + self.opts.flush_timeout;
        self.wait_applied_until(target, deadline).await
    }

    /// [`Inner::wait_applied`] with the caller's deadline.
    pub async fn wait_applied_until(
        &self,
        target: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), VolumeError> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.state.lock().unwrap();
                if st.applied_seq >= target {
                    return Ok(());
                }
                if let Some(by) = &st.fenced_by {
                    return Err(VolumeError::Fenced(by.clone()));
                }
                if let Some(why) = &st.stopped {
                    return Err(VolumeError::Stopped(why.clone()));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let st = self.state.lock().unwrap();
                if st.applied_seq >= target {
                    return Ok(());
                }
                let last_error = st
                    .last_store_error
                    .clone()
                    .unwrap_or_else(|| "uploads still in progress".into());
                tracing::error!(%last_error, "flush timed out");
                return Err(VolumeError::FlushTimeout {
                    timeout_ms: self.opts.flush_timeout.as_millis() as u64,
                    last_error,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's connection closes last (the order of `Inner`'s fields),
    /// so a commit that lands after a detach shipped the replica (a late
    /// apply, a GC racing the detach) is folded into the file by the
    /// writer, as before 0011, and never left in a log that the next
    /// attach would fold behind the replica's back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writers_connection_closes_after_the_readers() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/vol", dir.path().display());
        let store = spritedisk_store::open_url(&url).unwrap();
        crate::create_volume(&store, &url, 64 << 20).await.unwrap();
        let opts = EngineOptions {
            cache_bytes: 8 << 20,
            ..EngineOptions::default()
        };
        let local = dir.path().join("local");
        let vol = Volume::open(store, &url, Some(&local), opts).await.unwrap();
        vol.write(0, Bytes::from(vec![7u8; 4096]), true)
            .await
            .unwrap();
        vol.read(0, 4096).await.unwrap();
        assert!(
            vol.inner
                .counters
                .read_lookups
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
        vol.close().await.unwrap();
        vol.inner.meta.lock().set_writer_epoch(99).unwrap();
        let wal = local.join(recovery::META_FILE.to_string() + "-wal");
        let len = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert!(len() > 0, "the late commit is in the log");
        let weak = Arc::downgrade(&vol.inner);
        drop(vol);
        // Background loops hold weak references; one may be upgraded a moment.
        while weak.strong_count() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(len(), 0, "the writer folded the log as it closed");
    }
}
