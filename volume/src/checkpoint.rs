//! Checkpoint, restore and delete on an attached volume: metadata
//! operations (the map is copied, never the data), durable in the store
//! before they return. See spritedisk_meta's checkpoint.rs and
//! docs/design/0004-checkpoints.md.

use spritedisk_meta::CheckpointRow;

use crate::engine::Volume;
use crate::lease::now_unix;
use crate::VolumeError;

impl Volume {
    /// Checkpoints the volume as of every write acknowledged before the
    /// call: flushes, copies the map, ships the metadata.
    pub async fn checkpoint(&self, name: Option<&str>) -> Result<CheckpointRow, VolumeError> {
        self.require_replica()?;
        let t0 = std::time::Instant::now();
        self.flush().await?;
        let t_flush = t0.elapsed();
        let inner = self.inner.clone();
        let name = name.map(str::to_string);
        let row = tokio::task::spawn_blocking(move || {
            inner
                .meta
                .lock()
                .unwrap()
                .create_checkpoint(name.as_deref(), now_unix())
        })
        .await
        .map_err(|e| VolumeError::Stopped(format!("checkpoint task: {e}")))??;
        let t_map = t0.elapsed();
        self.inner.ship_meta().await?;
        log_phases("checkpoint taken", &row, t0, t_flush, t_map);
        Ok(row)
    }

    /// Makes the volume's content checkpoint `name`'s: flushes, swaps the
    /// map, ships the metadata. Reads after it return the checkpoint's
    /// data; a mounted filesystem must be unmounted (or its VM stopped)
    /// first, as with any block-level restore.
    pub async fn restore(&self, name: &str) -> Result<CheckpointRow, VolumeError> {
        self.require_replica()?;
        let t0 = std::time::Instant::now();
        self.flush().await?;
        let t_flush = t0.elapsed();
        let row = {
            // No segment is applied to the map while it is swapped.
            let _applier = self.inner.apply_lock.lock().await;
            let inner = self.inner.clone();
            let name = name.to_string();
            tokio::task::spawn_blocking(move || {
                inner.meta.lock().unwrap().restore_checkpoint(&name)
            })
            .await
            .map_err(|e| VolumeError::Stopped(format!("restore task: {e}")))??
        };
        let t_map = t0.elapsed();
        self.inner.ship_meta().await?;
        // Segments alone cannot rebuild a map that was restored: mark the
        // replica position an attach must reach (recovery.rs checks it).
        self.inner.check_lease().await?;
        let txid = self
            .inner
            .replica_txid
            .load(std::sync::atomic::Ordering::Relaxed);
        crate::replicate::mark_restore(&self.inner.store, txid).await?;
        log_phases("restored", &row, t0, t_flush, t_map);
        Ok(row)
    }

    /// Checkpoints live only in the metadata, so they need its replica
    /// (an on-disk database) to be durable.
    pub(crate) fn require_replica(&self) -> Result<(), VolumeError> {
        if self.inner.replica.is_none() {
            return Err(VolumeError::BadConfig(
                "checkpoints need a cache directory (the metadata replica is shipped from it)"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn checkpoints(&self) -> Result<Vec<CheckpointRow>, VolumeError> {
        Ok(self.inner.meta.lock().unwrap().checkpoints()?)
    }

    /// Deletes checkpoint `name`, unless a fork was made from it.
    pub async fn delete_checkpoint(&self, name: &str) -> Result<(), VolumeError> {
        if let Some(pin) = crate::fork::fork_pins(&self.inner.store)
            .await?
            .into_iter()
            .find(|p| p.checkpoint == name)
        {
            return Err(VolumeError::ForkBase {
                checkpoint: name.to_string(),
                fork: pin.child_url,
            });
        }
        self.inner.meta.lock().unwrap().delete_checkpoint(name)?;
        self.inner.ship_meta().await
    }
}

/// Where a checkpoint or restore spent its time: flushing, in SQLite, shipping.
fn log_phases(
    what: &str,
    row: &CheckpointRow,
    t0: std::time::Instant,
    t_flush: std::time::Duration,
    t_map: std::time::Duration,
) {
    tracing::info!(
        name = row.name,
        extents = row.extents,
        flush_ms = t_flush.as_millis() as u64,
        map_ms = (t_map - t_flush).as_millis() as u64,
        ship_ms = (t0.elapsed() - t_map).as_millis() as u64,
        "{what}"
    );
}
