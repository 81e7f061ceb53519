//! Checkpoint, restore and delete on an attached volume: metadata
//! operations (the map is copied, never the data), durable in the store
//! before they return. See spritedisk_meta's checkpoint.rs and
//! docs/design/0004-checkpoints.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spritedisk_meta::CheckpointRow;

use crate::engine::Volume;
use crate::lease::now_unix;
use crate::VolumeError;

impl Volume {
    /// Checkpoints the volume as of every write acknowledged before the
    /// call: flushes, copies the map, ships the metadata.
    pub async fn checkpoint(&self, name: Option<&str>) -> Result<CheckpointRow, VolumeError> {
        let t0 = Instant::now();
        let (row, t_flush) = self.take_checkpoint(name, None).await?;
        let t_map = t0.elapsed();
        self.sync_metadata().await?;
        log_phases("checkpoint taken", &row, t0, t_flush, t_map);
        Ok(row)
    }

    /// The first half of [`Volume::checkpoint`]: flushes and records the
    /// checkpoint in the local map, if `deadline` lets it (else nothing is
    /// recorded and the error says why). It is durable once
    /// [`Volume::sync_metadata`] returns. `checkpoint --freeze` thaws the
    /// filesystem in between. Returns the row and how long the flush took.
    pub async fn take_checkpoint(
        &self,
        name: Option<&str>,
        deadline: Option<Deadline>,
    ) -> Result<(CheckpointRow, Duration), VolumeError> {
        self.require_replica()?;
        let t0 = Instant::now();
        if let Some(d) = &deadline {
            d.check(t0)?;
        }
        self.flush_to_store().await?;
        let t_flush = t0.elapsed();
        let inner = self.inner.clone();
        let name = name.map(str::to_string);
        let row = spritedisk_store::blocking::unblock(move || {
            // Under the map's lock: no segment reaches the map between
            // the claim and the version the checkpoint records.
            let mut meta = inner.meta.lock();
            if let Some(d) = &deadline {
                d.claim(t0)?;
            }
            meta.create_checkpoint(name.as_deref(), now_unix())
                .map_err(VolumeError::from)
        })
        .await
        .map_err(|e| VolumeError::Stopped(format!("checkpoint task: {e}")))??;
        Ok((row, t_flush))
    }

    /// Ships the metadata's changes to the store (a level-0 LTX file), then
    /// seals them with a barrier on the chain: what makes a checkpoint taken
    /// by [`Volume::take_checkpoint`] durable, and seen by any writer that
    /// takes the volume over (docs/design/0009; fails as fenced otherwise).
    pub async fn sync_metadata(&self) -> Result<(), VolumeError> {
        self.sync_metadata_at().await.map(|_| ())
    }

    /// [`Volume::sync_metadata`], returning the barrier's chain position
    /// and the replica TXID the shipped change reached.
    pub(crate) async fn sync_metadata_at(&self) -> Result<(u64, u64), VolumeError> {
        let (gate, barrier, _) = self.barrier();
        let shipped = self.inner.ship_meta().await;
        let txid = self
            .inner
            .replica_txid
            .load(std::sync::atomic::Ordering::Relaxed);
        // Open whatever the ship did: if it failed, the operation is not
        // acknowledged, and an empty barrier on the chain is harmless (the
        // pending metadata is shipped again before anything later is
        // acknowledged). Closing it would stop the engine over a store
        // brownout during a checkpoint.
        let _ = gate.send(Some(true));
        shipped?;
        self.inner.wait_applied(barrier).await?;
        Ok((barrier, txid))
    }

    /// A barrier behind everything written so far, the gate that lets its
    /// PUT go once the metadata change it seals is durable, and the position
    /// the barrier follows.
    fn barrier(&self) -> (tokio::sync::watch::Sender<Option<bool>>, u64, u64) {
        let (gate, open) = tokio::sync::watch::channel(None);
        let (seq, prev) = self.inner.seal_barrier(open);
        (gate, seq, prev)
    }

    /// Makes the volume's content checkpoint `name`'s: flushes, swaps the
    /// map, ships the metadata. Reads after it return the checkpoint's
    /// data; a mounted filesystem must be unmounted (or its VM stopped)
    /// first, as with any block-level restore.
    pub async fn restore(&self, name: &str) -> Result<CheckpointRow, VolumeError> {
        self.require_replica()?;
        let t0 = std::time::Instant::now();
        self.flush_to_store().await?;
        let t_flush = t0.elapsed();
        // The barrier first, and every segment before it applied: segments
        // sealed from here on are behind the barrier and are applied on top
        // of the restored map only after it landed, which it does only once
        // the restore is durable. So no FLUSH on top of the restored map is
        // acknowledged before that (C3 of the 5bc5be0 review), and if it
        // cannot be made durable the engine stops.
        let (gate, barrier, before) = self.barrier();
        if let Err(e) = self.inner.wait_applied(before).await {
            let _ = gate.send(Some(true)); // nothing changed yet
            return Err(e);
        }
        let row = {
            // No segment is applied to the map while it is swapped.
            let _applier = self.inner.apply_lock.lock().await;
            let inner = self.inner.clone();
            let name = name.to_string();
            let swapped = spritedisk_store::blocking::unblock(move || {
                inner.meta.lock().restore_checkpoint(&name)
            })
            .await
            .map_err(|e| VolumeError::Stopped(format!("restore task: {e}")));
            match swapped {
                Ok(Ok(row)) => row,
                Ok(Err(e)) => {
                    let _ = gate.send(Some(true)); // nothing changed
                    return Err(e.into());
                }
                Err(e) => return Err(e), // the gate closes: the engine stops
            }
        };
        let t_map = t0.elapsed();
        let durable = self.inner.ship_meta().await;
        // What the restore reached, not what background shipping adds later
        // (a taker whose replica listing predates that must not be refused).
        let txid = self
            .inner
            .replica_txid
            .load(std::sync::atomic::Ordering::Relaxed);
        // The barrier may land once the restore is in the replica; if it
        // cannot be, the gate closes and the engine stops.
        let _ = gate.send(Some(durable.is_ok()));
        durable?;
        self.inner.wait_applied(barrier).await?;
        // Segments alone cannot rebuild a map that was restored: mark the
        // replica position an attach must reach, and the barrier local
        // metadata must reach (recovery.rs checks both).
        self.inner.mark(txid, barrier).await?;
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
        Ok(self.inner.meta.lock().checkpoints()?)
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
        self.inner.meta.lock().delete_checkpoint(name)?;
        self.sync_metadata().await
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

/// When a checkpoint may still be recorded: until a moment (unix ms), and
/// unless cancelled first. `checkpoint --freeze` thaws the filesystem at
/// that moment, or earlier once it knows the checkpoint was taken or
/// cancelled: one atomic decides between [`Deadline::claim`] (recording)
/// and [`Deadline::cancel`], so a checkpoint never holds writes made after
/// the thaw.
#[derive(Debug, Clone)]
pub struct Deadline(Arc<AtomicU64>);

const CANCELLED: u64 = 0;
const CLAIMED: u64 = u64::MAX;

impl Deadline {
    pub fn at(not_after: SystemTime) -> Deadline {
        let ms = not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1)
            .clamp(1, CLAIMED - 1);
        Deadline(Arc::new(AtomicU64::new(ms)))
    }

    /// True if no checkpoint will be recorded under this deadline; false if
    /// one was recorded already.
    pub fn cancel(&self) -> bool {
        loop {
            let cur = self.0.load(Ordering::SeqCst);
            if cur == CLAIMED {
                return false;
            }
            if self
                .0
                .compare_exchange(cur, CANCELLED, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return true;
            }
        }
    }

    fn check(&self, t0: Instant) -> Result<u64, VolumeError> {
        let ms = self.0.load(Ordering::SeqCst);
        if ms == CANCELLED {
            return Err(VolumeError::CheckpointCancelled);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if ms != CLAIMED && now > ms {
            return Err(VolumeError::CheckpointTooLate {
                late_ms: now - ms,
                busy_ms: t0.elapsed().as_millis() as u64,
            });
        }
        Ok(ms)
    }

    /// Takes the right to record, if neither the moment nor a cancel came first.
    fn claim(&self, t0: Instant) -> Result<(), VolumeError> {
        let ms = self.check(t0)?;
        self.0
            .compare_exchange(ms, CLAIMED, Ordering::SeqCst, Ordering::SeqCst)
            .map(|_| ())
            .map_err(|_| VolumeError::CheckpointCancelled)
    }
}
