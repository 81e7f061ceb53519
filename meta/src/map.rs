//! The extent map: non-overlapping block ranges, each pointing into a piece of a segment.

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::MetaError;

/// A checksummed piece of segment data, the unit a read fetches and verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceRef {
    /// Byte offset of the piece in its segment object.
    pub piece_off: u64,
    pub piece_blocks: u32,
    /// crc32c of the whole piece.
    pub crc: u32,
}

/// One change to the map: `[lba, lba + blocks)` now maps to the start of
/// `piece` (blocks == piece_blocks), or to nothing (reads as zeros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapChange {
    pub lba: u64,
    pub blocks: u64,
    pub piece: Option<PieceRef>,
}

/// A map row: blocks `[lba, lba + blocks)` are blocks `[skip, skip + blocks)` of `piece` in segment `seg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub lba: u64,
    pub blocks: u64,
    pub seg: u64,
    pub piece: PieceRef,
    pub skip_blocks: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.lba + self.blocks
    }
}

pub(crate) const EXTENT_COLS: &str = "lba, blocks, seg, piece_off, piece_blocks, skip_blocks, crc";

pub(crate) fn row_to_extent(r: &Row<'_>) -> rusqlite::Result<Extent> {
    Ok(Extent {
        lba: r.get::<_, i64>(0)? as u64,
        blocks: r.get::<_, i64>(1)? as u64,
        seg: r.get::<_, i64>(2)? as u64,
        piece: PieceRef {
            piece_off: r.get::<_, i64>(3)? as u64,
            piece_blocks: r.get(4)?,
            crc: r.get::<_, i64>(6)? as u32,
        },
        skip_blocks: r.get::<_, i64>(5)? as u64,
    })
}

/// The extent that starts before `lba` and may reach into it.
fn predecessor(conn: &Connection, lba: u64) -> rusqlite::Result<Option<Extent>> {
    conn.prepare_cached(&format!(
        "SELECT {EXTENT_COLS} FROM extents WHERE lba < ?1 ORDER BY lba DESC LIMIT 1"
    ))?
    .query_row(params![lba as i64], row_to_extent)
    .optional()
}

fn starting_in(conn: &Connection, start: u64, end: u64) -> rusqlite::Result<Vec<Extent>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {EXTENT_COLS} FROM extents WHERE lba >= ?1 AND lba < ?2 ORDER BY lba"
    ))?;
    let rows = st.query_map(params![start as i64, end as i64], row_to_extent)?;
    rows.collect()
}

fn put_row(conn: &Connection, e: &Extent) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO extents (lba, blocks, seg, piece_off, piece_blocks, skip_blocks, crc)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        e.lba as i64,
        e.blocks as i64,
        e.seg as i64,
        e.piece.piece_off as i64,
        e.piece.piece_blocks,
        e.skip_blocks as i64,
        e.piece.crc as i64
    ])?;
    Ok(())
}

fn add_live(conn: &Connection, seg: u64, delta_bytes: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE segments SET live_bytes = live_bytes + ?2 WHERE seq = ?1")?
        .execute(params![seg as i64, delta_bytes])?;
    Ok(())
}

/// Removes `[lba, lba + blocks)` from the map, splitting extents that straddle its ends.
pub(crate) fn punch(
    conn: &Connection,
    lba: u64,
    blocks: u64,
    block_size: u64,
) -> Result<(), MetaError> {
    let (a, b) = (lba, lba + blocks);
    if let Some(p) = predecessor(conn, a)? {
        if p.end() > a {
            let cut = p.end().min(b) - a;
            conn.prepare_cached("UPDATE extents SET blocks = ?2 WHERE lba = ?1")?
                .execute(params![p.lba as i64, (a - p.lba) as i64])?;
            if p.end() > b {
                put_row(
                    conn,
                    &Extent {
                        lba: b,
                        blocks: p.end() - b,
                        skip_blocks: p.skip_blocks + (b - p.lba),
                        ..p
                    },
                )?;
            }
            add_live(conn, p.seg, -((cut * block_size) as i64))?;
        }
    }
    for e in starting_in(conn, a, b)? {
        conn.prepare_cached("DELETE FROM extents WHERE lba = ?1")?
            .execute(params![e.lba as i64])?;
        let cut = e.end().min(b) - e.lba;
        if e.end() > b {
            put_row(
                conn,
                &Extent {
                    lba: b,
                    blocks: e.end() - b,
                    skip_blocks: e.skip_blocks + (b - e.lba),
                    ..e
                },
            )?;
        }
        add_live(conn, e.seg, -((cut * block_size) as i64))?;
    }
    Ok(())
}

/// Maps `[lba, lba + blocks)`, which must be unmapped, to the start of `piece`.
pub(crate) fn insert(
    conn: &Connection,
    lba: u64,
    blocks: u64,
    seg: u64,
    piece: &PieceRef,
    block_size: u64,
) -> Result<(), MetaError> {
    debug_assert!(blocks <= piece.piece_blocks as u64);
    put_row(
        conn,
        &Extent {
            lba,
            blocks,
            seg,
            piece: *piece,
            skip_blocks: 0,
        },
    )?;
    add_live(conn, seg, (blocks * block_size) as i64)?;
    Ok(())
}

pub(crate) fn lookup(conn: &Connection, lba: u64, blocks: u64) -> Result<Vec<Extent>, MetaError> {
    let (a, b) = (lba, lba + blocks);
    let mut out = vec![];
    if let Some(p) = predecessor(conn, a)? {
        if p.end() > a {
            out.push(p);
        }
    }
    out.extend(starting_in(conn, a, b)?);
    for e in &mut out {
        // Clip to [a, b).
        if e.lba < a {
            e.skip_blocks += a - e.lba;
            e.blocks -= a - e.lba;
            e.lba = a;
        }
        if e.end() > b {
            e.blocks = b - e.lba;
        }
    }
    Ok(out)
}
