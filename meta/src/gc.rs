//! What GC asks of the map: which segments any map (the live one or a
//! checkpoint's) still references and how much of each, relocation of the
//! pieces compaction copied, and forgetting segments no row references.
//! The engine (volume/src/gc.rs) does the store side and the ordering.

use rusqlite::params;

use crate::map::PieceRef;
use crate::{MetaDb, MetaError};

/// One segment as GC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentUse {
    pub seq: u64,
    pub size_bytes: u64,
    /// Bytes of the distinct pieces that any row, live or a checkpoint's,
    /// points into (a piece is kept whole: it is checksummed whole).
    pub referenced_bytes: u64,
}

/// A piece compaction copied: rows pointing at (`seg`, `piece.piece_off`)
/// now point at `new_off` of the copy's segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceMove {
    pub seg: u64,
    pub piece: PieceRef,
    pub new_off: u64,
}

/// Rows of both tables, as one relation.
const ALL_ROWS: &str = "SELECT seg, piece_off, piece_blocks, crc FROM extents
     UNION ALL SELECT seg, piece_off, piece_blocks, crc FROM dead_extents";

impl MetaDb {
    /// Every segment with the bytes any map still references in it, by seq.
    pub fn segment_use(&self) -> Result<Vec<SegmentUse>, MetaError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT s.seq, s.size_bytes, coalesce(r.blocks, 0) FROM segments s
             LEFT JOIN (SELECT seg, sum(piece_blocks) AS blocks FROM
                          (SELECT DISTINCT seg, piece_off, piece_blocks FROM ({ALL_ROWS}))
                        GROUP BY seg) r ON r.seg = s.seq
             ORDER BY s.seq"
        ))?;
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

    /// The distinct pieces of segment `seg` that any row references, by offset.
    pub fn referenced_pieces(&self, seg: u64) -> Result<Vec<PieceRef>, MetaError> {
        let mut st = self.conn.prepare(
            "SELECT DISTINCT piece_off, piece_blocks, crc FROM (
                 SELECT piece_off, piece_blocks, crc FROM extents WHERE seg = ?1
                 UNION ALL SELECT piece_off, piece_blocks, crc FROM dead_extents WHERE seg = ?1)
             ORDER BY piece_off",
        )?;
        let rows = st.query_map([seg as i64], |r| {
            Ok(PieceRef {
                piece_off: r.get::<_, i64>(0)? as u64,
                piece_blocks: r.get(1)?,
                crc: r.get::<_, i64>(2)? as u32,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Points every row (live and dead) that references a moved piece at its
    /// copy in segment `new_seg`, in one transaction; live bytes follow.
    /// Returns the rows changed.
    pub fn relocate(&mut self, new_seg: u64, moves: &[PieceMove]) -> Result<u64, MetaError> {
        let bs = self.block_size as i64;
        let tx = self.conn.transaction()?;
        let mut rows = 0;
        let mut touched = std::collections::BTreeSet::from([new_seg]);
        for m in moves {
            for table in ["extents", "dead_extents"] {
                rows += tx
                    .prepare_cached(&format!(
                        "UPDATE {table} SET seg = ?3, piece_off = ?4
                         WHERE seg = ?1 AND piece_off = ?2 AND piece_blocks = ?5 AND crc = ?6"
                    ))?
                    .execute(params![
                        m.seg as i64,
                        m.piece.piece_off as i64,
                        new_seg as i64,
                        m.new_off as i64,
                        m.piece.piece_blocks,
                        m.piece.crc as i64
                    ])? as u64;
            }
            touched.insert(m.seg);
        }
        for seg in touched {
            tx.execute(
                "UPDATE segments SET live_bytes = ?2 * coalesce(
                     (SELECT sum(blocks) FROM extents WHERE seg = ?1), 0) WHERE seq = ?1",
                params![seg as i64, bs],
            )?;
        }
        tx.commit()?;
        Ok(rows)
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
            tx.prepare_cached(
                "INSERT INTO extents (lba, blocks, seg, piece_off, piece_blocks, skip_blocks, crc, born)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1)",
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
