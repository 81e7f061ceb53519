//! `spritedisk verify`: an fsck of the maps against the objects. Every
//! extent of the live map and of every checkpoint (so a segment lost under
//! a checkpoint shows now, not at its restore: M11 of the 5bc5be0 review)
//! must have its segment, and every referenced piece must match its
//! crc32c; a problem names the maps that reference the piece. Every fork
//! pinned in this store must find its base checkpoint. (Segments newer than
//! the local metadata were decoded and their indexes checked by the
//! roll-forward that built the map being verified; debris past a gap is
//! reported.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use spritedisk_store::ObjectStore;

use crate::recovery::Inspection;
use crate::segment::{self, segment_key};
use crate::VolumeError;

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub extents_checked: u64,
    pub pieces_checked: u64,
    pub bytes_checked: u64,
    /// Checkpoints whose rows were checked.
    pub checkpoints_checked: u64,
    /// One line per problem, each naming the object and who references it.
    pub problems: Vec<String>,
    /// Findings that lose nothing (a fork whose base checkpoint is gone:
    /// GC keeps everything it may read).
    pub notes: Vec<String>,
}

/// Checks every piece the map references. `progress(done, total)` is called as pieces are checked.
pub async fn verify_volume(
    store: &Arc<dyn ObjectStore>,
    insp: &Inspection,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, VolumeError> {
    let bs = insp.config.block_size as u64;
    let mut report = VerifyReport::default();
    // Each piece, with the maps that reference it (0: the live map, i: the
    // i-th checkpoint).
    let mut pieces: BTreeMap<(u64, u64, u32, u32), BTreeSet<usize>> = BTreeMap::new();
    insp.meta.for_each_extent(|e| {
        report.extents_checked += 1;
        pieces
            .entry((e.seg, e.piece.piece_off, e.piece.piece_blocks, e.piece.crc))
            .or_default()
            .insert(0);
    })?;
    let checkpoints = insp.meta.checkpoints()?;
    let mut names = vec!["the live map".to_string()];
    for c in &checkpoints {
        names.push(format!("checkpoint {:?}", c.name));
        for e in insp.meta.checkpoint_extents(&c.name)? {
            report.extents_checked += 1;
            pieces
                .entry((e.seg, e.piece.piece_off, e.piece.piece_blocks, e.piece.crc))
                .or_default()
                .insert(names.len() - 1);
        }
        report.checkpoints_checked += 1;
    }
    let whose = |maps: &BTreeSet<usize>| {
        let n: Vec<&str> = maps.iter().map(|&i| names[i].as_str()).collect();
        n.join(", ")
    };
    for pin in crate::fork::fork_pins(store).await? {
        if !pin.base_among(&checkpoints) {
            report.notes.push(format!(
                "the fork {} was made from checkpoint {:?}, which is gone: GC keeps every segment up to {} for it",
                pin.child_url, pin.checkpoint, pin.seq_max
            ));
        }
    }
    for key in &insp.rolled.debris {
        report.problems.push(format!("{key}: past the first gap in the segment sequence (a crashed writer's debris; the next attach deletes it)"));
    }
    let origins = crate::fork::Origins::open(&insp.meta)?;
    let total = pieces.len() as u64;
    let mut missing = BTreeSet::new();
    for (i, ((seg, off, blocks, crc), maps)) in pieces.into_iter().enumerate() {
        let key = segment_key(seg);
        if missing.contains(&seg) {
            continue;
        }
        let len = blocks as u64 * bs;
        match origins
            .store_for(seg, store)
            .get_range(&key, off, len)
            .await
        {
            Ok(d) => {
                if let Err(e) = segment::verify_piece(&d, crc, off) {
                    report
                        .problems
                        .push(format!("{key}: {e} (referenced by {})", whose(&maps)));
                }
                report.bytes_checked += len;
            }
            Err(spritedisk_store::StoreError::NotFound(_)) => {
                report.problems.push(format!(
                    "{key}: missing, but {} references it",
                    whose(&maps)
                ));
                missing.insert(seg);
            }
            Err(e) => report
                .problems
                .push(format!("{key}: cannot read the piece at byte {off}: {e}")),
        }
        report.pieces_checked += 1;
        progress(i as u64 + 1, total);
    }
    Ok(report)
}
