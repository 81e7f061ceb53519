//! `spritedisk store-bench URL`: the raw object store's own numbers, the
//! baseline spritedisk is measured against in the same run (`bench/s3.sh`):
//! parallel PUT and GET throughput of segment-sized objects, and the latency
//! of one small PUT (what a FLUSH of a 4 KiB write costs at least), and
//! random ranged GETs of one piece (what a cold 4 KiB random read costs at
//! least: it fetches the 64 KiB piece around it) at a given depth.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

/// The ranged-GET part: `count` GETs of `bytes` each at piece-aligned random
/// offsets of the objects, `parallel` in flight.
#[derive(Debug, Clone, Copy)]
pub struct Ranged {
    pub bytes: u64,
    pub count: usize,
    pub parallel: usize,
}

pub async fn run(
    url: &str,
    size: u64,
    count: usize,
    parallel: usize,
    ranged: Ranged,
) -> Result<i32> {
    // Checked before anything is written: a ranged GET must fit in an object.
    anyhow::ensure!(
        ranged.bytes <= size,
        "--ranged-size {} is larger than the objects (--size {size}): a ranged GET reads within one object",
        ranged.bytes
    );
    let store = spritedisk_store::open_url(url)?;
    let run = uuid::Uuid::new_v4();
    let keys: Vec<String> = (0..count)
        .map(|i| format!("store-bench/{run}/{i}"))
        .collect();
    let body = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());

    let t0 = Instant::now();
    futures::stream::iter(keys.iter().map(|k| {
        let (s, b) = (store.clone(), body.clone());
        async move { s.put(k, b).await }
    }))
    .buffer_unordered(parallel)
    .try_collect::<Vec<_>>()
    .await?;
    let put_secs = t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let got: Vec<Bytes> = futures::stream::iter(keys.iter().map(|k| {
        let s = store.clone();
        async move { s.get(k).await }
    }))
    .buffer_unordered(parallel)
    .try_collect()
    .await?;
    let get_secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(got.iter().all(|g| *g == body), "an object read back wrong");
    drop(got);

    // Random ranged GETs, as cold random reads make them.
    let ranged_per_s = if ranged.count > 0 && ranged.bytes > 0 {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed);
        let per_object = size / ranged.bytes;
        let picks: Vec<(usize, u64)> = (0..ranged.count)
            .map(|_| {
                (
                    rng.gen_range(0..keys.len()),
                    rng.gen_range(0..per_object) * ranged.bytes,
                )
            })
            .collect();
        let t0 = Instant::now();
        let bad = futures::stream::iter(picks.into_iter().map(|(k, off)| {
            let (s, key, want) = (store.clone(), &keys[k], body.clone());
            async move {
                let got = s.get_range(key, off, ranged.bytes).await?;
                let (a, b) = (off as usize, (off + ranged.bytes) as usize);
                Ok::<bool, spritedisk_store::StoreError>(got != want[a..b])
            }
        }))
        .buffer_unordered(ranged.parallel)
        .try_fold(0usize, |n, bad| async move { Ok(n + bad as usize) })
        .await?;
        anyhow::ensure!(bad == 0, "{bad} ranged GETs read back wrong");
        Some(ranged.count as f64 / t0.elapsed().as_secs_f64())
    } else {
        None
    };

    // One small PUT at a time: the floor under a FLUSH.
    let small = Bytes::from(vec![7u8; 4096 + 112]);
    let mut lat: Vec<Duration> = vec![];
    for i in 0..50 {
        let t = Instant::now();
        store
            .put(&format!("store-bench/{run}/small-{i}"), small.clone())
            .await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    for k in keys
        .iter()
        .cloned()
        .chain((0..50).map(|i| format!("store-bench/{run}/small-{i}")))
    {
        store.delete(&k).await?;
    }
    let total = (size * count as u64) as f64 / 1e6;
    let out = serde_json::json!({
        "object_bytes": size,
        "objects": count,
        "parallel": parallel,
        "put_mbps": total / put_secs,
        "get_mbps": total / get_secs,
        "small_put_p50_us": lat[lat.len() / 2].as_micros() as u64,
        "small_put_p99_us": lat[lat.len() * 99 / 100].as_micros() as u64,
        "ranged_get_bytes": ranged.bytes,
        "ranged_get_parallel": ranged.parallel,
        "ranged_gets_per_s": ranged_per_s,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}
