//! The in-memory write buffer: the newest state of every block written since
//! the last seal, as non-overlapping runs. A later write over an earlier one
//! replaces it in place, so a segment never carries dead bytes of its own.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::blockcrc::Checked;

/// A run of blocks: data, or unmapped (discarded / zeroed, reads as zeros).
#[derive(Debug, Clone)]
struct Run {
    blocks: u64,
    data: Option<Bytes>,
    /// The crc32c of each block of `data`, when the writer computed them
    /// (docs/design/0012); empty when unknown (a segment computes them).
    crcs: Vec<u32>,
}

#[derive(Debug, Default, Clone)]
pub struct WriteBuffer {
    runs: BTreeMap<u64, Run>,
    data_bytes: u64,
}

impl WriteBuffer {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Number of runs (each becomes at least one segment index entry).
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Bytes of data held (unmapped runs hold none).
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Sets `[lba, lba + blocks)` to `data` (exactly `blocks` blocks) or to unmapped.
    pub fn insert(&mut self, lba: u64, blocks: u64, data: Option<Bytes>, block_size: u64) {
        self.insert_run(lba, blocks, data, vec![], block_size);
    }

    /// [`WriteBuffer::insert`] of data whose block checksums the writer
    /// computed (the segment reuses them).
    pub fn insert_checked(&mut self, lba: u64, blocks: u64, data: Option<Checked>, bs: u64) {
        match data {
            Some(c) => {
                debug_assert_eq!(c.crcs.len() as u64, blocks);
                self.insert_run(lba, blocks, Some(c.bytes), c.crcs, bs)
            }
            None => self.insert_run(lba, blocks, None, vec![], bs),
        }
    }

    fn insert_run(&mut self, lba: u64, blocks: u64, data: Option<Bytes>, crcs: Vec<u32>, bs: u64) {
        debug_assert!(data.as_ref().is_none_or(|d| d.len() as u64 == blocks * bs));
        debug_assert!(crcs.is_empty() || (data.is_some() && crcs.len() as u64 == blocks));
        self.remove_range(lba, lba + blocks, bs);
        if let Some(d) = &data {
            self.data_bytes += d.len() as u64;
        }
        self.runs.insert(lba, Run { blocks, data, crcs });
    }

    /// Cuts `[a, b)` out of every run, keeping the parts outside it.
    fn remove_range(&mut self, a: u64, b: u64, bs: u64) {
        let mut hit: Vec<u64> = vec![];
        if let Some((&start, run)) = self.runs.range(..a).next_back() {
            if start + run.blocks > a {
                hit.push(start);
            }
        }
        hit.extend(self.runs.range(a..b).map(|(&s, _)| s));
        for start in hit {
            let run = self.runs.remove(&start).unwrap();
            let end = start + run.blocks;
            if let Some(d) = &run.data {
                self.data_bytes -= d.len() as u64;
            }
            // Keep what lies outside [a, b); copy it so the buffer's byte count
            // is what it actually keeps alive (a slice would pin the whole write).
            let keep = |from: u64, to: u64| Run {
                blocks: to - from,
                data: run.data.as_ref().map(|d| {
                    Bytes::copy_from_slice(
                        &d[((from - start) * bs) as usize..((to - start) * bs) as usize],
                    )
                }),
                crcs: match run.crcs.is_empty() {
                    true => vec![],
                    false => run.crcs[(from - start) as usize..(to - start) as usize].to_vec(),
                },
            };
            if start < a {
                let left = keep(start, a);
                self.data_bytes += left.data.as_ref().map_or(0, |d| d.len() as u64);
                self.runs.insert(start, left);
            }
            if end > b {
                let right = keep(b, end);
                self.data_bytes += right.data.as_ref().map_or(0, |d| d.len() as u64);
                self.runs.insert(b, right);
            }
        }
    }

    /// All runs in LBA order: (lba, blocks, data or None for unmapped).
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64, Option<&Bytes>)> {
        self.runs
            .iter()
            .map(|(&l, r)| (l, r.blocks, r.data.as_ref()))
    }

    /// [`WriteBuffer::runs`] with each data run's block checksums (empty
    /// when the writer did not compute them).
    pub fn runs_checked(&self) -> impl Iterator<Item = (u64, u64, Option<(&Bytes, &[u32])>)> {
        self.runs.iter().map(|(&l, r)| {
            let data = r.data.as_ref().map(|d| (d, r.crcs.as_slice()));
            (l, r.blocks, data)
        })
    }

    /// Copies what this buffer holds of `[a, b)` into `out` (which holds
    /// blocks from `base`), and returns the parts of `[a, b)` it does not hold.
    pub fn fill(&self, a: u64, b: u64, base: u64, out: &mut [u8], bs: u64) -> Vec<(u64, u64)> {
        let mut gaps = vec![];
        let mut cursor = a;
        let first = match self.runs.range(..=a).next_back() {
            Some((&s, r)) if s + r.blocks > a => s,
            _ => a,
        };
        for (&start, run) in self.runs.range(first..b) {
            let (s, e) = (start.max(a), (start + run.blocks).min(b));
            if s >= e {
                continue;
            }
            if s > cursor {
                gaps.push((cursor, s));
            }
            let dst = &mut out[((s - base) * bs) as usize..((e - base) * bs) as usize];
            match &run.data {
                Some(d) => dst
                    .copy_from_slice(&d[((s - start) * bs) as usize..((e - start) * bs) as usize]),
                None => dst.fill(0),
            }
            cursor = e;
        }
        if cursor < b {
            gaps.push((cursor, b));
        }
        gaps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u64 = 4096;

    fn blocks(v: u8, n: u64) -> Option<Bytes> {
        Some(Bytes::from(vec![v; (n * BS) as usize]))
    }

    #[test]
    fn overwrite_splits_and_fill_reports_gaps() {
        let mut b = WriteBuffer::default();
        b.insert(10, 10, blocks(1, 10), BS);
        b.insert(12, 2, blocks(2, 2), BS);
        b.insert(18, 4, None, BS);
        assert_eq!(b.data_bytes(), 8 * BS);
        let spans: Vec<_> = b.runs().map(|(l, n, d)| (l, n, d.map(|d| d[0]))).collect();
        assert_eq!(
            spans,
            [
                (10, 2, Some(1)),
                (12, 2, Some(2)),
                (14, 4, Some(1)),
                (18, 4, None)
            ]
        );
        let mut out = vec![0xffu8; (30 * BS) as usize];
        let gaps = b.fill(5, 25, 0, &mut out, BS);
        assert_eq!(gaps, [(5, 10), (22, 25)]);
        assert_eq!(out[(12 * BS) as usize], 2);
        assert_eq!(out[(19 * BS) as usize], 0);
        assert_eq!(out[(6 * BS) as usize], 0xff, "gaps are left untouched");
    }

    /// Cutting a run keeps each remaining block's own checksum.
    #[test]
    fn cut_runs_keep_their_blocks_checksums() {
        let data: Vec<u8> = (0..10 * BS).map(|i| (i / BS * 7 + i % 251) as u8).collect();
        let mut b = WriteBuffer::default();
        b.insert_checked(10, 10, Some(Checked::new(Bytes::from(data))), BS);
        b.insert(12, 2, blocks(2, 2), BS);
        b.insert_checked(18, 1, Some(Checked::new(blocks(3, 1).unwrap())), BS);
        let mut seen = 0;
        for (lba, n, d) in b.runs_checked() {
            let (d, crcs) = d.unwrap();
            if lba == 12 {
                assert!(crcs.is_empty(), "inserted without checksums");
                continue;
            }
            assert_eq!(crcs, crate::blockcrc::block_crcs(d), "run at {lba}");
            assert_eq!(crcs.len() as u64, n);
            seen += 1;
        }
        assert_eq!(seen, 4, "10..12, 14..18, 18, 19");
    }
}
