//! Where the warm pool is written down, so that `attach --pool`, `pool
//! status`, `detach` and the pool's manager find its daemons: under
//! `$SPRITEDISK_RUN_DIR/pool/` (default `/run/spritedisk/pool`), `pool.json`
//! for the manager and, per standby daemon, `slot-K.json` (its state, which
//! it writes itself) and `slot-K.sock` (where it takes bind requests).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::registry;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolInfo {
    pub pid: u32,
    /// Standby devices the manager keeps ready.
    pub size: u64,
    /// Each standby's local state goes in `cache_dir/slot-K`.
    pub cache_dir: PathBuf,
    /// A store URL the standbys connect to ahead of any attach, if given.
    pub store: Option<String>,
    pub since_unix: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Setting up its device.
    Starting,
    /// Device live, no volume: the next `attach --pool` may take it.
    Ready,
    /// Opening a volume for an `attach --pool`.
    Binding,
    /// Serving a volume (also in the device registry).
    Bound,
    /// Flushing its volume for a detach, or leaving.
    Returning,
}

impl SlotState {
    pub fn name(self) -> &'static str {
        match self {
            SlotState::Starting => "starting",
            SlotState::Ready => "ready",
            SlotState::Binding => "binding",
            SlotState::Bound => "bound",
            SlotState::Returning => "returning",
        }
    }
}

/// One standby daemon, as it last wrote itself down.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotRecord {
    pub slot: u64,
    pub pid: u32,
    pub state: SlotState,
    pub dev_id: Option<u32>,
    pub device: Option<String>,
    pub url: Option<String>,
    pub cache_dir: PathBuf,
    /// When it entered its state.
    pub since_unix_ms: u64,
    /// Volumes it has served.
    pub binds: u64,
}

pub fn dir() -> PathBuf {
    registry::dir().join("pool")
}

pub fn info_path() -> PathBuf {
    dir().join("pool.json")
}

pub fn slot_path(slot: u64) -> PathBuf {
    dir().join(format!("slot-{slot}.json"))
}

pub fn socket_path(slot: u64) -> PathBuf {
    dir().join(format!("slot-{slot}.sock"))
}

fn write_atomic(path: &PathBuf, bytes: Vec<u8>) -> Result<()> {
    std::fs::create_dir_all(dir()).with_context(|| format!("creating {}", dir().display()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub fn write_info(i: &PoolInfo) -> Result<()> {
    write_atomic(&info_path(), serde_json::to_vec_pretty(i)?)
}

/// The running pool's manager, if any (a record whose pid is gone is none).
pub fn running_pool() -> Option<PoolInfo> {
    let i: PoolInfo = serde_json::from_slice(&std::fs::read(info_path()).ok()?).ok()?;
    registry::pid_alive(i.pid).then_some(i)
}

pub fn write_slot(r: &SlotRecord) -> Result<()> {
    write_atomic(&slot_path(r.slot), serde_json::to_vec_pretty(r)?)
}

pub fn remove_slot(slot: u64) {
    let _ = std::fs::remove_file(slot_path(slot));
    let _ = std::fs::remove_file(socket_path(slot));
}

/// Every standby record, by device number (those without a device last).
pub fn slots() -> Vec<SlotRecord> {
    let mut out: Vec<SlotRecord> = std::fs::read_dir(dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|f| {
            let n = f.file_name().to_string_lossy().to_string();
            n.starts_with("slot-") && n.ends_with(".json")
        })
        .filter_map(|f| serde_json::from_slice(&std::fs::read(f.path()).ok()?).ok())
        .collect();
    out.sort_by_key(|r| (r.dev_id.unwrap_or(u32::MAX), r.slot));
    out
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
