//! Forks: a new volume whose map starts as a checkpoint of another volume,
//! sharing that volume's segments (no data is copied).
//!
//! The child records its ancestry in its metadata (`origins`: segments
//! numbered up to the parent's tail live in the parent's store, read-only
//! to the child) and numbers its own segments after it. The parent learns
//! of the child through a pin, `forks/<child id>.json` in the parent's
//! store, written before the child reads the checkpoint: the parent then
//! refuses to delete that checkpoint (its rows keep every byte the child
//! references) and does not compact segments the child may read, as Ceph
//! RBD protects a snapshot that has clones. A pin whose checkpoint is gone
//! (the delete raced the fork) makes the parent's GC keep every segment the
//! child could reference.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spritedisk_meta::{MetaDb, VolumeRecord};
use spritedisk_store::{ObjectStore, StoreError};

use crate::config::EngineOptions;
use crate::engine::Volume;
use crate::lease::now_unix;
use crate::recovery::{inspect_volume, META_FILE};
use crate::retry::retry_read;
use crate::VolumeError;

pub const FORKS_PREFIX: &str = "forks/";

/// The parent's record of one fork.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForkPin {
    pub child_url: String,
    pub child_id: String,
    pub checkpoint: String,
    /// The child may reference any of the parent's segments up to this.
    pub seq_max: u64,
    pub created_unix: i64,
    /// The map version of the checkpoint the child was made from: a
    /// checkpoint deleted and made again under the same name is another
    /// one (absent in pins written before it was recorded, and while the
    /// fork is being made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_version: Option<u64>,
}

impl ForkPin {
    /// The pin stored under `key`.
    pub(crate) fn parse(key: &str, raw: &[u8]) -> Result<ForkPin, VolumeError> {
        serde_json::from_slice(raw)
            .map_err(|e| VolumeError::BadConfig(format!("fork record {key} is unreadable: {e}")))
    }

    /// Whether the checkpoint the child was made from is still among
    /// `checkpoints` (else everything it may read is the parent's to keep).
    pub fn base_among(&self, checkpoints: &[spritedisk_meta::CheckpointRow]) -> bool {
        checkpoints.iter().any(|c| {
            c.name == self.checkpoint && self.checkpoint_version.is_none_or(|v| v == c.version)
        })
    }
}

/// What `fork` did.
#[derive(Debug, Clone, Serialize)]
pub struct ForkReport {
    pub child_url: String,
    pub child_id: String,
    pub checkpoint: String,
    pub extents: u64,
    pub shared_segments: u64,
}

/// Every fork pin in a parent's store.
pub async fn fork_pins(store: &Arc<dyn ObjectStore>) -> Result<Vec<ForkPin>, VolumeError> {
    let mut pins = vec![];
    for m in retry_read(FORKS_PREFIX, || store.list(FORKS_PREFIX)).await? {
        let raw = match retry_read(&m.key, || store.get(&m.key)).await {
            Ok(raw) => raw,
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        pins.push(ForkPin::parse(&m.key, &raw)?);
    }
    Ok(pins)
}

/// Creates the volume `child_url` as a fork of checkpoint `checkpoint` of
/// `parent_url`. Durable in the child's store when it returns: the child's
/// metadata is shipped (and required of every attach) before the child is
/// closed. `cache_dir` becomes the child's local state.
pub async fn fork_volume(
    parent: &Arc<dyn ObjectStore>,
    parent_url: &str,
    checkpoint: &str,
    child: Arc<dyn ObjectStore>,
    child_url: &str,
    cache_dir: &Path,
    opts: EngineOptions,
) -> Result<ForkReport, VolumeError> {
    // Before anything exists: the child's map is written there before its
    // first attach (docs/design/0017).
    crate::ensure_private_dir(cache_dir)?;
    let parent_config = crate::recovery::load_config(parent, parent_url).await?;
    let config = crate::recovery::create_volume_as(
        &child,
        child_url,
        crate::config::VolumeConfig {
            fork_of: Some(parent_url.to_string()),
            ..crate::config::VolumeConfig::new(parent_config.size_bytes)
        },
    )
    .await?;
    // Pinned before the checkpoint is read: from now on the parent keeps it.
    let pin_key = format!("{FORKS_PREFIX}{}.json", config.id);
    let mut pin = ForkPin {
        child_url: child_url.to_string(),
        child_id: config.id.clone(),
        checkpoint: checkpoint.to_string(),
        seq_max: u64::MAX,
        created_unix: now_unix(),
        checkpoint_version: None,
    };
    let body = |p: &ForkPin| Bytes::from(serde_json::to_vec_pretty(p).expect("serializes"));
    crate::retry::put_new(parent, &pin_key, body(&pin)).await?;
    // Set once the child's first attach starts: from then on its metadata
    // may be durable (the child usable) even if this fails later.
    let mut child_may_exist = false;
    let res = async {
        let insp = inspect_volume(parent, parent_url, None).await?;
        let extents = insp.meta.checkpoint_extents(checkpoint)?;
        let seq_max = insp.rolled.tail.max(insp.meta.applied_seq()?);
        pin.seq_max = seq_max;
        pin.checkpoint_version = insp
            .meta
            .checkpoints()?
            .into_iter()
            .find(|c| c.name == checkpoint)
            .map(|c| c.version);
        let b = body(&pin);
        retry_read(&pin_key, || parent.put(&pin_key, b.clone())).await?;
        let used: std::collections::BTreeSet<u64> = extents.iter().map(|e| e.seg).collect();
        let segments: Vec<_> = insp
            .meta
            .segments()?
            .into_iter()
            .filter(|s| used.contains(&s.seq))
            .collect();
        let mut origins = insp.meta.origins()?;
        origins.push((seq_max, parent_url.to_string()));
        std::fs::create_dir_all(cache_dir).map_err(|e| {
            VolumeError::BadConfig(format!("cannot create {}: {e}", cache_dir.display()))
        })?;
        let path = cache_dir.join(META_FILE);
        if path.exists() {
            return Err(VolumeError::BadConfig(format!(
                "{} exists: the fork's cache directory must be new",
                path.display()
            )));
        }
        let mut meta = MetaDb::open(&path)?;
        meta.init_volume(&VolumeRecord {
            id: config.id.clone(),
            size_bytes: config.size_bytes,
            block_size: config.block_size,
            created_unix: config.created_unix,
        })?;
        meta.init_fork(&origins, &segments, &extents, seq_max)?;
        drop(meta);
        // Attaching ships the whole map as the child's first snapshot.
        child_may_exist = true;
        let vol = Volume::open(child.clone(), child_url, Some(cache_dir), opts).await?;
        let shipped = async {
            vol.inner.ship_meta().await?;
            let txid = vol
                .inner
                .replica_txid
                .load(std::sync::atomic::Ordering::Relaxed);
            // Its map cannot be rebuilt from its own segments.
            let seq = vol.inner.state.lock().unwrap().applied_seq;
            crate::replicate::mark_restore(&child, vol.inner.epoch, txid, seq).await
        }
        .await;
        let closed = vol.close().await;
        shipped?;
        closed?;
        Ok(ForkReport {
            child_url: child_url.to_string(),
            child_id: config.id.clone(),
            checkpoint: checkpoint.to_string(),
            extents: extents.len() as u64,
            shared_segments: segments.len() as u64,
        })
    }
    .await;
    match &res {
        Ok(_) => {}
        Err(e) if child_may_exist => {
            // The child may be usable (its metadata shipped, the error
            // came later, e.g. from its close): it keeps the parent's
            // segments (L3 of the second review of 0009).
            tracing::warn!(error = %e, child_url, "the fork failed after its first attach: its pin in the parent stays (the fork may be usable); 'spritedisk rm' of the fork releases it");
        }
        Err(_) => {
            // Nothing references the parent yet: let its checkpoint go
            // again, and the child's URL too.
            if let Err(e) = retry_read(&pin_key, || parent.delete(&pin_key)).await {
                tracing::warn!(key = pin_key, error = %e, "could not remove the fork's pin from the parent after the fork failed; delete it by hand to let the checkpoint go");
            }
            if let Err(e) = retry_read(crate::config::CONFIG_KEY, || {
                child.delete(crate::config::CONFIG_KEY)
            })
            .await
            {
                tracing::warn!(child_url, error = %e, "could not remove the failed fork's volume.json; 'spritedisk rm' removes it");
            }
        }
    }
    res
}

/// The stores a volume's segments live in: its own, and its fork parents'.
#[derive(Clone, Default)]
pub(crate) struct Origins(Vec<(u64, Arc<dyn ObjectStore>)>);

impl Origins {
    pub fn open(meta: &MetaDb) -> Result<Origins, VolumeError> {
        let mut v = vec![];
        for (max, url) in meta.origins()? {
            let store = spritedisk_store::open_url(&url).map_err(|e| {
                VolumeError::BadConfig(format!(
                    "this volume is a fork of {url}, which cannot be opened: {e}"
                ))
            })?;
            v.push((max, store));
        }
        Ok(Origins(v))
    }

    /// The store holding segment `seg`: a parent's, or `own`.
    pub fn store_for<'a>(
        &'a self,
        seg: u64,
        own: &'a Arc<dyn ObjectStore>,
    ) -> &'a Arc<dyn ObjectStore> {
        self.0
            .iter()
            .find(|(max, _)| seg <= *max)
            .map(|(_, s)| s)
            .unwrap_or(own)
    }
}
