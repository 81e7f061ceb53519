//! What GC asks of the map: which segments any map (the live one or a
//! checkpoint's) still references and how much of each, moving the rows
//! whose blocks compaction copied, and forgetting segments no row
//! references.
//! The engine (volume/src/gc.rs) does the store side and the ordering.

use rusqlite::params;

use crate::map::{Extent, PieceRef, EXTENT_COLS};
use crate::{MetaDb, MetaError};

/// One segment as GC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentUse {
    pub seq: u64,
    pub size_bytes: u64,
    /// Bytes of it that rows, live or a checkpoint's, map (a block two rows
    /// map counts twice: it is copied twice by compaction).
    pub referenced_bytes: u64,
}

/// A map row that points into a segment: live (keyed by LBA) or a
/// checkpoint's dead row (keyed by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRef {
    pub dead: bool,
    pub key: i64,
    pub extent: Extent,
}

/// Compaction copied exactly the blocks `row` maps into a new piece: the
/// row now points at `new_piece` of the copy's segment (from its start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMove {
    pub row: RowRef,
    pub new_piece: PieceRef,
}

impl MetaDb {
    /// Every segment GC may consider, with the bytes any map still
    /// references in it, by seq. Fences are left out: they are never
    /// collected (a fenced writer may still retry a PUT at their position).
    pub fn segment_use(&self) -> Result<Vec<SegmentUse>, MetaError> {
        let mut st = self.conn.prepare(
            "SELECT s.seq, s.size_bytes, coalesce(r.blocks, 0) FROM segments s
             LEFT JOIN (SELECT seg, sum(blocks) AS blocks FROM (
                            SELECT seg, blocks FROM extents
                            UNION ALL SELECT seg, blocks FROM dead_extents)
                        GROUP BY seg) r ON r.seg = s.seq
             WHERE s.fence = 0
             ORDER BY s.seq",
        )?;
        let bs = self.block_size;
        let rows = st.query_map([], |r| {
            Ok(SegmentUse {
                seq: r.get::<_, i64>(0)? as u64,
                size_bytes: r.get::<_, i64>(1)? as u64,
                referenced_bytes: r.get::<_, i64>(2)? as u64 * bs,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every row, live or dead, that points into segment `seg`.
    pub fn rows_in_segment(&self, seg: u64) -> Result<Vec<RowRef>, MetaError> {
        let mut out = vec![];
        for (dead, sql) in [
            (
                false,
                format!("SELECT lba, {EXTENT_COLS} FROM extents WHERE seg = ?1"),
            ),
            (
                true,
                format!("SELECT id, {EXTENT_COLS} FROM dead_extents WHERE seg = ?1"),
            ),
        ] {
            let mut st = self.conn.prepare(&sql)?;
            let rows = st.query_map([seg as i64], |r| {
                let key: i64 = r.get(0)?;
                // The extent's columns follow the key.
                Ok((
                    key,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            })?;
            for row in rows {
                let (key, lba, blocks, seg, off, pblocks, skip, crc) = row?;
                out.push(RowRef {
                    dead,
                    key,
                    extent: Extent {
                        lba: lba as u64,
                        blocks: blocks as u64,
                        seg: seg as u64,
                        piece: PieceRef {
                            piece_off: off as u64,
                            piece_blocks: pblocks,
                            crc: crc as u32,
                        },
                        skip_blocks: skip as u64,
                    },
                });
            }
        }
        Ok(out)
    }

    /// Points each moved row at its copy in segment `new_seg`, in one
    /// transaction, if the row is still what it was when it was copied (a
    /// write may have cut or removed it since: it then keeps pointing at
    /// the old segment, which GC then keeps). Live bytes follow. Returns
    /// the rows moved.
    pub fn relocate_rows(&mut self, new_seg: u64, moves: &[RowMove]) -> Result<u64, MetaError> {
        let bs = self.block_size as i64;
        let tx = self.conn.transaction()?;
        let mut moved = 0;
        let mut touched = std::collections::BTreeSet::from([new_seg]);
        for m in moves {
            let (table, key) = if m.row.dead {
                ("dead_extents", "id")
            } else {
                ("extents", "lba")
            };
            let e = &m.row.extent;
            moved += tx
                .prepare_cached(&format!(
                    "UPDATE {table} SET seg = ?1, piece_off = ?2, piece_blocks = ?3, skip_blocks = 0, crc = ?4
                     WHERE {key} = ?5 AND lba = ?6 AND blocks = ?7 AND seg = ?8 AND piece_off = ?9
                       AND skip_blocks = ?10 AND crc = ?11"
                ))?
                .execute(params![
                    new_seg as i64,
                    m.new_piece.piece_off as i64,
                    m.new_piece.piece_blocks,
                    m.new_piece.crc as i64,
                    m.row.key,
                    e.lba as i64,
                    e.blocks as i64,
                    e.seg as i64,
                    e.piece.piece_off as i64,
                    e.skip_blocks as i64,
                    e.piece.crc as i64
                ])? as u64;
            touched.insert(e.seg);
        }
        for seg in touched {
            tx.execute(
                "UPDATE segments SET live_bytes = ?2 * coalesce(
                     (SELECT sum(blocks) FROM extents WHERE seg = ?1), 0) WHERE seq = ?1",
                params![seg as i64, bs],
            )?;
        }
        tx.commit()?;
        Ok(moved)
    }

    /// Segments numbered up to this belong to a fork's parents (0: none).
    pub fn foreign_seq_max(&self) -> Result<u64, MetaError> {
        let n: i64 =
            self.conn
                .query_row("SELECT coalesce(max(seq_max), 0) FROM origins", [], |r| {
                    r.get(0)
                })?;
        Ok(n as u64)
    }

    /// A fork's ancestry: (seq_max, url), oldest ancestor first.
    pub fn origins(&self) -> Result<Vec<(u64, String)>, MetaError> {
        let mut st = self
            .conn
            .prepare("SELECT seq_max, url FROM origins ORDER BY seq_max")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Makes this empty database a fork's: segments up to `seq_max` are the
    /// parents' (`origins`, ending with the parent itself), the map is
    /// `extents` (a parent checkpoint's), and the roll-forward of the fork's
    /// own segments starts after `seq_max`.
    pub fn init_fork(
        &mut self,
        origins: &[(u64, String)],
        segments: &[crate::SegmentRow],
        extents: &[crate::Extent],
        seq_max: u64,
    ) -> Result<(), MetaError> {
        let bs = self.block_size as i64;
        let tx = self.conn.transaction()?;
        let empty: bool = tx.query_row(
            "SELECT NOT EXISTS (SELECT 1 FROM extents) AND NOT EXISTS (SELECT 1 FROM segments)",
            [],
            |r| r.get(0),
        )?;
        if !empty {
            return Err(MetaError::Mismatch(
                "a fork starts from an empty database".into(),
            ));
        }
        for (max, url) in origins {
            tx.execute(
                "INSERT INTO origins (seq_max, url) VALUES (?1, ?2)",
                params![*max as i64, url],
            )?;
        }
        for s in segments {
            tx.execute(
                "INSERT INTO segments (seq, size_bytes, live_bytes) VALUES (?1, ?2, 0)",
                params![s.seq as i64, s.size_bytes as i64],
            )?;
        }
        for e in extents {
            // Born in the fork's first version, which no checkpoint sees yet.
            crate::map::put_row(&tx, e, 1)?;
        }
        tx.execute(
            "UPDATE segments SET live_bytes = ?1 * coalesce(
                 (SELECT sum(blocks) FROM extents WHERE seg = segments.seq), 0)",
            [bs],
        )?;
        tx.execute("UPDATE volume SET applied_seq = ?1", [seq_max as i64])?;
        tx.commit()?;
        Ok(())
    }

    /// Drops segments from the database before GC deletes their objects.
    /// Refuses (and changes nothing) if any row still references one.
    pub fn forget_segments(&mut self, seqs: &[u64]) -> Result<(), MetaError> {
        let tx = self.conn.transaction()?;
        for &seq in seqs {
            let used: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM extents WHERE seg = ?1)
                     OR EXISTS (SELECT 1 FROM dead_extents WHERE seg = ?1)",
                [seq as i64],
                |r| r.get(0),
            )?;
            if used {
                return Err(MetaError::Mismatch(format!(
                    "segment {seq} is still referenced: GC must not delete it"
                )));
            }
            tx.execute("DELETE FROM segments WHERE seq = ?1", [seq as i64])?;
        }
        tx.commit()?;
        Ok(())
    }
}
