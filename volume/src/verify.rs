//! `spritedisk verify`: an fsck of the map against the objects. Every map
//! extent's segment must exist and every referenced piece must match its
//! crc32c. (Segments newer than the local metadata were decoded and their
//! indexes checked by the roll-forward that built the map being verified;
//! debris past a gap is reported.)

use std::collections::BTreeSet;
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
    /// One line per problem, each naming the object.
    pub problems: Vec<String>,
}

/// Checks every piece the map references. `progress(done, total)` is called as pieces are checked.
pub async fn verify_volume(
    store: &Arc<dyn ObjectStore>,
    insp: &Inspection,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, VolumeError> {
    let bs = insp.config.block_size as u64;
    let mut report = VerifyReport::default();
    let mut pieces = BTreeSet::new();
    insp.meta.for_each_extent(|e| {
        report.extents_checked += 1;
        pieces.insert((e.seg, e.piece.piece_off, e.piece.piece_blocks, e.piece.crc));
    })?;
    for key in &insp.rolled.debris {
        report.problems.push(format!("{key}: past the first gap in the segment sequence (a crashed writer's debris; the next attach deletes it)"));
    }
    let origins = crate::fork::Origins::open(&insp.meta)?;
    let total = pieces.len() as u64;
    let mut missing = BTreeSet::new();
    for (i, (seg, off, blocks, crc)) in pieces.into_iter().enumerate() {
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
                    report.problems.push(format!("{key}: {e}"));
                }
                report.bytes_checked += len;
            }
            Err(spritedisk_store::StoreError::NotFound(_)) => {
                report
                    .problems
                    .push(format!("{key}: missing, but the map references it"));
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
