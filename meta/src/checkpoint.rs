//! Checkpoints: named versions of the extent map (schema.rs explains the
//! versioned map). Taking one records the live map's version and bumps it:
//! O(1), whatever the map's size. Restore makes the live map equal a
//! checkpoint's by undoing only what changed since it: O(rows changed).
//! Nothing here moves data: rows point into immutable segments, which GC
//! keeps while any row, live or dead, references them. The engine ships
//! every change to the replica before it reports it done (segments cannot
//! rebuild them). Design: docs/design/0004-checkpoints.md.

use rusqlite::{params, OptionalExtension};

use crate::map::{row_to_extent, Extent, EXTENT_COLS};
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
    /// Rows in its map.
    pub extents: u64,
    /// The map version it froze.
    pub version: u64,
    /// Data bytes that neither the live map nor another checkpoint
    /// references: what deleting it frees (once GC compacts or drops the
    /// segments that hold them).
    pub unique_bytes: u64,
}

fn check_name(name: &str) -> Result<(), MetaError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(MetaError::Checkpoint(format!(
            "invalid checkpoint name {name:?}: 1 to 128 printable characters, no '/'"
        )));
    }
    Ok(())
}

impl MetaDb {
    /// Freezes the live map as checkpoint `name` (auto-named `v<map version>`:
    /// `v1`, `v2`… when None). Refuses a name that exists.
    pub fn create_checkpoint(
        &mut self,
        name: Option<&str>,
        created_unix: i64,
    ) -> Result<CheckpointRow, MetaError> {
        let tx = self.conn.transaction()?;
        let taken = |n: &str| -> rusqlite::Result<bool> {
            tx.query_row(
                "SELECT count(*) > 0 FROM checkpoints WHERE name = ?1",
                [n],
                |r| r.get(0),
            )
        };
        let (client, applied, version): (i64, i64, i64) = tx.query_row(
            "SELECT client_bytes_written, applied_seq, map_version FROM volume",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                // Named after the map version it freezes, which only ever
                // grows: a deleted checkpoint's name is never handed out
                // again, so "v2" means one state for the volume's life.
                let mut n = version;
                loop {
                    let candidate = format!("v{n}");
                    if !taken(&candidate)? {
                        break candidate;
                    }
                    n += 1;
                }
            }
        };
        check_name(&name)?;
        if taken(&name)? {
            return Err(MetaError::Checkpoint(format!(
                "a checkpoint named {name:?} exists already: pick another name or delete it first"
            )));
        }
        // count(*) walks the smallest index: milliseconds per million rows.
        let extents: i64 = tx.query_row("SELECT count(*) FROM extents", [], |r| r.get(0))?;
        tx.execute(
            "INSERT INTO checkpoints (name, created_unix, client_bytes_written, applied_seq, extents, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, created_unix, client, applied, extents, version],
        )?;
        tx.execute("UPDATE volume SET map_version = map_version + 1", [])?;
        tx.commit()?;
        Ok(CheckpointRow {
            name,
            created_unix,
            client_bytes_written: client as u64,
            applied_seq: applied as u64,
            extents: extents as u64,
            version: version as u64,
            unique_bytes: 0,
        })
    }

    /// Every checkpoint, oldest first, with the bytes each alone keeps.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointRow>, MetaError> {
        let mut st = self.conn.prepare(
            "SELECT name, created_unix, client_bytes_written, applied_seq, extents, version
             FROM checkpoints ORDER BY version",
        )?;
        let rows = st.query_map([], |r| {
            Ok(CheckpointRow {
                name: r.get(0)?,
                created_unix: r.get(1)?,
                client_bytes_written: r.get::<_, i64>(2)? as u64,
                applied_seq: r.get::<_, i64>(3)? as u64,
                extents: r.get::<_, i64>(4)? as u64,
                version: r.get::<_, i64>(5)? as u64,
                unique_bytes: 0,
            })
        })?;
        let mut rows: Vec<CheckpointRow> = rows.collect::<Result<_, _>>()?;
        // A dead row is kept by the checkpoints whose versions fall in
        // [born, died); it is one checkpoint's alone when only one does.
        let mut st = self.conn.prepare(
            "SELECT c.version, sum(d.blocks) FROM dead_extents d
             JOIN checkpoints c ON c.version >= d.born AND c.version < d.died
             WHERE (SELECT count(*) FROM checkpoints o
                    WHERE o.version >= d.born AND o.version < d.died) = 1
             GROUP BY c.version",
        )?;
        let mut q = st.query([])?;
        while let Some(r) = q.next()? {
            let version = r.get::<_, i64>(0)? as u64;
            let blocks = r.get::<_, i64>(1)? as u64;
            if let Some(c) = rows.iter_mut().find(|c| c.version == version) {
                c.unique_bytes = blocks * self.block_size;
            }
        }
        Ok(rows)
    }

    fn checkpoint_version(&self, name: &str) -> Result<u64, MetaError> {
        self.conn
            .query_row(
                "SELECT version FROM checkpoints WHERE name = ?1",
                [name],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|v| v as u64)
            .ok_or_else(|| {
                MetaError::Checkpoint(format!(
                    "no checkpoint named {name:?} (spritedisk checkpoints URL lists them)"
                ))
            })
    }

    fn checkpoint_row(&self, name: &str) -> Result<CheckpointRow, MetaError> {
        self.checkpoints()?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| MetaError::Checkpoint(format!("no checkpoint named {name:?}")))
    }

    /// Makes the live map equal checkpoint `name`'s: the rows born since it
    /// leave (kept as dead rows if a later checkpoint sees them), the rows
    /// that died since it come back; per-segment live bytes follow.
    pub fn restore_checkpoint(&mut self, name: &str) -> Result<CheckpointRow, MetaError> {
        let v = self.checkpoint_version(name)? as i64;
        let bs = self.block_size as i64;
        // Every statement walks only the rows changed since the checkpoint
        // (INDEXED BY: the planner would rather scan the whole map by
        // segment to group without sorting).
        let tx = self.conn.transaction()?;
        let versions = crate::map::Versions::read(&tx)?;
        let (cur, newest) = (versions.current as i64, versions.newest_checkpoint as i64);
        tx.execute(
            "UPDATE segments SET live_bytes = live_bytes - gone.bytes
             FROM (SELECT seg, sum(blocks) * ?2 AS bytes FROM extents INDEXED BY extents_by_born
                   WHERE born > ?1 GROUP BY seg) AS gone
             WHERE segments.seq = gone.seg",
            params![v, bs],
        )?;
        tx.execute(
            &format!(
                "INSERT INTO dead_extents ({EXTENT_COLS}, born, died)
                 SELECT {EXTENT_COLS}, born, ?2 FROM extents WHERE born > ?1 AND born <= ?3"
            ),
            params![v, cur, newest],
        )?;
        tx.execute("DELETE FROM extents WHERE born > ?1", [v])?;
        tx.execute(
            "UPDATE segments SET live_bytes = live_bytes + back.bytes
             FROM (SELECT seg, sum(blocks) * ?2 AS bytes FROM dead_extents INDEXED BY dead_extents_by_died
                   WHERE died > ?1 AND born <= ?1 GROUP BY seg) AS back
             WHERE segments.seq = back.seg",
            params![v, bs],
        )?;
        // A dead row no checkpoint saw dead (none has a version in [died,
        // now)) simply comes back to life as it was; the others are born
        // again as copies, so the checkpoints that saw them dead still do.
        let never_seen_dead = "died > ?1 AND born <= ?1 AND NOT EXISTS (
                 SELECT 1 FROM checkpoints c WHERE c.version >= dead_extents.died AND c.version < ?2)";
        tx.execute(
            &format!(
                "INSERT INTO extents ({EXTENT_COLS}, born)
                 SELECT {EXTENT_COLS}, born FROM dead_extents WHERE {never_seen_dead}"
            ),
            params![v, cur],
        )?;
        tx.execute(
            &format!("DELETE FROM dead_extents WHERE {never_seen_dead}"),
            params![v, cur],
        )?;
        tx.execute(
            &format!(
                "INSERT INTO extents ({EXTENT_COLS}, born)
                 SELECT {EXTENT_COLS}, ?2 FROM dead_extents WHERE died > ?1 AND born <= ?1"
            ),
            params![v, cur],
        )?;
        tx.commit()?;
        self.checkpoint_row(name)
    }

    /// Deletes checkpoint `name` and the dead rows no other checkpoint sees.
    pub fn delete_checkpoint(&mut self, name: &str) -> Result<(), MetaError> {
        let v = self.checkpoint_version(name)? as i64;
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM checkpoints WHERE version = ?1", [v])?;
        tx.execute(
            "DELETE FROM dead_extents WHERE died > ?1 AND born <= ?1 AND NOT EXISTS (
                 SELECT 1 FROM checkpoints c
                 WHERE c.version >= dead_extents.born AND c.version < dead_extents.died)",
            [v],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Rows kept only for checkpoints (GC debt until they are deleted).
    pub fn dead_rows(&self) -> Result<u64, MetaError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM dead_extents", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Checkpoint `name`'s map in LBA order (what a fork starts from).
    pub fn checkpoint_extents(&self, name: &str) -> Result<Vec<Extent>, MetaError> {
        let v = self.checkpoint_version(name)? as i64;
        let mut st = self.conn.prepare(&format!(
            "SELECT {EXTENT_COLS} FROM extents WHERE born <= ?1
             UNION ALL
             SELECT {EXTENT_COLS} FROM dead_extents WHERE died > ?1 AND born <= ?1
             ORDER BY lba"
        ))?;
        let rows = st.query_map([v], row_to_extent)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
