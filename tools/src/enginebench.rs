//! `spritedisk engine-bench DIR`: the engine alone, without a frontend
//! (`bench/run.sh`): warm 4 KiB random reads per second with 1, 2, 4 and 8
//! concurrent readers, and where a read's time goes — the map lookup, and
//! the wait for an engine-wide lock (issue 21: the read path must not
//! serialize readers). A file:// volume under DIR, written sequentially and
//! then overwritten in scattered 4 KiB pieces (a fragmented map), flushed,
//! so that every block is in the read cache. JSON out.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use spritedisk_volume::{create_volume, EngineOptions, Volume};

const BLOCK: u64 = 4096;
/// A reader task lets the others run after this many reads.
const READS_PER_YIELD: u64 = 16;

pub async fn run(
    dir: &Path,
    size: u64,
    seconds: u64,
    readers: &[usize],
    locked: bool,
) -> Result<i32> {
    anyhow::ensure!(
        size >= 1 << 20 && size.is_multiple_of(1 << 20),
        "--size must be a positive number of MiB"
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let url = format!("file://{}/vol", dir.display());
    let store = spritedisk_store::open_url(&url)?;
    create_volume(&store, &url, 100 << 30).await?;
    let opts = EngineOptions {
        // A scattered 4 KiB piece takes a 64 KiB line of its own: room for all.
        cache_bytes: size * 8,
        map_readers: !locked,
        ..EngineOptions::default()
    };
    let vol = Volume::open(store, &url, Some(&dir.join("cache")), opts).await?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(21);
    let chunk: Vec<u8> = (0..1 << 20).map(|_| rng.gen()).collect();
    for off in (0..size).step_by(1 << 20) {
        vol.write(off, Bytes::from(chunk.clone()), false).await?;
    }
    // A quarter of the blocks overwritten one at a time: a map of about
    // size/8 KiB extents instead of a few long ones.
    let blocks = size / BLOCK;
    for _ in 0..blocks / 4 {
        let lba = rng.gen_range(0..blocks);
        vol.write(
            lba * BLOCK,
            Bytes::copy_from_slice(&chunk[..BLOCK as usize]),
            false,
        )
        .await?;
    }
    vol.flush().await?;
    // Whatever the write-back did not leave in the cache is read into it.
    for off in (0..size).step_by(1 << 20) {
        vol.read(off, 1 << 20).await?;
    }
    let extents = vol.stats()?.extents;
    let mut steps = vec![];
    for &n in readers {
        let before = vol.stats()?;
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let t0 = Instant::now();
        // A warm read never waits, so a reader task would never yield: each
        // yields every few reads (else only as many readers as runtime
        // threads would ever run, and the engine's own tasks would starve),
        // and watches the deadline itself.
        let deadline = t0 + Duration::from_secs(seconds);
        for r in 0..n {
            let (vol, done) = (vol.clone(), done.clone());
            tasks.spawn(async move {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(r as u64);
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let lba = rng.gen_range(0..blocks);
                    vol.read(lba * BLOCK, BLOCK).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    if i.is_multiple_of(READS_PER_YIELD) {
                        tokio::task::yield_now().await;
                    }
                }
                Ok::<_, spritedisk_volume::VolumeError>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let secs = t0.elapsed().as_secs_f64();
        let after = vol.stats()?;
        let reads = done.load(Ordering::Relaxed);
        let lookups = (after.session_read_lookups - before.session_read_lookups).max(1);
        anyhow::ensure!(
            after.session_gets == before.session_gets,
            "a warm read went to the store: the cache is smaller than the data"
        );
        steps.push(serde_json::json!({
            "readers": n,
            "reads_per_sec": reads as f64 / secs,
            "lookup_us": (after.session_read_lookup_ns - before.session_read_lookup_ns) as f64
                / lookups as f64 / 1e3,
            "lock_wait_us_per_read": (after.session_read_lock_wait_ns
                - before.session_read_lock_wait_ns) as f64
                / reads.max(1) as f64 / 1e3,
        }));
    }
    vol.close().await?;
    let out = serde_json::json!({
        "lookups": if locked { "writer's connection, locked" } else { "read-only connections" },
        "data_bytes": size,
        "extents": extents,
        "seconds": seconds,
        "worker_threads": tokio::runtime::Handle::current().metrics().num_workers(),
        "steps": steps,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}
