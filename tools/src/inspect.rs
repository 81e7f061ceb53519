//! `spritedisk stats` and `spritedisk verify`: read-only looks at a volume
//! from its store (plus a copy of the local metadata, if any), safe while a
//! daemon has it attached.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Result;
use spritedisk_volume::{inspect_volume, verify_volume, VolumeStats};

use crate::size::human;

pub async fn stats(url: &str, cache_dir: &Path, json: bool) -> Result<i32> {
    let store = spritedisk_store::open_url(url)?;
    let insp = inspect_volume(&store, url, Some(cache_dir)).await?;
    let s = VolumeStats::offline(&insp)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
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
    println!("extents        {}", s.extents);
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
        let pct = done * 100 / total.max(1);
        if pct != last_pct && (tty || pct % 10 == 0) {
            eprint!(
                "{}verify: {done}/{total} pieces ({pct}%){}",
                if tty { "\r" } else { "" },
                if tty { "" } else { "\n" }
            );
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
    println!(
        "verify {url}: {} extents, {} pieces, {} checked, {} problems",
        report.extents_checked,
        report.pieces_checked,
        human(report.bytes_checked),
        report.problems.len()
    );
    Ok(if report.problems.is_empty() { 0 } else { 2 })
}
