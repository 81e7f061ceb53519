//! The volume's history as one fenced chain of segment records
//! (docs/design/0009): walking it from the last applied record, and the
//! fence a writer places at its end before it serves anything.
//!
//! Each record names its predecessor, its writer's epoch and where its
//! successor goes. The walk follows a record only at the position its
//! predecessor named, only if it names that predecessor, and only if its
//! epoch is no lower than every epoch before it. Positions are claimed with
//! conditional creates, so a fence at the tail's successor position ends
//! every older writer's branch: anything it lands later is at a position no
//! walk looks at.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use spritedisk_meta::{MetaDb, SegmentApply};
use spritedisk_store::{ObjectStore, StoreError};

use crate::config::VolumeConfig;
use crate::retry::retry_read;
use crate::segment::{self, parse_segment_key, segment_key, Link, HEADER_BYTES_MIN};
use crate::VolumeError;

/// The upload window, and so the span of a fence: a writer starts the PUT of
/// its segment at position `p` only while fewer than this many of its
/// earlier segments are unapplied. A writer fenced at position `N` can
/// therefore still land records only at `[N, N + WINDOW)`; the fence's
/// successor is at `N + WINDOW`.
pub const WINDOW: u64 = 64;

/// Fence creations lost to a late record of an older writer, in a row,
/// before attach gives up (each loss means that writer is still landing
/// records; its window bounds how many).
const FENCE_ATTEMPTS_MAX: u32 = 16;

/// First read of a segment during the walk: the header plus, usually, the whole index.
const INDEX_PREFETCH_BYTES: u64 = 64 << 10;

/// Before epochs (segment format 4), a writer that took over numbered its
/// segments from `(epoch − 1) · 2^40 + 1` (design note 0003). The walk still
/// follows such a jump in a volume written then; nothing writes one now.
pub const EPOCH_SEQ_RANGE: u64 = 1 << 40;

/// What the walk found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollForward {
    /// Segments applied from the store on top of the local metadata.
    pub applied: u64,
    /// Of those, barriers: each seals a metadata change (a checkpoint, its
    /// deletion, a restore) that only the replica holds.
    pub barriers: u64,
    /// The last record of the history before this attach (a replayed write
    /// log continues after it).
    pub history_tail: u64,
    /// The last record applied (this attach's fence, once placed).
    pub tail: u64,
    /// The position of the next segment this writer makes.
    pub next_seq: u64,
    /// Listed segments that are not part of the history: past its end
    /// (a crashed writer's) or in a fence's dead range.
    pub debris: Vec<String>,
    /// The replica TXID the local database equaled before this attach
    /// changed it (restored from it, or cleanly detached after shipping it).
    pub replica_txid: Option<u64>,
}

/// A segment read during the walk: its header and map changes.
struct Candidate {
    size: u64,
    header: segment::SegmentHeader,
    changes: Vec<spritedisk_meta::MapChange>,
}

/// Reads and checks segment `seq` (`size` bytes as listed). None when torn.
async fn read_candidate(
    store: &Arc<dyn ObjectStore>,
    config: &VolumeConfig,
    volume_id: [u8; 16],
    seq: u64,
    size: u64,
) -> Result<Option<Candidate>, VolumeError> {
    let bs = config.block_size as u64;
    let key = segment_key(seq);
    let corrupt = |reason: String| VolumeError::CorruptSegment {
        key: key.clone(),
        reason,
    };
    if size < HEADER_BYTES_MIN as u64 {
        tracing::warn!(
            key,
            size,
            "torn segment (shorter than a header): not part of the history"
        );
        return Ok(None);
    }
    let mut head = retry_read(&key, || {
        store.get_range(&key, 0, size.min(INDEX_PREFETCH_BYTES))
    })
    .await?;
    if head.len() as u64 == size && segment::shorter_than_its_header(&head) {
        // Between the shortest header and its version's (found by the
        // model test: a torn PUT of 82 bytes of a version-4 segment).
        tracing::warn!(
            key,
            size,
            "torn segment (shorter than its header): not part of the history"
        );
        return Ok(None);
    }
    let h = segment::decode_header(&head).map_err(|e| corrupt(e.0))?;
    if h.object_size() != size {
        tracing::warn!(
            key,
            size,
            expected = h.object_size(),
            "torn segment: not part of the history"
        );
        return Ok(None);
    }
    if h.data_offset > head.len() as u64 {
        head = retry_read(&key, || store.get_range(&key, 0, h.data_offset)).await?;
    }
    let (h, changes) = segment::decode_index(&head, bs).map_err(|e| corrupt(e.0))?;
    if h.seq != seq || h.volume_id != volume_id {
        return Err(corrupt(format!(
            "its header says segment {} of volume {}, expected segment {seq} of volume {}",
            h.seq,
            uuid::Uuid::from_bytes(h.volume_id),
            config.id
        )));
    }
    let volume_blocks = config.size_bytes / bs;
    if let Some(c) = changes.iter().find(|c| {
        c.lba
            .checked_add(c.blocks)
            .is_none_or(|end| end > volume_blocks)
    }) {
        return Err(corrupt(format!(
            "an entry maps blocks {}+{} beyond the volume's {volume_blocks} blocks",
            c.lba, c.blocks
        )));
    }
    Ok(Some(Candidate {
        size,
        header: h,
        changes,
    }))
}

/// Whether the object at `key` is shorter than its own header says.
async fn torn(store: &Arc<dyn ObjectStore>, key: &str) -> Result<bool, VolumeError> {
    let b = retry_read(key, || store.get(key)).await?;
    Ok(
        segment::decode_header(&b).map_or(segment::shorter_than_its_header(&b), |h| {
            h.object_size() != b.len() as u64
        }),
    )
}

/// The listed segments: position → size.
async fn list(store: &Arc<dyn ObjectStore>) -> Result<BTreeMap<u64, u64>, VolumeError> {
    Ok(retry_read("segments/", || store.list("segments/"))
        .await?
        .into_iter()
        .filter_map(|m| parse_segment_key(&m.key).map(|seq| (seq, m.size)))
        .collect())
}

/// Walks the chain from the last record applied to `meta`, applying every
/// record of the history to it. Returns what it found; `debris` is every
/// listed segment after the walk's start that is not on the chain.
pub(crate) async fn walk(
    store: &Arc<dyn ObjectStore>,
    meta: &mut MetaDb,
    config: &VolumeConfig,
    meta_path: &str,
) -> Result<RollForward, VolumeError> {
    let volume_id = config.validate().map_err(VolumeError::BadConfig)?;
    let listed = list(store).await?;
    let start = meta.chain_tail()?;
    // A fork starts after its parent's segments, which are not in its store.
    if start.seq > meta.foreign_seq_max()? && !listed.contains_key(&start.seq) {
        return Err(VolumeError::ForeignMetadata {
            path: meta_path.to_string(),
            reason: format!("it has applied segment {}, which the store does not hold (was the store rolled back?)", start.seq),
        });
    }
    // Where a writer before epochs jumped to when it took over: the walk
    // may follow such a jump only to an epoch-0 record (apply_segment checks).
    let legacy_starts: Vec<u64> = listed
        .keys()
        .copied()
        .filter(|&s| s > start.seq && (s - 1) % EPOCH_SEQ_RANGE == 0)
        .collect();
    let mut read: HashMap<u64, Option<Candidate>> = Default::default();
    let mut tail = start;
    let mut count = 0;
    let mut barriers = 0;
    let mut chain = std::collections::HashSet::new();
    loop {
        let mut cands: Vec<u64> = vec![];
        if listed.contains_key(&tail.next) {
            cands.push(tail.next);
        }
        if tail.epoch == 0 {
            cands.extend(legacy_starts.iter().copied().filter(|&s| s > tail.seq));
        }
        cands.sort_unstable();
        cands.dedup();
        // Of the records that follow the tail, the newest writer's: a
        // version-4 record at the named position beats a legacy jump (its
        // writer walked past the tail when no jump was there).
        let mut best: Option<(u64, u64)> = None; // (epoch, seq)
        for seq in cands {
            if let std::collections::hash_map::Entry::Vacant(slot) = read.entry(seq) {
                slot.insert(read_candidate(store, config, volume_id, seq, listed[&seq]).await?);
            }
            if let Some(c) = read[&seq].as_ref() {
                let h = &c.header;
                let follows = h.prev_seq == tail.seq
                    && h.epoch >= tail.epoch
                    && (seq == tail.next || h.epoch == 0);
                if follows && best.is_none_or(|b| (h.epoch, seq) > b) {
                    best = Some((h.epoch, seq));
                }
            }
        }
        let Some(c) = best.and_then(|(_, seq)| read.remove(&seq).flatten()) else {
            break;
        };
        let h = &c.header;
        meta.apply_segment(&SegmentApply {
            seq: h.seq,
            prev_seq: h.prev_seq,
            epoch: h.epoch,
            next_seq: h.next_seq,
            size_bytes: c.size,
            client_bytes_total: h.client_bytes_total,
            changes: &c.changes,
        })?;
        chain.insert(h.seq);
        if h.entry_count == 0 && h.next_seq == h.seq + 1 && h.epoch > 0 {
            barriers += 1;
        }
        tail = meta.chain_tail()?;
        count += 1;
        // Drop what can no longer be a successor, to bound memory.
        read.retain(|&s, _| s > tail.seq);
    }
    let debris = listed
        .range(start.seq + 1..)
        .filter(|(s, _)| !chain.contains(*s))
        .map(|(&s, _)| segment_key(s))
        .collect();
    Ok(RollForward {
        applied: count,
        barriers,
        history_tail: tail.seq,
        tail: tail.seq,
        next_seq: tail.next,
        debris,
        replica_txid: None,
    })
}

/// Places this writer's fence (epoch `epoch`) at the end of the history
/// walked into `meta`, walking on when an older writer's record landed there
/// first; applies it to `meta`. Then the records in the fence's dead range
/// are debris that can never become history: the returned `RollForward`
/// lists those (and only those) in `debris`, and its `next_seq` is the
/// fence's successor position.
pub(crate) async fn fence(
    store: &Arc<dyn ObjectStore>,
    meta: &mut MetaDb,
    config: &VolumeConfig,
    meta_path: &str,
    epoch: u64,
    mut walked: RollForward,
) -> Result<RollForward, VolumeError> {
    let volume_id = config.validate().map_err(VolumeError::BadConfig)?;
    let mut attempts = 0;
    loop {
        let tail = meta.chain_tail()?;
        if tail.epoch >= epoch {
            return Err(VolumeError::Fenced(format!(
                "the volume's history already has a record of epoch {} at segment {}, and the lease gave this attach epoch {epoch}: another writer took it over, or lease.json was deleted or rolled back (its epoch must stay above every epoch in the history)",
                tail.epoch, tail.seq
            )));
        }
        let link = Link {
            seq: tail.next,
            prev_seq: tail.seq,
            epoch,
            next_seq: tail.next + WINDOW,
        };
        // Everything an older writer can still land after this walk is
        // below the fence's successor. A segment listed there already means
        // the walk started from metadata behind the store (a stale copy of
        // the local directory): a fence here would cut the live history.
        // (Not for a volume written before epochs, whose writers kept no
        // window: their debris may lie anywhere past the gap.)
        let beyond = list(store)
            .await?
            .range(link.next_seq..)
            .next()
            .map(|(&s, _)| s);
        if let (Some(beyond), true) = (beyond, tail.epoch > 0) {
            // A live writer we are taking over may have landed that much
            // since the walk listed: walk on, and refuse only if that finds
            // nothing more.
            let more = walk(store, meta, config, meta_path).await?;
            attempts += 1;
            if more.applied > 0 && attempts < FENCE_ATTEMPTS_MAX {
                walked.applied += more.applied;
                walked.barriers += more.barriers;
                walked.history_tail = more.history_tail;
                continue;
            }
            return Err(VolumeError::ForeignMetadata {
                path: meta_path.to_string(),
                reason: format!(
                    "the store holds segment {beyond}, past anything the history it leads to (ending at {}) allows: the metadata is older than the store",
                    tail.seq
                ),
            });
        }
        let key = segment_key(link.seq);
        let client_bytes = meta.stats()?.client_bytes_written;
        let bytes = segment::encode_empty(volume_id, link, client_bytes);
        let landed = match retry_read(&key, || store.put_if_absent(&key, bytes.clone())).await {
            Ok(_) => true,
            // Our own earlier attempt, its reply lost, or an older writer's record.
            Err(StoreError::PreconditionFailed(_)) => {
                retry_read(&key, || store.get(&key)).await? == bytes
            }
            Err(e) => return Err(e.into()),
        };
        if landed {
            meta.apply_segment(&SegmentApply {
                seq: link.seq,
                prev_seq: link.prev_seq,
                epoch,
                next_seq: link.next_seq,
                size_bytes: bytes.len() as u64,
                client_bytes_total: client_bytes,
                changes: &[],
            })?;
            break;
        }
        attempts += 1;
        if attempts >= FENCE_ATTEMPTS_MAX {
            return Err(VolumeError::Fenced(format!(
                "{FENCE_ATTEMPTS_MAX} fences in a row lost to records of the previous writer, which is still writing: stop it first"
            )));
        }
        let more = walk(store, meta, config, meta_path).await?;
        if more.applied == 0 && torn(store, &key).await? {
            // A PUT a store without atomic objects left half done: never
            // history (the walk counts it as a gap). Atomic stores (S3, the
            // file store's rename) never show one.
            tracing::warn!(key, "deleting a torn segment at the end of the history");
            retry_read(&key, || store.delete(&key)).await?;
            attempts += 1;
            continue;
        }
        if more.applied == 0 {
            return Err(VolumeError::CorruptSegment {
                key,
                reason: format!(
                    "it holds a record at the end of the history that does not follow segment {} (epoch {}): it is neither history nor a fence",
                    tail.seq, tail.epoch
                ),
            });
        }
        walked.applied += more.applied;
        walked.barriers += more.barriers;
        walked.history_tail = more.history_tail;
    }
    let fence = meta.chain_tail()?;
    // Listed after the fence landed: whatever the fenced writer still lands
    // later stays until a GC collects orphans.
    let listed = list(store).await?;
    walked.debris = listed
        .range(walked.history_tail + 1..fence.next)
        .filter(|(&s, _)| s != fence.seq)
        .map(|(&s, _)| segment_key(s))
        .collect();
    walked.applied += 1;
    walked.tail = fence.seq;
    walked.next_seq = fence.next;
    Ok(walked)
}
