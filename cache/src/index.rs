//! The saved index of a cleanly closed cache (`cache.index`): which slot holds
//! which line, with the line's crc32c and those of its 4 KiB blocks. Loaded and deleted at open, so after a
//! crash there is no index and nothing in the data file is trusted.

use std::fs;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"SPRTCIX3";
/// Magic, owner, line and check sizes, slots, entries.
const HEADER_BYTES: usize = 8 + 16 + 8 + 8 + 4 + 4;
/// Fixed part of an entry; the block checksums follow it.
const ENTRY_BYTES: usize = 28;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SavedLine {
    pub slot: u32,
    pub seg: u64,
    pub off: u64,
    pub len: u32,
    pub crc: u32,
    pub block_crcs: Vec<u32>,
}

/// Writes the index durably (temp file, fsync, rename, fsync dir).
pub(crate) fn save(
    path: &Path,
    owner: Option<[u8; 16]>,
    line_bytes: u64,
    check_bytes: u64,
    slots: u32,
    lines: &[SavedLine],
) -> std::io::Result<()> {
    let per_line = (line_bytes / check_bytes) as usize;
    let mut b = Vec::with_capacity(HEADER_BYTES + 4 + lines.len() * (ENTRY_BYTES + 4 * per_line));
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&owner.unwrap_or_default());
    b.extend_from_slice(&line_bytes.to_le_bytes());
    b.extend_from_slice(&check_bytes.to_le_bytes());
    b.extend_from_slice(&slots.to_le_bytes());
    b.extend_from_slice(&(lines.len() as u32).to_le_bytes());
    for l in lines {
        b.extend_from_slice(&l.slot.to_le_bytes());
        b.extend_from_slice(&l.seg.to_le_bytes());
        b.extend_from_slice(&l.off.to_le_bytes());
        b.extend_from_slice(&l.len.to_le_bytes());
        b.extend_from_slice(&l.crc.to_le_bytes());
        for c in &l.block_crcs {
            b.extend_from_slice(&c.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&b)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(path.parent().unwrap())?.sync_all()
}

/// Reads an index saved for the same geometry, and whose lines it holds
/// (None: no volume's); None if absent, damaged or for another geometry
/// (then the cache starts cold).
#[allow(clippy::type_complexity)]
pub(crate) fn load(
    path: &Path,
    line_bytes: u64,
    check_bytes: u64,
    slots: u32,
) -> Option<(Option<[u8; 16]>, Vec<SavedLine>)> {
    let b = fs::read(path).ok()?;
    if b.len() < HEADER_BYTES + 4 || &b[..8] != MAGIC {
        return None;
    }
    let (body, tail) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(tail.try_into().ok()?) {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap());
    let owner: [u8; 16] = body[8..24].try_into().ok()?;
    let owner = (owner != [0; 16]).then_some(owner);
    if u64_at(24) != line_bytes || u64_at(32) != check_bytes || u32_at(40) != slots {
        return None;
    }
    let n = u32_at(44) as usize;
    let mut out = Vec::with_capacity(n);
    let mut at = HEADER_BYTES;
    for _ in 0..n {
        if body.len() < at + ENTRY_BYTES {
            return None;
        }
        let (slot, len) = (u32_at(at), u32_at(at + 20));
        if slot >= slots || len as u64 > line_bytes || len == 0 {
            return None;
        }
        let nblocks = (len as u64).div_ceil(check_bytes) as usize;
        let end = at + ENTRY_BYTES + 4 * nblocks;
        if body.len() < end {
            return None;
        }
        out.push(SavedLine {
            slot,
            seg: u64_at(at + 4),
            off: u64_at(at + 12),
            len,
            crc: u32_at(at + 24),
            block_crcs: (0..nblocks)
                .map(|i| u32_at(at + ENTRY_BYTES + 4 * i))
                .collect(),
        });
        at = end;
    }
    (at == body.len()).then_some((owner, out))
}
