//! The metadata database of a volume: SQLite through rusqlite.
//!
//! Three tables: `volume` (one row: identity, geometry and the roll-forward
//! position), `segments` (every segment applied to the map, with its size and
//! how many of its bytes the map still references) and `extents` (the map
//! from block ranges to pieces of segments). The map never overlaps itself:
//! applying a range first punches it out, splitting partly covered extents.
//!
//! Units: LBAs and lengths in the map are in blocks; sizes in bytes.

mod checkpoint;
mod error;
mod gc;
pub mod ltx;
mod map;
mod readers;
pub mod replica;
mod schema;
mod wal;

pub use checkpoint::CheckpointRow;
pub use error::MetaError;
pub use gc::{RowMove, RowRef, SegmentUse};
pub use map::{Extent, MapChange, PieceRef};
pub use readers::MapReaders;

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

/// Identity and geometry of a volume, fixed at create time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    pub id: String,
    pub size_bytes: u64,
    pub block_size: u32,
    pub created_unix: i64,
}

/// One segment's effect on the map, applied atomically by [`MetaDb::apply_segment`].
#[derive(Debug, Clone)]
pub struct SegmentApply<'a> {
    pub seq: u64,
    /// The segment it follows: must be the last one applied.
    pub prev_seq: u64,
    /// The lease epoch of the writer that made it: never below the last
    /// applied one's (docs/design/0009).
    pub epoch: u64,
    /// Where its successor in the history is (seq + 1, or past a fence's window).
    pub next_seq: u64,
    pub size_bytes: u64,
    /// Total bytes written by clients up to and including this segment.
    pub client_bytes_total: u64,
    pub changes: &'a [MapChange],
}

/// The end of the applied history (docs/design/0009).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainTail {
    /// The last applied segment (0: none).
    pub seq: u64,
    /// Its writer's lease epoch.
    pub epoch: u64,
    /// The position of its successor.
    pub next: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaStats {
    pub segments: u64,
    pub extents: u64,
    /// Sum of the sizes of all segment objects (what the store bills).
    pub stored_bytes: u64,
    /// Bytes of segments that the map still references.
    pub live_bytes: u64,
    pub client_bytes_written: u64,
    pub applied_seq: u64,
    /// Bytes of every segment ever applied, compaction's copies included.
    pub segment_bytes_put: u64,
    /// Rows kept only for checkpoints.
    pub dead_extents: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRow {
    pub seq: u64,
    pub size_bytes: u64,
    pub live_bytes: u64,
}

/// The writer's connection. Every method that changes what the database
/// holds takes `&mut self`, and only those do (shipping the log, which
/// changes no row, takes `&self`): the read path's lookup memo is
/// invalidated by any `&mut` use and trusts nothing else
/// (docs/design/0018).
pub struct MetaDb {
    conn: Connection,
    block_size: u64,
}

impl std::fmt::Debug for MetaDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaDb")
            .field("path", &self.conn.path())
            .finish()
    }
}

impl MetaDb {
    /// Opens (creating if needed) the database file at `path`, checking it.
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        Self::open_file(path, true)
    }

    /// Opens a database just rebuilt from checksummed replica files: the
    /// O(size) integrity check is skipped (measured: most of an attach of a
    /// million-extent map).
    pub fn open_restored(path: &Path) -> Result<Self, MetaError> {
        Self::open_file(path, false)
    }

    fn open_file(path: &Path, check: bool) -> Result<Self, MetaError> {
        let conn = Connection::open(path).map_err(|e| MetaError::open(path, e))?;
        Self::setup(conn, check).map_err(|e| match e {
            MetaError::Sqlite(s) => MetaError::open(path, s),
            other => other,
        })
    }

    pub fn open_in_memory() -> Result<Self, MetaError> {
        Self::setup(Connection::open_in_memory()?, false)
    }

    /// An in-memory copy of the database at `path`, for read-only tools that
    /// must not disturb a running daemon's file.
    pub fn open_copy(path: &Path) -> Result<Self, MetaError> {
        let mut conn = Connection::open_in_memory()?;
        conn.restore(
            rusqlite::DatabaseName::Main,
            path,
            None::<fn(rusqlite::backup::Progress)>,
        )
        .map_err(|e| MetaError::open(path, e))?;
        Self::setup(conn, true)
    }

    fn setup(conn: Connection, check: bool) -> Result<Self, MetaError> {
        // WAL: readers (stats) never block the writer. synchronous=NORMAL: a
        // power loss may drop the last commits, which only moves the
        // roll-forward position back; the store holds everything durable.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        upgrade(&conn)?;
        conn.execute_batch(schema::SCHEMA)?;
        conn.execute_batch(schema::EXTENTS_BY_SEG)?;
        conn.pragma_update(None, "user_version", schema::SCHEMA_REVISION)?;
        if check {
            let quick: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            if quick != "ok" {
                return Err(MetaError::Corrupt(quick));
            }
        }
        let mut db = MetaDb {
            conn,
            block_size: 4096,
        };
        if let Some(v) = db.volume()? {
            db.block_size = v.block_size as u64;
        }
        Ok(db)
    }

    pub fn volume(&self) -> Result<Option<VolumeRecord>, MetaError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, size_bytes, block_size, created_unix FROM volume",
                [],
                |r| {
                    Ok(VolumeRecord {
                        id: r.get(0)?,
                        size_bytes: r.get::<_, i64>(1)? as u64,
                        block_size: r.get(2)?,
                        created_unix: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// The lease epoch of the writer that last used this database.
    pub fn writer_epoch(&self) -> Result<Option<u64>, MetaError> {
        Ok(self
            .conn
            .query_row("SELECT epoch FROM writer", [], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|e| e as u64))
    }

    /// Every commit from now on is synced before it returns
    /// (`synchronous=FULL`): a power cut takes none back. What the local
    /// durability mode needs (docs/design/0014), whose write journal is
    /// trusted only while this database says whose it is.
    pub fn commit_fully(&self) -> Result<(), MetaError> {
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(())
    }

    pub fn set_writer_epoch(&mut self, epoch: u64) -> Result<(), MetaError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM writer", [])?;
        tx.execute("INSERT INTO writer (epoch) VALUES (?1)", [epoch as i64])?;
        tx.commit()?;
        Ok(())
    }

    /// Records the volume's identity in an empty database.
    pub fn init_volume(&mut self, v: &VolumeRecord) -> Result<(), MetaError> {
        if let Some(existing) = self.volume()? {
            if existing != *v {
                return Err(MetaError::Mismatch(format!(
                    "database holds volume {}, not {}",
                    existing.id, v.id
                )));
            }
            return Ok(());
        }
        self.conn.execute(
            "INSERT INTO volume (id, size_bytes, block_size, created_unix, applied_seq, client_bytes_written)
             VALUES (?1, ?2, ?3, ?4, 0, 0)",
            params![v.id, v.size_bytes as i64, v.block_size, v.created_unix],
        )?;
        self.block_size = v.block_size as u64;
        Ok(())
    }

    /// The sequence number of the last segment applied to the map (0: none).
    pub fn applied_seq(&self) -> Result<u64, MetaError> {
        Ok(self
            .conn
            .query_row("SELECT applied_seq FROM volume", [], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0) as u64)
    }

    /// Where the history continues: the last applied segment, its epoch,
    /// and the position of its successor (docs/design/0009).
    pub fn chain_tail(&self) -> Result<ChainTail, MetaError> {
        Ok(self
            .conn
            .query_row(
                "SELECT applied_seq, applied_epoch, applied_next FROM volume",
                [],
                |r| {
                    let seq = r.get::<_, i64>(0)? as u64;
                    Ok(ChainTail {
                        seq,
                        epoch: r.get::<_, i64>(1)? as u64,
                        next: r.get::<_, Option<i64>>(2)?.map_or(seq + 1, |n| n as u64),
                    })
                },
            )
            .optional()?
            .unwrap_or(ChainTail {
                seq: 0,
                epoch: 0,
                next: 1,
            }))
    }

    /// The last applied record at or before `seq` that is not a fence: what
    /// a write log written before a crashed attach's fence continues.
    pub fn last_unfenced(&self, seq: u64) -> Result<u64, MetaError> {
        Ok(self.conn.query_row(
            "SELECT coalesce(max(seq), 0) FROM segments WHERE fence = 0 AND seq <= ?1",
            [seq as i64],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Applies one segment to the map in one transaction. Segments must be
    /// applied in history order, each following the last one applied, at
    /// the position the last one named, with an epoch no lower than its:
    /// that order is what makes the map a prefix of the write history.
    pub fn apply_segment(&mut self, seg: &SegmentApply<'_>) -> Result<(), MetaError> {
        let tail = self.chain_tail()?;
        let applied = tail.seq;
        // Records written before epochs (0) may jump ahead (0003's ranges).
        let at_next = seg.seq == tail.next || (seg.epoch == 0 && seg.seq > applied);
        if seg.prev_seq != applied || !at_next || seg.epoch < tail.epoch {
            return Err(MetaError::OutOfOrder {
                applied,
                prev: seg.prev_seq,
                seq: seg.seq,
                epoch: seg.epoch,
                applied_epoch: tail.epoch,
                next: tail.next,
            });
        }
        let bs = self.block_size;
        let tx = self.conn.transaction()?;
        let versions = map::Versions::read(&tx)?;
        tx.execute(
            "INSERT INTO segments (seq, size_bytes, live_bytes, fence) VALUES (?1, ?2, 0, ?3)",
            params![
                seg.seq as i64,
                seg.size_bytes as i64,
                seg.next_seq != seg.seq + 1
            ],
        )?;
        for c in seg.changes {
            map::punch(&tx, c.lba, c.blocks, bs, &versions)?;
            if let Some(p) = &c.piece {
                map::insert(&tx, c.lba, c.blocks, seg.seq, p, bs, &versions)?;
            }
        }
        tx.execute(
            "UPDATE volume SET applied_seq = ?1, client_bytes_written = ?2,
                 segment_bytes_put = segment_bytes_put + ?3, applied_epoch = ?4,
                 applied_next = ?5",
            params![
                seg.seq as i64,
                seg.client_bytes_total as i64,
                seg.size_bytes as i64,
                seg.epoch as i64,
                seg.next_seq as i64
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Read-only connections for map lookups beside this one (an on-disk
    /// database only: None for one in memory).
    pub fn readers(&self) -> Option<MapReaders> {
        match self.conn.path() {
            Some(p) if !p.is_empty() => MapReaders::new(Path::new(p)),
            _ => None,
        }
    }

    /// The extents intersecting `[lba, lba + blocks)`, clipped to that range, by LBA.
    pub fn lookup(&self, lba: u64, blocks: u64) -> Result<Vec<Extent>, MetaError> {
        map::lookup(&self.conn, lba, blocks)
    }

    /// Calls `f` on every extent in LBA order.
    pub fn for_each_extent(&self, mut f: impl FnMut(&Extent)) -> Result<(), MetaError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {} FROM extents ORDER BY lba",
            map::EXTENT_COLS
        ))?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            f(&map::row_to_extent(r)?);
        }
        Ok(())
    }

    pub fn segments(&self) -> Result<Vec<SegmentRow>, MetaError> {
        let mut st = self
            .conn
            .prepare("SELECT seq, size_bytes, live_bytes FROM segments ORDER BY seq")?;
        let rows = st.query_map([], |r| {
            Ok(SegmentRow {
                seq: r.get::<_, i64>(0)? as u64,
                size_bytes: r.get::<_, i64>(1)? as u64,
                live_bytes: r.get::<_, i64>(2)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn stats(&self) -> Result<MetaStats, MetaError> {
        let (segments, stored_bytes, live_bytes): (i64, i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(size_bytes), 0), coalesce(sum(live_bytes), 0) FROM segments",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let extents: i64 = self
            .conn
            .query_row("SELECT count(*) FROM extents", [], |r| r.get(0))?;
        let (client, put): (i64, i64) = self
            .conn
            .query_row(
                "SELECT client_bytes_written, segment_bytes_put FROM volume",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, 0));
        Ok(MetaStats {
            segments: segments as u64,
            extents: extents as u64,
            stored_bytes: stored_bytes as u64,
            live_bytes: live_bytes as u64,
            client_bytes_written: client as u64,
            applied_seq: self.applied_seq()?,
            segment_bytes_put: put as u64,
            dead_extents: self.dead_rows()?,
        })
    }
}

/// Upgrades a database written by an older revision of the schema in one
/// transaction (a no-op on a new or current database): adds the columns
/// of the versioned map and turns copied checkpoints into dead rows that
/// only their own version sees.
fn upgrade(conn: &Connection) -> Result<(), MetaError> {
    let revision: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let has_table = |t: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [t],
            |r| r.get(0),
        )
    };
    if revision >= schema::SCHEMA_REVISION || !has_table("extents")? {
        return Ok(());
    }
    let versioned_map = revision >= 2;
    let tx = conn.unchecked_transaction()?;
    for (table, column, def) in schema::ADDED_COLUMNS {
        if !has_table(table)? {
            continue;
        }
        let present: bool = tx.query_row(
            &format!("SELECT count(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get(0),
        )?;
        if !present {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {def};"))?;
        }
    }
    tx.execute_batch(schema::SCHEMA)?;
    if versioned_map {
        // Revision 2 to 3 only adds the chain's columns (above).
        tx.commit()?;
        return Ok(());
    }
    tx.execute_batch(
        "UPDATE checkpoints SET version = id;
         UPDATE volume SET map_version = coalesce((SELECT max(id) FROM checkpoints), 0) + 1;
         UPDATE extents SET born = (SELECT map_version FROM volume);",
    )?;
    if has_table("checkpoint_extents")? {
        tx.execute_batch(
            "INSERT INTO dead_extents (lba, blocks, seg, piece_off, piece_blocks, skip_blocks, crc, born, died)
             SELECT lba, blocks, seg, piece_off, piece_blocks, skip_blocks, crc, ckpt, ckpt + 1
             FROM checkpoint_extents;
             DROP TABLE checkpoint_extents;",
        )?;
    }
    tx.commit()?;
    tracing::info!("metadata database upgraded to the versioned map (schema revision 2)");
    Ok(())
}

#[cfg(test)]
mod checkpoint_tests;
#[cfg(test)]
mod tests;
