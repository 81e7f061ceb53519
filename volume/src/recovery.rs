//! Creating a volume, and rebuilding its map on attach: from the local
//! metadata database if there is one, then rolling forward over the
//! contiguous run of newer segments in the store (LSVD's recovery).
//!
//! Parallel uploads mean a crashed writer can leave segment N+1 in the store
//! without N. Everything past the first gap is debris of a dead writer whose
//! writes were never acknowledged (a FLUSH waits for every earlier segment):
//! attach deletes it before it writes anything, so it can never be rolled
//! forward later once a new writer fills the gap. A segment that is shorter
//! than its header says is a torn PUT and counts as a gap.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use spritedisk_meta::{MetaDb, MetaError, SegmentApply, VolumeRecord};
use spritedisk_store::{ObjectStore, StoreError};

use crate::config::{VolumeConfig, CONFIG_KEY};
use crate::lease::Held;
use crate::retry::retry_read;
use crate::segment::{self, parse_segment_key, segment_key, HEADER_BYTES};
use crate::VolumeError;

/// File name of the local metadata database inside the cache directory.
pub const META_FILE: &str = "meta.db";
/// First read of a segment during roll-forward: the header plus, usually, the whole index.
const INDEX_PREFETCH_BYTES: u64 = 64 << 10;

/// What the roll-forward found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollForward {
    /// Segments applied from the store on top of the local metadata.
    pub applied: u64,
    /// The last segment of the history (the next one follows it).
    pub tail: u64,
    /// The sequence number the next segment will get.
    pub next_seq: u64,
    /// Segments past the first gap: a dead writer's debris.
    pub debris: Vec<String>,
    /// The replica TXID the local database equaled before this attach
    /// changed it (restored from it, or cleanly detached after shipping it).
    pub replica_txid: Option<u64>,
}

/// Creates a new volume at `url`; refuses to touch an existing one.
pub async fn create_volume(
    store: &Arc<dyn ObjectStore>,
    url: &str,
    size_bytes: u64,
) -> Result<VolumeConfig, VolumeError> {
    let config = VolumeConfig::new(size_bytes);
    config.validate().map_err(VolumeError::BadConfig)?;
    if !retry_read("segments/", || store.list("segments/"))
        .await?
        .is_empty()
    {
        return Err(VolumeError::AlreadyExists {
            url: url.to_string(),
        });
    }
    let body = serde_json::to_vec_pretty(&config).expect("config serializes");
    match store.put_if_absent(CONFIG_KEY, Bytes::from(body)).await {
        Ok(_) => Ok(config),
        Err(StoreError::PreconditionFailed(_)) => Err(VolumeError::AlreadyExists {
            url: url.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

pub async fn load_config(
    store: &Arc<dyn ObjectStore>,
    url: &str,
) -> Result<VolumeConfig, VolumeError> {
    let raw = match retry_read(CONFIG_KEY, || store.get(CONFIG_KEY)).await {
        Ok(raw) => raw,
        Err(StoreError::NotFound(_)) => {
            return Err(VolumeError::NoVolume {
                url: url.to_string(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let config: VolumeConfig = serde_json::from_slice(&raw).map_err(|e| {
        VolumeError::BadConfig(format!("{url}/{CONFIG_KEY} is not a volume config: {e}"))
    })?;
    config
        .validate()
        .map_err(|e| VolumeError::BadConfig(format!("{url}/{CONFIG_KEY}: {e}")))?;
    Ok(config)
}

fn volume_record(c: &VolumeConfig) -> VolumeRecord {
    VolumeRecord {
        id: c.id.clone(),
        size_bytes: c.size_bytes,
        block_size: c.block_size,
        created_unix: c.created_unix,
    }
}

/// Checks that a metadata database belongs to `config`'s volume, or claims an empty one.
fn adopt(meta: &mut MetaDb, config: &VolumeConfig, path: &str) -> Result<(), VolumeError> {
    match meta.volume()? {
        None => meta.init_volume(&volume_record(config))?,
        Some(v) if v == volume_record(config) => {}
        Some(v) => {
            return Err(VolumeError::ForeignMetadata {
                path: path.to_string(),
                reason: format!(
                    "it describes volume {}, the store holds volume {}",
                    v.id, config.id
                ),
            })
        }
    }
    Ok(())
}

/// Attach-time recovery, once the lease is held: open the local metadata
/// if it is still ours (else restore it from the replica), roll forward,
/// delete debris that is not on the chain, and pick the next segment number.
pub(crate) async fn recover(
    store: &Arc<dyn ObjectStore>,
    url: &str,
    config: &VolumeConfig,
    cache_dir: Option<&Path>,
    held: &Held,
) -> Result<(MetaDb, RollForward), VolumeError> {
    // The replica TXID the local database is known to equal, if any.
    let mut in_sync_with = None;
    let (mut meta, where_) = match cache_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                VolumeError::BadConfig(format!(
                    "cannot create cache directory {}: {e}",
                    dir.display()
                ))
            })?;
            let path = dir.join(META_FILE);
            // Taken (and deleted) before anything changes the database.
            let mut clean_at = crate::replicate::take_clean_mark(dir);
            if path.exists() {
                // A corrupt file fails the checksum of the last clean detach,
                // or SQLite's structural check when the stale check opens it.
                let corrupt = match check_local(&path, clean_at) {
                    Err(why) => Some(why),
                    Ok(()) => match discard_if_stale(dir, &path, config, held) {
                        Ok(()) => None,
                        Err(VolumeError::Meta(
                            e @ (MetaError::Corrupt(_) | MetaError::Open { .. }),
                        )) => Some(e.to_string()),
                        Err(e) => return Err(e),
                    },
                };
                if let Some(why) = corrupt {
                    // The store has everything flushed: the replica and the
                    // segments. The write log goes too: without the database
                    // nothing says whose history it continues.
                    tracing::warn!(
                        path = %path.display(),
                        why,
                        "the local metadata database is corrupt: moved aside (.corrupt) and restored from the store; unflushed writes in the local write log are dropped with it"
                    );
                    crate::wlog::discard(dir);
                    let _ = std::fs::rename(&path, path.with_extension("db.corrupt"));
                    for suffix in ["-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                    }
                    clean_at = None;
                }
            }
            let clean_at = clean_at.map(|m| m.txid);
            // No local database (a fresh machine, a deleted cache, a stale
            // one): start from the replica rather than from the first segment.
            let meta = if path.exists() {
                in_sync_with = clean_at;
                MetaDb::open(&path)?
            } else {
                let layout = crate::replicate::layout_for(url);
                let restored = crate::replicate::restore_from_replica(store, layout, &path).await?;
                crate::replicate::check_restore_mark(store, restored).await?;
                match restored {
                    Some(txid) => {
                        in_sync_with = Some(txid);
                        MetaDb::open_restored(&path)?
                    }
                    None => MetaDb::open(&path)?,
                }
            };
            // Every change from here on must stay in the log until shipped.
            meta.hold_wal_for_replication()?;
            (meta, path.display().to_string())
        }
        None => {
            // Segments alone, which is all an in-memory map has.
            crate::replicate::check_restore_mark(store, None).await?;
            (MetaDb::open_in_memory()?, "memory".to_string())
        }
    };
    adopt(&mut meta, config, &where_)?;
    let mut rolled = roll_forward(store, &mut meta, config, &where_).await?;
    for key in &rolled.debris {
        tracing::warn!(
            key,
            "deleting a dead or fenced writer's segment that is not part of the history"
        );
        retry_read(key, || store.delete(key)).await?;
    }
    meta.set_writer_epoch(held.doc.epoch)?;
    if held.took_over() {
        // The previous holder may still be uploading: leave its numbers alone.
        rolled.next_seq = rolled.next_seq.max(takeover_seq_base(held.doc.epoch));
    }
    if rolled.applied > 0 {
        tracing::info!(
            applied = rolled.applied,
            next_seq = rolled.next_seq,
            "rolled forward over segments in the store"
        );
    }
    rolled.replica_txid = in_sync_with;
    Ok((meta, rolled))
}

/// Whether the local database can be trusted: after a clean detach its file
/// must still have the checksum it had then (a flipped bit anywhere, even in
/// a value SQLite cannot judge, is caught). SQLite's structural check runs
/// when it is opened.
fn check_local(path: &Path, clean: Option<crate::replicate::CleanMark>) -> Result<(), String> {
    if let Some(want) = clean.and_then(|m| m.crc) {
        match crate::replicate::file_crc(path) {
            Ok(got) if got == want => {}
            Ok(got) => {
                return Err(format!(
                "its checksum {got:08x} differs from {want:08x} recorded at the last clean detach"
            ))
            }
            Err(e) => return Err(format!("cannot read it: {e}")),
        }
    }
    Ok(())
}

/// Deletes the local database and write log if another writer has written
/// the volume since they were last used here (their epoch is not the one
/// the lease had before we took it).
fn discard_if_stale(
    dir: &Path,
    path: &Path,
    config: &VolumeConfig,
    held: &Held,
) -> Result<(), VolumeError> {
    let mut db = MetaDb::open(path)?;
    // Another volume's database is a mistake to report, not a cache to drop.
    adopt(&mut db, config, &path.display().to_string())?;
    let local = db.writer_epoch()?;
    drop(db);
    let before = held.previous.as_ref().map(|p| p.epoch);
    if local == before {
        return Ok(());
    }
    tracing::warn!(
        local_epoch = local,
        volume_epoch = before,
        "the local metadata is from an older writer of this volume: discarding it and its unflushed write log, restoring from the store"
    );
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    crate::wlog::discard(dir);
    Ok(())
}

/// A read-only view of a volume for offline tools (`stats`, `verify`): the
/// local metadata copied into memory (else the replica's), rolled forward,
/// nothing written to the store — safe while a daemon has the volume attached.
pub struct Inspection {
    pub config: VolumeConfig,
    pub meta: MetaDb,
    pub rolled: RollForward,
}

pub async fn inspect_volume(
    store: &Arc<dyn ObjectStore>,
    url: &str,
    cache_dir: Option<&Path>,
) -> Result<Inspection, VolumeError> {
    let config = load_config(store, url).await?;
    let local = cache_dir.map(|d| d.join(META_FILE)).filter(|p| p.exists());
    let (mut meta, where_) = match &local {
        Some(path) => (MetaDb::open_copy(path)?, path.display().to_string()),
        None => (inspect_replica(store, url).await?, "memory".to_string()),
    };
    adopt(&mut meta, &config, &where_)?;
    let rolled = roll_forward(store, &mut meta, &config, &where_).await?;
    Ok(Inspection {
        config,
        meta,
        rolled,
    })
}

/// The metadata as the replica has it, in memory (a fresh machine's view,
/// with checkpoints), or an empty database when there is no replica.
async fn inspect_replica(store: &Arc<dyn ObjectStore>, url: &str) -> Result<MetaDb, VolumeError> {
    let dir = std::env::temp_dir().join(format!(
        "spritedisk-inspect-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| VolumeError::BadConfig(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(META_FILE);
    let res = async {
        let layout = crate::replicate::layout_for(url);
        let restored = crate::replicate::restore_from_replica(store, layout, &path).await?;
        crate::replicate::check_restore_mark(store, restored).await?;
        Ok(match restored {
            Some(_) => MetaDb::open_copy(&path)?,
            None => MetaDb::open_in_memory()?,
        })
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    res
}

/// Segment numbers of one lease epoch that took a volume over start at a
/// multiple of this (plus one): far beyond anything the fenced writer can
/// still reach (docs/design/0003).
pub const EPOCH_SEQ_RANGE: u64 = 1 << 40;

/// First segment number of a writer of lease `epoch` that took over from a
/// holder that may still be writing.
pub fn takeover_seq_base(epoch: u64) -> u64 {
    (epoch.max(1) - 1) * EPOCH_SEQ_RANGE + 1
}

/// A segment read during roll-forward: its header and map changes.
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
    if size < HEADER_BYTES as u64 {
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
            uuid_string(&h.volume_id),
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

/// Follows the chain of segments from the last one applied: the successor
/// of segment T is the one whose header says it follows T — normally T + 1;
/// after a takeover, the first segment of the new writer's range, which wins
/// over a late T + 1 of the writer it fenced (the higher number is the newer
/// writer). Everything after T not on the chain is debris.
async fn roll_forward(
    store: &Arc<dyn ObjectStore>,
    meta: &mut MetaDb,
    config: &VolumeConfig,
    meta_path: &str,
) -> Result<RollForward, VolumeError> {
    let volume_id = config.validate().map_err(VolumeError::BadConfig)?;
    let listed: BTreeMap<u64, u64> = retry_read("segments/", || store.list("segments/"))
        .await?
        .into_iter()
        .filter_map(|m| parse_segment_key(&m.key).map(|seq| (seq, m.size)))
        .collect();
    let applied = meta.applied_seq()?;
    // A fork starts after its parent's segments, which are not in its store.
    if applied > meta.foreign_seq_max()? && !listed.contains_key(&applied) {
        return Err(VolumeError::ForeignMetadata {
            path: meta_path.to_string(),
            reason: format!("it has applied segment {applied}, which the store does not hold (was the store rolled back?)"),
        });
    }
    // Where a taken-over writer's range starts: the only places the chain can jump to.
    let range_starts: Vec<u64> = listed
        .keys()
        .copied()
        .filter(|&s| s > applied && (s - 1) % EPOCH_SEQ_RANGE == 0)
        .collect();
    let mut read: std::collections::HashMap<u64, Option<Candidate>> = Default::default();
    let mut tail = applied;
    let mut count = 0;
    let mut chain = std::collections::HashSet::new();
    loop {
        let mut cands: Vec<u64> = range_starts.iter().copied().filter(|&s| s > tail).collect();
        if listed.contains_key(&(tail + 1)) && !cands.contains(&(tail + 1)) {
            cands.push(tail + 1);
        }
        cands.sort_unstable_by(|a, b| b.cmp(a)); // the newest writer first
        let mut next = None;
        for seq in cands {
            if let std::collections::hash_map::Entry::Vacant(slot) = read.entry(seq) {
                slot.insert(read_candidate(store, config, volume_id, seq, listed[&seq]).await?);
            }
            if read[&seq]
                .as_ref()
                .is_some_and(|c| c.header.prev_seq == tail)
            {
                next = read.remove(&seq).flatten();
                break;
            }
        }
        let Some(c) = next else { break };
        let seq = c.header.seq;
        meta.apply_segment(&SegmentApply {
            seq,
            prev_seq: tail,
            size_bytes: c.size,
            client_bytes_total: c.header.client_bytes_total,
            changes: &c.changes,
        })?;
        chain.insert(seq);
        tail = seq;
        count += 1;
        // Drop what can no longer be a successor, to bound memory.
        read.retain(|&s, _| s > tail);
    }
    let debris = listed
        .range(applied + 1..)
        .filter(|(s, _)| !chain.contains(*s))
        .map(|(&s, _)| segment_key(s))
        .collect();
    Ok(RollForward {
        applied: count,
        tail,
        next_seq: tail + 1,
        debris,
        replica_txid: None,
    })
}

fn uuid_string(b: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*b).to_string()
}
