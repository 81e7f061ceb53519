//! Deleting a volume: every object under its URL, and its pin in the
//! parent if it is a fork (issue 20).
//!
//! Who may not lose data to it:
//! - A writer: `rm` takes the lease like an attach (refused while one is
//!   attached, naming it) and renews it while it works, and deletes
//!   `volume.json` first, so no attach or fork can start on it afterwards
//!   (they load the config first). One that took the lease with `--force`
//!   before that makes `rm` put `volume.json` back and stop.
//! - A fork: its pin in this store says it reads this volume's segments.
//!   `rm` refuses while there is one. A fork being made writes its pin and
//!   only then reads this volume (its config included), so it either wrote
//!   its pin before `volume.json` was deleted — and the listing after the
//!   deletion sees it: `volume.json` is put back and `rm` refuses — or it
//!   finds no volume and fails.
//! - The parent of a fork being removed: the pin is deleted last, once
//!   nothing of the fork is left to read the parent's segments.
//!
//! Interrupted, `rm` can be run again: without `volume.json` the rest are
//! leftovers, deleted the same way, unless a fork pin is among them.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use spritedisk_store::{ObjectStore, StoreError};

use crate::config::CONFIG_KEY;
use crate::fork::{fork_pins, FORKS_PREFIX};
use crate::lease::{self, LEASE_KEY};
use crate::retry::retry_read;
use crate::VolumeError;

/// Deletes in flight at once.
const DELETES_INFLIGHT_MAX: usize = 16;

/// What `rm` did.
#[derive(Debug, Clone, Serialize)]
pub struct RemoveReport {
    pub url: String,
    pub objects_deleted: u64,
    /// The parent whose pin of this fork was released.
    pub released_pin_in: Option<String>,
    /// Only leftovers were there (no `volume.json`: an interrupted `rm`).
    pub leftovers_only: bool,
}

/// Removes the volume at `url` and everything under it.
pub async fn remove_volume(
    store: &Arc<dyn ObjectStore>,
    url: &str,
    lease_ttl: std::time::Duration,
) -> Result<RemoveReport, VolumeError> {
    let config = match retry_read(CONFIG_KEY, || store.get(CONFIG_KEY)).await {
        Ok(raw) => Some(raw),
        Err(StoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let mut report = RemoveReport {
        url: url.to_string(),
        objects_deleted: 0,
        released_pin_in: None,
        leftovers_only: config.is_none(),
    };
    let mut parent_pin: Option<(String, String)> = None;
    // Renewed while `rm` works: an attach cannot take it without --force.
    let mut keeper = None;
    if config.is_none() {
        // Leftovers (an `rm` interrupted after volume.json went): forks
        // may still read them (one that pinned it during that `rm`).
        refuse_if_forked(store, url).await?;
    }
    if let Some(raw) = &config {
        let mut parent = None;
        let cfg = crate::recovery::load_config(store, url).await?;
        let held = lease::acquire(store, url, lease_ttl, false, None).await?;
        let kept = lease::Keeper::start(store.clone(), held.clone(), lease_ttl);
        let refused = async {
            refuse_if_forked(store, url).await?;
            // The parent that pins it, if it is a fork: its config names
            // it; a fork made before that was recorded, its last origin.
            parent = match &cfg.fork_of {
                Some(p) => Some(p.clone()),
                None => match crate::recovery::inspect_volume(store, url, None).await {
                    Ok(insp) => insp.meta.origins()?.last().map(|(_, p)| p.clone()),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the volume's metadata to find whether it is a fork: if it is, delete forks/{}.json in its parent by hand", cfg.id);
                        None
                    }
                },
            };
            retry_read(CONFIG_KEY, || store.delete(CONFIG_KEY)).await?;
            // Read afresh, not the keeper's last renewal: a `--force` attach
            // that loaded the config before it went may hold it now. One
            // that takes it after this read finds no config (an attach
            // reads it again once it holds the lease) and fails.
            let ours = kept.held.lock().await.doc.epoch;
            let taken = match lease::read(store).await? {
                // A takeover always raises the epoch (a renewal keeps it).
                Some((doc, _)) if doc.epoch != ours => Some(VolumeError::Fenced(format!(
                    "{} took the lease while rm ran",
                    doc.holder
                ))),
                _ => kept.lost().map(VolumeError::Fenced),
            };
            if let Some(e) = refuse_if_forked(store, url).await.err().or(taken) {
                // A fork pinned it, or a writer took it (--force), before
                // the config went: put it back.
                retry_read(CONFIG_KEY, || store.put_if_absent(CONFIG_KEY, raw.clone())).await?;
                return Err(e);
            }
            Ok(())
        }
        .await;
        if let Err(e) = refused {
            kept.stop();
            let held = kept.held.lock().await.clone();
            let _ = lease::release(store, &held).await;
            return Err(e);
        }
        keeper = Some(kept);
        parent_pin = parent.map(|p| (p, format!("{FORKS_PREFIX}{}.json", cfg.id)));
    }
    let keys: Vec<String> = retry_read("", || store.list(""))
        .await?
        .into_iter()
        .map(|m| m.key)
        .filter(|k| k != LEASE_KEY)
        .collect();
    if config.is_none() && keys.is_empty() && store.head(LEASE_KEY).await?.is_none() {
        return Err(VolumeError::NoVolume {
            url: url.to_string(),
        });
    }
    report.objects_deleted = delete_all(store, &keys).await?;
    if let Some(k) = keeper {
        k.stop();
    }
    // Last: while it is there, the volume is still leased.
    report.objects_deleted += delete_all(store, &[LEASE_KEY.to_string()]).await?;
    if let Some((parent_url, pin_key)) = parent_pin {
        let parent = spritedisk_store::open_url(&parent_url)?;
        match release_pin(&parent, &pin_key, url).await {
            Ok(true) => report.released_pin_in = Some(parent_url),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(parent = parent_url, key = pin_key, error = %e, "the fork is removed, but its pin in the parent could not be deleted: the parent keeps its base checkpoint until it is deleted by hand")
            }
        }
    }
    Ok(report)
}

/// Deletes the pin `key` in `parent` if it names this fork's URL. A copy
/// of a fork at another URL has the same id, and so the same pin key: the
/// pin is the original's, and deleting it would let the parent collect
/// what the original reads. Returns whether it was deleted.
async fn release_pin(
    parent: &Arc<dyn ObjectStore>,
    key: &str,
    url: &str,
) -> Result<bool, VolumeError> {
    let raw = match retry_read(key, || parent.get(key)).await {
        Ok(raw) => raw,
        Err(StoreError::NotFound(_)) => {
            tracing::info!(key, "the parent holds no pin of this fork");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let pin = crate::fork::ForkPin::parse(key, &raw)?;
    // The same store under another spelling (a trailing slash) is this URL.
    let same = |a: &str, b: &str| {
        a == b
            || matches!(
                (spritedisk_store::StoreUrl::parse(a), spritedisk_store::StoreUrl::parse(b)),
                (Ok(x), Ok(y)) if x == y
            )
    };
    if !same(&pin.child_url, url) {
        tracing::warn!(
            key,
            pinned = pin.child_url,
            "the parent's pin with this volume's id names another URL (this volume is a copy of that fork, or was reached under another spelling): kept"
        );
        return Ok(false);
    }
    match retry_read(key, || parent.delete(key)).await {
        Ok(()) | Err(StoreError::NotFound(_)) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

async fn refuse_if_forked(store: &Arc<dyn ObjectStore>, url: &str) -> Result<(), VolumeError> {
    let pins = fork_pins(store).await?;
    if pins.is_empty() {
        return Ok(());
    }
    let forks: Vec<String> = pins.into_iter().map(|p| p.child_url).collect();
    Err(VolumeError::HasForks {
        url: url.to_string(),
        forks: forks.join(", "),
    })
}

/// Deletes `keys` (a missing one counts as deleted); returns how many.
async fn delete_all(store: &Arc<dyn ObjectStore>, keys: &[String]) -> Result<u64, VolumeError> {
    // Owned futures: `rm` may run on a spawned task.
    let deletes = keys.iter().cloned().map(|k| {
        let store = store.clone();
        async move {
            match retry_read(&k, || store.delete(&k)).await {
                Ok(()) | Err(StoreError::NotFound(_)) => Ok::<u64, VolumeError>(1),
                Err(e) => Err(e.into()),
            }
        }
    });
    let done: Vec<u64> = futures::stream::iter(deletes)
        .buffer_unordered(DELETES_INFLIGHT_MAX)
        .try_collect()
        .await?;
    Ok(done.len() as u64)
}
