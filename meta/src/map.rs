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
fn row_with_born(r: &Row<'_>) -> rusqlite::Result<(Extent, u64)> {
    Ok((row_to_extent(r)?, r.get::<_, i64>(7)? as u64))
}

fn predecessor(conn: &Connection, lba: u64) -> rusqlite::Result<Option<(Extent, u64)>> {
    conn.prepare_cached(&format!(
        "SELECT {EXTENT_COLS}, born FROM extents WHERE lba < ?1 ORDER BY lba DESC LIMIT 1"
    ))?
    .query_row(params![lba as i64], row_with_born)
    .optional()
}

fn starting_in(conn: &Connection, start: u64, end: u64) -> rusqlite::Result<Vec<(Extent, u64)>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {EXTENT_COLS}, born FROM extents WHERE lba >= ?1 AND lba < ?2 ORDER BY lba"
    ))?;
    let rows = st.query_map(params![start as i64, end as i64], row_with_born)?;
    rows.collect()
}

pub(crate) fn put_row(conn: &Connection, e: &Extent, born: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO extents (lba, blocks, seg, piece_off, piece_blocks, skip_blocks, crc, born)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        e.lba as i64,
        e.blocks as i64,
        e.seg as i64,
        e.piece.piece_off as i64,
        e.piece.piece_blocks,
        e.skip_blocks as i64,
        e.piece.crc as i64,
        born as i64
    ])?;
    Ok(())
}

/// Where the map's versions stand while a segment is applied: rows born
/// at or before `newest_checkpoint` are seen by a checkpoint and must not
/// change in place; new rows are born in `current`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Versions {
    pub current: u64,
    pub newest_checkpoint: u64,
}

impl Versions {
    pub(crate) fn read(conn: &Connection) -> rusqlite::Result<Versions> {
        let current: i64 = conn
            .prepare_cached("SELECT map_version FROM volume")?
            .query_row([], |r| r.get(0))
            .optional()?
            .unwrap_or(1);
        let newest: i64 = conn
            .prepare_cached("SELECT coalesce(max(version), 0) FROM checkpoints")?
            .query_row([], |r| r.get(0))?;
        Ok(Versions {
            current: current as u64,
            newest_checkpoint: newest as u64,
        })
    }
}

/// Records that the blocks of `part` (cut out of a live row born in
/// `born`) leave the live map now: a checkpoint that sees them keeps them
/// as a dead row.
fn retire(conn: &Connection, part: &Extent, born: u64, v: &Versions) -> rusqlite::Result<()> {
    if born <= v.newest_checkpoint {
        conn.prepare_cached(
            "INSERT INTO dead_extents (lba, blocks, seg, piece_off, piece_blocks, skip_blocks, crc, born, died)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            part.lba as i64,
            part.blocks as i64,
            part.seg as i64,
            part.piece.piece_off as i64,
            part.piece.piece_blocks,
            part.skip_blocks as i64,
            part.piece.crc as i64,
            born as i64,
            v.current as i64
        ])?;
    }
    Ok(())
}

fn add_live(conn: &Connection, seg: u64, delta_bytes: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE segments SET live_bytes = live_bytes + ?2 WHERE seq = ?1")?
        .execute(params![seg as i64, delta_bytes])?;
    Ok(())
}

/// Removes `[lba, lba + blocks)` from the map, splitting extents that
/// straddle its ends. What is cut out is retired (kept for the checkpoints
/// that see it); what is left of a row keeps the row's birth version, as
/// those blocks have been in the map all along.
pub(crate) fn punch(
    conn: &Connection,
    lba: u64,
    blocks: u64,
    block_size: u64,
    v: &Versions,
) -> Result<(), MetaError> {
    let (a, b) = (lba, lba + blocks);
    if let Some((p, born)) = predecessor(conn, a)? {
        if p.end() > a {
            let cut = p.end().min(b) - a;
            retire(
                conn,
                &Extent {
                    lba: a,
                    blocks: cut,
                    skip_blocks: p.skip_blocks + (a - p.lba),
                    ..p
                },
                born,
                v,
            )?;
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
                    born,
                )?;
            }
            add_live(conn, p.seg, -((cut * block_size) as i64))?;
        }
    }
    for (e, born) in starting_in(conn, a, b)? {
        let cut = e.end().min(b) - e.lba;
        retire(conn, &Extent { blocks: cut, ..e }, born, v)?;
        conn.prepare_cached("DELETE FROM extents WHERE lba = ?1")?
            .execute(params![e.lba as i64])?;
        if e.end() > b {
            put_row(
                conn,
                &Extent {
                    lba: b,
                    blocks: e.end() - b,
                    skip_blocks: e.skip_blocks + (b - e.lba),
                    ..e
                },
                born,
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
    v: &Versions,
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
        v.current,
    )?;
    add_live(conn, seg, (blocks * block_size) as i64)?;
    Ok(())
}

pub(crate) fn lookup(conn: &Connection, lba: u64, blocks: u64) -> Result<Vec<Extent>, MetaError> {
    let (a, b) = (lba, lba + blocks);
    // One statement, so one snapshot of the map even on a connection of
    // its own (readers.rs): the extent starting before `a` (which may reach
    // into the range) and those starting in it, as one range of the rowid.
    let mut st = conn.prepare_cached(&format!(
        "SELECT {EXTENT_COLS} FROM extents
         WHERE lba >= coalesce((SELECT max(lba) FROM extents WHERE lba < ?1), ?1)
           AND lba < ?2
         ORDER BY lba"
    ))?;
    let rows = st.query_map(params![a as i64, b as i64], row_to_extent)?;
    let mut out = vec![];
    for e in rows {
        let mut e = e?;
        if e.end() <= a {
            continue;
        }
        // Clip to [a, b).
        if e.lba < a {
            e.skip_blocks += a - e.lba;
            e.blocks -= a - e.lba;
            e.lba = a;
        }
        if e.end() > b {
            e.blocks = b - e.lba;
        }
        out.push(e);
    }
    Ok(out)
}
