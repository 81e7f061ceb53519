//! The LTX file format of Litestream 0.5 (github.com/superfly/ltx, "LTX1",
//! version 3): what `litestream restore` reads. Written by hand because no
//! crate writes this version (`litetx` and `litepages` write the older
//! format, which 0.5 rejects); see `docs/reference/litestream-ltx.md`.
//!
//! File = header (100 bytes) | page frames | 6 zero bytes | page index |
//! trailer (16 bytes), integers big-endian. A frame is `pgno u32 | flags u16
//! (0x0001: a size follows) | size u32 | LZ4 block of the page`. The file
//! checksum is CRC-64/GO-ISO over every byte before it, with page data
//! hashed uncompressed, and its top bit set. We write the NoChecksum flag:
//! no rolling database checksums (pre/post-apply checksums stay 0).

use std::collections::BTreeMap;

use crate::MetaError;

pub const HEADER_BYTES: usize = 100;
const TRAILER_BYTES: usize = 16;
const MAGIC: &[u8; 4] = b"LTX1";
const FLAG_NO_CHECKSUM: u32 = 1 << 1;
const PAGE_FLAG_SIZE: u16 = 0x0001;
const CHECKSUM_FLAG: u64 = 1 << 63;
/// SQLite's lock page (the one holding byte 2^30) is never written.
const PENDING_BYTE: u64 = 0x4000_0000;

/// Slice-by-16 tables: the checksum covers every decompressed page, and at
/// one byte per step it was most of a restore's time (measured: 16 of the
/// 31 ms that restoring a 100k-extent map took).
const CRC64: crc::Crc<u64, crc::Table<16>> =
    crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_GO_ISO);

/// The page holding SQLite's lock byte, which no database page may use.
pub fn lock_pgno(page_size: u32) -> u32 {
    (PENDING_BYTE / page_size as u64) as u32 + 1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LtxHeader {
    pub page_size: u32,
    /// Database size in pages after this file is applied.
    pub commit: u32,
    pub min_txid: u64,
    pub max_txid: u64,
    pub timestamp_ms: i64,
}

impl LtxHeader {
    /// A snapshot (min TXID 1) holds every page of the database.
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }
}

/// A decoded file: its header and its pages, by page number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LtxFile {
    pub header: LtxHeader,
    pub pages: BTreeMap<u32, Vec<u8>>,
}

/// Encodes `pages` (ascending page numbers, each `page_size` long, none
/// above `commit`; all of 1..=commit but the lock page for a snapshot).
pub fn encode<'a>(
    header: &LtxHeader,
    pages: impl IntoIterator<Item = (u32, &'a [u8])>,
) -> Result<Vec<u8>, MetaError> {
    let bad = |m: String| MetaError::Ltx(m);
    let mut out = Vec::with_capacity(HEADER_BYTES + 4096);
    let mut digest = CRC64.digest();
    let mut h = [0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&FLAG_NO_CHECKSUM.to_be_bytes());
    h[8..12].copy_from_slice(&header.page_size.to_be_bytes());
    h[12..16].copy_from_slice(&header.commit.to_be_bytes());
    h[16..24].copy_from_slice(&header.min_txid.to_be_bytes());
    h[24..32].copy_from_slice(&header.max_txid.to_be_bytes());
    h[32..40].copy_from_slice(&header.timestamp_ms.to_be_bytes());
    // 40..100: pre-apply checksum, WAL offset/size/salts, node id: all zero.
    if header.min_txid == 0 || header.min_txid > header.max_txid {
        return Err(bad(format!(
            "bad TXID range {}-{}",
            header.min_txid, header.max_txid
        )));
    }
    out.extend_from_slice(&h);
    digest.update(&h);
    let lock = lock_pgno(header.page_size);
    let mut index: Vec<(u32, u64, u64)> = vec![];
    let mut prev = 0u32;
    for (pgno, data) in pages {
        if data.len() != header.page_size as usize || pgno == 0 || pgno > header.commit {
            return Err(bad(format!("page {pgno} does not fit the file")));
        }
        let expected_next = if prev + 1 == lock { prev + 2 } else { prev + 1 };
        if pgno <= prev || pgno == lock || (header.is_snapshot() && pgno != expected_next) {
            return Err(bad(format!("page {pgno} out of order after {prev}")));
        }
        prev = pgno;
        let offset = out.len() as u64;
        let compressed = lz4_flex::block::compress(data);
        let mut fh = [0u8; 10];
        fh[0..4].copy_from_slice(&pgno.to_be_bytes());
        fh[4..6].copy_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
        fh[6..10].copy_from_slice(&(compressed.len() as u32).to_be_bytes());
        out.extend_from_slice(&fh);
        digest.update(&fh);
        out.extend_from_slice(&compressed);
        digest.update(data);
        index.push((pgno, offset, 10 + compressed.len() as u64));
    }
    if header.is_snapshot() && prev != header.commit && !(prev + 1 == lock && lock == header.commit)
    {
        return Err(bad(format!(
            "snapshot ends at page {prev}, not at its commit {}",
            header.commit
        )));
    }
    let mut tail = vec![0u8; 6]; // the empty page header ending the frames
    let index_at = tail.len();
    for (pgno, off, size) in &index {
        put_uvarint(&mut tail, *pgno as u64);
        put_uvarint(&mut tail, *off);
        put_uvarint(&mut tail, *size);
    }
    put_uvarint(&mut tail, 0);
    let index_len = (tail.len() - index_at) as u64;
    tail.extend_from_slice(&index_len.to_be_bytes());
    tail.extend_from_slice(&0u64.to_be_bytes()); // post-apply checksum
    digest.update(&tail);
    out.extend_from_slice(&tail);
    out.extend_from_slice(&(CHECKSUM_FLAG | digest.finalize()).to_be_bytes());
    Ok(out)
}

/// Decodes and checks a whole file; `name` is used in errors.
pub fn decode(name: &str, b: &[u8]) -> Result<LtxFile, MetaError> {
    let bad = |m: &str| MetaError::Ltx(format!("{name}: {m}"));
    if b.len() < HEADER_BYTES + 6 + 1 + 8 + TRAILER_BYTES || &b[0..4] != MAGIC {
        return Err(bad("not an LTX file (bad magic or too short)"));
    }
    let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
    let header = LtxHeader {
        page_size: u32_at(8),
        commit: u32_at(12),
        min_txid: u64_at(16),
        max_txid: u64_at(24),
        timestamp_ms: u64_at(32) as i64,
    };
    if !header.page_size.is_power_of_two() || !(512..=65536).contains(&header.page_size) {
        return Err(bad("bad page size"));
    }
    if header.min_txid == 0 || header.min_txid > header.max_txid {
        return Err(bad("bad TXID range"));
    }
    let stored = u64_at(b.len() - 8);
    let mut digest = CRC64.digest();
    digest.update(&b[..HEADER_BYTES]);
    let mut pages = BTreeMap::new();
    let mut at = HEADER_BYTES;
    loop {
        let fh = b
            .get(at..at + 6)
            .ok_or_else(|| bad("truncated page frame"))?;
        let pgno = u32_at(at);
        if pgno == 0 {
            digest.update(fh);
            at += 6;
            break;
        }
        let flags = u16::from_be_bytes(b[at + 4..at + 6].try_into().unwrap());
        if flags != PAGE_FLAG_SIZE {
            return Err(bad(&format!(
                "page {pgno}: unsupported frame flags {flags:#x}"
            )));
        }
        let size = b
            .get(at + 6..at + 10)
            .ok_or_else(|| bad("truncated page frame"))?;
        let size = u32::from_be_bytes(size.try_into().unwrap()) as usize;
        let block = b
            .get(at + 10..at + 10 + size)
            .ok_or_else(|| bad(&format!("page {pgno}: truncated data")))?;
        let page = lz4_flex::block::decompress(block, header.page_size as usize)
            .map_err(|e| bad(&format!("page {pgno}: {e}")))?;
        if page.len() != header.page_size as usize || pgno > header.commit {
            return Err(bad(&format!("page {pgno}: bad size or past the commit")));
        }
        digest.update(&b[at..at + 10]);
        digest.update(&page);
        pages.insert(pgno, page);
        at += 10 + size;
    }
    // Index, its length, the post-apply checksum: hashed as they are.
    if b.len() < at + 8 + TRAILER_BYTES {
        return Err(bad("truncated page index"));
    }
    digest.update(&b[at..b.len() - 8]);
    if CHECKSUM_FLAG | digest.finalize() != stored {
        return Err(bad("file checksum mismatch (corrupt or torn file)"));
    }
    if header.is_snapshot() {
        let lock = lock_pgno(header.page_size);
        let want = (1..=header.commit).filter(|&p| p != lock).count();
        if pages.len() != want {
            return Err(bad("snapshot does not hold every page"));
        }
    }
    Ok(LtxFile { header, pages })
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Where an LTX file lives under a replica root, per the layout the real
/// `litestream` reads for that kind of URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaLayout {
    /// `file://`: `ltx/<level decimal>/<min>-<max>.ltx`.
    File,
    /// `s3://`: `<level:04x>/<min>-<max>.ltx`.
    S3,
}

/// Level of new files; [`SNAPSHOT_LEVEL`] holds full snapshots.
pub const L0: u32 = 0;
pub const SNAPSHOT_LEVEL: u32 = 9;

impl ReplicaLayout {
    pub fn level_dir(self, level: u32) -> String {
        match self {
            ReplicaLayout::File => format!("ltx/{level}/"),
            ReplicaLayout::S3 => format!("{level:04x}/"),
        }
    }

    pub fn file_name(min_txid: u64, max_txid: u64) -> String {
        format!("{min_txid:016x}-{max_txid:016x}.ltx")
    }

    /// Parses `<min>-<max>.ltx`.
    pub fn parse_name(name: &str) -> Option<(u64, u64)> {
        let (min, max) = name.strip_suffix(".ltx")?.split_once('-')?;
        if min.len() != 16 || max.len() != 16 {
            return None;
        }
        Some((
            u64::from_str_radix(min, 16).ok()?,
            u64::from_str_radix(max, 16).ok()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(tag: u8) -> Vec<u8> {
        (0..4096u32).map(|i| (i % 7) as u8 ^ tag).collect()
    }

    #[test]
    fn round_trips_and_checks_every_byte() {
        let pages = [page(1), page(2), page(3)];
        let h = LtxHeader {
            page_size: 4096,
            commit: 3,
            min_txid: 1,
            max_txid: 1,
            timestamp_ms: 1_700_000_000_000,
        };
        let b = encode(
            &h,
            pages
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u32 + 1, &p[..])),
        )
        .unwrap();
        let f = decode("x", &b).unwrap();
        assert_eq!(f.header, h);
        assert_eq!(f.pages.len(), 3);
        assert!(f.pages[&2] == pages[1]);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(decode("x", &c).is_err(), "flipped byte {i} not caught");
        }
        assert!(decode("x", &b[..b.len() - 1]).is_err());
    }

    #[test]
    fn the_checksum_is_crc64_go_iso() {
        assert_eq!(CRC64.checksum(b"123456789"), 0xb90956c775a41001);
    }

    #[test]
    fn snapshots_must_hold_every_page_and_names_parse() {
        let p = page(0);
        let h = LtxHeader {
            page_size: 4096,
            commit: 3,
            min_txid: 1,
            max_txid: 4,
            timestamp_ms: 0,
        };
        assert!(encode(&h, [(1, &p[..]), (3, &p[..])]).is_err());
        let name = ReplicaLayout::file_name(1, 0x2a);
        assert_eq!(name, "0000000000000001-000000000000002a.ltx");
        assert_eq!(ReplicaLayout::parse_name(&name), Some((1, 42)));
        assert_eq!(ReplicaLayout::File.level_dir(9), "ltx/9/");
        assert_eq!(ReplicaLayout::S3.level_dir(9), "0009/");
    }
}
