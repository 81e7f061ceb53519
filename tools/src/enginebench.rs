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
/// The sequential write: 1 MiB requests, 8 in flight (the VM rig's fio job).
const WRITE_BYTES: u64 = 1 << 20;
const WRITE_QD: u64 = 8;
/// A reader task lets the others run after this many reads.
const READS_PER_YIELD: u64 = 16;

pub async fn run(
    dir: &Path,
    size: u64,
    seconds: u64,
    readers: &[usize],
    locked: bool,
    lookup_memo: bool,
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
        lookup_memo,
        ..EngineOptions::default()
    };
    let vol = Volume::open(store, &url, Some(&dir.join("cache")), opts).await?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(21);
    let chunk: Vec<u8> = (0..1 << 20).map(|_| rng.gen()).collect();
    let chunk = Bytes::from(chunk);
    // The sequential write, measured: the volume, then a plain file in the
    // same directory (the floor the disk sets), the same way.
    let before = vol.stats()?;
    let t0 = Instant::now();
    write_stream(size, chunk.clone(), {
        let vol = vol.clone();
        move |off, data| {
            let vol = vol.clone();
            async move { Ok(vol.write(off, data, false).await?) }
        }
    })
    .await?;
    vol.flush().await?;
    let vol_secs = t0.elapsed().as_secs_f64();
    let after = vol.stats()?;
    let raw_secs = raw_file_stream(&dir.join("raw-file"), size, chunk.clone()).await?;
    let per_mib = |a: u64, b: u64| (a - b) as f64 / (size >> 20) as f64 / 1e6;
    let (wa, wb) = (&after.session_write_path, &before.session_write_path);
    let seq_write = serde_json::json!({
        "bytes": size,
        "request_bytes": WRITE_BYTES,
        "queue_depth": WRITE_QD,
        "volume_mb_per_sec": size as f64 / vol_secs / 1e6,
        "raw_file_mb_per_sec": size as f64 / raw_secs / 1e6,
        "ratio": raw_secs / vol_secs,
        // Milliseconds per MiB written, summed over concurrent work.
        "ms_per_mib": {
            "room_wait": per_mib(wa.room_wait_ns, wb.room_wait_ns),
            "admit": per_mib(wa.admit_ns, wb.admit_ns),
            "seal": per_mib(wa.seal_ns, wb.seal_ns),
            "put": per_mib(wa.put_ns, wb.put_ns),
            "cache_fill": per_mib(wa.cache_fill_ns, wb.cache_fill_ns),
            "apply": per_mib(wa.apply_ns, wb.apply_ns),
        },
        "segments_put": after.session_puts - before.session_puts,
    });
    // A quarter of the blocks overwritten one at a time: a map of about
    // size/8 KiB extents instead of a few long ones.
    let blocks = size / BLOCK;
    for _ in 0..blocks / 4 {
        let lba = rng.gen_range(0..blocks);
        vol.write(lba * BLOCK, chunk.slice(..BLOCK as usize), false)
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
            "memo_hits_per_read": (after.session_read_memo_hits - before.session_read_memo_hits)
                as f64
                / reads.max(1) as f64,
            "lock_wait_us_per_read": (after.session_read_lock_wait_ns
                - before.session_read_lock_wait_ns) as f64
                / reads.max(1) as f64 / 1e3,
        }));
    }
    vol.close().await?;
    let out = serde_json::json!({
        "lookups": if locked { "writer's connection, locked" } else { "read-only connections" },
        "lookup_memo": lookup_memo,
        "data_bytes": size,
        "extents": extents,
        "seconds": seconds,
        "worker_threads": tokio::runtime::Handle::current().metrics().num_workers(),
        "seq_write": seq_write,
        "steps": steps,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}

/// Writes `size` bytes as consecutive [`WRITE_BYTES`] requests with
/// [`WRITE_QD`] in flight, through `write`.
async fn write_stream<F, Fut>(size: u64, chunk: Bytes, write: F) -> Result<()>
where
    F: Fn(u64, Bytes) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WRITE_QD {
        let (next, chunk, write) = (next.clone(), chunk.clone(), write.clone());
        tasks.spawn(async move {
            loop {
                let off = next.fetch_add(WRITE_BYTES, Ordering::Relaxed);
                if off >= size {
                    return Ok::<_, anyhow::Error>(());
                }
                write(off, chunk.slice(..WRITE_BYTES as usize)).await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// The same stream into a plain file, then fsync: seconds it took.
async fn raw_file_stream(path: &Path, size: u64, chunk: Bytes) -> Result<f64> {
    use std::os::unix::fs::FileExt;
    let file = Arc::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let t0 = Instant::now();
    write_stream(size, chunk, {
        let file = file.clone();
        move |off, data| {
            let file = file.clone();
            async move {
                tokio::task::spawn_blocking(move || file.write_all_at(&data, off)).await??;
                Ok(())
            }
        }
    })
    .await?;
    let f = file.clone();
    tokio::task::spawn_blocking(move || f.sync_all()).await??;
    let secs = t0.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(path)?;
    Ok(secs)
}
