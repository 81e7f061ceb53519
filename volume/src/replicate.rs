//! Shipping the metadata database to the object store as a Litestream 0.5
//! replica under `<volume>/meta/` (files built by `spritedisk_meta::replica`),
//! and restoring from it at attach on a machine with no local database.
//!
//! What must be in the replica before a FLUSH returns: only metadata that
//! cannot be rolled forward from segments. Today that is none — every map
//! change comes from a segment, and FLUSH already waits for the segment —
//! so map changes are shipped in the background every `replica_interval`
//! and the replica only bounds how many segments an attach rolls forward.
//! Metadata that segments cannot rebuild (checkpoints, restores, forks)
//! must call [`Inner::ship_meta`] before it reports success.
//!
//! One writer: files are created with If-None-Match, so a second writer can
//! never overwrite one; finding a different file under our name stops us.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use spritedisk_meta::ltx::{self, ReplicaLayout};
use spritedisk_meta::replica::{plan_restore, restore_image, ListedLtx, LtxObject, Replica};
use spritedisk_store::{ObjectStore, StoreError};

use crate::engine::Inner;
use crate::retry::retry_read;
use crate::VolumeError;

/// TXIDs of a writer that took over from a live holder start above
/// `(epoch − 1) << TXID_EPOCH_SHIFT` (docs/design/0003).
pub const TXID_EPOCH_SHIFT: u32 = 32;

/// Where the replica lives below the volume: `litestream restore <url>/meta`.
pub const REPLICA_PREFIX: &str = "meta/";

/// The key layout `litestream` reads for the volume's kind of URL.
pub fn layout_for(url: &str) -> ReplicaLayout {
    if url.starts_with("s3://") {
        ReplicaLayout::S3
    } else {
        ReplicaLayout::File
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Every LTX file of the replica, with its key.
pub async fn list_replica(
    store: &Arc<dyn ObjectStore>,
    layout: ReplicaLayout,
) -> Result<Vec<(ListedLtx, String)>, VolumeError> {
    let listed = retry_read(REPLICA_PREFIX, || store.list(REPLICA_PREFIX)).await?;
    let mut out = vec![];
    for m in listed {
        let rest = &m.key[REPLICA_PREFIX.len()..];
        let Some((dir, name)) = rest.rsplit_once('/') else {
            continue;
        };
        let level = match layout {
            ReplicaLayout::File => dir.strip_prefix("ltx/").and_then(|l| l.parse().ok()),
            ReplicaLayout::S3 => u32::from_str_radix(dir, 16).ok().filter(|_| dir.len() == 4),
        };
        if let (Some(level), Some((min_txid, max_txid))) = (level, ReplicaLayout::parse_name(name))
        {
            out.push((
                ListedLtx {
                    level,
                    min_txid,
                    max_txid,
                },
                m.key,
            ));
        }
    }
    Ok(out)
}

/// Rebuilds the local database at `path` from the replica. Returns the
/// newest TXID restored, or None when there is no replica. A corrupt file
/// or a gap ends the restore at the last good file (an older, consistent
/// state; the roll-forward over segments brings it up to date) and is
/// logged with the file's name.
pub async fn restore_from_replica(
    store: &Arc<dyn ObjectStore>,
    layout: ReplicaLayout,
    path: &Path,
) -> Result<Option<u64>, VolumeError> {
    let listing = list_replica(store, layout).await?;
    let keys: std::collections::HashMap<(u32, u64, u64), String> = listing
        .iter()
        .map(|(f, k)| ((f.level, f.min_txid, f.max_txid), k.clone()))
        .collect();
    let files: Vec<ListedLtx> = listing.iter().map(|(f, _)| *f).collect();
    let (plan, gap) = plan_restore(&files);
    if let Some(gap) = gap {
        tracing::error!(%gap, "metadata replica has a gap: restoring up to it, then rolling forward over segments");
    }
    let mut decoded = vec![];
    for f in &plan {
        let key = &keys[&(f.level, f.min_txid, f.max_txid)];
        let raw = retry_read(key, || store.get(key)).await?;
        match ltx::decode(key, &raw) {
            Ok(d) => decoded.push(d),
            Err(e) => {
                tracing::error!(error = %e, "corrupt metadata replica file: restoring up to the file before it, then rolling forward over segments");
                break;
            }
        }
    }
    let Some(last) = decoded.last().map(|d| d.header.max_txid) else {
        return Ok(None);
    };
    let image = restore_image(&decoded)?;
    install_image(path, &image)
        .map_err(|e| VolumeError::BadConfig(format!("cannot write {}: {e}", path.display())))?;
    tracing::info!(
        txid = last,
        files = decoded.len(),
        bytes = image.len(),
        "restored metadata from the replica"
    );
    Ok(Some(last))
}

/// Writes a database image as the file at `path` (no stale log), synced
/// with its directory entry: a copy torn by a power loss would be taken
/// for a corrupt database at the next attach, which restores it again but
/// cannot prove the write journal beside it is this directory's without
/// its lease custody (docs/design/0014). Once per restore.
fn install_image(path: &Path, image: &[u8]) -> std::io::Result<()> {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let tmp = path.with_extension("restore");
    let mut f = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut f, image)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The replica TXID of the last restore: a map rebuilt from an older state
/// plus segments would silently miss it, so attach refuses that.
const RESTORE_MARK_KEY: &str = "meta/restored.json";

/// Conditional writes of the mark lost to another writer's in a row
/// before giving up.
const MARK_ATTEMPTS_MAX: u32 = 8;

/// Records that the map changed outside its segments at replica TXID
/// `txid`, sealed by the barrier at chain position `seq`, by the writer of
/// lease epoch `epoch`: every attach must start from a replica that reaches
/// `txid`, and from local metadata that reaches `seq` (docs/design/0009,
/// "Local state"). Written only once the barrier is on the chain, so a
/// fenced writer never writes one for a change the history lacks; and
/// conditionally, never over a newer epoch's mark (M1 of the 5bc5be0
/// review: a late PUT cannot take a newer writer's mark back).
pub(crate) async fn mark_restore(
    store: &Arc<dyn ObjectStore>,
    epoch: u64,
    txid: u64,
    seq: u64,
) -> Result<(), VolumeError> {
    let key = RESTORE_MARK_KEY;
    let body_of = |txid: u64, seq: u64| {
        Bytes::from(format!(
            "{{\"txid\": {txid}, \"seq\": {seq}, \"epoch\": {epoch}}}\n"
        ))
    };
    let mut body = body_of(txid, seq);
    for _ in 0..MARK_ATTEMPTS_MAX {
        let res = match retry_read(key, || store.head(key)).await? {
            None => store.put_if_absent(key, body.clone()).await,
            Some(m) => {
                let raw = match retry_read(key, || store.get(key)).await {
                    Ok(raw) => raw,
                    Err(StoreError::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                };
                if raw == body {
                    // Our own earlier attempt, its reply lost.
                    return Ok(());
                }
                let theirs = serde_json::from_slice::<serde_json::Value>(&raw).ok();
                let field = |f: &str| theirs.as_ref().and_then(|v| v[f].as_u64()).unwrap_or(0);
                let (their_epoch, their_seq, their_txid) =
                    (field("epoch"), field("seq"), field("txid"));
                if their_epoch > epoch {
                    return Err(VolumeError::Fenced(format!(
                        "{key} was written by a writer of epoch {their_epoch}, this daemon writes epoch {epoch}"
                    )));
                }
                if their_epoch == epoch {
                    // Two changes of ours (a restore and a GC) may mark in
                    // either order: the mark only ever grows, in both.
                    if their_seq >= seq && their_txid >= txid {
                        return Ok(());
                    }
                    body = body_of(txid.max(their_txid), seq.max(their_seq));
                }
                store.put_if_match(key, body.clone(), &m.etag).await
            }
        };
        match res {
            Ok(_) => return Ok(()),
            // Changed since we looked (or our reply was lost): look again.
            Err(StoreError::PreconditionFailed(_)) => continue,
            Err(e) if e.is_transient() => {
                tracing::warn!(key, error = %e, "writing the restore mark failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(VolumeError::Stopped(format!(
        "{key} kept changing under {MARK_ATTEMPTS_MAX} attempts to write it"
    )))
}

/// The chain position local metadata must have reached to be used: the
/// last restore's or GC deletion's (0: no such mark, or one written before
/// positions were recorded).
pub(crate) async fn required_position(store: &Arc<dyn ObjectStore>) -> Result<u64, VolumeError> {
    match retry_read(RESTORE_MARK_KEY, || store.get(RESTORE_MARK_KEY)).await {
        Ok(raw) => Ok(serde_json::from_slice::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| v["seq"].as_u64())
            .unwrap_or(0)),
        Err(StoreError::NotFound(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Fails if the last restore is newer than `restored_txid` (what the
/// replica gave; None: nothing).
pub(crate) async fn check_restore_mark(
    store: &Arc<dyn ObjectStore>,
    restored_txid: Option<u64>,
) -> Result<(), VolumeError> {
    let raw = match retry_read(RESTORE_MARK_KEY, || store.get(RESTORE_MARK_KEY)).await {
        Ok(raw) => raw,
        Err(StoreError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let need: u64 = serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()
        .and_then(|v| v["txid"].as_u64())
        .unwrap_or(u64::MAX);
    if restored_txid.unwrap_or(0) < need {
        return Err(VolumeError::BadConfig(format!(
            "the metadata replica ends at TXID {} but the volume's map was changed outside its segments (restored to a checkpoint, or segments collected by gc) at TXID {need}: \
             its map cannot be rebuilt from segments alone (see the errors above about the replica's files)",
            restored_txid.unwrap_or(0)
        )));
    }
    Ok(())
}

/// Written at a clean detach once everything is shipped: the local database
/// then equals the replica at this TXID, and its file has this crc32c. Taken
/// (deleted) at attach, so a crash never leaves a stale claim.
const CLEAN_MARK: &str = "meta.replica";

/// What a clean detach left: the replica TXID the database equals and the
/// database file's crc32c (None from a build that did not record it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CleanMark {
    pub txid: u64,
    pub crc: Option<u32>,
}

/// crc32c of a file, read in 1 MiB chunks (a million-extent map is ~100 MB).
pub(crate) fn file_crc(path: &Path) -> std::io::Result<u32> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(crc);
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
    }
}

pub(crate) fn write_clean_mark(cache_dir: &Path, txid: u64) {
    let crc = file_crc(&cache_dir.join(crate::recovery::META_FILE)).ok();
    let line = match crc {
        Some(c) => format!("{txid} {c:08x}"),
        None => txid.to_string(),
    };
    let _ = std::fs::write(cache_dir.join(CLEAN_MARK), line);
}

pub(crate) fn take_clean_mark(cache_dir: &Path) -> Option<CleanMark> {
    let p = cache_dir.join(CLEAN_MARK);
    let raw = std::fs::read_to_string(&p).ok();
    let _ = std::fs::remove_file(&p);
    let raw = raw?;
    let mut it = raw.split_whitespace();
    let txid = it.next()?.parse().ok()?;
    let crc = it.next().and_then(|c| u32::from_str_radix(c, 16).ok());
    Some(CleanMark { txid, crc })
}

/// Shipping state: the replica position and the keys a snapshot supersedes.
#[derive(Debug)]
pub(crate) struct Shipper {
    pub rep: Replica,
    /// A built file not yet durable. The log it came from is already folded
    /// into the database, so it is retried as it is, never rebuilt.
    pub pending: Option<LtxObject>,
    /// Files older than the newest snapshot, deleted once it is durable.
    pub superseded: Vec<String>,
    pub files_shipped: u64,
}

impl Shipper {
    pub fn new(layout: ReplicaLayout) -> Shipper {
        Shipper {
            rep: Replica::new(layout, 0),
            pending: None,
            superseded: vec![],
            files_shipped: 0,
        }
    }
}

impl Inner {
    /// At attach: continue the replica's TXIDs with a snapshot of the
    /// database as it is now, then delete the files it supersedes.
    /// `in_sync_with`: the replica TXID the database equaled before this
    /// attach changed it; then the replica just continues (no snapshot, which
    /// for a million-extent map is tens of MB to upload).
    pub(crate) async fn start_replica(
        self: &Arc<Self>,
        in_sync_with: Option<u64>,
    ) -> Result<(), VolumeError> {
        let Some(shipper) = &self.replica else {
            return Ok(());
        };
        let mut s = shipper.lock().await;
        let listing = list_replica(&self.store, s.rep.layout).await?;
        let mut max = listing.iter().map(|(f, _)| f.max_txid).max().unwrap_or(0);
        let took_over = self.lease.held.lock().await.took_over();
        if took_over {
            // The fenced writer may still ship files: number ours far above
            // anything it can reach, so a restore never mixes the two.
            max = max.max((self.epoch.max(1) - 1) << TXID_EPOCH_SHIFT);
        }
        s.rep = Replica::new(s.rep.layout, max);
        s.superseded = listing.into_iter().map(|(_, k)| k).collect();
        if in_sync_with == Some(max) && !took_over && max > 0 {
            // The log holds exactly this attach's changes: they are the next file.
            tracing::info!(
                txid = max,
                "local metadata equals the replica: continuing it"
            );
            self.replica_txid
                .store(max, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        self.build_snapshot(&mut s).await?;
        self.put_pending(&mut s).await
    }

    async fn build_snapshot(self: &Arc<Self>, s: &mut Shipper) -> Result<(), VolumeError> {
        let me = self.clone();
        let mut rep = s.rep.clone();
        let (obj, rep) = spritedisk_store::blocking::unblock(move || {
            let obj = me.meta.lock().replica_snapshot(&mut rep, now_ms());
            obj.map(|o| (o, rep))
        })
        .await
        .map_err(|e| VolumeError::Stopped(format!("snapshot task: {e}")))??;
        s.rep = rep;
        s.pending = Some(obj);
        Ok(())
    }

    /// Makes the pending file durable; after a snapshot, deletes what it covers.
    async fn put_pending(&self, s: &mut Shipper) -> Result<(), VolumeError> {
        let Some(obj) = s.pending.clone() else {
            return Ok(());
        };
        self.put_ltx(&obj).await?;
        s.pending = None;
        s.files_shipped += 1;
        self.counters.add_replica_file(obj.bytes.len() as u64);
        self.replica_txid
            .store(obj.max_txid, std::sync::atomic::Ordering::Relaxed);
        let key = format!("{REPLICA_PREFIX}{}", obj.key);
        if obj.level == ltx::SNAPSHOT_LEVEL {
            for old in std::mem::take(&mut s.superseded) {
                if let Err(e) = self.store.delete(&old).await {
                    tracing::debug!(key = old, error = %e, "deleting a superseded replica file");
                }
            }
        }
        s.superseded.push(key);
        Ok(())
    }

    /// Ships every metadata change committed so far as a level-0 file and
    /// returns once it is durable: what a command (checkpoint, restore, GC)
    /// waits for, so it costs O(changes), never a snapshot of the database.
    /// Gives up after the flush timeout, like a FLUSH (the file stays
    /// pending and the background loop keeps trying).
    pub(crate) async fn ship_meta(self: &Arc<Self>) -> Result<(), VolumeError> {
        let limit = self.opts.flush_timeout;
        match tokio::time::timeout(limit, self.ship(false)).await {
            Ok(r) => r,
            Err(_) => Err(VolumeError::FlushTimeout {
                timeout_ms: limit.as_millis() as u64,
                last_error: self
                    .state
                    .lock()
                    .unwrap()
                    .last_store_error
                    .clone()
                    .unwrap_or_else(|| "shipping the metadata replica".into()),
            }),
        }
    }

    /// `ship_meta`, or a snapshot when `Replica::snapshot_due` says the
    /// level-0 files outweigh one: the background loop's job.
    async fn ship(self: &Arc<Self>, snapshot_if_due: bool) -> Result<(), VolumeError> {
        let Some(shipper) = &self.replica else {
            return Ok(());
        };
        let mut s = shipper.lock().await;
        self.put_pending(&mut s).await?;
        if snapshot_if_due && s.rep.snapshot_due() {
            self.build_snapshot(&mut s).await?;
        } else {
            let mut rep = s.rep.clone();
            let obj = self.meta.lock().replica_changes(&mut rep, now_ms())?;
            s.rep = rep;
            s.pending = obj;
        }
        self.put_pending(&mut s).await
    }

    /// Creates one LTX file, retrying transient errors until the engine stops.
    async fn put_ltx(&self, obj: &LtxObject) -> Result<(), VolumeError> {
        let key = format!("{REPLICA_PREFIX}{}", obj.key);
        let bytes = Bytes::from(obj.bytes.clone());
        let mut backoff = self.opts.retry_backoff_min;
        loop {
            let err = match self.store.put_if_absent(&key, bytes.clone()).await {
                Ok(_) => {
                    self.counters.add_put(bytes.len() as u64);
                    return Ok(());
                }
                Err(StoreError::PreconditionFailed(_)) => match self.store.get(&key).await {
                    // Our own earlier attempt, its reply lost.
                    Ok(existing) if existing == bytes => return Ok(()),
                    Ok(_) => {
                        let why = format!(
                            "metadata replica file {key} was written by another writer: this daemon no longer owns the volume"
                        );
                        self.stop(&why);
                        return Err(VolumeError::Stopped(why));
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if !err.is_transient() {
                return Err(err.into());
            }
            if let Some(why) = &self.state.lock().unwrap().stopped {
                return Err(VolumeError::Stopped(why.clone()));
            }
            tracing::warn!(key, error = %err, "replica upload failed; retrying");
            self.state.lock().unwrap().last_store_error = Some(format!("put {key}: {err}"));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.opts.retry_backoff_max);
        }
    }
}

/// Ships metadata changes every `replica_interval` until the volume stops.
pub(crate) async fn replica_loop(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => i.opts.replica_interval.max(Duration::from_millis(10)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.state.lock().unwrap().stopped.is_some() {
            return;
        }
        if let Err(e) = inner.ship(true).await {
            tracing::warn!(error = %e, "shipping metadata to the replica failed");
            inner.state.lock().unwrap().last_store_error = Some(format!("metadata replica: {e}"));
        }
    }
}
