//! The pool's manager (`spritedisk pool run`, started by `pool start`):
//! keeps `size` standby daemons ready. It starts one when a standby is
//! taken by an attach, dies or fails to start (backing off when starts keep
//! failing), retires surplus standbys (a detach returns a device to the
//! pool), and deletes the device of a standby that died without a volume.
//! A daemon that dies while it serves a volume is left to `recover` and
//! `detach`, as any attached device is.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use super::records::{self, PoolInfo, SlotState};
use super::{request, PoolArgs};
use crate::registry;

/// How often the manager looks at its standbys.
const TICK: Duration = Duration::from_millis(100);
/// A standby that has not written its record this long after it was
/// started counts as failed.
const START_RECORD_WAIT_MAX: Duration = Duration::from_secs(10);
/// Backoff after a standby fails to start, doubled per consecutive failure.
const RESPAWN_BACKOFF_MIN: Duration = Duration::from_millis(500);
const RESPAWN_BACKOFF_MAX: Duration = Duration::from_secs(30);

struct Spawned {
    child: Child,
    at: Instant,
}

pub async fn run(a: PoolArgs) -> Result<i32> {
    let cache_dir = a.cache_dir();
    spritedisk_volume::ensure_private_dir(&cache_dir)?;
    records::write_info(&PoolInfo {
        pid: std::process::id(),
        size: a.size,
        cache_dir: cache_dir.clone(),
        store: a.store.clone(),
        since_unix: records::now_unix_ms() / 1000,
    })?;
    let mut children: HashMap<u64, Spawned> = HashMap::new();
    let mut next_slot = records::slots()
        .iter()
        .map(|r| r.slot + 1)
        .max()
        .unwrap_or(0);
    let mut failures = 0u32;
    let mut next_spawn_at = Instant::now();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tracing::info!(size = a.size, cache_dir = %cache_dir.display(), "pool manager running");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(TICK) => {}
        }
        // Standbys that ended: the normal way (retired, or left after a
        // failed final flush) removed their record; one that was killed left it.
        let ended: Vec<u64> = children
            .iter_mut()
            .filter_map(|(slot, s)| s.child.try_wait().ok().flatten().map(|st| (*slot, st)))
            .map(|(slot, status)| {
                let reached_ready = bury(slot, status);
                if reached_ready {
                    failures = 0;
                } else {
                    failures += 1;
                    let backoff = (RESPAWN_BACKOFF_MIN * 2u32.saturating_pow(failures - 1))
                        .min(RESPAWN_BACKOFF_MAX);
                    next_spawn_at = Instant::now() + backoff;
                    tracing::error!(slot, %status, ?backoff, log = %slot_log(&cache_dir, slot).display(), "a standby failed to start");
                }
                slot
            })
            .collect();
        for slot in ended {
            children.remove(&slot);
        }
        // Records of standbys that are not ours (an earlier manager's) and dead.
        for r in records::slots() {
            if !children.contains_key(&r.slot) && !registry::pid_alive(r.pid) {
                bury(r.slot, std::process::ExitStatus::default());
            }
        }

        let recs = records::slots();
        let standing = recs
            .iter()
            .filter(|r| matches!(r.state, SlotState::Starting | SlotState::Ready))
            .count()
            + children
                .iter()
                .filter(|(slot, s)| {
                    s.at.elapsed() < START_RECORD_WAIT_MAX && !recs.iter().any(|r| r.slot == **slot)
                })
                .count();
        if (standing as u64) < a.size && Instant::now() >= next_spawn_at {
            // A slot directory that outlived its standby may hold the only
            // copy of writes (a failed final flush, or a daemon `recover`ed
            // from it): never hand it to a new standby, which empties it.
            while cache_dir.join(format!("slot-{next_slot}")).exists() {
                next_slot += 1;
            }
            match spawn_standby(&a, &cache_dir, next_slot) {
                Ok(child) => {
                    children.insert(
                        next_slot,
                        Spawned {
                            child,
                            at: Instant::now(),
                        },
                    );
                    next_slot += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, "starting a standby");
                    next_spawn_at = Instant::now() + RESPAWN_BACKOFF_MAX;
                }
            }
        }
        // A detach returned a device: keep the lowest-numbered ones.
        let ready: Vec<_> = recs
            .iter()
            .filter(|r| r.state == SlotState::Ready)
            .collect();
        if ready.len() as u64 > a.size {
            let last = ready.last().expect("more than size");
            tracing::info!(device = ?last.device, "retiring a surplus standby");
            let _ = request(last.slot, &serde_json::json!({ "op": "retire" })).await;
        }
    }

    tracing::info!("pool stopping: retiring its standby devices; bound ones keep serving");
    for r in records::slots() {
        match r.state {
            // Asked, not signalled: a standby that is binding a volume at
            // this moment answers "busy" and goes on serving it.
            SlotState::Ready => {
                let _ = request(r.slot, &serde_json::json!({ "op": "retire" })).await;
            }
            // Not listening yet; it leaves cleanly on SIGTERM.
            SlotState::Starting => {
                // SAFETY: a plain signal to the standby's pid.
                unsafe { libc::kill(r.pid as i32, libc::SIGTERM) };
            }
            _ => {}
        }
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30)
        && records::slots().iter().any(|r| {
            matches!(r.state, SlotState::Ready | SlotState::Starting) && registry::pid_alive(r.pid)
        })
    {
        for s in children.values_mut() {
            let _ = s.child.try_wait();
        }
        tokio::time::sleep(TICK).await;
    }
    let _ = std::fs::remove_file(records::info_path());
    Ok(0)
}

/// Cleans up after standby `slot` ended; true if it had come up. A
/// standby killed without a volume leaves its device behind (ublk keeps a
/// device whose daemon died, for recovery): it is deleted here.
fn bury(slot: u64, status: std::process::ExitStatus) -> bool {
    let Some(r) = records::slots().into_iter().find(|r| r.slot == slot) else {
        // It removed its own record: it came up and left, cleanly or
        // keeping its slot after a failed final flush.
        return status.success() || status.code() == Some(super::standby::EXIT_KEPT_SLOT);
    };
    let came_up = r.dev_id.is_some();
    match r.state {
        SlotState::Bound | SlotState::Returning => {
            tracing::warn!(device = ?r.device, url = ?r.url, "a pool daemon serving a volume died; 'spritedisk recover' or 'detach' its device");
        }
        _ => {
            if let Some(id) = r.dev_id {
                if let Err(e) = spritedisk_ublk::remove_device(id) {
                    tracing::debug!(dev_id = id, error = %e, "deleting a dead standby's device");
                }
            }
            tracing::warn!(device = ?r.device, pid = r.pid, "a standby died; replacing it");
            let _ = std::fs::remove_dir_all(&r.cache_dir);
        }
    }
    records::remove_slot(slot);
    came_up
}

fn slot_log(cache_dir: &std::path::Path, slot: u64) -> PathBuf {
    cache_dir.join(format!("slot-{slot}.log"))
}

fn spawn_standby(a: &PoolArgs, cache_dir: &std::path::Path, slot: u64) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(slot_log(cache_dir, slot))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["pool", "standby", "--slot", &slot.to_string()])
        .arg("--pool-cache-dir")
        .arg(cache_dir)
        .args(["--cache-size", &a.cache_size.to_string()])
        .args(["--queues", &a.queues().to_string()])
        .args(["--queue-depth", &a.queue_depth.to_string()])
        .args(["--manager-pid", &std::process::id().to_string()]);
    if let Some(s) = &a.store {
        cmd.args(["--store", s]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    cmd.spawn().context("starting a standby daemon")
}
