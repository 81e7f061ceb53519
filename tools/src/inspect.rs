//! `spritedisk stats` and `spritedisk verify`: read-only looks at a volume
//! from its store (plus a copy of the local metadata, if any), safe while a
//! daemon has it attached.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use spritedisk_volume::{inspect_volume, verify_volume, Volume, VolumeStats};

use crate::size::human;

/// Where an attached daemon publishes its live stats, every [`STATS_PERIOD`].
const STATS_FILE: &str = "stats.json";
const STATS_PERIOD: Duration = Duration::from_secs(2);

/// Room reserved for the published stats: the file is written once at this
/// size and then overwritten in place, so publishing needs no new disk blocks
/// and keeps working when the cache disk is full (the case an operator most
/// wants to see). Readers tolerate the trailing padding and retry a torn read.
const STATS_FILE_BYTES: usize = 64 << 10;

/// Publishes the daemon's live stats (cache, upload backlog) for `spritedisk stats`
/// until the returned guard is dropped (at detach), which also removes them.
pub fn publish_stats(volume: Volume, cache_dir: PathBuf) -> StatsPublisher {
    let path = cache_dir.join(STATS_FILE);
    let file = path.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(st) = volume.stats() {
                if let Ok(b) = serde_json::to_vec_pretty(&st) {
                    if let Err(e) = write_padded(&file, &b) {
                        tracing::debug!(error = %e, "could not publish live stats");
                    }
                }
            }
            tokio::time::sleep(STATS_PERIOD).await;
        }
    });
    StatsPublisher { task, path }
}

/// Overwrites `path` in place with `json` padded by spaces to [`STATS_FILE_BYTES`].
fn write_padded(path: &Path, json: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut buf = json.to_vec();
    buf.resize(buf.len().max(STATS_FILE_BYTES), b' ');
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW) // docs/design/0017
        .open(path)?;
    f.write_all(&buf)?;
    f.set_len(buf.len() as u64)
}

pub struct StatsPublisher {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Drop for StatsPublisher {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The live stats of a daemon serving this cache directory, if it published lately.
fn live_stats(cache_dir: &Path) -> Option<VolumeStats> {
    let p = cache_dir.join(STATS_FILE);
    let age = SystemTime::now()
        .duration_since(std::fs::metadata(&p).ok()?.modified().ok()?)
        .ok()?;
    if age > STATS_PERIOD * 3 {
        return None;
    }
    // The publisher overwrites in place: a read may catch it half-way.
    (0..3).find_map(|_| {
        let st = serde_json::from_slice(&std::fs::read(&p).ok()?).ok();
        if st.is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        st
    })
}

pub async fn stats(url: &str, cache_dir: &Path, json: bool) -> Result<i32> {
    let store = spritedisk_store::open_url(url)?;
    let insp = inspect_volume(&store, url, Some(cache_dir)).await?;
    let s = VolumeStats::offline(&insp)?;
    let live = live_stats(cache_dir);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "durable": s, "live": live }))?
        );
        return Ok(0);
    }
    println!("volume         {url} (id {})", s.volume_id);
    println!(
        "virtual size   {} ({} bytes, {}-byte blocks)",
        human(s.size_bytes),
        s.size_bytes,
        s.block_size
    );
    println!(
        "written        {} by clients, all time",
        human(s.client_bytes_written)
    );
    println!(
        "stored         {} in {} segments ({} live)",
        human(s.stored_bytes),
        s.segments,
        human(s.live_bytes)
    );
    println!(
        "write amp.     {:.2} ({} of segments put for {} written; compaction's copies included)",
        s.segment_bytes_put as f64 / s.client_bytes_written.max(1) as f64,
        human(s.segment_bytes_put),
        human(s.client_bytes_written)
    );
    println!(
        "gc debt        {} stored that the live map does not use (kept by checkpoints, or garbage `spritedisk gc` collects)",
        human(s.stored_bytes.saturating_sub(s.live_bytes))
    );
    println!(
        "extents        {} live, {} kept only for checkpoints",
        s.extents, s.dead_extents
    );
    if let Some(l) = &live {
        let c = &l.cache;
        let ratio = c.hits as f64 / (c.hits + c.misses).max(1) as f64;
        println!(
            "attached       yes: {} buffered, {} segments uploading",
            human(l.dirty_bytes),
            l.upload_backlog_segments
        );
        println!(
            "durability     {}: {} not in the store yet{}; {} FLUSHes, {} journal syncs",
            l.durability,
            human(l.dirty_bytes),
            match l.oldest_unreplicated_ms {
                0 => String::new(),
                ms => format!(", the oldest written {:.1} s ago", ms as f64 / 1000.0),
            },
            l.session_flushes,
            l.session_journal_syncs
        );
        println!(
            "cache          {:.1}% hits ({} hits, {} misses), {} served from cache, {} from the store",
            ratio * 100.0,
            c.hits,
            c.misses,
            human(c.hit_bytes),
            human(l.session_get_bytes)
        );
        println!(
            "cache space    {} of {} on disk, {} lines, {} evictions, {} checksum drops, {} write errors",
            human(c.physical_bytes),
            human(c.capacity_bytes),
            c.lines,
            c.evictions,
            c.corrupt_drops,
            c.write_errors
        );
        println!(
            "read-ahead     {} lines fetched ahead, {} of them read",
            c.prefetch_inserts, c.prefetch_hits
        );
        println!(
            "replica        TXID {} durable; {} LTX files, {} shipped since attach",
            l.replica_txid,
            l.session_replica_files,
            human(l.session_replica_bytes)
        );
    }
    match spritedisk_volume::lease::current(&store).await {
        Ok(Some(l)) if l.released => println!(
            "lease          free (epoch {}, released by {})",
            l.epoch, l.holder
        ),
        Ok(Some(l)) => println!(
            "lease          epoch {} held by {}, renewed {} s ago",
            l.epoch,
            l.holder,
            (spritedisk_volume::lease::now_unix() - l.renewed_unix).max(0)
        ),
        Ok(None) => println!("lease          none (never attached)"),
        Err(e) => println!("lease          unreadable: {e}"),
    }
    if !insp.rolled.debris.is_empty() {
        println!("debris         {} segments past a gap (a crashed writer's; the next attach deletes them)", insp.rolled.debris.len());
    }
    Ok(0)
}

pub async fn verify(url: &str, cache_dir: &Path) -> Result<i32> {
    let store = spritedisk_store::open_url(url)?;
    let insp = inspect_volume(&store, url, Some(cache_dir)).await?;
    let tty = std::io::stderr().is_terminal();
    let mut last_pct = u64::MAX;
    let report = verify_volume(&store, &insp, |done, total| {
        // Progress only on a terminal: a log or a pipe gets the result.
        let pct = done * 100 / total.max(1);
        if tty && pct != last_pct {
            eprint!("\rverify: {done}/{total} pieces ({pct}%)");
            last_pct = pct;
        }
    })
    .await?;
    if tty {
        eprintln!();
    }
    for p in &report.problems {
        println!("problem: {p}");
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    println!(
        "verify {url}: {} extents (the live map and {} checkpoints), {} pieces, {} checked, {} problems",
        report.extents_checked,
        report.checkpoints_checked,
        report.pieces_checked,
        human(report.bytes_checked),
        report.problems.len()
    );
    Ok(if report.problems.is_empty() { 0 } else { 2 })
}
