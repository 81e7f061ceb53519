//! The read path: the newest copy of each block wins — the active write
//! buffer, then sealed segments still in flight (newest first), then the map.
//! Unmapped blocks are zeros without I/O; mapped blocks come from the cache
//! or a ranged GET of their whole piece, verified against its crc32c.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use spritedisk_meta::Extent;

use futures::{StreamExt, TryStreamExt};

use crate::engine::Inner;
use crate::VolumeError;

/// Ranged GETs one read request keeps in flight.
const PIECE_FETCHES_INFLIGHT_MAX: usize = 16;

/// Times a read looks the map up again after finding its data moved (a GC
/// that relocated and deleted it meanwhile); each needs another GC run
/// during the read.
const READ_RELOOKUPS_MAX: usize = 3;

/// The ranges of a read that no in-memory layer holds, and the lookup
/// memo's generation taken with those layers.
pub(crate) struct Holes {
    pub ranges: Vec<(u64, u64)>,
    pub generation: u64,
}

impl Inner {
    /// Fills `out` (blocks from `lba`) from the in-memory layers: the active
    /// buffer, then sealed segments not yet applied (newest first). Returns
    /// the ranges none of them holds, for the map.
    ///
    /// The active buffer is copied under the state lock; sealed segments
    /// are immutable, so holding them (Arc) is enough and the lock is not
    /// held through their copies or the map lookup. A segment applied to
    /// the map meanwhile is harmless: the in-memory layers win over the map,
    /// and ranges they do not cover are the same in both. A lookup begun
    /// after this sees every apply committed before it (0011).
    fn fill_from_memory(&self, lba: u64, blocks: u64, out: &mut [u8]) -> Holes {
        let t0 = Instant::now();
        let st = self.state.lock().unwrap();
        self.counters.read_lock_wait(t0.elapsed());
        self.fill_from_layers(st, lba, blocks, out)
    }

    /// Also returns the lookup memo's generation, taken under the state
    /// lock with the layers (docs/design/0018).
    fn fill_from_layers(
        &self,
        st: std::sync::MutexGuard<'_, crate::engine::State>,
        lba: u64,
        blocks: u64,
        out: &mut [u8],
    ) -> Holes {
        let bs = self.block_size;
        let generation = self.meta.memo.generation();
        let mut holes = st.active.fill(lba, lba + blocks, lba, out, bs);
        let sealed: Vec<_> = if holes.is_empty() {
            vec![]
        } else {
            st.sealed.iter().rev().cloned().collect()
        };
        drop(st);
        for seg in &sealed {
            if holes.is_empty() {
                break;
            }
            holes = holes
                .into_iter()
                .flat_map(|(a, b)| seg.frozen.fill(a, b, lba, out, bs))
                .collect();
        }
        Holes {
            ranges: holes,
            generation,
        }
    }

    /// Serves a read without waiting, if it can: from memory and the
    /// cache, into `out` (exactly `blocks` blocks). Ok(false): some block
    /// needs the store, and `out` holds nothing to rely on; the caller runs
    /// [`Inner::read`] instead. Frontends call it on their own thread, so
    /// that a warm read costs no hop to the engine's runtime (0011).
    pub fn read_ready(&self, lba: u64, blocks: u64, out: &mut [u8]) -> Result<bool, VolumeError> {
        debug_assert_eq!(out.len() as u64, blocks * self.block_size);
        // Never waits for a lock: one held through a seal (the index of up
        // to a segment, 0012), a write log append or a metadata
        // transaction would stall every request of the frontend's queue
        // thread.
        let Ok(st) = self.state.try_lock() else {
            return Ok(false);
        };
        let holes = self.fill_from_layers(st, lba, blocks, out);
        if holes.ranges.is_empty() {
            return Ok(true);
        }
        let Some(extents) = self.lookup_now(&holes)? else {
            return Ok(false);
        };
        // A read that will need the store is left whole to `read`, so the
        // cache's hit and miss counts see it once.
        if !extents
            .iter()
            .all(|e| self.cache.contains(e.seg, e.piece.piece_off))
        {
            return Ok(false);
        }
        // Unmapped blocks read as zeros; `out` may hold anything there.
        let mut cursor = 0;
        let bs = self.block_size;
        for (a, b) in holes.ranges {
            let mut at = a;
            while cursor < extents.len() && extents[cursor].lba < b {
                let e = &extents[cursor];
                out[((at - lba) * bs) as usize..((e.lba - lba) * bs) as usize].fill(0);
                at = e.end();
                cursor += 1;
            }
            out[((at - lba) * bs) as usize..((b - lba) * bs) as usize].fill(0);
        }
        Ok(self.fill_cached(lba, &extents, out, |_| {}))
    }

    pub async fn read(self: &Arc<Self>, lba: u64, blocks: u64) -> Result<Bytes, VolumeError> {
        let mut out = vec![0u8; (blocks * self.block_size) as usize];
        let holes = self.fill_from_memory(lba, blocks, &mut out);
        if holes.ranges.is_empty() {
            return Ok(Bytes::from(out));
        }
        let mut extents = self.lookup(&holes)?;
        let mut relookups = 0;
        loop {
            match self.read_mapped(lba, &extents, &mut out).await {
                Ok(()) => break,
                // GC may have moved the data (compaction applied, then the
                // old segment deleted) between our lookup and our GET: the
                // map says where it is now (A1 of the 5bc5be0 review). The
                // map only moves data it still holds, so data that is really
                // missing or corrupt reads the same rows again and fails.
                Err(e @ VolumeError::CorruptSegment { .. }) => {
                    // From the map itself, never the memo.
                    let again = self.lookup_map(&holes.ranges)?;
                    // (The memo may have cut an extent at its chunks.)
                    let same = crate::memo::joined(&again) == crate::memo::joined(&extents);
                    if same || relookups == READ_RELOOKUPS_MAX {
                        tracing::error!(error = %e, lba, "read failed: the data the map references is missing or corrupt");
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "data moved during the read: looking it up again");
                    relookups += 1;
                    extents = again;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Bytes::from(out))
    }

    /// The map's rows for `holes`, in order: from the lookup memo when it
    /// holds them at the holes' generation (0018), else from the map.
    pub(crate) fn lookup(&self, holes: &Holes) -> Result<Vec<Extent>, VolumeError> {
        self.lookup_with(holes, true)
            .map(|ex| ex.expect("a lookup that may wait always answers"))
    }

    /// As [`Inner::lookup`], but None rather than wait for the metadata lock.
    fn lookup_now(&self, holes: &Holes) -> Result<Option<Vec<Extent>>, VolumeError> {
        self.lookup_with(holes, false)
    }

    fn lookup_with(&self, holes: &Holes, wait: bool) -> Result<Option<Vec<Extent>>, VolumeError> {
        let memo = &self.meta.memo;
        if !self.opts.lookup_memo {
            return self.map_rows(&holes.ranges, wait);
        }
        if let Some(ex) = memo.get(&holes.ranges, holes.generation) {
            self.counters.read_memo_hit();
            return Ok(Some(ex));
        }
        // A miss looks up the aligned windows around the holes, so that
        // the next reads near them hit (a random reader touches each
        // window once instead of each block).
        let blocks = self.config.size_bytes / self.block_size;
        let wide = crate::memo::widen(&holes.ranges, blocks);
        let Some(rows) = self.map_rows(&wide, wait)? else {
            return Ok(None);
        };
        // Looked up after the generation was taken: good for it.
        memo.put(&wide, &rows, holes.generation);
        let mut ex = Vec::with_capacity(rows.len());
        for &(a, b) in &holes.ranges {
            crate::memo::clip_into(&rows, a, b, &mut ex);
        }
        Ok(Some(ex))
    }

    /// The map's rows for `ranges`, from the map itself (never the memo).
    pub(crate) fn lookup_map(&self, ranges: &[(u64, u64)]) -> Result<Vec<Extent>, VolumeError> {
        self.map_rows(ranges, true)
            .map(|ex| ex.expect("a lookup that may wait always answers"))
    }

    /// From a read-only connection when the metadata is on disk (never
    /// waiting for the writer's connection nor another reader), else under
    /// the metadata lock; None if `wait` is false and that lock is taken.
    fn map_rows(
        &self,
        ranges: &[(u64, u64)],
        wait: bool,
    ) -> Result<Option<Vec<Extent>>, VolumeError> {
        let t0 = Instant::now();
        let on_readers = match &self.map_readers {
            Some(readers) => readers.lookup(ranges)?,
            None => None,
        };
        let ex = match on_readers {
            Some(ex) => ex,
            None => {
                let meta = if wait {
                    self.meta.lock()
                } else {
                    match self.meta.try_lock() {
                        Some(m) => m,
                        None => return Ok(None),
                    }
                };
                self.counters.read_lock_wait(t0.elapsed());
                let mut ex = vec![];
                for &(a, b) in ranges {
                    ex.extend(meta.lookup(a, b - a)?);
                }
                ex
            }
        };
        self.counters.read_lookup(t0.elapsed());
        Ok(Some(ex))
    }

    /// Reads the cached ones of `extents` (of a request starting at `lba`)
    /// straight into place in `out` (only their blocks); calls `missed` on
    /// each of the others. True if every extent was cached.
    fn fill_cached(
        &self,
        lba: u64,
        extents: &[Extent],
        out: &mut [u8],
        mut missed: impl FnMut(&Extent),
    ) -> bool {
        let bs = self.block_size;
        let mut all = true;
        for e in extents {
            let line_len = e.piece.piece_blocks as u64 * bs;
            let dst = &mut out[((e.lba - lba) * bs) as usize..((e.end() - lba) * bs) as usize];
            // The cache checks the line against the map's crc32c itself.
            if !self.cache.read_into(
                e.seg,
                e.piece.piece_off,
                line_len,
                e.piece.crc,
                e.skip_blocks * bs,
                dst,
            ) {
                all = false;
                missed(e);
            }
        }
        all
    }

    /// Reads `extents` (of a request starting at `lba`) into `out`: from the
    /// cache, else by fetching their pieces.
    async fn read_mapped(
        self: &Arc<Self>,
        lba: u64,
        extents: &[Extent],
        out: &mut [u8],
    ) -> Result<(), VolumeError> {
        let bs = self.block_size;
        // The rest need their whole piece, fetched once even when several
        // extents cut from it are read.
        let mut missed: Vec<Extent> = vec![];
        let mut pieces: HashMap<(u64, u64), Extent> = HashMap::new();
        self.fill_cached(lba, extents, out, |e| {
            pieces.entry((e.seg, e.piece.piece_off)).or_insert(*e);
            missed.push(*e);
        });
        if pieces.is_empty() {
            return Ok(());
        }
        // A large cold read fetches its pieces in parallel, a bounded number at a time.
        let fetched: Vec<((u64, u64), Bytes)> =
            futures::stream::iter(pieces.into_values().map(|e| {
                let me = self.clone();
                async move {
                    me.fetch_piece(e.seg, e.piece, false)
                        .await
                        .map(|d| ((e.seg, e.piece.piece_off), d))
                }
            }))
            .buffer_unordered(PIECE_FETCHES_INFLIGHT_MAX)
            .try_collect()
            .await?;
        let fetched: HashMap<(u64, u64), Bytes> = fetched.into_iter().collect();
        for e in &missed {
            let piece = &fetched[&(e.seg, e.piece.piece_off)];
            let src =
                &piece[(e.skip_blocks * bs) as usize..((e.skip_blocks + e.blocks) * bs) as usize];
            out[((e.lba - lba) * bs) as usize..((e.end() - lba) * bs) as usize]
                .copy_from_slice(src);
        }
        Ok(())
    }
}
