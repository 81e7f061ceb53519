//! The metadata database as a Litestream 0.5 replica: every committed change
//! becomes an LTX file, so the real `litestream restore` rebuilds the
//! database, and so does [`restore_image`] at attach on a fresh machine.
//!
//! TXIDs are ours and contiguous from 1: one TXID per shipped batch (all the
//! SQLite transactions committed since the previous one). A batch is the
//! pages the WAL holds since the last shipped position (`wal.rs`), newest
//! version of each, as a level-0 file. A snapshot (every page, TXIDs 1..N,
//! level 9) is written at attach and every [`SNAPSHOT_EVERY_FILES`] batches,
//! so a restore needs one snapshot plus a bounded number of level-0 files.
//!
//! This module only builds files and plans restores; the volume engine
//! stores them (the arrows point from the engine to meta and store).

use std::path::PathBuf;

use crate::ltx::{self, LtxHeader, ReplicaLayout, L0, SNAPSHOT_LEVEL};
use crate::wal::{self, WalPos};
use crate::{MetaDb, MetaError};

/// Level-0 files between snapshots; bounds how many files a restore reads.
pub const SNAPSHOT_EVERY_FILES: u64 = 128;

impl Replica {
    /// Whether the next file should be a snapshot: after
    /// [`SNAPSHOT_EVERY_FILES`] files, or once the level-0 files since the
    /// last one outweigh the database (so a restore reads at most about
    /// twice the database; measured: a million-extent map whose changes
    /// were shipped as 40 large files took 1.7 s to restore).
    pub fn snapshot_due(&self) -> bool {
        self.l0_since_snapshot >= SNAPSHOT_EVERY_FILES
            || (self.db_bytes > 0 && self.l0_bytes_since_snapshot > self.db_bytes)
    }
}

/// An LTX file to store under the replica root.
#[derive(Debug, Clone)]
pub struct LtxObject {
    /// Key below the replica root, in the layout `litestream` reads.
    pub key: String,
    pub level: u32,
    pub min_txid: u64,
    pub max_txid: u64,
    pub bytes: Vec<u8>,
}

/// Where shipping stands.
#[derive(Debug, Clone)]
pub struct Replica {
    pub layout: ReplicaLayout,
    /// TXID of the next file.
    pub next_txid: u64,
    /// Level-0 files since the last snapshot, and their bytes.
    pub l0_since_snapshot: u64,
    pub l0_bytes_since_snapshot: u64,
    /// The database's size at the last file built.
    pub db_bytes: u64,
    wal: WalPos,
}

impl Replica {
    /// Continues a replica whose newest file ends at `max_txid` (0: none yet).
    pub fn new(layout: ReplicaLayout, max_txid: u64) -> Replica {
        Replica {
            layout,
            next_txid: max_txid + 1,
            l0_since_snapshot: 0,
            l0_bytes_since_snapshot: 0,
            db_bytes: 0,
            wal: WalPos::default(),
        }
    }

    fn object(&self, level: u32, min: u64, max: u64, bytes: Vec<u8>) -> LtxObject {
        LtxObject {
            key: format!(
                "{}{}",
                self.layout.level_dir(level),
                ReplicaLayout::file_name(min, max)
            ),
            level,
            min_txid: min,
            max_txid: max,
            bytes,
        }
    }
}

impl MetaDb {
    fn wal_path(&self) -> Result<PathBuf, MetaError> {
        match self.conn.path() {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(format!("{p}-wal"))),
            _ => Err(MetaError::Ltx(
                "replication needs an on-disk database".into(),
            )),
        }
    }

    /// Stops SQLite from checkpointing on its own: the log must keep every
    /// frame until the replicator has read it.
    pub fn hold_wal_for_replication(&self) -> Result<(), MetaError> {
        self.wal_path()?;
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    /// Folds the log into the database once its frames are shipped (best
    /// effort: a reader in another process may keep it from truncating).
    fn checkpoint_shipped(&self) -> Result<(), MetaError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// A snapshot of the whole database as TXIDs 1..=next (level 9).
    pub fn replica_snapshot(
        &self,
        rep: &mut Replica,
        timestamp_ms: i64,
    ) -> Result<LtxObject, MetaError> {
        let wal = self.wal_path()?;
        let image = self.conn.serialize(rusqlite::DatabaseName::Main)?;
        // Everything in the log so far is in the image: skip past it.
        rep.wal = wal::read_committed(&wal, rep.wal)
            .map_err(|e| MetaError::Ltx(format!("reading {}: {e}", wal.display())))?
            .pos;
        let page_size: u32 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let commit = (image.len() / page_size as usize) as u32;
        let lock = ltx::lock_pgno(page_size);
        let txid = rep.next_txid;
        let header = LtxHeader {
            page_size,
            commit,
            min_txid: 1,
            max_txid: txid,
            timestamp_ms,
        };
        let bytes = ltx::encode(
            &header,
            image
                .chunks(page_size as usize)
                .enumerate()
                .map(|(i, p)| (i as u32 + 1, p))
                .filter(|(pgno, _)| *pgno != lock),
        )?;
        drop(image);
        self.checkpoint_shipped()?;
        rep.next_txid += 1;
        rep.l0_since_snapshot = 0;
        rep.l0_bytes_since_snapshot = 0;
        rep.db_bytes = commit as u64 * page_size as u64;
        Ok(rep.object(SNAPSHOT_LEVEL, 1, txid, bytes))
    }

    /// The changes committed since the last file, as the next level-0 file;
    /// None when there are none.
    pub fn replica_changes(
        &self,
        rep: &mut Replica,
        timestamp_ms: i64,
    ) -> Result<Option<LtxObject>, MetaError> {
        let wal = self.wal_path()?;
        let ch = wal::read_committed(&wal, rep.wal)
            .map_err(|e| MetaError::Ltx(format!("reading {}: {e}", wal.display())))?;
        let Some(commit) = ch.commit else {
            rep.wal = ch.pos;
            return Ok(None);
        };
        let txid = rep.next_txid;
        let header = LtxHeader {
            page_size: ch.page_size,
            commit,
            min_txid: txid,
            max_txid: txid,
            timestamp_ms,
        };
        let bytes = ltx::encode(&header, ch.pages.iter().map(|(&p, d)| (p, &d[..])))?;
        rep.wal = ch.pos;
        self.checkpoint_shipped()?;
        rep.next_txid += 1;
        rep.l0_since_snapshot += 1;
        rep.l0_bytes_since_snapshot += bytes.len() as u64;
        rep.db_bytes = commit as u64 * ch.page_size as u64;
        Ok(Some(rep.object(L0, txid, txid, bytes)))
    }
}

/// A file of a replica listing: level and TXID range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedLtx {
    pub level: u32,
    pub min_txid: u64,
    pub max_txid: u64,
}

/// The files a restore reads, in order: the newest snapshot, then the
/// level-0 files that continue it without a gap. A gap ends the plan and is
/// reported (with the plan up to it, which is a consistent older state).
pub fn plan_restore(listing: &[ListedLtx]) -> (Vec<ListedLtx>, Option<String>) {
    let Some(snap) = listing
        .iter()
        .filter(|f| f.level == SNAPSHOT_LEVEL && f.min_txid == 1)
        .max_by_key(|f| f.max_txid)
    else {
        return (vec![], None);
    };
    let mut plan = vec![*snap];
    let mut l0: Vec<&ListedLtx> = listing
        .iter()
        .filter(|f| f.level == L0 && f.max_txid > snap.max_txid)
        .collect();
    l0.sort_by_key(|f| f.min_txid);
    let mut have = snap.max_txid;
    for f in l0 {
        if f.min_txid != have + 1 {
            return (
                plan,
                Some(format!(
                    "non-contiguous LTX files: have up to TXID {have} but the next file, {}, starts at {}",
                    ReplicaLayout::file_name(f.min_txid, f.max_txid),
                    f.min_txid
                )),
            );
        }
        plan.push(*f);
        have = f.max_txid;
    }
    (plan, None)
}

/// Rebuilds a database image by applying decoded files in plan order.
pub fn restore_image(files: &[ltx::LtxFile]) -> Result<Vec<u8>, MetaError> {
    let first = files
        .first()
        .ok_or_else(|| MetaError::Ltx("nothing to restore".into()))?;
    if !first.header.is_snapshot() {
        return Err(MetaError::Ltx("a restore starts from a snapshot".into()));
    }
    let ps = first.header.page_size as usize;
    let mut image: Vec<u8> = vec![];
    for f in files {
        if f.header.page_size as usize != ps {
            return Err(MetaError::Ltx("page size changed between files".into()));
        }
        image.resize(f.header.commit as usize * ps, 0);
        for (&pgno, page) in &f.pages {
            let at = (pgno as usize - 1) * ps;
            image[at..at + ps].copy_from_slice(page);
        }
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(level: u32, min_txid: u64, max_txid: u64) -> ListedLtx {
        ListedLtx {
            level,
            min_txid,
            max_txid,
        }
    }

    #[test]
    fn a_restore_starts_at_the_newest_snapshot_and_stops_at_a_gap() {
        let listing = [
            f(9, 1, 4),
            f(0, 3, 3),
            f(0, 4, 4),
            f(9, 1, 6),
            f(0, 7, 7),
            f(0, 8, 8),
            f(0, 10, 10),
        ];
        let (plan, gap) = plan_restore(&listing);
        assert_eq!(plan, [f(9, 1, 6), f(0, 7, 7), f(0, 8, 8)]);
        let gap = gap.expect("a gap");
        assert!(
            gap.contains("000000000000000a-000000000000000a.ltx") && gap.contains("up to TXID 8"),
            "{gap}"
        );
        assert_eq!(
            plan_restore(&[f(0, 1, 1)]),
            (vec![], None),
            "no snapshot: nothing to restore"
        );
    }

    #[test]
    fn wal_changes_round_trip_through_ltx_into_an_identical_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = MetaDb::open(&dir.path().join("m.db")).unwrap();
        db.hold_wal_for_replication().unwrap();
        let mut rep = Replica::new(ReplicaLayout::File, 0);
        let snap = db.replica_snapshot(&mut rep, 0).unwrap();
        db.conn
            .execute_batch(
                "CREATE TABLE t (x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (zeroblob(20000));",
            )
            .unwrap();
        let l0 = db.replica_changes(&mut rep, 0).unwrap().expect("changes");
        assert!(
            db.replica_changes(&mut rep, 0).unwrap().is_none(),
            "nothing new"
        );
        assert_eq!((snap.max_txid, l0.min_txid, l0.max_txid), (1, 2, 2));
        assert_eq!(l0.key, "ltx/0/0000000000000002-0000000000000002.ltx");
        let files = [
            ltx::decode("snap", &snap.bytes).unwrap(),
            ltx::decode("l0", &l0.bytes).unwrap(),
        ];
        let image = restore_image(&files).unwrap();
        let ours = db.conn.serialize(rusqlite::DatabaseName::Main).unwrap();
        assert!(
            image[..] == ours[..],
            "the restored image equals the database"
        );
    }
}
