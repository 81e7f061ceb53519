//! `spritedisk rm URL`: deletes a volume and every object under its URL
//! (the rules are the library's: `spritedisk_volume::remove_volume`).

use anyhow::{Context, Result};
use spritedisk_volume::remove_volume;

use crate::cli::AttachArgs;

pub async fn rm(url: &str, json: bool) -> Result<i32> {
    let args = AttachArgs::defaults(url);
    let store = args.open_store().context("rm")?;
    let ttl = args.engine_options()?.lease_ttl;
    let report = remove_volume(&store, url, ttl)
        .await
        .with_context(|| format!("rm {url}"))?;
    if let Some(dir) = url.strip_prefix("file://") {
        // A file:// store leaves its directories and its own files (the
        // lock of conditional PUTs, temp files of interrupted PUTs) behind:
        // remove them, so nothing of the volume is left.
        remove_store_dirs(std::path::Path::new(dir));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    let what = if report.leftovers_only {
        "the leftovers of a removed volume"
    } else {
        "the volume"
    };
    println!(
        "removed {what} at {url}: {} objects deleted",
        report.objects_deleted
    );
    if let Some(parent) = &report.released_pin_in {
        println!(
            "released its fork pin in {parent}: that checkpoint may now be deleted and collected"
        );
    }
    Ok(0)
}

/// Removes `dir` and the directories under it that hold nothing but the
/// file store's own files (`.lock`, `.tmp-*`).
fn remove_store_dirs(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_store_dirs(&e.path());
            } else if name == ".lock" || name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // Fails (and is left) when something is still in it.
    let _ = std::fs::remove_dir(dir);
}
