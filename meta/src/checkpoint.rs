//! Checkpoints: named, immutable copies of the extent map. A checkpoint
//! copies the map's rows (never data: the rows point into immutable
//! segments, which are kept while any map references them); restore makes
//! the live map a copy of a checkpoint's. Both are one SQLite statement over
//! the map, O(extents) — measured against map size in the README — and the
//! engine ships them to the replica before it reports them done (they cannot
//! be rebuilt from segments). Design: docs/design/0004-checkpoints.md.

use rusqlite::{params, OptionalExtension};

use crate::{MetaDb, MetaError};

/// One checkpoint, as `checkpoints` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub name: String,
    pub created_unix: i64,
    /// Bytes clients had written (all time) when it was taken.
    pub client_bytes_written: u64,
    /// The last segment applied when it was taken.
    pub applied_seq: u64,
    pub extents: u64,
}

const COLS: &str = "lba, blocks, seg, piece_off, piece_blocks, skip_blocks, crc";

impl MetaDb {
    /// Copies the live map as checkpoint `name` (auto-named `v1`, `v2`… when
    /// None). Refuses a name that exists.
    pub fn create_checkpoint(
        &mut self,
        name: Option<&str>,
        created_unix: i64,
    ) -> Result<CheckpointRow, MetaError> {
        let tx = self.conn.transaction()?;
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                let mut n: i64 =
                    tx.query_row("SELECT count(*) FROM checkpoints", [], |r| r.get(0))?;
                loop {
                    n += 1;
                    let candidate = format!("v{n}");
                    let taken: bool = tx.query_row(
                        "SELECT count(*) > 0 FROM checkpoints WHERE name = ?1",
                        [&candidate],
                        |r| r.get(0),
                    )?;
                    if !taken {
                        break candidate;
                    }
                }
            }
        };
        if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c == '/') {
            return Err(MetaError::Checkpoint(format!(
                "invalid checkpoint name {name:?}: 1 to 128 printable characters, no '/'"
            )));
        }
        let exists: bool = tx.query_row(
            "SELECT count(*) > 0 FROM checkpoints WHERE name = ?1",
            [&name],
            |r| r.get(0),
        )?;
        if exists {
            return Err(MetaError::Checkpoint(format!(
                "a checkpoint named {name:?} exists already: pick another name or delete it first"
            )));
        }
        let (client, applied): (i64, i64) = tx.query_row(
            "SELECT client_bytes_written, applied_seq FROM volume",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        tx.execute(
            "INSERT INTO checkpoints (name, created_unix, client_bytes_written, applied_seq, extents)
             VALUES (?1, ?2, ?3, ?4, 0)",
            params![name, created_unix, client, applied],
        )?;
        let id = tx.last_insert_rowid();
        let extents = tx.execute(
            &format!(
                "INSERT INTO checkpoint_extents (ckpt, {COLS}) SELECT ?1, {COLS} FROM extents"
            ),
            [id],
        )? as u64;
        tx.execute(
            "UPDATE checkpoints SET extents = ?1 WHERE id = ?2",
            params![extents as i64, id],
        )?;
        tx.commit()?;
        Ok(CheckpointRow {
            name,
            created_unix,
            client_bytes_written: client as u64,
            applied_seq: applied as u64,
            extents,
        })
    }

    /// Every checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointRow>, MetaError> {
        let mut st = self.conn.prepare(
            "SELECT name, created_unix, client_bytes_written, applied_seq, extents
             FROM checkpoints ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(CheckpointRow {
                name: r.get(0)?,
                created_unix: r.get(1)?,
                client_bytes_written: r.get::<_, i64>(2)? as u64,
                applied_seq: r.get::<_, i64>(3)? as u64,
                extents: r.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn checkpoint_id(&self, name: &str) -> Result<i64, MetaError> {
        self.conn
            .query_row("SELECT id FROM checkpoints WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| {
                MetaError::Checkpoint(format!(
                    "no checkpoint named {name:?} (spritedisk checkpoints URL lists them)"
                ))
            })
    }

    /// Makes the live map a copy of checkpoint `name`'s, and the per-segment
    /// live byte counts follow it.
    pub fn restore_checkpoint(&mut self, name: &str) -> Result<CheckpointRow, MetaError> {
        let id = self.checkpoint_id(name)?;
        let bs = self.block_size as i64;
        let tx = self.conn.transaction()?;
        // Rebuilding the by-segment index once at the end beats keeping it
        // up to date row by row (the whole map is replaced).
        tx.execute("DROP INDEX IF EXISTS extents_by_seg", [])?;
        tx.execute("DELETE FROM extents", [])?;
        tx.execute(
            &format!("INSERT INTO extents ({COLS}) SELECT {COLS} FROM checkpoint_extents WHERE ckpt = ?1"),
            [id],
        )?;
        tx.execute_batch(crate::schema::EXTENTS_BY_SEG)?;
        tx.execute(
            "UPDATE segments SET live_bytes = coalesce(
                 (SELECT sum(blocks) * ?1 FROM extents WHERE seg = segments.seq), 0)",
            [bs],
        )?;
        tx.commit()?;
        Ok(self
            .checkpoints()?
            .into_iter()
            .find(|c| c.name == name)
            .expect("the checkpoint exists"))
    }

    pub fn delete_checkpoint(&mut self, name: &str) -> Result<(), MetaError> {
        let id = self.checkpoint_id(name)?;
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM checkpoint_extents WHERE ckpt = ?1", [id])?;
        tx.execute("DELETE FROM checkpoints WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }
}
