//! Garbage collection and compaction (docs/design/0005-gc-and-compaction.md).
//!
//! A segment may be deleted only when no map references any byte of it:
//! not the live map, not any checkpoint (their rows are in the database),
//! not any fork (a fork pins the checkpoint it came from, so its rows are a
//! subset of that checkpoint's). Compaction copies the blocks that rows map
//! out of mostly-dead segments into a new segment (each row's blocks become
//! a piece of their own, so a partly overwritten piece leaves its dead
//! blocks behind), then points the rows at the copies; the old segments are
//! then unreferenced like any other.
//!
//! The order is what makes a crash at any step lose nothing:
//! 1. the copy segment goes through the upload pipeline like a write and is
//!    applied as a no-op (a crash before step 2 leaves it unreferenced:
//!    garbage for the next run);
//! 2. the rows move to the copies in one transaction;
//! 3. unreferenced segments leave the `segments` table;
//! 4. the metadata is shipped to the replica and the replica position is
//!    marked as required (an attach from an older replica plus segments
//!    would reference what step 5 deletes, so it is refused instead);
//! 5. only then are the objects deleted; an object whose deletion was
//!    interrupted is an orphan (in the store, below the applied segment, not
//!    in the table) that the next run deletes.
//!
//! GC never races the writer: writes only drop references, a row is moved
//! only if it is still exactly the row that was copied (a write that cut
//! it in between leaves it on the old segment, which then stays), and
//! everything that can add references to old segments (restore) holds the
//! apply lock, as steps 2–3 do. The newest applied segment is never deleted (roll-forward
//! starts from it).

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spritedisk_meta::{RowMove, RowRef};

use crate::engine::Volume;
use crate::retry::retry_read;
use crate::segment::{parse_segment_key, segment_key};
use crate::VolumeError;

/// What `gc` may do.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report only: delete and copy nothing.
    pub dry_run: bool,
    /// Compact a segment when less than this share of it (percent) is
    /// referenced; 0 turns compaction off.
    pub compact_below_percent: u64,
}

impl GcReport {
    /// Counts what a run deletes: `doomed` (sequence number, size) left the
    /// map, `orphans` were never in it.
    fn count_deletions(&mut self, doomed: &[(u64, u64)], orphans: &[u64]) {
        self.records_deleted = doomed.iter().filter(|d| is_record(d.1)).count() as u64;
        self.segments_deleted = doomed.len() as u64 - self.records_deleted;
        self.bytes_deleted = doomed.iter().map(|d| d.1).sum();
        self.orphans_deleted = orphans.len() as u64;
    }
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            compact_below_percent: 50,
        }
    }
}

/// What a run did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Segments whose referenced pieces were copied.
    pub segments_compacted: u64,
    /// Bytes of pieces copied (PUT again).
    pub bytes_copied: u64,
    /// Segment objects with data deleted (no map referenced them).
    pub segments_deleted: u64,
    pub bytes_deleted: u64,
    /// Empty records deleted: barriers behind metadata changes (docs/design/0009).
    #[serde(default)]
    pub records_deleted: u64,
    /// Objects left over by an interrupted earlier run, deleted.
    pub orphans_deleted: u64,
    /// Segments with data kept, and the bytes of every object kept, after
    /// the run (fences and the newest record are always kept).
    pub segments_kept: u64,
    pub bytes_kept: u64,
}

/// Whether an object of this size is an empty record (a fence or a barrier,
/// docs/design/0009) rather than a segment carrying data.
fn is_record(size_bytes: u64) -> bool {
    size_bytes <= crate::segment::HEADER_BYTES as u64
}

/// Copy segments are cut at this many bytes of pieces.
const COPY_SEGMENT_BYTES_MAX: u64 = 32 << 20;

impl Volume {
    /// Deletes the segments no map references, after compacting those that
    /// are mostly unreferenced. Durable (metadata shipped) before it deletes
    /// anything; safe to interrupt at any point and run again.
    pub async fn gc(&self, opts: &GcOptions) -> Result<GcReport, VolumeError> {
        self.require_replica()?;
        self.flush_to_store().await?;
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        // The forks compaction knows about (it leaves what they read alone).
        let pinned_at_start: BTreeSet<String> = crate::fork::fork_pins(&self.inner.store)
            .await?
            .into_iter()
            .map(|p| p.child_id)
            .collect();
        if opts.compact_below_percent > 0 {
            self.compact(opts, &mut report).await?;
        }
        self.delete_unreferenced(opts.dry_run, &pinned_at_start, &mut report)
            .await?;
        let kept = self.inner.meta.lock().segments()?;
        report.segments_kept = kept.iter().filter(|s| !is_record(s.size_bytes)).count() as u64;
        report.bytes_kept = kept.iter().map(|s| s.size_bytes).sum();
        tracing::info!(?report, "gc done");
        Ok(report)
    }

    /// Segments that GC may touch: applied, not the newest applied (roll-forward
    /// starts from it), and this volume's own (not a fork parent's).
    fn gc_range(&self) -> Result<(u64, u64), VolumeError> {
        let applied = self.inner.state.lock().unwrap().applied_seq;
        let first_own = self.inner.meta.lock().foreign_seq_max()? + 1;
        Ok((first_own, applied))
    }

    /// The newest segment any fork of this volume may read (fork.rs),
    /// which compaction leaves alone: a fork reads the original pieces.
    /// (What deletion leaves alone: [`Volume::fork_keeps`].)
    async fn fork_holds(&self) -> Result<u64, VolumeError> {
        let pins = crate::fork::fork_pins(&self.inner.store).await?;
        Ok(pins.iter().map(|p| p.seq_max).max().unwrap_or(0))
    }

    async fn compact(&self, opts: &GcOptions, report: &mut GcReport) -> Result<(), VolumeError> {
        let (first, applied) = self.gc_range()?;
        let first = first.max(self.fork_holds().await?.saturating_add(1));
        let victims: Vec<u64> = self
            .inner
            .meta
            .lock()
            .segment_use()?
            .into_iter()
            .filter(|u| u.seq >= first && u.seq < applied && u.referenced_bytes > 0)
            .filter(|u| u.referenced_bytes * 100 < u.size_bytes * opts.compact_below_percent)
            .map(|u| u.seq)
            .collect();
        let mut batch: Vec<(RowRef, Bytes)> = vec![];
        let mut batch_bytes = 0;
        let bs = self.inner.block_size;
        for seg in victims {
            let rows = self.inner.meta.lock().rows_in_segment(seg)?;
            report.segments_compacted += 1;
            // Each piece is read (and verified) once for all its rows.
            let mut piece: Option<(u64, Bytes)> = None;
            for row in rows {
                let e = row.extent;
                report.bytes_copied += e.blocks * bs;
                if opts.dry_run {
                    continue;
                }
                let p = e.piece;
                let data = match &piece {
                    Some((off, d)) if *off == p.piece_off => d.clone(),
                    _ => {
                        let len = p.piece_blocks as u64 * bs;
                        let d = match self.inner.cache.get(seg, p.piece_off, len, p.crc) {
                            Some(d) => d,
                            None => self.inner.fetch_piece(seg, p, false).await?,
                        };
                        piece = Some((p.piece_off, d.clone()));
                        d
                    }
                };
                // Only the blocks the row maps: what a partly overwritten
                // piece no longer needs is left behind.
                let from = (e.skip_blocks * bs) as usize;
                batch.push((row, data.slice(from..from + (e.blocks * bs) as usize)));
                batch_bytes += e.blocks * bs;
                if batch_bytes >= COPY_SEGMENT_BYTES_MAX {
                    self.commit_copies(std::mem::take(&mut batch)).await?;
                    batch_bytes = 0;
                }
            }
        }
        if !batch.is_empty() {
            self.commit_copies(batch).await?;
        }
        Ok(())
    }

    /// Writes one copy segment and, once it is applied, moves the rows to it.
    async fn commit_copies(&self, batch: Vec<(RowRef, Bytes)>) -> Result<(), VolumeError> {
        let pieces: Vec<(u64, Bytes)> = batch
            .iter()
            .map(|(r, d)| (r.extent.seg, d.clone()))
            .collect();
        let (seq, refs) = self.inner.seal_copies(&pieces);
        self.inner.wait_applied(seq).await?;
        let moves: Vec<RowMove> = batch
            .iter()
            .zip(&refs)
            .map(|((row, _), new)| RowMove {
                row: *row,
                new_piece: *new,
            })
            .collect();
        let _applier = self.inner.apply_lock.lock().await;
        let inner = self.inner.clone();
        let rows = spritedisk_store::blocking::unblock(move || {
            inner.meta.lock().relocate_rows(seq, &moves)
        })
        .await
        .map_err(|e| VolumeError::Stopped(format!("relocate task: {e}")))??;
        tracing::info!(
            seq,
            copies = refs.len(),
            rows,
            "compaction: rows moved to the copies"
        );
        Ok(())
    }

    /// What deletion must leave alone for forks, read once our change is
    /// durable (D1 of the 5bc5be0 review: pins read only when compaction
    /// started miss a fork made meanwhile, which read the checkpoint's rows
    /// from the replica before our relocation was shipped). A fork writes
    /// its pin before it reads the replica, so one whose pin is not here yet
    /// reads our shipped change. Returns the newest segment no unreferenced
    /// segment at or below may be deleted (a fork made during this run, one
    /// not finished, or one whose checkpoint is gone may read any of them),
    /// and the newest no orphan at or below may be (any fork's: an orphan
    /// may be a segment a fork still reads that an earlier run kept).
    async fn fork_keeps(
        &self,
        pinned_at_start: &BTreeSet<String>,
    ) -> Result<(u64, u64), VolumeError> {
        let checkpoints = self.checkpoints()?;
        let mut unreferenced = 0;
        let mut orphans = 0;
        for p in crate::fork::fork_pins(&self.inner.store).await? {
            orphans = orphans.max(p.seq_max);
            let based = p.base_among(&checkpoints);
            if !based {
                tracing::warn!(
                    fork = p.child_url,
                    checkpoint = p.checkpoint,
                    "a fork's base checkpoint is gone: keeping every segment it may read"
                );
            }
            if p.seq_max == u64::MAX || !pinned_at_start.contains(&p.child_id) || !based {
                unreferenced = unreferenced.max(p.seq_max);
            }
        }
        Ok((unreferenced, orphans))
    }

    async fn delete_unreferenced(
        &self,
        dry_run: bool,
        pinned_at_start: &BTreeSet<String>,
        report: &mut GcReport,
    ) -> Result<(), VolumeError> {
        let (first, applied) = self.gc_range()?;
        let doomed: Vec<(u64, u64)> = {
            // Held while choosing and forgetting: a restore (which brings
            // references back) cannot run in between.
            let _applier = self.inner.apply_lock.lock().await;
            let mut meta = self.inner.meta.lock();
            let doomed: Vec<(u64, u64)> = meta
                .segment_use()?
                .into_iter()
                .filter(|u| u.seq >= first && u.seq < applied && u.referenced_bytes == 0)
                .map(|u| (u.seq, u.size_bytes))
                .collect();
            if !dry_run {
                let seqs: Vec<u64> = doomed.iter().map(|d| d.0).collect();
                meta.forget_segments(&seqs)?;
            }
            doomed
        };
        let known: BTreeSet<u64> = self
            .inner
            .meta
            .lock()
            .segments()?
            .into_iter()
            .map(|s| s.seq)
            .collect();
        let listed = retry_read("segments/", || self.inner.store.list("segments/")).await?;
        let orphans: Vec<u64> = listed
            .iter()
            .filter_map(|m| parse_segment_key(&m.key))
            .filter(|&s| s >= first && s < applied && !known.contains(&s))
            .filter(|s| !doomed.iter().any(|d| d.0 == *s))
            .collect();
        if dry_run || (doomed.is_empty() && orphans.is_empty()) {
            report.count_deletions(&doomed, &orphans);
            return Ok(());
        }
        // Durable first, sealed by a barrier on the chain (a writer that
        // took over meanwhile reads the replica after its fence, so it sees
        // these segments forgotten; if its fence came first, the barrier
        // fails and nothing is deleted), and required of every later attach.
        let (barrier, txid) = self.sync_metadata_at().await?;
        self.inner.mark(txid, barrier).await?;
        // Deleting frees positions of the chain, and a writer that took the
        // volume over from a copy of our directory older than this mark may
        // still be walking from below them (it read the mark before we wrote
        // it): delete only while the lease is ours. One that takes it after
        // this check reads the mark after it, and rebuilds from the replica.
        self.inner.check_lease().await?;
        // Forgotten here; what a fork may read stays in the store (an
        // orphan a later run keeps as long as the fork's pin is there).
        let (keep_unreferenced, keep_orphans) = self.fork_keeps(pinned_at_start).await?;
        let all = doomed.len() + orphans.len();
        let doomed: Vec<(u64, u64)> = doomed
            .into_iter()
            .filter(|d| d.0 > keep_unreferenced)
            .collect();
        let orphans: Vec<u64> = orphans.into_iter().filter(|&s| s > keep_orphans).collect();
        let kept = all - doomed.len() - orphans.len();
        if kept > 0 {
            tracing::warn!(
                kept,
                "a fork may read unreferenced segments: keeping them while its pin is there"
            );
        }
        report.count_deletions(&doomed, &orphans);
        let keys = doomed.iter().map(|d| d.0).chain(orphans).map(segment_key);
        for key in keys {
            match retry_read(&key, || self.inner.store.delete(&key)).await {
                Ok(()) | Err(spritedisk_store::StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
