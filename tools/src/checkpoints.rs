//! `checkpoint`, `checkpoints`, `restore`, `delete-checkpoint`, `gc`: through
//! the daemon's control socket when the volume is attached here, else on the
//! volume directly (taking its lease for the moment, like a short attach).
//! `fork` reads the parent's replica and needs no daemon.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use spritedisk_volume::{CheckpointRow, Volume};

use crate::cli::AttachArgs;
use crate::control;
use crate::size::human;

/// What to do.
pub enum Op<'a> {
    Checkpoint(Option<&'a str>),
    Restore(&'a str),
    Delete(&'a str),
    List,
    Gc {
        dry_run: bool,
        compact_below_percent: u64,
    },
}

impl Op<'_> {
    fn request(&self) -> serde_json::Value {
        match self {
            Op::Checkpoint(name) => json!({ "op": "checkpoint", "name": name }),
            Op::Restore(name) => json!({ "op": "restore", "name": name }),
            Op::Delete(name) => json!({ "op": "delete-checkpoint", "name": name }),
            Op::List => json!({ "op": "checkpoints" }),
            Op::Gc {
                dry_run,
                compact_below_percent,
            } => {
                json!({ "op": "gc", "dry_run": dry_run, "compact_below_percent": compact_below_percent })
            }
        }
    }
}

impl Op<'_> {
    fn command(&self) -> &'static str {
        match self {
            Op::Checkpoint(_) => "checkpoint",
            Op::Restore(_) => "restore",
            Op::Delete(_) => "delete-checkpoint",
            Op::List => "checkpoints",
            Op::Gc { .. } => "gc",
        }
    }
}

/// Runs `op` on the volume at `url` (local state in `cache_dir`, else the default).
pub async fn run(url: &str, cache_dir: Option<PathBuf>, op: Op<'_>, json_out: bool) -> Result<i32> {
    let dir = crate::cli::cache_dir_for(url, cache_dir);
    let what = op.command();
    run_in(url, &dir, op, json_out).await.context(what)
}

/// `checkpoint --freeze`: the filesystem at `mountpoint` is frozen for it.
pub async fn run_frozen(
    url: &str,
    cache_dir: Option<PathBuf>,
    name: Option<&str>,
    mountpoint: &Path,
    timeout: Duration,
) -> Result<i32> {
    let dir = crate::cli::cache_dir_for(url, cache_dir);
    let t0 = Instant::now();
    let (reply, t) = crate::freeze::checkpoint_frozen(url, &dir, name, mountpoint, timeout)
        .await
        .context("checkpoint")?;
    let c = control::row_from_json(&reply)?;
    println!(
        "checkpoint {} of {url}: {} extents, durable in {} ms; {} frozen for {} ms \
         (freeze {} ms, checkpoint {} ms, thaw {} ms; syncfs before it {} ms)",
        c.name,
        c.extents,
        t0.elapsed().as_millis(),
        mountpoint.display(),
        t.frozen.as_millis(),
        t.freeze.as_millis(),
        t.checkpoint.as_millis(),
        t.thaw.as_millis(),
        t.sync.as_millis()
    );
    Ok(0)
}

async fn run_in(url: &str, cache_dir: &Path, op: Op<'_>, json_out: bool) -> Result<i32> {
    let t0 = Instant::now();
    let reply = match control::call(cache_dir, op.request()).await? {
        Some(v) => v,
        None => offline(url, cache_dir, &op).await?,
    };
    let ms = t0.elapsed().as_millis();
    match op {
        Op::Checkpoint(_) => {
            let c = control::row_from_json(&reply)?;
            println!(
                "checkpoint {} of {url}: {} extents, durable in {ms} ms",
                c.name, c.extents
            );
        }
        Op::Restore(_) => {
            let c = control::row_from_json(&reply)?;
            println!("restored {url} to checkpoint {} in {ms} ms", c.name);
        }
        Op::Delete(name) => println!("deleted checkpoint {name} of {url}"),
        Op::Gc { .. } if json_out => println!("{}", serde_json::to_string_pretty(&reply)?),
        Op::Gc { dry_run, .. } => {
            let r: spritedisk_volume::GcReport = serde_json::from_value(reply)?;
            let verb = if dry_run { "would" } else { "did" };
            println!(
                "gc of {url} {verb}: compact {} segments ({} copied), delete {} segments and {} empty records ({}) and {} orphans; {} segments ({}) kept; {ms} ms",
                r.segments_compacted,
                human(r.bytes_copied),
                r.segments_deleted,
                r.records_deleted,
                human(r.bytes_deleted),
                r.orphans_deleted,
                r.segments_kept,
                human(r.bytes_kept)
            );
        }
        Op::List if json_out => {
            // Each row also says what clients wrote since the previous one.
            let mut rows = reply.as_array().cloned().unwrap_or_default();
            let mut before = 0;
            for r in &mut rows {
                let total = r["client_bytes_written"].as_u64().unwrap_or(0);
                r["bytes_written_since_previous"] = json!(total.saturating_sub(before));
                before = total;
            }
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Op::List => {
            let rows: Vec<CheckpointRow> = reply
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| control::row_from_json(v).ok())
                        .collect()
                })
                .unwrap_or_default();
            if rows.is_empty() {
                println!("no checkpoints of {url}");
            }
            let mut before = 0;
            if !rows.is_empty() {
                println!(
                    "{:<16} {:<20}  {:>10}  {:>10}  {:>9}",
                    "NAME", "CREATED", "WRITTEN", "ALONE", "EXTENTS"
                );
            }
            for c in rows {
                // WRITTEN: by clients since the previous checkpoint; ALONE:
                // data only this checkpoint references (deleting it frees it).
                println!(
                    "{:<16} {:<20}  {:>10}  {:>10}  {:>9}",
                    c.name,
                    spritedisk_volume::lease::rfc3339(c.created_unix),
                    human(c.client_bytes_written.saturating_sub(before)),
                    human(c.unique_bytes),
                    c.extents
                );
                before = c.client_bytes_written;
            }
        }
    }
    Ok(0)
}

async fn offline(url: &str, cache_dir: &Path, op: &Op<'_>) -> Result<serde_json::Value> {
    let args = AttachArgs::defaults(url);
    let mut opts = args.engine_options()?;
    opts.cache_bytes = 0;
    let volume = Volume::open(args.open_store()?, url, Some(cache_dir), opts).await?;
    let res = match op {
        Op::Checkpoint(name) => volume
            .checkpoint(*name)
            .await
            .map(|c| control::row_json(&c)),
        Op::Restore(name) => volume.restore(name).await.map(|c| control::row_json(&c)),
        Op::Delete(name) => volume.delete_checkpoint(name).await.map(|_| json!(null)),
        Op::List => volume
            .checkpoints()
            .map(|cs| serde_json::Value::Array(cs.iter().map(control::row_json).collect())),
        Op::Gc {
            dry_run,
            compact_below_percent,
        } => volume
            .gc(&spritedisk_volume::GcOptions {
                dry_run: *dry_run,
                compact_below_percent: *compact_below_percent,
            })
            .await
            .map(|r| serde_json::to_value(r).expect("serializes")),
    };
    let closed = volume.close().await;
    let v = res?;
    closed?;
    Ok(v)
}

/// `spritedisk fork URL@NAME NEWURL`: a new volume whose content is
/// checkpoint NAME of URL, sharing its segments.
pub async fn fork(source: &str, new_url: &str, cache_dir: Option<PathBuf>) -> Result<i32> {
    let (url, name) = source.rsplit_once('@').with_context(|| {
        format!("fork: {source:?} names no checkpoint: write it as URL@CHECKPOINT")
    })?;
    let dir = cache_dir.unwrap_or_else(|| crate::cli::default_cache_dir(new_url));
    let t0 = Instant::now();
    let parent = AttachArgs::defaults(url).open_store().context("fork")?;
    let args = AttachArgs::defaults(new_url);
    let child = args.open_store().context("fork")?;
    let mut opts = args.engine_options()?;
    opts.cache_bytes = 0;
    let r = spritedisk_volume::fork::fork_volume(&parent, url, name, child, new_url, &dir, opts)
        .await
        .context("fork")?;
    println!(
        "forked {url}@{name} as {new_url}: {} extents over {} shared segments, no data copied; durable in {} ms",
        r.extents,
        r.shared_segments,
        t0.elapsed().as_millis()
    );
    Ok(0)
}
