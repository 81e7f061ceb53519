//! The segment object format: an immutable batch of written blocks plus the
//! index of what it carries, so the map can be rebuilt from segments alone.
//!
//! ```text
//! header (80 bytes, little-endian)
//!   magic "SPRTSEG\0" | version u32 | crc32c u32 (over header with this field
//!   zeroed, then the index) | volume id [16] | seq u64 | client_bytes_total u64
//!   | entry_count u32 | reserved u32 | data_offset u64 | data_len u64
//!   | prev_seq u64 (the segment this one follows: roll-forward follows this
//!   chain, see docs/design/0003; version 1 had zeros here and meant seq − 1)
//! index: entry_count × 32 bytes
//!   lba u64 (blocks) | blocks u32 | kind u32 (1 data, 2 unmap) | data_off u64
//!   (bytes from the start of the object) | crc32c u32 of the piece | reserved u32
//! data: the pieces, back to back (data_offset .. data_offset + data_len)
//! ```
//! Kind 3 (format version 3) is a copy: a piece that compaction rewrote out
//! of segment `lba` (the field names the source), which changes nothing in
//! the map when the segment is applied; the database then points the rows
//! of the source piece at the copy (gc.rs). Segments without copies are
//! still written as version 2.
//!
//! Data entries are pieces of at most [`PIECE_BLOCKS_MAX`] blocks, each with its
//! own crc32c: a read fetches and verifies one whole piece. Entries never
//! overlap (they are the final state of each range in the write buffer), so
//! their order does not matter when applied.

use bytes::{BufMut, Bytes, BytesMut};
use spritedisk_meta::{MapChange, PieceRef};

pub use crate::buffer::WriteBuffer;

pub const MAGIC: &[u8; 8] = b"SPRTSEG\0";
pub const VERSION: u32 = 2;
/// Format version of a segment that carries copies (compaction's output).
pub const VERSION_COPIES: u32 = 3;
pub const HEADER_BYTES: usize = 80;
pub const ENTRY_BYTES: usize = 32;
/// Largest checksummed piece: 16 blocks = 64 KiB. It bounds the read
/// amplification of a small random read of cold data (one ranged GET of at
/// most 64 KiB, latency-bound on S3 anyway) and is the cache's line size.
pub const PIECE_BLOCKS_MAX: u64 = 16;
/// Most entries one segment may hold: bounds what a decoder allocates.
const ENTRIES_MAX: u32 = 1 << 20;
/// The write buffer is sealed at this many runs, whatever its data size, so
/// that a storm of small discards never builds a segment past
/// [`ENTRIES_MAX`] (a run of data yields at most `segment_bytes / 64 KiB`
/// extra entries, far below the margin).
pub const BUFFER_RUNS_MAX: usize = 1 << 16;

const KIND_DATA: u32 = 1;
const KIND_UNMAP: u32 = 2;
const KIND_COPY: u32 = 3;

/// Object key of segment `seq`: zero-padded so keys sort by sequence.
pub fn segment_key(seq: u64) -> String {
    format!("segments/{seq:020}.seg")
}

/// Sequence number of a segment key, if it is one.
pub fn parse_segment_key(key: &str) -> Option<u64> {
    let name = key.strip_prefix("segments/")?.strip_suffix(".seg")?;
    (name.len() == 20).then(|| name.parse().ok())?
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub volume_id: [u8; 16],
    pub seq: u64,
    pub client_bytes_total: u64,
    pub entry_count: u32,
    pub data_offset: u64,
    pub data_len: u64,
    /// The segment this one follows in the volume's history.
    pub prev_seq: u64,
}

impl SegmentHeader {
    /// Size of the whole object this header describes.
    pub fn object_size(&self) -> u64 {
        self.data_offset + self.data_len
    }
}

/// Why a segment was rejected; the caller names the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SegmentError(pub String);

fn bad(msg: impl Into<String>) -> SegmentError {
    SegmentError(msg.into())
}

/// An encoded segment and what it changes in the map.
pub struct EncodedSegment {
    pub bytes: Bytes,
    pub changes: Vec<MapChange>,
}

/// Encodes the frozen contents of a write buffer as segment `seq`, which
/// follows segment `prev_seq`.
pub fn encode(
    volume_id: [u8; 16],
    seq: u64,
    prev_seq: u64,
    client_bytes_total: u64,
    buf: &WriteBuffer,
    block_size: u64,
) -> EncodedSegment {
    let mut entries: Vec<(u64, u64, Option<&[u8]>)> = vec![];
    for (lba, blocks, data) in buf.runs() {
        match data {
            Some(d) => {
                let mut off = 0;
                while off < blocks {
                    let n = (blocks - off).min(PIECE_BLOCKS_MAX);
                    let s = (off * block_size) as usize;
                    entries.push((lba + off, n, Some(&d[s..s + (n * block_size) as usize])));
                    off += n;
                }
            }
            None => {
                let mut off = 0;
                while off < blocks {
                    let n = (blocks - off).min(u32::MAX as u64);
                    entries.push((lba + off, n, None));
                    off += n;
                }
            }
        }
    }
    assert!(
        entries.len() <= ENTRIES_MAX as usize,
        "segment {seq} would have {} entries",
        entries.len()
    );
    let data_offset = (HEADER_BYTES + entries.len() * ENTRY_BYTES) as u64;
    let data_len: u64 = entries
        .iter()
        .filter_map(|e| e.2)
        .map(|d| d.len() as u64)
        .sum();
    let mut out = BytesMut::with_capacity((data_offset + data_len) as usize);
    put_header(
        &mut out,
        VERSION,
        &SegmentHeader {
            volume_id,
            seq,
            client_bytes_total,
            entry_count: entries.len() as u32,
            data_offset,
            data_len,
            prev_seq,
        },
    );
    let mut changes = Vec::with_capacity(entries.len());
    let mut data_off = data_offset;
    for (lba, blocks, data) in &entries {
        out.put_u64_le(*lba);
        out.put_u32_le(*blocks as u32);
        match data {
            Some(d) => {
                let crc = crc32c::crc32c(d);
                out.put_u32_le(KIND_DATA);
                out.put_u64_le(data_off);
                out.put_u32_le(crc);
                changes.push(MapChange {
                    lba: *lba,
                    blocks: *blocks,
                    piece: Some(PieceRef {
                        piece_off: data_off,
                        piece_blocks: *blocks as u32,
                        crc,
                    }),
                });
                data_off += d.len() as u64;
            }
            None => {
                out.put_u32_le(KIND_UNMAP);
                out.put_u64_le(0);
                out.put_u32_le(0);
                changes.push(MapChange {
                    lba: *lba,
                    blocks: *blocks,
                    piece: None,
                });
            }
        }
        out.put_u32_le(0);
    }
    for d in entries.iter().filter_map(|e| e.2) {
        out.put_slice(d);
    }
    let crc = crc32c::crc32c(&out[..data_offset as usize]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    EncodedSegment {
        bytes: out.freeze(),
        changes,
    }
}

/// Writes the fixed header; its crc field is patched once the index follows.
fn put_header(out: &mut BytesMut, version: u32, h: &SegmentHeader) {
    out.put_slice(MAGIC);
    out.put_u32_le(version);
    out.put_u32_le(0); // crc, patched below
    out.put_slice(&h.volume_id);
    out.put_u64_le(h.seq);
    out.put_u64_le(h.client_bytes_total);
    out.put_u32_le(h.entry_count);
    out.put_u32_le(0);
    out.put_u64_le(h.data_offset);
    out.put_u64_le(h.data_len);
    out.put_u64_le(h.prev_seq);
    debug_assert_eq!(out.len(), HEADER_BYTES);
}

/// Encodes segment `seq` (following `prev_seq`) as copies of `pieces`:
/// (source segment, the piece's bytes). Returns the object and where each
/// copy starts in it, in order. Applying it changes nothing in the map.
pub fn encode_copies(
    volume_id: [u8; 16],
    seq: u64,
    prev_seq: u64,
    client_bytes_total: u64,
    pieces: &[(u64, Bytes)],
    block_size: u64,
) -> (Bytes, Vec<PieceRef>) {
    assert!(pieces.len() <= ENTRIES_MAX as usize);
    let data_offset = (HEADER_BYTES + pieces.len() * ENTRY_BYTES) as u64;
    let data_len: u64 = pieces.iter().map(|p| p.1.len() as u64).sum();
    let mut out = BytesMut::with_capacity((data_offset + data_len) as usize);
    put_header(
        &mut out,
        VERSION_COPIES,
        &SegmentHeader {
            volume_id,
            seq,
            client_bytes_total,
            entry_count: pieces.len() as u32,
            data_offset,
            data_len,
            prev_seq,
        },
    );
    let mut refs = Vec::with_capacity(pieces.len());
    let mut data_off = data_offset;
    for (src, d) in pieces {
        let blocks = d.len() as u64 / block_size;
        assert!(
            blocks > 0 && blocks <= PIECE_BLOCKS_MAX && (d.len() as u64).is_multiple_of(block_size)
        );
        let crc = crc32c::crc32c(d);
        out.put_u64_le(*src);
        out.put_u32_le(blocks as u32);
        out.put_u32_le(KIND_COPY);
        out.put_u64_le(data_off);
        out.put_u32_le(crc);
        out.put_u32_le(0);
        refs.push(PieceRef {
            piece_off: data_off,
            piece_blocks: blocks as u32,
            crc,
        });
        data_off += d.len() as u64;
    }
    for (_, d) in pieces {
        out.put_slice(d);
    }
    let crc = crc32c::crc32c(&out[..data_offset as usize]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    (out.freeze(), refs)
}

/// Parses the fixed header (the first [`HEADER_BYTES`] of the object).
/// Its checksum is verified by [`decode_index`], which covers it.
pub fn decode_header(b: &[u8]) -> Result<SegmentHeader, SegmentError> {
    if b.len() < HEADER_BYTES {
        return Err(bad(format!(
            "truncated: {} bytes, the header alone is {HEADER_BYTES}",
            b.len()
        )));
    }
    if &b[0..8] != MAGIC {
        return Err(bad("bad magic: not a spritedisk segment"));
    }
    let version = u32_at(b, 8);
    if !(1..=VERSION_COPIES).contains(&version) {
        return Err(bad(format!(
            "unsupported format version {version} (this build reads 1 to {VERSION_COPIES})"
        )));
    }
    let h = SegmentHeader {
        volume_id: b[16..32].try_into().unwrap(),
        seq: u64_at(b, 32),
        client_bytes_total: u64_at(b, 40),
        entry_count: u32_at(b, 48),
        data_offset: u64_at(b, 56),
        data_len: u64_at(b, 64),
        prev_seq: if version == 1 {
            u64_at(b, 32).saturating_sub(1)
        } else {
            u64_at(b, 72)
        },
    };
    if h.entry_count > ENTRIES_MAX {
        return Err(bad(format!("implausible entry count {}", h.entry_count)));
    }
    if h.data_offset != (HEADER_BYTES + h.entry_count as usize * ENTRY_BYTES) as u64 {
        return Err(bad("header's data offset disagrees with its entry count"));
    }
    h.data_offset
        .checked_add(h.data_len)
        .ok_or_else(|| bad("header's data length overflows"))?;
    Ok(h)
}

/// Verifies the header and index checksum of `b` (the first `data_offset`
/// bytes of the object, at least) and returns the map changes it carries.
pub fn decode_index(
    b: &[u8],
    block_size: u64,
) -> Result<(SegmentHeader, Vec<MapChange>), SegmentError> {
    let h = decode_header(b)?;
    let idx_end = h.data_offset as usize;
    if b.len() < idx_end {
        return Err(bad(format!(
            "truncated: {} bytes, header and index need {idx_end}",
            b.len()
        )));
    }
    let mut zeroed = b[..idx_end].to_vec();
    zeroed[12..16].fill(0);
    let want = u32_at(b, 12);
    let got = crc32c::crc32c(&zeroed);
    if want != got {
        return Err(bad(format!(
            "header/index checksum mismatch (stored {want:08x}, computed {got:08x})"
        )));
    }
    let mut changes = Vec::with_capacity(h.entry_count as usize);
    let mut expect_off = h.data_offset;
    for i in 0..h.entry_count as usize {
        let e = &b[HEADER_BYTES + i * ENTRY_BYTES..HEADER_BYTES + (i + 1) * ENTRY_BYTES];
        let (lba, blocks, kind, off, crc) = (
            u64_at(e, 0),
            u32_at(e, 8) as u64,
            u32_at(e, 12),
            u64_at(e, 16),
            u32_at(e, 24),
        );
        if blocks == 0 {
            return Err(bad(format!("entry {i} is empty")));
        }
        match kind {
            KIND_DATA => {
                if blocks > PIECE_BLOCKS_MAX || off != expect_off {
                    return Err(bad(format!(
                        "entry {i}: piece of {blocks} blocks at {off} is out of place"
                    )));
                }
                expect_off += blocks * block_size;
                changes.push(MapChange {
                    lba,
                    blocks,
                    piece: Some(PieceRef {
                        piece_off: off,
                        piece_blocks: blocks as u32,
                        crc,
                    }),
                });
            }
            KIND_UNMAP => changes.push(MapChange {
                lba,
                blocks,
                piece: None,
            }),
            KIND_COPY => {
                if blocks > PIECE_BLOCKS_MAX || off != expect_off {
                    return Err(bad(format!(
                        "entry {i}: copied piece of {blocks} blocks at {off} is out of place"
                    )));
                }
                expect_off += blocks * block_size;
            }
            k => return Err(bad(format!("entry {i}: unknown kind {k}"))),
        }
    }
    if expect_off != h.object_size() {
        return Err(bad(format!(
            "index covers {} data bytes, header says {}",
            expect_off - h.data_offset,
            h.data_len
        )));
    }
    Ok((h, changes))
}

/// Decodes and verifies a whole segment object: header, index and every piece.
pub fn decode_full(
    b: &[u8],
    block_size: u64,
) -> Result<(SegmentHeader, Vec<MapChange>), SegmentError> {
    let (h, changes) = decode_index(b, block_size)?;
    if b.len() as u64 != h.object_size() {
        return Err(bad(format!(
            "object is {} bytes, header says {}",
            b.len(),
            h.object_size()
        )));
    }
    for c in &changes {
        if let Some(p) = c.piece {
            verify_piece(
                &b[p.piece_off as usize..][..(p.piece_blocks as u64 * block_size) as usize],
                p.crc,
                p.piece_off,
            )?;
        }
    }
    Ok((h, changes))
}

/// Checks a fetched piece against the crc32c the index recorded for it.
pub fn verify_piece(data: &[u8], crc: u32, offset: u64) -> Result<(), SegmentError> {
    let got = crc32c::crc32c(data);
    if got != crc {
        return Err(bad(format!("checksum mismatch in the piece at byte {offset} (stored {crc:08x}, computed {got:08x})")));
    }
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Encodes a segment holding one run of data (tests and tools that plant segments).
pub fn encode_run(
    volume_id: [u8; 16],
    seq: u64,
    client_bytes_total: u64,
    lba: u64,
    data: Bytes,
    block_size: u64,
) -> Bytes {
    let mut buf = WriteBuffer::default();
    let blocks = data.len() as u64 / block_size;
    buf.insert(lba, blocks, Some(data), block_size);
    encode(
        volume_id,
        seq,
        seq - 1,
        client_bytes_total,
        &buf,
        block_size,
    )
    .bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (EncodedSegment, WriteBuffer) {
        let mut buf = WriteBuffer::default();
        buf.insert(0, 20, Some(Bytes::from(vec![7u8; 20 * 4096])), 4096);
        buf.insert(100, 3, None, 4096);
        buf.insert(40, 1, Some(Bytes::from(vec![9u8; 4096])), 4096);
        (encode([3; 16], 42, 41, 12345, &buf, 4096), buf)
    }

    #[test]
    fn roundtrip() {
        let (enc, _) = sample();
        let (h, changes) = decode_full(&enc.bytes, 4096).unwrap();
        assert_eq!(
            (h.seq, h.client_bytes_total, h.volume_id),
            (42, 12345, [3; 16])
        );
        assert_eq!(changes, enc.changes);
        let spans: Vec<_> = changes
            .iter()
            .map(|c| (c.lba, c.blocks, c.piece.is_some()))
            .collect();
        assert_eq!(
            spans,
            [(0, 16, true), (16, 4, true), (40, 1, true), (100, 3, false)]
        );
        assert_eq!(segment_key(42), "segments/00000000000000000042.seg");
        assert_eq!(parse_segment_key(&segment_key(42)), Some(42));
        assert_eq!(parse_segment_key("segments/42.seg"), None);
    }

    #[test]
    fn every_single_bit_flip_and_truncation_is_rejected() {
        let (enc, _) = sample();
        let b = enc.bytes.to_vec();
        // Every bit of header and index, and a sample of data bits.
        let idx_end = HEADER_BYTES + 4 * ENTRY_BYTES;
        let positions: Vec<usize> = (0..idx_end)
            .chain((idx_end..b.len()).step_by(997))
            .collect();
        for pos in positions {
            for bit in 0..8 {
                let mut c = b.clone();
                c[pos] ^= 1 << bit;
                assert!(
                    decode_full(&c, 4096).is_err(),
                    "flip at byte {pos} bit {bit} accepted"
                );
            }
        }
        for len in [0, 10, HEADER_BYTES, idx_end - 1, idx_end, b.len() - 1] {
            assert!(
                decode_full(&b[..len], 4096).is_err(),
                "truncation to {len} accepted"
            );
        }
    }
}
