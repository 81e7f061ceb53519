//! Which leases this cache directory held: its write journal is replayed
//! only by an attach whose previous lease is one of them (docs/design/0014,
//! 0002). Kept in `CACHE_DIR/lease-custody.json`, written durably:
//! - before the lease write that takes the next epoch from one of them (an
//!   intent: the attach may be killed, fail or lose power after its lease
//!   write and before anything else), and
//! - at the end of an attach that took the lease from anyone else (after
//!   dropping the journal it found).
//!
//! A lease is named by its epoch and its holder's `attach_id` (unique per
//! attach), so an intent whose lease write lost the race to another machine
//! names a lease that never existed. Before it, the directory's database
//! recorded the epoch once the attach had read it, so such a window dropped
//! the journal, with the flushed writes of local durability in it.
//!
//! Written by hand: a few lines of JSON over the temp-file, fsync, rename,
//! fsync-directory sequence.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

const FILE: &str = "lease-custody.json";
/// Leases remembered: the newest few (an intent whose write failed
/// transiently is followed by another attempt at the same epoch).
const KEPT_MAX: usize = 8;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Custody {
    /// (epoch, attach_id), oldest first.
    leases: Vec<(u64, String)>,
}

fn read(dir: &Path) -> Custody {
    std::fs::read(dir.join(FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Whether the lease `epoch` of attach `attach_id` is one this directory held.
pub(crate) fn holds(dir: &Path, epoch: u64, attach_id: &str) -> bool {
    read(dir)
        .leases
        .iter()
        .any(|(e, a)| *e == epoch && a == attach_id)
}

/// Records the lease `epoch` of attach `attach_id` as this directory's,
/// durably (file and directory synced) before it returns.
pub(crate) fn record(dir: &Path, epoch: u64, attach_id: &str) -> Result<(), String> {
    let mut c = read(dir);
    if c.leases.iter().any(|(e, a)| *e == epoch && a == attach_id) {
        return Ok(());
    }
    c.leases.push((epoch, attach_id.to_string()));
    let drop = c.leases.len().saturating_sub(KEPT_MAX);
    c.leases.drain(..drop);
    write(dir, &c)
}

/// Records the lease `next` that an attach is about to write over the
/// lease `vouch`, which this directory holds. Entries past `vouch`'s epoch
/// go: the lease still reads `vouch`, so none of them was ever written (an
/// intent whose write failed), and a run of failed attaches must not push
/// `vouch` out of the list (found by the second review of 0014).
pub(crate) fn record_intent(
    dir: &Path,
    vouch: (u64, &str),
    next: (u64, &str),
) -> Result<(), String> {
    let mut c = read(dir);
    c.leases.retain(|(e, _)| *e <= vouch.0);
    c.leases.push((next.0, next.1.to_string()));
    while c.leases.len() > KEPT_MAX {
        // The oldest that is not the one vouching.
        let i = c
            .leases
            .iter()
            .position(|(e, a)| !(*e == vouch.0 && a == vouch.1))
            .unwrap_or(0);
        c.leases.remove(i);
    }
    write(dir, &c)
}

fn write(dir: &Path, c: &Custody) -> Result<(), String> {
    let err =
        |what: &str, e: std::io::Error| format!("lease custody {what} in {}: {e}", dir.display());
    // Its own temporary name: two attaches on one directory (a mistake
    // the lease turns away) must not interleave one file.
    let tmp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
    let mut f = File::create(&tmp).map_err(|e| err("create", e))?;
    f.write_all(&serde_json::to_vec(c).map_err(|e| format!("lease custody: {e}"))?)
        .map_err(|e| err("write", e))?;
    f.sync_all().map_err(|e| err("sync", e))?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(|e| err("rename", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("sync", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_newest_leases_only() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!holds(dir.path(), 1, "a"));
        for e in 1..=10 {
            record(dir.path(), e, &format!("a{e}")).unwrap();
        }
        assert!(holds(dir.path(), 10, "a10") && holds(dir.path(), 3, "a3"));
        assert!(!holds(dir.path(), 2, "a2"), "older than the kept leases");
        assert!(
            !holds(dir.path(), 10, "a9"),
            "another attach's lease at that epoch"
        );
    }

    /// A lease taken from the directory's own, then many attaches that each
    /// recorded the next lease and failed to write it: the lease they all
    /// read stays vouched for.
    #[test]
    fn failed_intents_never_push_out_the_lease_they_follow() {
        let dir = tempfile::tempdir().unwrap();
        record(dir.path(), 5, "a").unwrap();
        record_intent(dir.path(), (5, "a"), (6, "b")).unwrap();
        for i in 0..3 * KEPT_MAX {
            record_intent(dir.path(), (6, "b"), (7, &format!("c{i}"))).unwrap();
        }
        assert!(
            holds(dir.path(), 6, "b"),
            "the lease the failed attaches read"
        );
        assert!(holds(dir.path(), 7, &format!("c{}", 3 * KEPT_MAX - 1)));
        assert!(!holds(dir.path(), 7, "c0"), "a failed intent is kept");
    }
}
