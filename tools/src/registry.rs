//! Where attached ublk devices are recorded, so `detach`, `list` and
//! `recover` can find their daemons: one JSON file per device under
//! `$SPRITEDISK_RUN_DIR` (default `/run/spritedisk`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub dev_id: u32,
    pub device: String,
    pub url: String,
    pub pid: u32,
    pub cache_dir: PathBuf,
    pub queues: u16,
    pub queue_depth: u16,
    pub since_unix: u64,
    /// Set when a warm pool's daemon serves the device: `detach` asks it to
    /// unbind the volume (the device goes back to the pool) instead of ending it.
    #[serde(default)]
    pub pool_slot: Option<u64>,
    /// What its FLUSH waits for: `recover` restarts the daemon the same way
    /// (a local-mode journal holds flushed writes not yet uploaded).
    #[serde(default)]
    pub durability: spritedisk_volume::Durability,
}

pub fn dir() -> PathBuf {
    std::env::var_os("SPRITEDISK_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/spritedisk"))
}

fn path(dev_id: u32) -> PathBuf {
    dir().join(format!("ublkb{dev_id}.json"))
}

pub fn write(e: &Entry) -> Result<()> {
    std::fs::create_dir_all(dir()).with_context(|| format!("creating {}", dir().display()))?;
    let tmp = path(e.dev_id).with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(e)?)?;
    std::fs::rename(&tmp, path(e.dev_id))?;
    Ok(())
}

pub fn remove(dev_id: u32) {
    let _ = std::fs::remove_file(path(dev_id));
}

pub fn all() -> Vec<Entry> {
    let mut out: Vec<Entry> = std::fs::read_dir(dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|f| f.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|f| serde_json::from_slice(&std::fs::read(f.path()).ok()?).ok())
        .collect();
    out.sort_by_key(|e| e.dev_id);
    out
}

/// The entry for `/dev/ublkbN`, `ublkbN`, `N` or a volume URL.
pub fn find(what: &str) -> Option<Entry> {
    let id = what
        .trim_start_matches("/dev/")
        .trim_start_matches("ublkb")
        .parse::<u32>()
        .ok();
    all()
        .into_iter()
        .find(|e| Some(e.dev_id) == id || e.url == what || e.device == what)
}

pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}
