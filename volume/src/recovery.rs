//! Creating a volume, and rebuilding its map on attach: from the local
//! metadata database if there is one (else the replica), then walking the
//! chain of newer records in the store (chain.rs, docs/design/0009) and
//! fencing its end.
//!
//! Parallel uploads mean a crashed writer can leave segment N+1 in the store
//! without N. The walk stops at the gap; everything past it is a dead
//! writer's (a FLUSH waits for every earlier segment), and the attach's fence
//! at N makes it dead for good: it lies in the fence's dead range, which the
//! attach deletes. A segment shorter than its header says is a torn PUT and
//! counts as a gap.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use spritedisk_meta::{MetaDb, MetaError, VolumeRecord};
use spritedisk_store::{ObjectStore, StoreError};

use crate::config::{VolumeConfig, CONFIG_KEY};
use crate::lease::Held;
use crate::retry::retry_read;
use crate::VolumeError;

/// File name of the local metadata database inside the cache directory.
pub const META_FILE: &str = "meta.db";

pub use crate::chain::RollForward;

/// Creates a new volume at `url`; refuses to touch an existing one.
pub async fn create_volume(
    store: &Arc<dyn ObjectStore>,
    url: &str,
    size_bytes: u64,
) -> Result<VolumeConfig, VolumeError> {
    create_volume_as(store, url, VolumeConfig::new(size_bytes)).await
}

/// Creates the volume `config` describes at `url` (a fork's names its parent).
pub(crate) async fn create_volume_as(
    store: &Arc<dyn ObjectStore>,
    url: &str,
    config: VolumeConfig,
) -> Result<VolumeConfig, VolumeError> {
    config.validate().map_err(VolumeError::BadConfig)?;
    // Anything under the URL: a volume, or the leftovers of one (M13 of
    // the 5bc5be0 review: an old replica, lease or pin would be taken for
    // this volume's).
    let there = retry_read("", || store.list("")).await?;
    if there.iter().any(|m| m.key == CONFIG_KEY) {
        return Err(VolumeError::AlreadyExists {
            url: url.to_string(),
        });
    }
    if !there.is_empty() {
        let mut keys: Vec<&str> = there.iter().take(3).map(|m| m.key.as_str()).collect();
        if there.len() > keys.len() {
            keys.push("…");
        }
        return Err(VolumeError::NotEmpty {
            url: url.to_string(),
            keys: format!("{} objects: {}", there.len(), keys.join(", ")),
        });
    }
    let body = serde_json::to_vec_pretty(&config).expect("config serializes");
    match crate::retry::put_new(store, CONFIG_KEY, Bytes::from(body)).await {
        Ok(()) => Ok(config),
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
/// if it is still ours (else restore it from the replica), walk the chain,
/// place this writer's fence at its end (docs/design/0009), and delete the
/// records in the fence's dead range.
pub(crate) async fn recover(
    store: &Arc<dyn ObjectStore>,
    url: &str,
    config: &VolumeConfig,
    cache_dir: Option<&Path>,
    lease: &tokio::sync::Mutex<Held>,
    reclaim: bool,
) -> Result<(MetaDb, RollForward), VolumeError> {
    // A copy: the lease is renewed meanwhile (its etag moves, not its epoch).
    let mut held = lease.lock().await.clone();
    // The replica TXID the local database is known to equal, if any.
    let mut in_sync_with = None;
    // Where the database was restored from the replica, if it was.
    let mut from_replica = None;
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
                    Ok(()) => match discard_if_stale(dir, &path, config, &held, reclaim) {
                        Ok(()) => None,
                        Err(VolumeError::Meta(
                            e @ (MetaError::Corrupt(_) | MetaError::Open { .. }),
                        )) => Some(e.to_string()),
                        Err(e) => return Err(e),
                    },
                };
                if let Some(why) = corrupt {
                    // The store has the replica and the segments. The write
                    // log stays only if the lease we took was this
                    // directory's (its custody says whose history it
                    // continues; the database cannot any more).
                    tracing::warn!(
                        path = %path.display(),
                        why,
                        journal_kept = held.previous_ours,
                        "the local metadata database is corrupt: moved aside (.corrupt) and restored from the store"
                    );
                    if !held.previous_ours {
                        refuse_to_drop_on_reclaim(
                            dir,
                            reclaim,
                            "its metadata database is corrupt",
                        )?;
                        crate::wlog::discard(dir).map_err(VolumeError::WriteLog)?;
                    }
                    let _ = std::fs::rename(&path, path.with_extension("db.corrupt"));
                    for suffix in ["-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                    }
                    clean_at = None;
                }
            }
            // No local database (a fresh machine, a deleted cache, a stale
            // one): start from the replica rather than from the first segment.
            if path.exists() {
                // A copy of the directory older than a restore or a GC
                // deletion (a disk or VM snapshot, a backup, a power loss
                // that lost the last commits): walking from it would fence
                // the middle of the history. The mark says how far it must
                // reach; behind it, the replica rebuilds the database, and the
                // write log of that older state is never replayed.
                let local = MetaDb::open(&path)?.chain_tail()?.seq;
                let required = crate::replicate::required_position(store).await?;
                if local < required && reclaim {
                    return Err(VolumeError::NotRecoverable(format!(
                        "the local metadata reaches segment {local}, the store requires {required}: it is older than the store, and its write log cannot be replayed on top"
                    )));
                }
                if local < required {
                    tracing::warn!(
                        local,
                        required,
                        "the local metadata is older than the store (a stale copy of the cache directory?): rebuilding it from the replica; its unflushed write log is dropped"
                    );
                    // The journal first: a database gone with the journal
                    // still there would let the next attach replay it.
                    crate::wlog::discard(dir).map_err(VolumeError::WriteLog)?;
                    remove_db(&path);
                    clean_at = None;
                }
            }
            if !path.exists() && !held.previous_ours {
                // No database, and no custody of the lease we took: nothing
                // proves a write journal here continues this history (a
                // discard interrupted, a database deleted by hand).
                refuse_to_drop_on_reclaim(dir, reclaim, "it has no metadata database")?;
                crate::wlog::discard(dir).map_err(VolumeError::WriteLog)?;
            }
            let meta = if path.exists() {
                in_sync_with = clean_at.map(|m| m.txid);
                let meta = MetaDb::open(&path)?;
                // Every change from here on must stay in the log until shipped.
                meta.hold_wal_for_replication()?;
                meta
            } else {
                let (meta, txid) = open_from_replica(store, url, &path).await?;
                in_sync_with = txid;
                from_replica = Some(path.clone());
                meta
            };
            (meta, path.display().to_string())
        }
        None => {
            // Segments alone, which is all an in-memory map has.
            crate::replicate::check_restore_mark(store, None).await?;
            (MetaDb::open_in_memory()?, "memory".to_string())
        }
    };
    adopt(&mut meta, config, &where_)?;
    let mut walked = crate::chain::walk(store, &mut meta, config, &where_).await?;
    if let (Some(dir), None, true) = (cache_dir, &from_replica, walked.barriers > 0) {
        // The local database is behind a metadata change that only the
        // replica holds (a checkpoint, its deletion or a restore sealed by
        // a barrier it just walked over: a copy of the directory from before
        // it, or a crash before it was applied here). Rebuild it from the
        // replica; its write log stays (replay skips what the history has).
        tracing::warn!(
            barriers = walked.barriers,
            "the local metadata is behind a checkpoint or restore in the store: rebuilding it from the replica"
        );
        let path = dir.join(META_FILE);
        drop(meta);
        remove_db(&path);
        let (again, txid) = open_from_replica(store, url, &path).await?;
        meta = again;
        in_sync_with = txid;
        from_replica = Some(path);
        adopt(&mut meta, config, &where_)?;
        walked = crate::chain::walk(store, &mut meta, config, &where_).await?;
    }
    let history_epoch = meta.chain_tail()?.epoch;
    if history_epoch >= held.doc.epoch {
        // lease.json was deleted or rolled back: its epochs restarted below
        // the history's. Ours must exceed them for our fence to count.
        tracing::warn!(
            lease_epoch = held.doc.epoch,
            history_epoch,
            "the lease's epoch is not above the volume's history (lease.json deleted or restored from a backup?): raising it"
        );
        if let Some(dir) = cache_dir {
            // The raised lease is this directory's before it is written,
            // as any lease it takes on (custody.rs; second review of 0014).
            record_custody(dir, history_epoch + 1, &held.doc.holder.attach_id).await;
        }
        let mut current = lease.lock().await;
        crate::lease::raise_epoch(store, &mut current, history_epoch + 1).await?;
        held = current.clone();
    }
    let barriers_walked = walked.barriers;
    let mut rolled =
        crate::chain::fence(store, &mut meta, config, &where_, held.doc.epoch, walked).await?;
    // Placing the fence walked over a barrier that landed after our first
    // walk: the change it seals is only in the replica.
    let crossed = rolled.barriers > barriers_walked;
    let reread = match (&from_replica, cache_dir) {
        (Some(path), _) if held.took_over() || crossed => Some(path.clone()),
        (None, Some(dir)) if crossed => Some(dir.join(META_FILE)),
        _ => None,
    };
    if let Some(path) = &reread {
        // The writer we took over from may have shipped a metadata change
        // (a checkpoint, a restore) after we read the replica (or our local
        // copy) and sealed it with a barrier before our fence landed: it was
        // acknowledged, so read the replica again, now that nothing more of
        // that writer can be (docs/design/0009). The walk then ends at our
        // fence.
        drop(meta);
        remove_db(path);
        let (again, txid) = open_from_replica(store, url, path).await?;
        meta = again;
        in_sync_with = txid;
        adopt(&mut meta, config, &where_)?;
        crate::chain::walk(store, &mut meta, config, &where_).await?;
        let tail = meta.chain_tail()?;
        if tail.seq != rolled.tail {
            return Err(VolumeError::ForeignMetadata {
                path: where_,
                reason: format!(
                    "read again after this attach's fence at {}, the replica leads to segment {} instead",
                    rolled.tail, tail.seq
                ),
            });
        }
    }
    // A fence that an attach placed before it crashed holds none of the
    // writes of the log it left: replay continues the last other record.
    rolled.history_tail = meta.last_unfenced(rolled.history_tail)?;
    for key in &rolled.debris {
        tracing::warn!(
            key,
            "deleting a fenced or crashed writer's segment in the dead range of this attach's fence"
        );
        retry_read(key, || store.delete(key)).await?;
    }
    rolled.debris.clear();
    meta.set_writer_epoch(held.doc.epoch)?;
    if let Some(dir) = cache_dir {
        // This directory's from now on, durably, before any write is
        // acknowledged (taken from anyone else, it was not recorded yet).
        record_custody(dir, held.doc.epoch, &held.doc.holder.attach_id).await;
    }
    if rolled.applied > 1 {
        tracing::info!(
            applied = rolled.applied,
            next_seq = rolled.next_seq,
            "rolled forward over segments in the store"
        );
    }
    rolled.replica_txid = in_sync_with;
    Ok((meta, rolled))
}

/// Records the lease `epoch` of attach `attach_id` as the directory's
/// (custody.rs). A failure (a full disk) is logged, not fatal: the
/// database's epoch still vouches for the journal, as before the custody.
async fn record_custody(dir: &Path, epoch: u64, attach_id: &str) {
    let (dir, id) = (dir.to_path_buf(), attach_id.to_string());
    let res = spritedisk_store::blocking::unblock(move || crate::custody::record(&dir, epoch, &id))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = res {
        tracing::warn!(error = %e, "could not record this attach's lease as the cache directory's");
    }
}

/// Restores the local database at `path` from the volume's replica (an
/// empty one when there is none), checked against the restore mark, ready
/// to record changes for shipping. Returns it and the replica TXID it equals.
async fn open_from_replica(
    store: &Arc<dyn ObjectStore>,
    url: &str,
    path: &Path,
) -> Result<(MetaDb, Option<u64>), VolumeError> {
    let layout = crate::replicate::layout_for(url);
    let restored = crate::replicate::restore_from_replica(store, layout, path).await?;
    crate::replicate::check_restore_mark(store, restored).await?;
    let meta = match restored {
        Some(_) => MetaDb::open_restored(path)?,
        None => MetaDb::open(path)?,
    };
    // Every change from here on must stay in the log until shipped.

    meta.hold_wal_for_replication()?;
    Ok((meta, restored))
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
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
    reclaim: bool,
) -> Result<(), VolumeError> {
    let mut db = MetaDb::open(path)?;
    // Another volume's database is a mistake to report, not a cache to drop.
    adopt(&mut db, config, &path.display().to_string())?;
    let local = db.writer_epoch()?;
    let before = held.previous.as_ref().map(|p| p.epoch);
    // The lease we took was this directory's: by its custody (recorded
    // before the lease write, so an attach that died after it still
    // counts), or by the epoch its database recorded.
    if held.previous_ours || local == before {
        // Claimed at once, before anything else can fail: if this attach
        // dies before it is done (a `recover` killed by its start timeout),
        // the next one on this directory finds its own epoch as the
        // lease's previous, not another machine's, and keeps the write log.
        db.set_writer_epoch(held.doc.epoch)?;
        return Ok(());
    }
    drop(db);
    if reclaim {
        // D4 of the 5bc5be0 review: the device's filesystem may still be
        // mounted on writes only this write log holds.
        return Err(VolumeError::NotRecoverable(format!(
            "the volume was attached elsewhere (lease epoch {}) since this device's daemon (epoch {}) died; the writes it acknowledged but never flushed cannot be replayed on top of that. Unmount and detach the device (those writes are lost), then attach the volume again",
            before.map_or("none".into(), |e| e.to_string()),
            local.map_or("none".into(), |e| e.to_string())
        )));
    }
    tracing::warn!(
        local_epoch = local,
        volume_epoch = before,
        "the local metadata is from an older writer of this volume: discarding it and its unflushed write log, restoring from the store"
    );
    // The journal first: a database gone with the journal still there
    // would let the next attach replay it.
    crate::wlog::discard(dir).map_err(VolumeError::WriteLog)?;
    remove_db(path);
    Ok(())
}

/// `recover` (reclaim) never drops a write log with records in it: the
/// device's filesystem may be mounted on writes only it holds (D4 of the
/// 5bc5be0 review). Found by the second review of 0014.
fn refuse_to_drop_on_reclaim(dir: &Path, reclaim: bool, why: &str) -> Result<(), VolumeError> {
    if reclaim && crate::wlog::has_records(dir) {
        return Err(VolumeError::NotRecoverable(format!(
            "the cache directory {} holds a write log, but {why} and nothing proves the log continues this volume's history (its lease custody does not name the lease this attach took over); unmount and detach the device, then attach the volume again (the log's writes are lost)",
            dir.display()
        )));
    }
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
    let rolled = crate::chain::walk(store, &mut meta, &config, &where_).await?;
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
