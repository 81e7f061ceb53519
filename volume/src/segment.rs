//! The segment object format: an immutable batch of written blocks plus the
//! index of what it carries, so the map can be rebuilt from segments alone.
//!
//! ```text
//! header (96 bytes in version 4, 80 before; little-endian)
//!   magic "SPRTSEG\0" | version u32 | crc32c u32 (over header with this field
//!   zeroed, then the index) | volume id [16] | seq u64 | client_bytes_total u64
//!   | entry_count u32 | reserved u32 | data_offset u64 | data_len u64
//!   | prev_seq u64 (the segment this one follows: roll-forward follows this
//!   chain, see docs/design/0009; version 1 had zeros here and meant seq − 1)
//!   | epoch u64 (the lease epoch of its writer; version 4)
//!   | next_seq u64 (where its successor is: seq + 1, or past a fence's
//!   window; version 4. Versions 1–3 read as epoch 0, next seq + 1)
//! index: entry_count × 32 bytes
//!   lba u64 (blocks) | blocks u32 | kind u32 (1 data, 2 unmap) | data_off u64
//!   (bytes from the start of the object) | crc32c u32 of the piece | reserved u32
//! data: the pieces, back to back (data_offset .. data_offset + data_len)
//! ```
//! Kind 3 (format version 3 and later) is a copy: a piece that compaction
//! rewrote out of segment `lba` (the field names the source), which changes
//! nothing in the map when the segment is applied; the database then points
//! the rows of the source piece at the copy (gc.rs). Every segment is now
//! written as version 4; a fence (docs/design/0009) is one with no entries
//! whose `next_seq` is past the window.
//!
//! Data entries are pieces of at most [`PIECE_BLOCKS_MAX`] blocks, each with its
//! own crc32c: a read fetches and verifies one whole piece. Entries never
//! overlap (they are the final state of each range in the write buffer), so
//! their order does not matter when applied.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use spritedisk_meta::{MapChange, PieceRef};

use crate::blockcrc::{block_crcs, fold, CRC_BLOCK_BYTES};

pub use crate::buffer::WriteBuffer;

pub const MAGIC: &[u8; 8] = b"SPRTSEG\0";
/// The format version every segment is written in.
pub const VERSION: u32 = 4;
/// The smallest object a segment can be: a header of format versions 1–3
/// (version 4 adds 16 bytes).
pub const HEADER_BYTES_MIN: usize = 80;
/// A version-4 header.
pub const HEADER_BYTES: usize = 96;

/// Header bytes of format `version`.
fn header_bytes(version: u32) -> usize {
    if version >= 4 {
        HEADER_BYTES
    } else {
        HEADER_BYTES_MIN
    }
}

/// Where a record sits in the volume's history (docs/design/0009).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Its position: the object is `segments/<seq>.seg`.
    pub seq: u64,
    /// The record it follows.
    pub prev_seq: u64,
    /// Its writer's lease epoch.
    pub epoch: u64,
    /// Where its successor goes.
    pub next_seq: u64,
}
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
    /// The lease epoch of the writer that made it (0 before version 4).
    pub epoch: u64,
    /// Where its successor in the history is.
    pub next_seq: u64,
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

/// A piece's bytes (a slice of its run's, never copied) and its blocks'
/// checksums.
type CheckedPiece<'a> = (Bytes, Cow<'a, [u32]>);

/// Encodes the frozen contents of a write buffer as the segment at `link`.
pub fn encode(
    volume_id: [u8; 16],
    link: Link,
    client_bytes_total: u64,
    buf: &WriteBuffer,
    block_size: u64,
) -> EncodedSegment {
    let p = encode_parts(volume_id, link, client_bytes_total, buf, block_size);
    EncodedSegment {
        bytes: p.body.concat(),
        changes: p.changes,
    }
}

/// A segment object as its parts: the header and index, then each piece's
/// bytes (slices of the write buffer's, so a seal copies no data); their
/// concatenation is the object [`encode`] makes.
#[derive(Debug, Clone)]
pub struct SegmentBody {
    parts: Vec<Bytes>,
    /// Where each part starts in the object.
    starts: Vec<u64>,
    len: u64,
}

impl SegmentBody {
    pub fn new(parts: Vec<Bytes>) -> SegmentBody {
        let mut starts = Vec::with_capacity(parts.len());
        let mut len = 0;
        for p in &parts {
            starts.push(len);
            len += p.len() as u64;
        }
        SegmentBody { parts, starts, len }
    }

    /// The object's size.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The whole object in one buffer (a copy, unless it is one part).
    pub fn concat(&self) -> Bytes {
        match self.parts.as_slice() {
            [one] => one.clone(),
            parts => {
                let mut out = BytesMut::with_capacity(self.len as usize);
                for p in parts {
                    out.put_slice(p);
                }
                out.freeze()
            }
        }
    }

    /// Bytes `[off, off + len)` of the object, if they lie inside one part
    /// (a piece always does): a slice, no copy.
    pub fn slice(&self, off: u64, len: u64) -> Option<Bytes> {
        let i = self.starts.partition_point(|&s| s <= off).checked_sub(1)?;
        let at = (off - self.starts[i]) as usize;
        let part = &self.parts[i];
        (at + len as usize <= part.len()).then(|| part.slice(at..at + len as usize))
    }

    /// Whether `other` is exactly this object.
    pub fn same_as(&self, other: &[u8]) -> bool {
        other.len() as u64 == self.len
            && self
                .parts
                .iter()
                .zip(&self.starts)
                .all(|(p, &s)| other[s as usize..s as usize + p.len()] == p[..])
    }
}

/// [`encode`] without copying the data: what a seal does under the state
/// lock is the index (and the pieces' checksums, folded from the blocks').
pub struct EncodedParts {
    pub body: SegmentBody,
    pub changes: Vec<MapChange>,
    /// Where the data starts, and the crc32c of each block of it in order.
    pub data_offset: u64,
    pub block_crcs: Vec<u32>,
}

/// Encodes the frozen contents of a write buffer as the segment at `link`,
/// as parts.
pub fn encode_parts(
    volume_id: [u8; 16],
    link: Link,
    client_bytes_total: u64,
    buf: &WriteBuffer,
    block_size: u64,
) -> EncodedParts {
    // Each piece with its blocks' checksums: the writer's, or computed here
    // for a run inserted without them (docs/design/0012).
    let mut entries: Vec<(u64, u64, Option<CheckedPiece>)> = vec![];
    for (lba, blocks, data) in buf.runs_checked() {
        match data {
            Some((d, crcs)) => {
                let mut off = 0;
                while off < blocks {
                    let n = (blocks - off).min(PIECE_BLOCKS_MAX);
                    let s = (off * block_size) as usize;
                    let piece = d.slice(s..s + (n * block_size) as usize);
                    let crcs = match crcs.is_empty() {
                        true => Cow::Owned(block_crcs(&piece)),
                        false => Cow::Borrowed(&crcs[off as usize..(off + n) as usize]),
                    };
                    entries.push((lba + off, n, Some((piece, crcs))));
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
        "segment {} would have {} entries",
        link.seq,
        entries.len()
    );
    let data_offset = (HEADER_BYTES + entries.len() * ENTRY_BYTES) as u64;
    let data_len: u64 = entries
        .iter()
        .filter_map(|e| e.2.as_ref())
        .map(|d| d.0.len() as u64)
        .sum();
    let mut out = BytesMut::with_capacity(data_offset as usize);
    put_header(
        &mut out,
        &SegmentHeader {
            volume_id,
            seq: link.seq,
            client_bytes_total,
            entry_count: entries.len() as u32,
            data_offset,
            data_len,
            prev_seq: link.prev_seq,
            epoch: link.epoch,
            next_seq: link.next_seq,
        },
    );
    let mut changes = Vec::with_capacity(entries.len());
    let mut all_crcs = Vec::with_capacity((data_len / block_size) as usize);
    let mut data_off = data_offset;
    for (lba, blocks, data) in &entries {
        out.put_u64_le(*lba);
        out.put_u32_le(*blocks as u32);
        match data {
            Some((d, crcs)) => {
                debug_assert_eq!(block_size as usize, CRC_BLOCK_BYTES);
                let crc = fold(crcs);
                // The invariant the fold stands on, checked in debug builds
                // (every test): the piece's checksum is its bytes'.
                debug_assert_eq!(crc, crc32c::crc32c(d), "piece at lba {lba}");
                all_crcs.extend_from_slice(crcs);
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
    let crc = crc32c::crc32c(&out[..data_offset as usize]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    let mut parts = Vec::with_capacity(1 + entries.len());
    parts.push(out.freeze());
    parts.extend(entries.into_iter().filter_map(|e| e.2).map(|(d, _)| d));
    EncodedParts {
        body: SegmentBody::new(parts),
        changes,
        data_offset,
        block_crcs: all_crcs,
    }
}

/// Writes the fixed header; its crc field is patched once the index follows.
fn put_header(out: &mut BytesMut, h: &SegmentHeader) {
    out.put_slice(MAGIC);
    out.put_u32_le(VERSION);
    out.put_u32_le(0); // crc, patched below
    out.put_slice(&h.volume_id);
    out.put_u64_le(h.seq);
    out.put_u64_le(h.client_bytes_total);
    out.put_u32_le(h.entry_count);
    out.put_u32_le(0);
    out.put_u64_le(h.data_offset);
    out.put_u64_le(h.data_len);
    out.put_u64_le(h.prev_seq);
    out.put_u64_le(h.epoch);
    out.put_u64_le(h.next_seq);
    debug_assert_eq!(out.len(), HEADER_BYTES);
}

/// An empty record of the writer of `link.epoch` (docs/design/0009): a
/// fence, which claims the chain's next position before the writer serves
/// anything (its `next_seq` is past the window of positions an older writer
/// may still land), or a barrier behind a metadata change (its `next_seq` is
/// the next position).
pub fn encode_empty(volume_id: [u8; 16], link: Link, client_bytes_total: u64) -> Bytes {
    encode(
        volume_id,
        link,
        client_bytes_total,
        &WriteBuffer::default(),
        4096,
    )
    .bytes
}

/// Encodes the segment at `link` as copies of `pieces`: (source segment,
/// the piece's bytes). Returns the object and where each copy starts in it,
/// in order. Applying it changes nothing in the map.
pub fn encode_copies(
    volume_id: [u8; 16],
    link: Link,
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
        &SegmentHeader {
            volume_id,
            seq: link.seq,
            client_bytes_total,
            entry_count: pieces.len() as u32,
            data_offset,
            data_len,
            prev_seq: link.prev_seq,
            epoch: link.epoch,
            next_seq: link.next_seq,
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

/// Whether `b`, a whole object, is the prefix of a segment whose header is
/// longer than it: a torn PUT (only a prefix landed), not corruption.
pub fn shorter_than_its_header(b: &[u8]) -> bool {
    if b.len() < HEADER_BYTES_MIN {
        return true;
    }
    if &b[0..8] != MAGIC {
        return false;
    }
    let version = u32_at(b, 8);
    (1..=VERSION).contains(&version) && b.len() < header_bytes(version)
}

/// Parses the fixed header (the first [`HEADER_BYTES`] of the object, or
/// [`HEADER_BYTES_MIN`] for versions 1–3). Its checksum is verified by
/// [`decode_index`], which covers it.
pub fn decode_header(b: &[u8]) -> Result<SegmentHeader, SegmentError> {
    if b.len() < HEADER_BYTES_MIN {
        return Err(bad(format!(
            "truncated: {} bytes, the header alone is {HEADER_BYTES_MIN}",
            b.len()
        )));
    }
    if &b[0..8] != MAGIC {
        return Err(bad("bad magic: not a spritedisk segment"));
    }
    let version = u32_at(b, 8);
    if !(1..=VERSION).contains(&version) {
        return Err(bad(format!(
            "unsupported format version {version} (this build reads 1 to {VERSION})"
        )));
    }
    let hb = header_bytes(version);
    if b.len() < hb {
        return Err(bad(format!(
            "truncated: {} bytes, a version-{version} header alone is {hb}",
            b.len()
        )));
    }
    let seq = u64_at(b, 32);
    let (epoch, next_seq) = if version >= 4 {
        (u64_at(b, 80), u64_at(b, 88))
    } else {
        (0, seq.saturating_add(1))
    };
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
        epoch,
        next_seq,
    };
    if h.entry_count > ENTRIES_MAX {
        return Err(bad(format!("implausible entry count {}", h.entry_count)));
    }
    if h.data_offset != (hb + h.entry_count as usize * ENTRY_BYTES) as u64 {
        return Err(bad("header's data offset disagrees with its entry count"));
    }
    if h.prev_seq >= h.seq || h.next_seq <= h.seq {
        return Err(bad(format!(
            "segment {} cannot follow {} or be followed at {}",
            h.seq, h.prev_seq, h.next_seq
        )));
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
    let index_at = h.data_offset as usize - h.entry_count as usize * ENTRY_BYTES;
    for i in 0..h.entry_count as usize {
        let e = &b[index_at + i * ENTRY_BYTES..index_at + (i + 1) * ENTRY_BYTES];
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

/// [`verify_piece`] for a piece of whole blocks, in the same one pass:
/// returns its blocks' checksums (the read cache takes them as they are).
pub fn verify_piece_blocks(data: &[u8], crc: u32, offset: u64) -> Result<Vec<u32>, SegmentError> {
    if !data.len().is_multiple_of(CRC_BLOCK_BYTES) {
        return verify_piece(data, crc, offset).map(|()| vec![]);
    }
    let blocks = block_crcs(data);
    let got = fold(&blocks);
    if got != crc {
        return Err(bad(format!("checksum mismatch in the piece at byte {offset} (stored {crc:08x}, computed {got:08x})")));
    }
    Ok(blocks)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Encodes a segment holding one run of data, following `seq - 1` with
/// epoch 0 (as written before epochs): tests and tools that plant segments.
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
    let link = Link {
        seq,
        prev_seq: seq - 1,
        epoch: 0,
        next_seq: seq + 1,
    };
    encode(volume_id, link, client_bytes_total, &buf, block_size).bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the model test: a torn PUT that left 82 bytes of a
    /// version-4 segment (longer than the shortest header, shorter than
    /// its own) was taken for corruption and refused the attach.
    #[test]
    fn a_prefix_shorter_than_its_header_is_torn_not_corrupt() {
        let (enc, _) = sample();
        let b = &enc.bytes;
        for len in [0, 40, HEADER_BYTES_MIN, 82, HEADER_BYTES - 1] {
            assert!(shorter_than_its_header(&b[..len]), "{len} bytes");
        }
        assert!(!shorter_than_its_header(&b[..HEADER_BYTES]));
        assert!(!shorter_than_its_header(b));
        assert!(
            !shorter_than_its_header(&[0u8; 90]),
            "not a segment: corrupt"
        );
    }

    fn sample() -> (EncodedSegment, WriteBuffer) {
        let mut buf = WriteBuffer::default();
        buf.insert(0, 20, Some(Bytes::from(vec![7u8; 20 * 4096])), 4096);
        buf.insert(100, 3, None, 4096);
        buf.insert(40, 1, Some(Bytes::from(vec![9u8; 4096])), 4096);
        let link = Link {
            seq: 42,
            prev_seq: 41,
            epoch: 7,
            next_seq: 43,
        };
        (encode([3; 16], link, 12345, &buf, 4096), buf)
    }

    /// The same segment in format version 2 (80-byte header, no epoch).
    fn as_version_2(v4: &[u8]) -> Vec<u8> {
        let h = decode_header(v4).unwrap();
        let mut b = v4[..80].to_vec();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        b[12..16].fill(0);
        b[56..64].copy_from_slice(&(h.data_offset - 16).to_le_bytes());
        for i in 0..h.entry_count as usize {
            let mut e = v4[96 + i * 32..96 + (i + 1) * 32].to_vec();
            let off = u64_at(&e, 16);
            if off != 0 {
                e[16..24].copy_from_slice(&(off - 16).to_le_bytes());
            }
            b.extend_from_slice(&e);
        }
        let crc = crc32c::crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(&v4[h.data_offset as usize..]);
        b
    }

    #[test]
    fn version_2_segments_read_as_epoch_0_followed_at_the_next_position() {
        let (enc, _) = sample();
        let (h4, c4) = decode_full(&enc.bytes, 4096).unwrap();
        assert_eq!((h4.epoch, h4.next_seq, h4.prev_seq), (7, 43, 41));
        let old = as_version_2(&enc.bytes);
        let (h2, c2) = decode_full(&old, 4096).unwrap();
        assert_eq!(
            (h2.seq, h2.prev_seq, h2.epoch, h2.next_seq),
            (42, 41, 0, 43)
        );
        assert_eq!(c2.len(), c4.len());
        for (a, b) in c2.iter().zip(&c4) {
            assert_eq!((a.lba, a.blocks), (b.lba, b.blocks));
            assert_eq!(
                a.piece.map(|p| (p.piece_off + 16, p.crc)),
                b.piece.map(|p| (p.piece_off, p.crc))
            );
        }
    }

    #[test]
    fn a_fence_is_an_empty_record_whose_successor_is_past_the_window() {
        let link = Link {
            seq: 10,
            prev_seq: 9,
            epoch: 3,
            next_seq: 74,
        };
        let b = encode_empty([1; 16], link, 0);
        assert_eq!(b.len(), HEADER_BYTES);
        let (h, changes) = decode_full(&b, 4096).unwrap();
        assert!(changes.is_empty());
        assert_eq!((h.seq, h.prev_seq, h.epoch, h.next_seq), (10, 9, 3, 74));
    }

    /// A seal's parts are the object `encode` makes, piece by piece, and
    /// share the write buffer's bytes instead of copying them.
    #[test]
    fn parts_are_the_object_without_a_copy() {
        let (enc, buf) = sample();
        let link = Link {
            seq: 42,
            prev_seq: 41,
            epoch: 7,
            next_seq: 43,
        };
        let p = encode_parts([3; 16], link, 12345, &buf, 4096);
        assert_eq!(p.body.concat(), enc.bytes);
        assert!(p.body.same_as(&enc.bytes));
        let mut other = enc.bytes.to_vec();
        let n = other.len();
        other[n - 1] ^= 1;
        assert!(!p.body.same_as(&other));
        assert!(!p.body.same_as(&enc.bytes[..n - 1]));
        let data: Vec<_> = buf.runs().filter_map(|r| r.2).collect();
        for c in p.changes.iter().filter_map(|c| c.piece) {
            let len = c.piece_blocks as u64 * 4096;
            let piece = p.body.slice(c.piece_off, len).expect("a piece is one part");
            assert_eq!(
                &piece[..],
                &enc.bytes[c.piece_off as usize..][..len as usize]
            );
            let shared = data.iter().any(|d| {
                let r = d.as_ptr_range();
                r.contains(&piece.as_ptr())
            });
            assert!(
                shared,
                "the piece at {} is the buffer's own bytes",
                c.piece_off
            );
        }
        assert_eq!(p.body.slice(p.data_offset - 4, 8), None, "across two parts");
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
