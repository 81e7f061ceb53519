//! Read-ahead: a reader that asks for the blocks right after its previous
//! request is reading sequentially; the next `prefetch_window_bytes` of
//! flushed data are then fetched in the background with parallel ranged GETs
//! (at most [`PREFETCH_INFLIGHT_MAX`] at a time, each covering adjacent
//! pieces up to [`PREFETCH_GET_BYTES_MAX`]) into the read cache, so the
//! reader finds them there. The window widens while the stream lasts: each
//! time the reader has used a quarter of the last one, the next reaches
//! twice as far, up to [`PREFETCH_WINDOW_MAX_BYTES`] and a quarter of the
//! cache (so that read-ahead never evicts itself); a read elsewhere ends
//! the stream, and the next one starts from the first window again. The
//! memory it holds is bounded by the GETs in flight, not by the window
//! (each lands in the cache): [`PREFETCH_INFLIGHT_MAX`] ×
//! [`PREFETCH_GET_BYTES_MAX`] = 16 MiB. Only data in the map is read ahead: what is still
//! in memory is fast already. A reader that asks for a piece being read ahead
//! waits for that GET (`fetch.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use spritedisk_meta::PieceRef;

use crate::engine::Inner;

/// Read-ahead GETs in flight at once, for the whole volume: enough to
/// cover a 20 ms store round trip at several hundred MB/s.
pub const PREFETCH_INFLIGHT_MAX: usize = 16;
/// The widest a sequential stream's window grows.
pub const PREFETCH_WINDOW_MAX_BYTES: u64 = 64 << 20;
/// One read-ahead GET covers adjacent pieces of a segment up to this size.
pub const PREFETCH_GET_BYTES_MAX: u64 = 1 << 20;

/// Where the last read ended and how far ahead has been fetched.
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    next_lba: u64,
    streak: u32,
    fetched_until: u64,
    /// The window of the last request of this stream (0: none yet).
    window: u64,
}

impl Inner {
    /// Called for every read: detects a sequential reader and starts read-ahead.
    pub fn note_read(self: &Arc<Self>, lba: u64, blocks: u64) {
        let bs = self.block_size;
        let first = self.opts.prefetch_window_bytes / bs;
        if first == 0 || !self.cache.enabled() {
            return;
        }
        let widest =
            (PREFETCH_WINDOW_MAX_BYTES.min(self.cache.capacity_bytes() / 4) / bs).max(first);
        let end = lba + blocks;
        let range = {
            let mut ra = self.readahead.lock().unwrap();
            if lba == ra.next_lba && lba != 0 {
                ra.streak += 1;
            } else {
                ra.streak = 0;
                ra.fetched_until = 0;
                ra.window = 0;
            }
            ra.next_lba = end;
            // The second read in a row is the sequential signal.
            if ra.streak == 0 {
                return;
            }
            // Wait until a quarter of the last window is used before asking again.
            let ahead = ra.fetched_until.saturating_sub(end);
            if ra.window > 0 && ahead > ra.window * 3 / 4 {
                return;
            }
            let window = match ra.window {
                0 => first,
                w => (w * 2).min(widest),
            };
            let from = ra.fetched_until.max(end);
            let to = (end + window).min(self.config.size_bytes / bs);
            if from >= to {
                return;
            }
            ra.window = window;
            ra.fetched_until = to;
            (from, to)
        };
        let me = self.clone();
        tokio::spawn(async move { me.prefetch(range.0, range.1).await });
    }

    async fn prefetch(self: Arc<Self>, from: u64, to: u64) {
        let extents = match self.lookup_map(&[(from, to)]) {
            Ok(e) => e,
            Err(_) => return,
        };
        let mut pieces = BTreeMap::new();
        for e in extents {
            if !self.cache.contains(e.seg, e.piece.piece_off) {
                pieces.insert((e.seg, e.piece.piece_off), e.piece);
            }
        }
        // Runs of pieces adjacent in one segment, up to PREFETCH_GET_BYTES_MAX each.
        let mut runs: Vec<(u64, Vec<PieceRef>)> = vec![];
        for ((seg, off), piece) in pieces {
            let len = piece.piece_blocks as u64 * self.block_size;
            match runs.last_mut() {
                Some((s, run))
                    if *s == seg
                        && run.last().is_some_and(|p| {
                            p.piece_off + p.piece_blocks as u64 * self.block_size == off
                        })
                        && off + len - run[0].piece_off <= PREFETCH_GET_BYTES_MAX =>
                {
                    run.push(piece)
                }
                _ => runs.push((seg, vec![piece])),
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (seg, run) in runs {
            let Ok(permit) = self.prefetch_slots.clone().acquire_owned().await else {
                return;
            };
            let me = self.clone();
            tasks.spawn(async move {
                let _permit = permit;
                me.prefetch_run(seg, &run).await;
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}
