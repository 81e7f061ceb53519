//! From write buffer to durable map: seal the buffer into a segment, PUT it
//! (in parallel, retried with backoff), then apply segments to the map
//! strictly in sequence order, so the map is always a prefix of the history.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use spritedisk_meta::{MapChange, PieceRef, SegmentApply};
use spritedisk_store::StoreError;

use crate::buffer::WriteBuffer;
use crate::engine::{Inner, State};
use crate::segment::{self, segment_key, Link, SegmentBody};
use crate::stats::WritePathCounters;

/// A sealed segment on its way to the store.
pub(crate) struct Sealed {
    /// Its position in the history.
    pub link: Link,
    /// The object, as parts: the header and index, then the pieces, which
    /// are slices of `frozen`'s bytes (docs/design/0012: a seal copies no
    /// data, so the segment is in memory once).
    pub body: SegmentBody,
    /// The write buffer it was sealed from: reads are served from it until
    /// the segment is applied to the map.
    pub frozen: WriteBuffer,
    pub changes: Vec<MapChange>,
    /// Pieces compaction copied into it (no map change; cached once durable).
    pub copies: Vec<PieceRef>,
    /// Where its data starts, and each data block's crc32c in order (empty
    /// for copies and barriers): the read cache takes them as they are.
    pub data_offset: u64,
    pub block_crcs: Vec<u32>,
    pub client_bytes_total: u64,
    /// When the oldest write in it was admitted (None: no client writes).
    pub first_write: Option<std::time::Instant>,
    pub durable: AtomicBool,
    /// Bytes of sealed segments alive in memory, queued or not (the volume's gauge).
    pub alive_bytes: Arc<AtomicU64>,
    /// A barrier's gate (docs/design/0009): its PUT starts only once the
    /// metadata change it seals is durable (`Some(true)`); `Some(false)`
    /// means it never will be, and the engine stops.
    pub gate: Option<tokio::sync::watch::Receiver<Option<bool>>>,
}

impl Drop for Sealed {
    fn drop(&mut self) {
        self.alive_bytes
            .fetch_sub(self.body.len(), Ordering::Relaxed);
    }
}

impl Inner {
    /// Seals the active buffer (if it holds anything) as the next segment and
    /// starts its upload.
    pub fn seal_locked(self: &Arc<Self>, st: &mut State) {
        if st.active.is_empty() {
            return;
        }
        let t0 = std::time::Instant::now();
        let buffer = std::mem::take(&mut st.active);
        let first_write = st.active_since.take();
        let link = self.next_link_locked(st);
        // The index only: the pieces stay the buffer's bytes.
        let enc = segment::encode_parts(
            self.volume_id,
            link,
            st.client_bytes_total,
            &buffer,
            self.block_size,
        );
        let checks = (enc.data_offset, enc.block_crcs);
        self.queue_locked(
            st,
            link,
            enc.body,
            buffer,
            enc.changes,
            vec![],
            None,
            checks,
            first_write,
        );
        WritePathCounters::add(&self.counters.write_path.seal_ns, t0);
    }

    /// Seals the active buffer, then queues a segment of copies of
    /// `pieces` (source segment, bytes) behind it: compaction's output,
    /// which takes its place in the history like any segment and changes
    /// nothing in the map. Returns its number and where each copy is.
    pub(crate) fn seal_copies(self: &Arc<Self>, pieces: &[(u64, Bytes)]) -> (u64, Vec<PieceRef>) {
        let mut st = self.state.lock().unwrap();
        self.seal_locked(&mut st);
        let link = self.next_link_locked(&mut st);
        let (bytes, refs) = segment::encode_copies(
            self.volume_id,
            link,
            st.client_bytes_total,
            pieces,
            self.block_size,
        );
        self.queue_record_locked(&mut st, link, bytes, refs.clone(), None);
        (link.seq, refs)
    }

    /// Seals the active buffer, then queues a barrier behind it: an empty
    /// record of this writer's epoch that takes the next position of the
    /// history (docs/design/0009). Its PUT waits for `gate` (the metadata
    /// change it seals made durable). A metadata operation is acknowledged
    /// once its barrier is applied: then no newer writer had fenced the
    /// history before it, and such a writer reads the replica after its
    /// fence, so it sees the change. Every segment sealed later is behind
    /// the barrier, so no FLUSH after the operation is acknowledged before
    /// the operation is durable. Returns the barrier's position and the one
    /// it follows.
    pub(crate) fn seal_barrier(
        self: &Arc<Self>,
        gate: tokio::sync::watch::Receiver<Option<bool>>,
    ) -> (u64, u64) {
        let mut st = self.state.lock().unwrap();
        self.seal_locked(&mut st);
        let link = self.next_link_locked(&mut st);
        let bytes = segment::encode_empty(self.volume_id, link, st.client_bytes_total);
        self.queue_record_locked(&mut st, link, bytes, vec![], Some(gate));
        (link.seq, link.prev_seq)
    }

    /// Takes the next position in the history (after the one before it);
    /// the write log's current file moves on to the number after it.
    fn next_link_locked(&self, st: &mut State) -> Link {
        let seq = st.next_seq;
        let prev_seq = std::mem::replace(&mut st.prev_seq, seq);
        st.next_seq += 1;
        // FLUSHes gathering for the next round find this seal (0016).
        if st.rounds.position_taken() {
            self.changed.notify_waiters();
        }
        if let Some(Err(e)) = st.wlog.as_mut().map(|log| log.rotate(st.next_seq)) {
            self.write_log_failed(st, &e);
        }
        Link {
            seq,
            prev_seq,
            epoch: self.epoch,
            next_seq: seq + 1,
        }
    }

    /// Queues a record encoded whole that changes nothing in the map: a
    /// segment of compaction's copies, or a barrier (no written data, so
    /// nothing for reads to find in it before it is applied).
    fn queue_record_locked(
        self: &Arc<Self>,
        st: &mut State,
        link: Link,
        bytes: Bytes,
        copies: Vec<PieceRef>,
        gate: Option<tokio::sync::watch::Receiver<Option<bool>>>,
    ) {
        let body = SegmentBody::new(vec![bytes]);
        let none = WriteBuffer::default();
        self.queue_locked(
            st,
            link,
            body,
            none,
            vec![],
            copies,
            gate,
            (0, vec![]),
            None,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn queue_locked(
        self: &Arc<Self>,
        st: &mut State,
        link: Link,
        body: SegmentBody,
        frozen: WriteBuffer,
        changes: Vec<MapChange>,
        copies: Vec<PieceRef>,
        gate: Option<tokio::sync::watch::Receiver<Option<bool>>>,
        (data_offset, block_crcs): (u64, Vec<u32>),
        first_write: Option<std::time::Instant>,
    ) {
        let sealed = Arc::new(Sealed {
            link,
            frozen,
            body,
            changes,
            copies,
            data_offset,
            block_crcs,
            client_bytes_total: st.client_bytes_total,
            first_write,
            durable: AtomicBool::new(false),
            alive_bytes: self.counters.segment_bytes_alive.clone(),
            gate,
        });
        self.counters
            .segment_bytes_alive
            .fetch_add(sealed.body.len(), Ordering::Relaxed);
        st.sealed_bytes += sealed.body.len();
        st.sealed.push_back(sealed.clone());
        tokio::spawn(self.clone().upload(sealed));
    }

    async fn upload(self: Arc<Self>, seg: Arc<Sealed>) {
        // The window (docs/design/0009): fewer than WINDOW of our segments
        // before this one may be unapplied when its PUT starts, so that a
        // fence at our oldest unapplied position bounds where we can still
        // land anything. Waited for before a slot is taken: the head of the
        // queue never waits here, so it always gets a slot.
        loop {
            let applied = self.changed.notified();
            tokio::pin!(applied);
            applied.as_mut().enable();
            {
                let st = self.state.lock().unwrap();
                let head = st.sealed.front().map_or(seg.link.seq, |s| s.link.seq);
                if seg.link.seq - head < crate::chain::WINDOW || st.stopped.is_some() {
                    break;
                }
            }
            applied.await;
        }
        if let Some(gate) = &seg.gate {
            let mut gate = gate.clone();
            match gate.wait_for(|g| g.is_some()).await.map(|g| *g) {
                Ok(Some(true)) => {}
                _ => {
                    self.stop(&format!(
                        "the metadata change sealed by barrier {} could not be made durable: nothing after it can be acknowledged",
                        seg.link.seq
                    ));
                    return;
                }
            }
        }
        let Ok(slot) = self.upload_slots.acquire().await else {
            return;
        };
        let key = segment_key(seg.link.seq);
        let mut backoff = self.opts.retry_backoff_min;
        let put_started = std::time::Instant::now();
        loop {
            if self.is_stopped() {
                return;
            }
            // Armed before the attempt, so a FLUSH during it is not missed.
            let retry_now = self.retry_now.notified();
            tokio::pin!(retry_now);
            retry_now.as_mut().enable();
            let err = match self.store.put_parts_if_absent(&key, seg.body.parts()).await {
                Ok(_) => break,
                // Our own earlier attempt may have landed with its reply lost:
                // the object is ours if it holds exactly our bytes.
                Err(StoreError::PreconditionFailed(_)) => match self.store.get(&key).await {
                    Ok(existing) if seg.body.same_as(&existing) => break,
                    Ok(existing) => {
                        // A newer writer's fence (or its records) took the
                        // position: our branch of the history ends here, and
                        // nothing after it can be acknowledged (0009).
                        match segment::decode_header(&existing) {
                            Ok(h) if h.epoch > self.epoch => {
                                self.fenced(format!(
                                    "{key} holds a record of epoch {}, this daemon writes epoch {}",
                                    h.epoch, self.epoch
                                ));
                            }
                            _ => {
                                self.stop(&format!(
                                    "segment {key} was written by another writer: this daemon no longer owns the volume"
                                ));
                                tracing::error!(key, "segment conflict: stopped writing");
                            }
                        }
                        return;
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if !err.is_transient() {
                tracing::error!(key, error = %err, "segment upload failed permanently");
                self.stop(&format!("uploading {key}: {err}"));
                return;
            }
            tracing::warn!(key, error = %err, backoff_ms = backoff.as_millis() as u64, "segment upload failed; retrying");
            self.state.lock().unwrap().last_store_error = Some(format!("put {key}: {err}"));
            let jitter = self
                .rng
                .lock()
                .unwrap()
                .gen_range(0..=backoff.as_millis() as u64 / 2);
            // A FLUSH cuts the wait short: the store may be back, and the
            // flush's own deadline should not be spent sleeping.
            let _ = tokio::time::timeout(backoff + Duration::from_millis(jitter), retry_now).await;
            backoff = (backoff * 2).min(self.opts.retry_backoff_max);
        }
        // The next PUT need not wait for this segment's metadata work.
        drop(slot);
        let wp = &self.counters.write_path;
        WritePathCounters::add(&wp.put_ns, put_started);
        let filled = std::time::Instant::now();
        // Reading back recent writes needs no GET: the pieces go to the cache
        // once they are durable (a line is never the only copy).
        let cache = self.cache.clone();
        let (s2, bs) = (seg.clone(), self.block_size as usize);
        let _ = spritedisk_store::blocking::unblock(move || {
            let seq = s2.link.seq;
            // A piece lies in one part of the body: a slice, no copy. One
            // that did not would only be left out of the cache.
            let piece = |p: &PieceRef| {
                let s = s2
                    .body
                    .slice(p.piece_off, p.piece_blocks as u64 * bs as u64);
                debug_assert!(s.is_some(), "piece at {} spans parts", p.piece_off);
                s
            };
            // Written pieces with the checksums their writer computed.
            for p in s2.changes.iter().filter_map(|c| c.piece) {
                let Some(bytes) = piece(&p) else { continue };
                let first = (p.piece_off - s2.data_offset) as usize / bs;
                match s2.block_crcs.get(first..first + p.piece_blocks as usize) {
                    Some(crcs) => {
                        cache.insert_checked(seq, p.piece_off, bytes, (p.crc, crcs), false)
                    }
                    None => cache.insert(seq, p.piece_off, bytes),
                }
            }
            for p in &s2.copies {
                if let Some(bytes) = piece(p) {
                    cache.insert(seq, p.piece_off, bytes);
                }
            }
        })
        .await;
        WritePathCounters::add(&wp.cache_fill_ns, filled);
        self.counters.add_put(seg.body.len());
        seg.durable.store(true, Ordering::SeqCst);
        // Let go of the segment before queueing for the applier: while one
        // task applies a long run of segments, the others wait here, and a
        // segment they held after it left the queue would be memory that
        // `dirty_bytes_max` no longer counts (measured: 400+ MiB when the map
        // was fragmented and applies were slow).
        drop(seg);
        self.advance().await;
    }

    /// Applies every durable segment at the head of the queue to the map.
    async fn advance(self: &Arc<Self>) {
        let _one_applier = self.apply_lock.lock().await;
        let mut backoff = self.opts.retry_backoff_min;
        loop {
            let seg = {
                let st = self.state.lock().unwrap();
                match st.sealed.front() {
                    Some(s) if s.durable.load(Ordering::SeqCst) => s.clone(),
                    _ => break,
                }
            };
            let me = self.clone();
            let s = seg.clone();
            let applying = std::time::Instant::now();
            let res = spritedisk_store::blocking::unblock(move || {
                me.meta.lock().apply_segment(&SegmentApply {
                    seq: s.link.seq,
                    prev_seq: s.link.prev_seq,
                    epoch: s.link.epoch,
                    next_seq: s.link.next_seq,
                    size_bytes: s.body.len(),
                    client_bytes_total: s.client_bytes_total,
                    changes: &s.changes,
                })
            })
            .await;
            WritePathCounters::add(&self.counters.write_path.apply_ns, applying);
            match res {
                Ok(Ok(())) => backoff = self.opts.retry_backoff_min,
                // The local disk is full (the database shares it with the
                // cache). The segment is durable and still served from
                // memory, so wait for space like for a store outage: ask the
                // cache for room, retry, and let flushes time out meanwhile.
                Ok(Err(e)) if e.is_disk_full() => {
                    let freed = self.cache.release(META_ROOM_BYTES);
                    tracing::warn!(seq = seg.link.seq, freed, error = %e, "metadata database: disk full; retrying");
                    if freed < META_ROOM_BYTES
                        && self
                            .reserve
                            .lock()
                            .unwrap()
                            .as_mut()
                            .is_some_and(|r| r.release())
                    {
                        tracing::error!("the local disk is full: gave up the metadata reserve; free space on it");
                    }
                    self.state.lock().unwrap().last_store_error =
                        Some(format!("metadata database: {e}"));
                    drop(seg);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.opts.retry_backoff_max);
                    continue;
                }
                Ok(Err(e)) => {
                    // The segment is durable, so nothing is lost; but the map
                    // cannot move on, so neither can flushes.
                    self.stop(&format!(
                        "applying segment {} to the metadata database: {e}",
                        seg.link.seq
                    ));
                    return;
                }
                Err(e) => {
                    self.stop(&format!("applying segment {}: {e}", seg.link.seq));
                    return;
                }
            }
            {
                let mut st = self.state.lock().unwrap();
                let popped = st
                    .sealed
                    .pop_front()
                    .expect("the applied segment is at the head");
                debug_assert_eq!(popped.link.seq, seg.link.seq);
                st.sealed_bytes -= popped.body.len();
                st.applied_seq = seg.link.seq;
                st.rounds.applied(seg.link.seq, tokio::time::Instant::now());
                if let Some(log) = st.wlog.as_mut() {
                    log.retire(seg.link.seq);
                }
                st.last_store_error = None;
            }
            self.changed.notify_waiters();
        }
    }
}

/// Disk space the cache gives up when the metadata database finds its disk full.
const META_ROOM_BYTES: u64 = 16 << 20;

/// Seals buffered writes that have waited longer than `writeback_delay`.
/// Holds only a weak reference, so it ends when the volume is dropped.
pub(crate) async fn writeback_loop(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => (i.opts.writeback_delay / 4).max(Duration::from_millis(10)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut st = inner.state.lock().unwrap();
        if st.stopped.is_some() {
            return;
        }
        if st
            .active_since
            .is_some_and(|t| t.elapsed() >= inner.opts.writeback_delay)
        {
            inner.seal_locked(&mut st);
        }
    }
}
