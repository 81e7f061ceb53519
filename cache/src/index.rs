//! The saved index of a cleanly closed cache (`cache.index`): which slot holds
//! which line, with the line's crc32c. Loaded and deleted at open, so after a
//! crash there is no index and nothing in the data file is trusted.

use std::fs;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"SPRTCIX1";
const ENTRY_BYTES: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SavedLine {
    pub slot: u32,
    pub seg: u64,
    pub off: u64,
    pub len: u32,
    pub crc: u32,
}

/// Writes the index durably (temp file, fsync, rename, fsync dir).
pub(crate) fn save(
    path: &Path,
    line_bytes: u64,
    slots: u32,
    lines: &[SavedLine],
) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(32 + lines.len() * ENTRY_BYTES);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&line_bytes.to_le_bytes());
    b.extend_from_slice(&slots.to_le_bytes());
    b.extend_from_slice(&(lines.len() as u32).to_le_bytes());
    for l in lines {
        b.extend_from_slice(&l.slot.to_le_bytes());
        b.extend_from_slice(&l.seg.to_le_bytes());
        b.extend_from_slice(&l.off.to_le_bytes());
        b.extend_from_slice(&l.len.to_le_bytes());
        b.extend_from_slice(&l.crc.to_le_bytes());
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

/// Reads an index saved for the same geometry; None if absent, damaged or
/// for another geometry (then the cache starts cold).
pub(crate) fn load(path: &Path, line_bytes: u64, slots: u32) -> Option<Vec<SavedLine>> {
    let b = fs::read(path).ok()?;
    if b.len() < 28 || &b[..8] != MAGIC {
        return None;
    }
    let (body, tail) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(tail.try_into().ok()?) {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap());
    if u64_at(8) != line_bytes || u32_at(16) != slots {
        return None;
    }
    let n = u32_at(20) as usize;
    if body.len() != 24 + n * ENTRY_BYTES {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let at = 24 + i * ENTRY_BYTES;
        let l = SavedLine {
            slot: u32_at(at),
            seg: u64_at(at + 4),
            off: u64_at(at + 12),
            len: u32_at(at + 20),
            crc: u32_at(at + 24),
        };
        if l.slot >= slots || l.len as u64 > line_bytes || l.len == 0 {
            return None;
        }
        out.push(l);
    }
    Some(out)
}
