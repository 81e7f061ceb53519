//! The map lookups of the read path, remembered until the map changes
//! (docs/design/0018). A warm read that finds its range here costs a
//! sharded mutex and a B-tree probe instead of a SQLite statement (the
//! largest share of a warm read's CPU: 55% on the host's engine bench,
//! 20% of the daemon's in the VM's profile).
//!
//! Correctness rests on one order, kept by construction:
//!
//! - every change to the map goes through [`MetaCell`]'s guard with `&mut`
//!   access, and the guard bumps the generation when it is dropped, after
//!   the change committed (a change made through `&MetaDb` does not exist:
//!   every writing method of `MetaDb` takes `&mut self`);
//! - an apply pops its segment from the in-memory layers only after that
//!   (upload.rs), and a reader takes the generation under the state lock
//!   together with those layers;
//! - an entry is stored under the generation its reader took before its
//!   lookup began, and served only to a reader that took the same one.
//!
//! So an entry served at generation `g` was looked up after every change
//! that bumped the generation to `g` or below had committed; a segment
//! popped before the reader took `g` is one of those; a segment popped
//! after is still in the reader's layers, which win over the map.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use spritedisk_meta::{Extent, MetaDb};

/// Ranges are remembered in pieces that do not cross a multiple of this
/// many blocks, so that the shard of a range is the shard of its start.
const MEMO_CHUNK_BLOCKS: u64 = 256;
/// Shards, each with its own lock: readers on different threads rarely
/// meet.
const MEMO_SHARDS: usize = 16;
/// Ranges and extents a shard holds before it is emptied (an extent is
/// 48 bytes, a range ~40 and the B-tree's share): 16 × 8,192, at most
/// ~12 MiB for the volume, whatever its size.
const MEMO_SHARD_ITEMS_MAX: usize = 8192;

#[derive(Default)]
struct Shard {
    /// The generation every entry here was looked up at.
    generation: u64,
    /// Range start → (range end, the map's extents in it, clipped to it).
    ranges: BTreeMap<u64, (u64, Box<[Extent]>)>,
    /// Ranges plus extents held (an unmapped range holds no extent, and
    /// still costs memory).
    items: usize,
}

#[derive(Default)]
pub(crate) struct LookupMemo {
    generation: AtomicU64,
    shards: [Mutex<Shard>; MEMO_SHARDS],
}

impl LookupMemo {
    /// The generation a reader takes under the state lock, with the
    /// in-memory layers.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The map changed (and the change committed): no entry made before
    /// is served again.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn shard(&self, chunk: u64) -> MutexGuard<'_, Shard> {
        self.shards[(chunk % MEMO_SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The extents of `ranges` (disjoint, in order) at `generation`, if
    /// every piece of every range is remembered for it.
    pub fn get(&self, ranges: &[(u64, u64)], generation: u64) -> Option<Vec<Extent>> {
        let mut out = vec![];
        for &(a, b) in ranges {
            for (ca, cb) in chunked(a, b) {
                let shard = self.shard(ca / MEMO_CHUNK_BLOCKS);
                if shard.generation != generation {
                    return None;
                }
                let (_, (end, extents)) = shard.ranges.range(..=ca).next_back()?;
                if *end < cb {
                    return None;
                }
                clip_into(extents, ca, cb, &mut out);
            }
        }
        Some(out)
    }

    /// Remembers `extents` (the map's rows in `ranges`, clipped to them,
    /// in order) as looked up by a reader that took `generation` before
    /// its lookup began.
    pub fn put(&self, ranges: &[(u64, u64)], extents: &[Extent], generation: u64) {
        for &(a, b) in ranges {
            for (ca, cb) in chunked(a, b) {
                let mut piece = vec![];
                clip_into(extents, ca, cb, &mut piece);
                let mut shard = self.shard(ca / MEMO_CHUNK_BLOCKS);
                if shard.generation > generation {
                    // Looked up before a change another reader saw.
                    return;
                }
                let cost = 1 + piece.len();
                if shard.generation < generation || shard.items + cost > MEMO_SHARD_ITEMS_MAX {
                    shard.ranges.clear();
                    shard.items = 0;
                    shard.generation = generation;
                }
                shard.items += cost;
                if let Some((_, old)) = shard.ranges.insert(ca, (cb, piece.into_boxed_slice())) {
                    shard.items -= 1 + old.len();
                }
            }
        }
    }
}

/// A miss is looked up as the aligned windows of this many blocks around
/// it: one row more or less for a map written in large pieces, at most
/// this many for one written in single blocks.
const MEMO_LOOKUP_WINDOW_BLOCKS: u64 = 64;

/// `ranges` (disjoint, in order) widened to the aligned windows around
/// them, below `end`, merged where they meet.
pub(crate) fn widen(ranges: &[(u64, u64)], end: u64) -> Vec<(u64, u64)> {
    let w = MEMO_LOOKUP_WINDOW_BLOCKS;
    let mut out: Vec<(u64, u64)> = vec![];
    for &(a, b) in ranges {
        let (a, b) = (a / w * w, b.div_ceil(w).saturating_mul(w).min(end.max(b)));
        match out.last_mut() {
            Some(last) if last.1 >= a => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// `[a, b)` cut where it crosses a multiple of [`MEMO_CHUNK_BLOCKS`].
fn chunked(a: u64, b: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut at = a;
    std::iter::from_fn(move || {
        if at >= b {
            return None;
        }
        let end = ((at / MEMO_CHUNK_BLOCKS + 1) * MEMO_CHUNK_BLOCKS).min(b);
        let piece = (at, end);
        at = end;
        Some(piece)
    })
}

/// Appends the parts of `extents` (in LBA order) inside `[a, b)` to `out`,
/// clipped to it.
pub(crate) fn clip_into(extents: &[Extent], a: u64, b: u64, out: &mut Vec<Extent>) {
    for e in extents {
        if e.end() <= a || e.lba >= b {
            continue;
        }
        let lba = e.lba.max(a);
        out.push(Extent {
            lba,
            blocks: e.end().min(b) - lba,
            skip_blocks: e.skip_blocks + (lba - e.lba),
            ..*e
        });
    }
}

/// `extents` (in LBA order) with the parts of one extent that the memo's
/// chunks cut apart joined again: what the map itself would return, so
/// that a read can tell whether a relookup found anything new.
pub(crate) fn joined(extents: &[Extent]) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
    for e in extents {
        match out.last_mut() {
            Some(l)
                if l.end() == e.lba
                    && l.seg == e.seg
                    && l.piece == e.piece
                    && l.skip_blocks + l.blocks == e.skip_blocks =>
            {
                l.blocks += e.blocks
            }
            _ => out.push(*e),
        }
    }
    out
}

/// The writer's metadata connection, behind its mutex, with the memo it
/// invalidates: a guard that was used to change the database bumps the
/// memo's generation when it is dropped (after the change committed or
/// rolled back), before anyone else can take the lock.
pub(crate) struct MetaCell {
    db: Mutex<MetaDb>,
    pub memo: LookupMemo,
}

pub(crate) struct MetaGuard<'a> {
    db: MutexGuard<'a, MetaDb>,
    memo: &'a LookupMemo,
    changed: bool,
}

impl MetaCell {
    pub fn new(db: MetaDb) -> Self {
        MetaCell {
            db: Mutex::new(db),
            memo: LookupMemo::default(),
        }
    }

    /// Waits for the metadata lock (a poisoned one is taken as it is: the
    /// database's own transactions keep it consistent).
    pub fn lock(&self) -> MetaGuard<'_> {
        self.guard(self.db.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The lock if it is free now.
    pub fn try_lock(&self) -> Option<MetaGuard<'_>> {
        match self.db.try_lock() {
            Ok(db) => Some(self.guard(db)),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(self.guard(p.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn guard<'a>(&'a self, db: MutexGuard<'a, MetaDb>) -> MetaGuard<'a> {
        MetaGuard {
            db,
            memo: &self.memo,
            changed: false,
        }
    }
}

impl std::ops::Deref for MetaGuard<'_> {
    type Target = MetaDb;
    fn deref(&self) -> &MetaDb {
        &self.db
    }
}

impl std::ops::DerefMut for MetaGuard<'_> {
    fn deref_mut(&mut self) -> &mut MetaDb {
        self.changed = true;
        &mut self.db
    }
}

impl Drop for MetaGuard<'_> {
    fn drop(&mut self) {
        // Runs before the field `db` (the lock) is dropped.
        if self.changed {
            self.memo.changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spritedisk_meta::PieceRef;

    fn ext(lba: u64, blocks: u64, seg: u64) -> Extent {
        Extent {
            lba,
            blocks,
            seg,
            piece: PieceRef {
                piece_off: 4096 * seg,
                piece_blocks: blocks as u32,
                crc: seg as u32,
            },
            skip_blocks: 0,
        }
    }

    #[test]
    fn a_remembered_range_answers_its_sub_ranges_at_its_generation_only() {
        let m = LookupMemo::default();
        let g = m.generation();
        // One extent across a chunk boundary, then a hole, then another.
        let rows = [ext(250, 10, 1), ext(300, 4, 2)];
        m.put(&[(240, 310)], &rows, g);
        let got = m.get(&[(257, 260)], g).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].lba, got[0].blocks, got[0].skip_blocks), (257, 3, 7));
        // Across the chunk boundary: the extent comes back in two parts
        // that together are the same blocks of the same piece.
        let got = m.get(&[(254, 262)], g).unwrap();
        let parts: Vec<_> = got
            .iter()
            .map(|e| (e.lba, e.blocks, e.skip_blocks))
            .collect();
        assert_eq!(parts, vec![(254, 2, 4), (256, 4, 6)]);
        // Joined, they are what the map itself returns for the range.
        let whole = Extent {
            lba: 254,
            blocks: 6,
            skip_blocks: 4,
            ..rows[0]
        };
        assert_eq!(joined(&got), vec![whole]);
        // The hole is known to be unmapped.
        assert_eq!(m.get(&[(270, 290)], g).unwrap(), vec![]);
        // Outside what was looked up: not known.
        assert!(m.get(&[(230, 245)], g).is_none());
        assert!(m.get(&[(300, 320)], g).is_none());
        // Another generation: nothing is served.
        m.changed();
        assert!(m.get(&[(257, 260)], m.generation()).is_none());
        m.put(&[(256, 300)], &rows, m.generation());
        assert!(m.get(&[(257, 260)], g).is_none(), "the shard moved on");
    }

    #[test]
    fn misses_widen_to_aligned_windows_inside_the_volume() {
        assert_eq!(widen(&[(70, 71)], 1000), vec![(64, 128)]);
        assert_eq!(widen(&[(70, 71), (120, 130)], 1000), vec![(64, 192)]);
        assert_eq!(
            widen(&[(1, 2), (300, 301)], 1000),
            vec![(0, 64), (256, 320)]
        );
        assert_eq!(widen(&[(990, 1000)], 1000), vec![(960, 1000)]);
    }

    #[test]
    fn a_lookup_made_before_a_change_is_not_kept_after_it() {
        let m = LookupMemo::default();
        let g = m.generation();
        m.changed();
        let g2 = m.generation();
        m.put(&[(0, 8)], &[ext(0, 8, 2)], g2);
        // A slow reader that took the old generation comes back late.
        m.put(&[(0, 8)], &[ext(0, 8, 1)], g);
        assert_eq!(m.get(&[(0, 8)], g2).unwrap()[0].seg, 2);
        assert!(m.get(&[(0, 8)], g).is_none());
    }

    #[test]
    fn a_full_shard_starts_over() {
        let m = LookupMemo::default();
        let g = m.generation();
        // All in chunk 0's shard (chunks 0, 16, 32, ... share it).
        let step = MEMO_CHUNK_BLOCKS * MEMO_SHARDS as u64;
        let n = MEMO_SHARD_ITEMS_MAX as u64;
        for i in 0..n {
            // Mapped and unmapped ranges: both cost memory.
            let rows = [ext(i * step, 1, 1)];
            let rows = if i % 2 == 0 { &rows[..] } else { &[] };
            m.put(&[(i * step, i * step + 1)], rows, g);
        }
        let shard = m.shard(0);
        assert!(shard.items <= MEMO_SHARD_ITEMS_MAX, "{}", shard.items);
        let extents: usize = shard.ranges.values().map(|(_, e)| e.len()).sum();
        assert_eq!(shard.items, shard.ranges.len() + extents);
        assert!(shard.ranges.len() < n as usize, "never emptied");
    }

    #[test]
    fn a_guard_used_to_change_the_database_bumps_the_generation_when_dropped() {
        let cell = MetaCell::new(MetaDb::open_in_memory().unwrap());
        let g = cell.memo.generation();
        {
            let db = cell.lock();
            let _ = db.applied_seq().unwrap();
        }
        assert_eq!(cell.memo.generation(), g, "a read changed nothing");
        {
            let mut db = cell.lock();
            db.set_writer_epoch(3).unwrap();
            assert_eq!(
                cell.memo.generation(),
                g,
                "bumped before the guard was dropped"
            );
        }
        assert_eq!(cell.memo.generation(), g + 1);
    }

    /// The order the memo rests on: a reader that takes the generation
    /// while a change is being made (the guard taken for `&mut` use, the
    /// transaction not yet committed) may look up the map before the
    /// change; what it remembers must not be served to a reader that
    /// comes after the change (one whose segment was popped from the
    /// in-memory layers meanwhile). A bump when `&mut` is first used,
    /// before the commit, would serve it.
    #[test]
    fn a_lookup_made_while_a_change_is_in_progress_is_not_served_after_it() {
        let cell = MetaCell::new(MetaDb::open_in_memory().unwrap());
        let mut guard = cell.lock();
        let db: &mut MetaDb = &mut guard;
        // A reader between the change's start and its commit.
        let during = cell.memo.generation();
        cell.memo.put(&[(0, 8)], &[ext(0, 8, 1)], during);
        db.set_writer_epoch(3).unwrap();
        drop(guard);
        let after = cell.memo.generation();
        assert!(
            cell.memo.get(&[(0, 8)], after).is_none(),
            "a lookup made before the change committed was served after it"
        );
    }
}
