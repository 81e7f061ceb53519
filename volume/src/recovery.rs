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
use spritedisk_meta::{MetaDb, SegmentApply, VolumeRecord};
use spritedisk_store::{ObjectStore, StoreError};

use crate::config::{VolumeConfig, CONFIG_KEY};
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
    /// The sequence number the next segment will get.
    pub next_seq: u64,
    /// Segments past the first gap: a dead writer's debris.
    pub debris: Vec<String>,
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

pub(crate) async fn load_config(
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

/// Attach-time recovery: open the local metadata (created if absent), roll
/// forward, delete debris past the first gap.
pub(crate) async fn recover(
    store: &Arc<dyn ObjectStore>,
    url: &str,
    cache_dir: Option<&Path>,
) -> Result<(VolumeConfig, MetaDb, RollForward), VolumeError> {
    let config = load_config(store, url).await?;
    let (mut meta, where_) = match cache_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                VolumeError::BadConfig(format!(
                    "cannot create cache directory {}: {e}",
                    dir.display()
                ))
            })?;
            let path = dir.join(META_FILE);
            // No local database (a fresh machine, a deleted cache): start
            // from the replica rather than from the first segment.
            if !path.exists() {
                let layout = crate::replicate::layout_for(url);
                crate::replicate::restore_from_replica(store, layout, &path).await?;
            }
            (MetaDb::open(&path)?, path.display().to_string())
        }
        None => (MetaDb::open_in_memory()?, "memory".to_string()),
    };
    adopt(&mut meta, &config, &where_)?;
    let rolled = roll_forward(store, &mut meta, &config, &where_).await?;
    for key in &rolled.debris {
        tracing::warn!(
            key,
            "deleting a crashed writer's segment past the first gap"
        );
        retry_read(key, || store.delete(key)).await?;
    }
    if rolled.applied > 0 {
        tracing::info!(
            applied = rolled.applied,
            next_seq = rolled.next_seq,
            "rolled forward over segments in the store"
        );
    }
    Ok((config, meta, rolled))
}

/// A read-only view of a volume for offline tools (`stats`, `verify`): the
/// local metadata copied into memory (if any), rolled forward, nothing
/// written anywhere — safe while a daemon has the volume attached.
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
        None => (MetaDb::open_in_memory()?, "memory".to_string()),
    };
    adopt(&mut meta, &config, &where_)?;
    let rolled = roll_forward(store, &mut meta, &config, &where_).await?;
    Ok(Inspection {
        config,
        meta,
        rolled,
    })
}

async fn roll_forward(
    store: &Arc<dyn ObjectStore>,
    meta: &mut MetaDb,
    config: &VolumeConfig,
    meta_path: &str,
) -> Result<RollForward, VolumeError> {
    let volume_id = config.validate().map_err(VolumeError::BadConfig)?;
    let bs = config.block_size as u64;
    let listed: BTreeMap<u64, u64> = retry_read("segments/", || store.list("segments/"))
        .await?
        .into_iter()
        .filter_map(|m| parse_segment_key(&m.key).map(|seq| (seq, m.size)))
        .collect();
    let applied = meta.applied_seq()?;
    if applied > 0 && !listed.contains_key(&applied) {
        return Err(VolumeError::ForeignMetadata {
            path: meta_path.to_string(),
            reason: format!("it has applied segment {applied}, which the store does not hold (was the store rolled back?)"),
        });
    }
    let mut seq = applied + 1;
    let mut count = 0;
    while let Some(&size) = listed.get(&seq) {
        let key = segment_key(seq);
        let corrupt = |reason: String| VolumeError::CorruptSegment {
            key: key.clone(),
            reason,
        };
        if size < HEADER_BYTES as u64 {
            tracing::warn!(
                key,
                size,
                "torn segment (shorter than a header): treated as a gap"
            );
            break;
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
                "torn segment: treated as a gap"
            );
            break;
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
        meta.apply_segment(&SegmentApply {
            seq,
            size_bytes: size,
            client_bytes_total: h.client_bytes_total,
            changes: &changes,
        })?;
        seq += 1;
        count += 1;
    }
    let debris = listed.range(seq..).map(|(&s, _)| segment_key(s)).collect();
    Ok(RollForward {
        applied: count,
        next_seq: seq,
        debris,
    })
}

fn uuid_string(b: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*b).to_string()
}
