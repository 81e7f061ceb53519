//! The cache on local disk: one sparse file of fixed 64 KiB slots.
//!
//! Line size: 64 KiB, the engine's checksummed piece (the unit a read of
//! flushed data fetches), so a line is exactly one verified piece and one
//! ranged GET; big enough to amortise a GET's latency, small enough that a
//! 4 KiB random read does not drag in megabytes.
//!
//! Eviction: CLOCK (second chance). A hit sets the slot's reference bit; the
//! hand clears bits and evicts the first unreferenced slot. It keeps hot
//! lines under a scan almost as well as LRU with no list to update on every
//! hit (a hit is one bit store under the lock).
//!
//! Bound: the file has `capacity / 64 KiB` slots and a line only ever lives in
//! its slot, so its allocated size never exceeds the capacity. Dropped lines
//! are punched out (FALLOC_FL_PUNCH_HOLE), so a damaged or unused slot holds
//! no disk space.
//!
//! Trust: every line carries its crc32c (which must equal the map's checksum
//! of the piece, so a line is never mistaken for other bytes) and one crc32c
//! per 4 KiB block, kept in memory and checked for every block a read
//! returns; a mismatch drops the line. Per-block checksums let a 4 KiB read
//! touch 4 KiB of the file instead of the whole 64 KiB line (measured: the
//! whole-line read and checksum cost half the warm random-read rate). The index is saved only on a clean close and is
//! deleted when the cache opens, so after a crash every line is dropped,
//! never trusted. Any I/O error (a full disk) makes the cache skip that line:
//! reads degrade to uncached, never to errors.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use crate::index::{self, SavedLine};
use crate::{CacheStats, ReadCache};

pub const LINE_BYTES: u64 = 64 << 10;
/// The unit a line's data is checksummed and read in: the volume's block.
pub const CHECK_BYTES: u64 = 4096;
const CHECKS_PER_LINE: usize = (LINE_BYTES / CHECK_BYTES) as usize;
const DATA_FILE: &str = "cache.data";
const INDEX_FILE: &str = "cache.index";

#[derive(Debug, Clone, Copy)]
struct Line {
    seg: u64,
    off: u64,
    len: u32,
    crc: u32,
    referenced: bool,
    /// Inserted by read-ahead and not read since.
    prefetched: bool,
}

#[derive(Debug)]
struct Slots {
    map: HashMap<(u64, u64), u32>,
    /// Per slot: the line it holds, if any.
    lines: Vec<Option<Line>>,
    /// Bumped whenever a slot's content changes, so a reader that copied a
    /// slot without the lock can tell that it raced a rewrite.
    gens: Vec<u64>,
    /// Per slot, the crc32c of each 4 KiB block of its line.
    block_crcs: Vec<u32>,
    free: Vec<u32>,
    hand: u32,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    hit_bytes: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
    corrupt_drops: AtomicU64,
    write_errors: AtomicU64,
    prefetch_inserts: AtomicU64,
    prefetch_hits: AtomicU64,
}

#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    /// The volume whose lines these are (None: not yet any volume's).
    owner: Option<[u8; 16]>,
    file: File,
    slots: Mutex<Slots>,
    nslots: u32,
    c: Counters,
}

impl DiskCache {
    /// Opens (creating if needed) a cache of `capacity_bytes` in `dir` for
    /// the volume `owner` (its id; None: an empty cache no volume owns yet).
    /// A cleanly closed cache of the same volume comes back warm; anything
    /// else starts cold: lines are keyed by segment and offset, which only
    /// name the same bytes within one volume (M12 of the 5bc5be0 review).
    pub fn open(
        dir: &Path,
        capacity_bytes: u64,
        owner: Option<[u8; 16]>,
    ) -> std::io::Result<DiskCache> {
        std::fs::create_dir_all(dir)?;
        let nslots = (capacity_bytes / LINE_BYTES).clamp(1, u32::MAX as u64) as u32;
        let index_path = dir.join(INDEX_FILE);
        let saved = index::load(&index_path, LINE_BYTES, CHECK_BYTES, nslots)
            .filter(|(whose, lines)| *whose == owner || (whose.is_none() && lines.is_empty()))
            .map(|(_, lines)| lines);
        // From here on, a crash must not find an index that describes lines
        // this process may rewrite.
        if index_path.exists() {
            std::fs::remove_file(&index_path)?;
            File::open(dir)?.sync_all()?;
        }
        let data_path = dir.join(DATA_FILE);
        if saved.is_none() {
            // Cold: drop whatever an earlier process left, and its disk space.
            let _ = std::fs::remove_file(&data_path);
        }
        // Never through a link: set_len and writes on a planted link's
        // target would damage another file (docs/design/0017).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&data_path)?;
        file.set_len(nslots as u64 * LINE_BYTES)?;
        let mut slots = Slots {
            map: HashMap::new(),
            lines: vec![None; nslots as usize],
            gens: vec![0; nslots as usize],
            block_crcs: vec![0; nslots as usize * CHECKS_PER_LINE],
            free: vec![],
            hand: 0,
        };
        let mut warm = 0;
        for l in saved.unwrap_or_default() {
            if slots.lines[l.slot as usize].is_none() && !slots.map.contains_key(&(l.seg, l.off)) {
                slots.lines[l.slot as usize] = Some(Line {
                    seg: l.seg,
                    off: l.off,
                    len: l.len,
                    crc: l.crc,
                    referenced: false,
                    prefetched: false,
                });
                slots.map.insert((l.seg, l.off), l.slot);
                let at = l.slot as usize * CHECKS_PER_LINE;
                slots.block_crcs[at..at + l.block_crcs.len()].copy_from_slice(&l.block_crcs);
                warm += 1;
            }
        }
        slots.free = (0..nslots)
            .rev()
            .filter(|&s| slots.lines[s as usize].is_none())
            .collect();
        tracing::info!(dir = %dir.display(), capacity_bytes, warm_lines = warm, "cache opened");
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            owner,
            file,
            slots: Mutex::new(slots),
            nslots,
            c: Counters::default(),
        })
    }

    fn punch(&self, slot: u32) {
        // SAFETY: fallocate on our own open file descriptor.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (slot as u64 * LINE_BYTES) as libc::off_t,
                LINE_BYTES as libc::off_t,
            )
        };
        if rc != 0 {
            tracing::debug!(slot, error = %std::io::Error::last_os_error(), "punching a cache slot");
        }
    }

    /// Drops the line in `slot` if it still is (`seg`, `off`) at generation `gen`.
    fn drop_line(&self, slot: u32, key: (u64, u64), gen: u64) {
        let mut s = self.slots.lock().unwrap();
        if s.gens[slot as usize] == gen && s.map.get(&key) == Some(&slot) {
            s.map.remove(&key);
            s.lines[slot as usize] = None;
            s.gens[slot as usize] += 1;
            s.free.push(slot);
            drop(s);
            self.punch(slot);
        }
    }

    /// A slot for a new line: a free one, else the CLOCK victim.
    fn take_slot(s: &mut Slots, nslots: u32, evictions: &AtomicU64) -> u32 {
        if let Some(slot) = s.free.pop() {
            return slot;
        }
        loop {
            if let Some(slot) = Self::clock_step(s, nslots) {
                evictions.fetch_add(1, Ordering::Relaxed);
                return slot;
            }
        }
    }

    /// One move of the CLOCK hand: a referenced line loses its bit, an
    /// unreferenced one is evicted and its slot returned (not yet free).
    fn clock_step(s: &mut Slots, nslots: u32) -> Option<u32> {
        let h = s.hand;
        s.hand = (s.hand + 1) % nslots;
        match &mut s.lines[h as usize] {
            Some(l) if l.referenced => {
                l.referenced = false;
                None
            }
            Some(l) => {
                let key = (l.seg, l.off);
                s.map.remove(&key);
                s.lines[h as usize] = None;
                s.gens[h as usize] += 1;
                Some(h)
            }
            // A slot being filled by another insert: skip it.
            None => None,
        }
    }
}

impl DiskCache {
    /// Writes a line into a slot and publishes it; `checks` are its crc32c
    /// and its blocks' when the caller has them, else computed here.
    fn insert_line(
        &self,
        seg: u64,
        offset: u64,
        data: Bytes,
        prefetched: bool,
        checks: Option<(u32, &[u32])>,
    ) {
        if data.is_empty() || data.len() as u64 > LINE_BYTES {
            return;
        }
        // Checksums of another granularity are not used.
        let checks =
            checks.filter(|(_, b)| b.len() as u64 == (data.len() as u64).div_ceil(CHECK_BYTES));
        let key = (seg, offset);
        let (slot, gen) = {
            let mut s = self.slots.lock().unwrap();
            if s.map.contains_key(&key) {
                return;
            }
            let slot = Self::take_slot(&mut s, self.nslots, &self.c.evictions);
            s.gens[slot as usize] += 1;
            (slot, s.gens[slot as usize])
        };
        // Written outside the lock; the line becomes visible only once whole.
        if let Err(e) = self.file.write_all_at(&data, slot as u64 * LINE_BYTES) {
            tracing::debug!(error = %e, "cache write failed: line skipped");
            self.c.write_errors.fetch_add(1, Ordering::Relaxed);
            let mut s = self.slots.lock().unwrap();
            s.free.push(slot);
            drop(s);
            self.punch(slot);
            return;
        }
        let computed;
        let (crc, blocks) = match checks {
            Some((crc, blocks)) => (crc, blocks),
            None => {
                // The line's own checksum in one more pass: measured in the
                // VM rig, combining the 16 block checksums (crc32c_combine,
                // matrix work per call) cost more than the checksums
                // themselves (16% of the daemon's CPU under a sequential
                // write). The engine's written lines come with both.
                computed = data
                    .chunks(CHECK_BYTES as usize)
                    .map(crc32c::crc32c)
                    .collect::<Vec<u32>>();
                (crc32c::crc32c(&data), computed.as_slice())
            }
        };
        debug_assert!(
            checks.is_none()
                || (crc == crc32c::crc32c(&data)
                    && data
                        .chunks(CHECK_BYTES as usize)
                        .zip(blocks)
                        .all(|(b, &c)| crc32c::crc32c(b) == c)),
            "a line offered with checksums that are not its bytes'"
        );
        let mut s = self.slots.lock().unwrap();
        if s.gens[slot as usize] != gen || s.map.contains_key(&key) {
            s.free.push(slot);
            return;
        }
        let at = slot as usize * CHECKS_PER_LINE;
        s.block_crcs[at..at + blocks.len()].copy_from_slice(blocks);
        s.lines[slot as usize] = Some(Line {
            seg,
            off: offset,
            len: data.len() as u32,
            crc,
            referenced: false,
            prefetched,
        });
        s.map.insert(key, slot);
        s.gens[slot as usize] += 1;
        self.c.inserts.fetch_add(1, Ordering::Relaxed);
        if prefetched {
            self.c.prefetch_inserts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl ReadCache for DiskCache {
    fn read_into(
        &self,
        seg: u64,
        offset: u64,
        len: u64,
        crc: u32,
        from: u64,
        dst: &mut [u8],
    ) -> bool {
        let key = (seg, offset);
        let to = from + dst.len() as u64;
        assert!(
            from.is_multiple_of(CHECK_BYTES)
                && (to.is_multiple_of(CHECK_BYTES) || to == len)
                && to <= len,
            "cache reads are whole 4 KiB blocks of the line: {from}..{to} of {len}"
        );
        let found = {
            let mut s = self.slots.lock().unwrap();
            match s.map.get(&key).copied() {
                Some(slot) => {
                    let gen = s.gens[slot as usize];
                    let at = slot as usize * CHECKS_PER_LINE;
                    let mut crcs = [0u32; CHECKS_PER_LINE];
                    let (first, end) = (
                        (from / CHECK_BYTES) as usize,
                        to.div_ceil(CHECK_BYTES) as usize,
                    );
                    crcs[..end - first].copy_from_slice(&s.block_crcs[at + first..at + end]);
                    let line = s.lines[slot as usize]
                        .as_mut()
                        .expect("mapped slot holds a line");
                    line.referenced = true;
                    if std::mem::take(&mut line.prefetched) {
                        self.c.prefetch_hits.fetch_add(1, Ordering::Relaxed);
                    }
                    // The line must be the bytes the map points at: same
                    // length and the map's checksum.
                    let vouched = line.crc == crc;
                    (line.len as u64 == len).then_some((slot, gen, vouched, crcs))
                }
                None => None,
            }
        };
        let Some((slot, gen, vouched, crcs)) = found else {
            self.c.misses.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if !vouched {
            tracing::warn!(
                seg,
                offset,
                slot,
                "cache line disagrees with the map's checksum: dropped"
            );
            self.c.corrupt_drops.fetch_add(1, Ordering::Relaxed);
            self.c.misses.fetch_add(1, Ordering::Relaxed);
            self.drop_line(slot, key, gen);
            return false;
        }
        let read_ok = self
            .file
            .read_exact_at(dst, slot as u64 * LINE_BYTES + from)
            .is_ok();
        let raced = self.slots.lock().unwrap().gens[slot as usize] != gen;
        if raced {
            self.c.misses.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let intact = read_ok
            && dst
                .chunks(CHECK_BYTES as usize)
                .zip(&crcs)
                .all(|(b, &c)| crc32c::crc32c(b) == c);
        if !intact {
            tracing::warn!(
                seg,
                offset,
                slot,
                "cache line failed its checksum: dropped, refetching"
            );
            self.c.corrupt_drops.fetch_add(1, Ordering::Relaxed);
            self.c.misses.fetch_add(1, Ordering::Relaxed);
            self.drop_line(slot, key, gen);
            return false;
        }
        self.c.hits.fetch_add(1, Ordering::Relaxed);
        self.c
            .hit_bytes
            .fetch_add(dst.len() as u64, Ordering::Relaxed);
        true
    }

    fn insert(&self, seg: u64, offset: u64, data: Bytes) {
        self.insert_line(seg, offset, data, false, None)
    }

    fn insert_checked(
        &self,
        seg: u64,
        offset: u64,
        data: Bytes,
        checks: (u32, &[u32]),
        prefetched: bool,
    ) {
        self.insert_line(seg, offset, data, prefetched, Some(checks))
    }

    fn insert_prefetched(&self, seg: u64, offset: u64, data: Bytes) {
        self.insert_line(seg, offset, data, true, None)
    }

    fn contains(&self, seg: u64, offset: u64) -> bool {
        self.slots.lock().unwrap().map.contains_key(&(seg, offset))
    }

    fn enabled(&self) -> bool {
        true
    }

    fn release(&self, bytes: u64) -> u64 {
        let want = bytes.div_ceil(LINE_BYTES);
        let mut freed = vec![];
        {
            let mut s = self.slots.lock().unwrap();
            // Two turns of the CLOCK hand: the first clears reference bits.
            for _ in 0..2 * self.nslots as u64 {
                if freed.len() as u64 >= want || s.map.is_empty() {
                    break;
                }
                if let Some(slot) = Self::clock_step(&mut s, self.nslots) {
                    s.free.push(slot);
                    freed.push(slot);
                }
            }
        }
        self.c
            .evictions
            .fetch_add(freed.len() as u64, Ordering::Relaxed);
        for &slot in &freed {
            self.punch(slot);
        }
        freed.len() as u64 * LINE_BYTES
    }

    fn persist(&self) {
        let lines: Vec<SavedLine> = {
            let s = self.slots.lock().unwrap();
            s.lines
                .iter()
                .enumerate()
                .filter_map(|(slot, l)| {
                    l.map(|l| {
                        let at = slot * CHECKS_PER_LINE;
                        let n = (l.len as u64).div_ceil(CHECK_BYTES) as usize;
                        SavedLine {
                            slot: slot as u32,
                            seg: l.seg,
                            off: l.off,
                            len: l.len,
                            crc: l.crc,
                            block_crcs: s.block_crcs[at..at + n].to_vec(),
                        }
                    })
                })
                .collect()
        };
        let res = self.file.sync_data().and_then(|_| {
            index::save(
                &self.dir.join(INDEX_FILE),
                self.owner,
                LINE_BYTES,
                CHECK_BYTES,
                self.nslots,
                &lines,
            )
        });
        match res {
            Ok(()) => tracing::info!(lines = lines.len(), "cache index saved"),
            Err(e) => {
                tracing::warn!(error = %e, "cache index not saved: the next attach starts cold")
            }
        }
    }

    fn capacity_bytes(&self) -> u64 {
        self.nslots as u64 * LINE_BYTES
    }

    fn stats(&self) -> CacheStats {
        let lines = self.slots.lock().unwrap().map.len() as u64;
        let c = &self.c;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            hit_bytes: c.hit_bytes.load(Ordering::Relaxed),
            inserts: c.inserts.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            corrupt_drops: c.corrupt_drops.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            prefetch_inserts: c.prefetch_inserts.load(Ordering::Relaxed),
            prefetch_hits: c.prefetch_hits.load(Ordering::Relaxed),
            lines,
            capacity_bytes: self.capacity_bytes(),
            physical_bytes: self.file.metadata().map_or(0, |m| m.blocks() * 512),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(tag: u8, len: usize) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| tag.wrapping_add(i as u8))
                .collect::<Vec<_>>(),
        )
    }

    fn crc(tag: u8, len: usize) -> u32 {
        crc32c::crc32c(&line(tag, len))
    }

    const OWNER: Option<[u8; 16]> = Some([7; 16]);

    /// M12 of the 5bc5be0 review: a cache directory reused by another
    /// volume (its meta.db deleted, or a warm-pool slot) holds lines keyed
    /// by segment numbers that name other bytes there. Only the crc32c told
    /// them apart; now none of them is even a candidate.
    #[test]
    fn another_volumes_lines_are_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20, OWNER).unwrap();
        c.insert(1, 0, line(1, 4096));
        c.persist();
        drop(c);
        let other = DiskCache::open(dir.path(), 1 << 20, Some([8; 16])).unwrap();
        assert_eq!(
            other.get(1, 0, 4096, crc(1, 4096)),
            None,
            "a line of another volume, even with a matching crc32c"
        );
        assert_eq!(other.stats().lines, 0);
        // An empty cache set up for no volume yet (the warm pool's) opens
        // warm for any.
        let dir = tempfile::tempdir().unwrap();
        DiskCache::open(dir.path(), 1 << 20, None)
            .unwrap()
            .persist();
        let c = DiskCache::open(dir.path(), 1 << 20, OWNER).unwrap();
        c.insert(1, 0, line(1, 4096));
        c.persist();
        drop(c);
        let c = DiskCache::open(dir.path(), 1 << 20, OWNER).unwrap();
        assert_eq!(c.get(1, 0, 4096, crc(1, 4096)), Some(line(1, 4096)));
    }

    /// docs/design/0017: a warm cache's data file replaced by a link is not
    /// followed (the open fails; reads then go to the store), and the
    /// link's target is neither truncated nor written.
    #[test]
    fn a_data_file_that_became_a_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20, OWNER).unwrap();
        c.insert(1, 0, line(1, 4096));
        c.persist();
        drop(c);
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::fs::remove_file(dir.path().join(DATA_FILE)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(DATA_FILE)).unwrap();
        let Err(e) = DiskCache::open(dir.path(), 1 << 20, OWNER) else {
            panic!("opened through a link");
        };
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn hit_miss_and_warm_restart() {
        let dir0 = tempfile::tempdir().unwrap();
        let c0 = DiskCache::open(dir0.path(), 1 << 20, OWNER).unwrap();
        c0.insert(5, 0, line(5, 4096));
        assert_eq!(
            c0.get(5, 0, 4096, crc(6, 4096)),
            None,
            "a line the map does not vouch for is never served"
        );
        assert_eq!(c0.get(5, 0, 4096, crc(5, 4096)), None, "and it was dropped");

        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20, OWNER).unwrap();
        assert_eq!(c.get(1, 0, 4096, crc(1, 4096)), None);
        c.insert(1, 0, line(1, 4096));
        c.insert(1, 4096, line(2, 65536));
        assert_eq!(c.get(1, 0, 4096, crc(1, 4096)), Some(line(1, 4096)));
        assert_eq!(c.get(1, 4096, 65536, crc(2, 65536)), Some(line(2, 65536)));
        assert_eq!(
            c.get(1, 0, 8192, crc(1, 8192)),
            None,
            "a length mismatch is a miss"
        );
        let st = c.stats();
        assert_eq!((st.hits, st.misses, st.inserts, st.lines), (2, 2, 2, 2));
        c.persist();
        drop(c);
        let c = DiskCache::open(dir.path(), 1 << 20, OWNER).unwrap();
        assert_eq!(
            c.get(1, 4096, 65536, crc(2, 65536)),
            Some(line(2, 65536)),
            "warm after a clean close"
        );
        assert!(
            !dir.path().join(INDEX_FILE).exists(),
            "the index is consumed at open"
        );
        drop(c); // no persist: a crash
        let c = DiskCache::open(dir.path(), 1 << 20, OWNER).unwrap();
        assert_eq!(
            c.get(1, 4096, 65536, crc(2, 65536)),
            None,
            "cold after a crash"
        );
    }

    #[test]
    fn corruption_is_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20, OWNER).unwrap();
        c.insert(7, 0, line(9, 65536));
        c.insert(7, 65536, line(3, 65536));
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(DATA_FILE))
            .unwrap();
        let slot = c.slots.lock().unwrap().map[&(7, 0)];
        f.write_all_at(&[0xff], slot as u64 * LINE_BYTES + 100)
            .unwrap();
        assert_eq!(c.get(7, 0, 65536, crc(9, 65536)), None);
        assert_eq!(c.stats().corrupt_drops, 1);
        assert_eq!(
            c.get(7, 0, 65536, crc(9, 65536)),
            None,
            "the dropped line stays gone"
        );
        assert_eq!(c.stats().corrupt_drops, 1);
        // A truncated file: reads fail, lines are dropped, nothing wrong is served.
        f.set_len(0).unwrap();
        assert_eq!(c.get(7, 65536, 65536, crc(3, 65536)), None);
        assert_eq!(c.stats().corrupt_drops, 2);
    }

    #[test]
    fn a_working_set_ten_times_the_capacity_stays_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 1 << 20; // 16 slots
        let c = DiskCache::open(dir.path(), cap, OWNER).unwrap();
        for i in 0..160u64 {
            c.insert(i, 0, line(i as u8, 65536));
            // Re-reading a few keeps them hot under CLOCK.
            c.get(0, 0, 65536, crc(0, 65536));
        }
        let st = c.stats();
        assert!(st.physical_bytes <= cap, "{} > {cap}", st.physical_bytes);
        assert_eq!(st.lines, 16);
        assert!(st.evictions >= 144);
        assert_eq!(
            c.get(0, 0, 65536, crc(0, 65536)),
            Some(line(0, 65536)),
            "the hot line survived the scan"
        );
    }

    #[test]
    fn release_gives_back_disk_space_from_cold_lines() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20, OWNER).unwrap();
        for i in 0..16u64 {
            c.insert(i, 0, line(i as u8, 65536));
        }
        c.get(3, 0, 65536, crc(3, 65536));
        let before = c.stats().physical_bytes;
        assert_eq!(c.release(4 * 65536), 4 * 65536);
        let st = c.stats();
        assert_eq!(st.lines, 12);
        assert!(st.physical_bytes <= before - 4 * 65536, "{st:?}");
        assert!(
            c.get(3, 0, 65536, crc(3, 65536)).is_some(),
            "the hot line stays"
        );
        assert_eq!(c.release(u64::MAX), 12 * 65536);
        assert_eq!(c.stats().physical_bytes, 0);
    }

    #[test]
    fn partial_reads_check_only_the_blocks_they_return() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20, OWNER).unwrap();
        let data = line(5, 65536);
        c.insert(1, 0, data.clone());
        let mut b = vec![0u8; 8192];
        assert!(c.read_into(1, 0, 65536, crc(5, 65536), 4096, &mut b));
        assert!(b[..] == data[4096..12288]);
        assert_eq!(c.stats().hit_bytes, 8192);
        // A flipped bit in block 5: block 1 still reads, block 5 drops the line.
        let slot = c.slots.lock().unwrap().map[&(1, 0)];
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(DATA_FILE))
            .unwrap();
        f.write_all_at(
            &[!data[5 * 4096 + 9]],
            slot as u64 * LINE_BYTES + 5 * 4096 + 9,
        )
        .unwrap();
        let mut one = vec![0u8; 4096];
        assert!(c.read_into(1, 0, 65536, crc(5, 65536), 4096, &mut one));
        assert!(!c.read_into(1, 0, 65536, crc(5, 65536), 5 * 4096, &mut one));
        assert_eq!(c.stats().corrupt_drops, 1);
        assert!(!c.contains(1, 0), "the damaged line is gone");
        // A line the map no longer vouches for (another checksum) is dropped.
        c.insert(2, 0, data.clone());
        assert!(!c.read_into(2, 0, 65536, crc(6, 65536), 0, &mut one));
        assert_eq!(c.stats().corrupt_drops, 2);
    }
}
