//! Read-ahead: a reader that asks for the blocks right after its previous
//! request is reading sequentially; the next `prefetch_window_bytes` of
//! flushed data are then fetched in the background with parallel ranged GETs
//! into the read cache, so the reader finds them there. The window widens
//! while the stream lasts: each time the reader has used a quarter of the
//! last one, the next reaches twice as far, up to
//! [`PREFETCH_WINDOW_MAX_BYTES`] and a quarter of the cache (so that
//! read-ahead never evicts itself); a read elsewhere ends the stream, and the
//! next one starts from the first window again.
//!
//! GETs grow with the window: each covers adjacent pieces of a segment up to
//! a sixteenth of the window, between [`PREFETCH_GET_BYTES_MIN`] and
//! [`PREFETCH_GET_BYTES_MAX`]. A young stream gets small GETs, whose first
//! bytes come soonest; a long one gets fewer, larger requests, which is what
//! object stores serve best (each request has a fixed cost: S3 bills it and
//! a server spends CPU on it; on moto, measured, request count is the
//! limit). The memory read-ahead holds is bounded by the bytes of GETs in
//! flight, not by the window (each lands in the cache):
//! [`PREFETCH_INFLIGHT_BYTES_MAX`], taken from a semaphore of 1 MiB permits
//! before a GET starts. Only data in the map is read ahead: what is still in
//! memory is fast already. A reader that asks for a piece being read ahead
//! waits for that GET (`fetch.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use spritedisk_meta::PieceRef;

use crate::engine::Inner;

/// Bytes of read-ahead GETs in flight at once, for the whole volume: the
/// memory read-ahead may hold. 32 MiB covers a 20 ms round trip at several
/// hundred MB/s (16 GETs of 1 MiB early in a stream, 8 of 4 MiB later).
pub const PREFETCH_INFLIGHT_BYTES_MAX: u64 = 32 << 20;
/// The unit of [`PREFETCH_INFLIGHT_BYTES_MAX`]'s semaphore.
pub const PREFETCH_PERMIT_BYTES: u64 = 1 << 20;
/// The widest a sequential stream's window grows.
pub const PREFETCH_WINDOW_MAX_BYTES: u64 = 64 << 20;
/// The smallest limit of one read-ahead GET (adjacent pieces of a segment).
pub const PREFETCH_GET_BYTES_MIN: u64 = 1 << 20;
/// The largest limit of one read-ahead GET, reached once the window is 64 MiB.
pub const PREFETCH_GET_BYTES_MAX: u64 = 4 << 20;
const _: () = assert!(PREFETCH_GET_BYTES_MAX <= PREFETCH_INFLIGHT_BYTES_MAX);
const _: () = assert!(PREFETCH_GET_BYTES_MIN <= PREFETCH_GET_BYTES_MAX);

/// How many permits of the in-flight semaphore: the bound in 1 MiB units.
pub(crate) const PREFETCH_PERMITS: usize =
    (PREFETCH_INFLIGHT_BYTES_MAX / PREFETCH_PERMIT_BYTES) as usize;

/// The size limit of one GET of a stream whose window is `window_bytes`.
fn get_bytes_max(window_bytes: u64) -> u64 {
    (window_bytes / 16).clamp(PREFETCH_GET_BYTES_MIN, PREFETCH_GET_BYTES_MAX)
}

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
            (from, to, window)
        };
        let me = self.clone();
        let get_max = get_bytes_max(range.2 * bs);
        tokio::spawn(async move { me.prefetch(range.0, range.1, get_max).await });
    }

    async fn prefetch(self: Arc<Self>, from: u64, to: u64, get_max: u64) {
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
        // Runs of pieces adjacent in one segment, up to `get_max` each.
        let mut runs: Vec<(u64, Vec<PieceRef>)> = vec![];
        for ((seg, off), piece) in pieces {
            let len = piece.piece_blocks as u64 * self.block_size;
            match runs.last_mut() {
                Some((s, run))
                    if *s == seg
                        && run.last().is_some_and(|p| {
                            p.piece_off + p.piece_blocks as u64 * self.block_size == off
                        })
                        && off + len - run[0].piece_off <= get_max =>
                {
                    run.push(piece)
                }
                _ => runs.push((seg, vec![piece])),
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (seg, run) in runs {
            let bytes = run
                .iter()
                .map(|p| p.piece_blocks as u64 * self.block_size)
                .sum::<u64>();
            // A run never exceeds get_max <= PREFETCH_INFLIGHT_BYTES_MAX, so
            // this asks for at most all the permits and cannot wait forever.
            let permits = bytes
                .div_ceil(PREFETCH_PERMIT_BYTES)
                .clamp(1, PREFETCH_PERMITS as u64);
            let Ok(permit) = self
                .prefetch_slots
                .clone()
                .acquire_many_owned(permits as u32)
                .await
            else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gets_grow_with_the_window_between_their_bounds() {
        assert_eq!(get_bytes_max(4 << 20), PREFETCH_GET_BYTES_MIN);
        assert_eq!(get_bytes_max(32 << 20), 2 << 20);
        assert_eq!(
            get_bytes_max(PREFETCH_WINDOW_MAX_BYTES),
            PREFETCH_GET_BYTES_MAX
        );
        assert_eq!(get_bytes_max(1 << 40), PREFETCH_GET_BYTES_MAX);
    }
}
