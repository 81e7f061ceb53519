//! Fetching a piece of flushed data from the object store: one ranged GET,
//! checked against the map's crc32c, then offered to the cache.
//!
//! One GET per piece at a time: a reader that wants a piece another reader
//! or the read-ahead is already fetching waits for that GET and then reads
//! the cache, instead of issuing its own (measured: a cold sequential read
//! with read-ahead otherwise fetched ~3% of its pieces twice).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use spritedisk_meta::PieceRef;
use spritedisk_store::StoreError;
use tokio::sync::watch;

use crate::engine::Inner;
use crate::retry::retry_read;
use crate::segment::{segment_key, verify_piece_blocks};
use crate::VolumeError;

/// Pieces being fetched; a waiter's receiver wakes when the fetcher is done
/// (its sender is dropped, whether the GET worked, failed or was cancelled).
#[derive(Debug, Default)]
pub(crate) struct Fetches(Mutex<HashMap<(u64, u64), watch::Receiver<()>>>);

/// Removes the fetcher's entry when it is done, waking the waiters.
struct Fetching<'a> {
    fetches: &'a Fetches,
    key: (u64, u64),
    _done: watch::Sender<()>,
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        self.fetches.0.lock().unwrap().remove(&self.key);
    }
}

impl Inner {
    /// Piece `piece` of segment `seg`, verified; cached as read-ahead if `prefetched`.
    pub(crate) async fn fetch_piece(
        &self,
        seg: u64,
        piece: PieceRef,
        prefetched: bool,
    ) -> Result<Bytes, VolumeError> {
        let key = (seg, piece.piece_off);
        let len = piece.piece_blocks as u64 * self.block_size;
        // Without a cache a waiter would find nothing after waiting.
        if !self.cache.enabled() {
            return self.get_piece(seg, piece, prefetched).await;
        }
        loop {
            let waiting = {
                let mut m = self.fetches.0.lock().unwrap();
                match m.get(&key) {
                    Some(rx) => Ok(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(());
                        m.insert(key, rx);
                        Err(tx)
                    }
                }
            };
            match waiting {
                Err(tx) => {
                    let _fetching = Fetching {
                        fetches: &self.fetches,
                        key,
                        _done: tx,
                    };
                    return self.get_piece(seg, piece, prefetched).await;
                }
                Ok(mut rx) => {
                    let _ = rx.changed().await;
                    if let Some(d) = self.cache.get(seg, piece.piece_off, len, piece.crc) {
                        return Ok(d);
                    }
                    // Not cached after all (a failed GET, a full cache disk):
                    // fetch it ourselves.
                }
            }
        }
    }

    /// Read-ahead of `pieces`, adjacent in segment `seg` and sorted: one
    /// ranged GET for all of them (fewer, larger requests are what object
    /// stores serve fastest), each piece verified and cached on its own.
    /// Pieces someone else is fetching are left to them.
    pub(crate) async fn prefetch_run(&self, seg: u64, pieces: &[PieceRef]) {
        let (mut guards, mut mine) = (vec![], vec![]);
        {
            let mut m = self.fetches.0.lock().unwrap();
            for p in pieces {
                let key = (seg, p.piece_off);
                if m.contains_key(&key) || self.cache.contains(seg, p.piece_off) {
                    continue;
                }
                let (tx, rx) = watch::channel(());
                m.insert(key, rx);
                guards.push((key, tx));
                mine.push(*p);
            }
        }
        let _fetching: Vec<Fetching> = guards
            .into_iter()
            .map(|(key, tx)| Fetching {
                fetches: &self.fetches,
                key,
                _done: tx,
            })
            .collect();
        let (Some(first), Some(last)) = (mine.first(), mine.last()) else {
            return;
        };
        let bs = self.block_size;
        let start = first.piece_off;
        let end = last.piece_off + last.piece_blocks as u64 * bs;
        let key = segment_key(seg);
        // Errors are the reader's to see, if it gets there.
        let Ok(data) = retry_read(&key, || {
            self.segment_store(seg).get_range(&key, start, end - start)
        })
        .await
        else {
            return;
        };
        self.counters.add_get(data.len() as u64);
        let cache = self.cache.clone();
        let _ = spritedisk_store::blocking::unblock(move || {
            for p in mine {
                let at = (p.piece_off - start) as usize;
                let Some(d) = data.get(at..at + p.piece_blocks as usize * bs as usize) else {
                    return;
                };
                if let Ok(blocks) = verify_piece_blocks(d, p.crc, p.piece_off) {
                    let line = data.slice(at..at + d.len());
                    cache.insert_checked(seg, p.piece_off, line, (p.crc, &blocks), true);
                }
            }
        })
        .await;
    }

    async fn get_piece(
        &self,
        seg: u64,
        piece: PieceRef,
        prefetched: bool,
    ) -> Result<Bytes, VolumeError> {
        let len = piece.piece_blocks as u64 * self.block_size;
        let key = segment_key(seg);
        let data = retry_read(&key, || {
            self.segment_store(seg)
                .get_range(&key, piece.piece_off, len)
        })
        .await
        .map_err(|err| match err {
            // The reader looks the map up again: GC may have moved it.
            StoreError::NotFound(_) | StoreError::OutOfRange { .. } => {
                tracing::warn!(key, error = %err, "segment data not found where the read looked it up");
                VolumeError::CorruptSegment {
                    key: key.clone(),
                    reason: format!("referenced data is missing: {err}"),
                }
            }
            other => {
                tracing::error!(key, error = %other, "read of segment data failed");
                VolumeError::Store(other)
            }
        })?;
        self.counters.add_get(len);
        let blocks = verify_piece_blocks(&data, piece.crc, piece.piece_off).map_err(|err| {
            tracing::error!(key, error = %err, "segment data failed its checksum");
            VolumeError::CorruptSegment {
                key: key.clone(),
                reason: err.0,
            }
        })?;
        let cache = self.cache.clone();
        let d = data.clone();
        // The cache write is a pwrite: keep it off the async workers.
        let _ = spritedisk_store::blocking::unblock(move || {
            cache.insert_checked(seg, piece.piece_off, d, (piece.crc, &blocks), prefetched)
        })
        .await;
        Ok(data)
    }
}
