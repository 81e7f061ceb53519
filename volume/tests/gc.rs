//! GC and compaction through the engine: exactly the unreferenced segments
//! go (objects counted), checkpoints keep what they reference, compaction
//! moves the referenced pieces of mostly-dead segments, and a crash at every
//! step of a run loses nothing (fault-injecting store).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use spritedisk_store::{FaultConfig, FaultStore, MemStore, ObjectStore};
use spritedisk_volume::{EngineOptions, GcOptions, Volume};

const MIB: u64 = 1 << 20;

fn opts(seed: u64) -> EngineOptions {
    EngineOptions {
        // Only the commands ship metadata: the store sees the same changes
        // in every run, so a crash can be placed at each of them.
        replica_interval: Duration::from_secs(3600),
        flush_timeout: Duration::from_millis(500),
        // Segments cut by size alone (never early for memory), so every
        // run lays out the same segments.
        dirty_bytes_max: 4 * MIB,
        ..small_opts(seed)
    }
}

/// What every block should read, live and in each checkpoint.
#[derive(Clone, Default)]
struct Expect {
    live: BTreeMap<u64, u8>,
    ckpts: BTreeMap<String, BTreeMap<u64, u8>>,
}

async fn put(vol: &Volume, e: &mut Expect, lba: u64, tag: u8) {
    vol.write(lba * BS, pattern(lba, 1, tag), false)
        .await
        .unwrap();
    e.live.insert(lba, tag);
}

/// Blocks 0..80 written so that:
/// - A (16 segments of 4 one-block pieces each, blocks k, k+16, k+32, k+48)
///   is entirely overwritten by B and kept only by checkpoint `a`;
/// - B (16 segments of one 4-block piece) is kept by checkpoint `b`, its
///   first 12 segments only by `b` (C overwrote blocks 0..48);
/// - E (4 segments of 4 one-block pieces over blocks 64..80) has 3 of its 4
///   pieces overwritten: 25% referenced, so compaction copies the last one.
async fn scenario(vol: &Volume) -> Expect {
    let mut e = Expect::default();
    for k in 0..16 {
        for j in 0..4 {
            put(vol, &mut e, k + 16 * j, 1).await;
        }
    }
    vol.checkpoint(Some("a")).await.unwrap();
    e.ckpts.insert("a".into(), e.live.clone());
    for lba in 0..64 {
        put(vol, &mut e, lba, 2).await;
    }
    vol.checkpoint(Some("b")).await.unwrap();
    e.ckpts.insert("b".into(), e.live.clone());
    for lba in 0..48 {
        put(vol, &mut e, lba, 3).await;
    }
    for k in 0..4 {
        for j in 0..4 {
            put(vol, &mut e, 64 + k + 4 * j, 4).await;
        }
    }
    for lba in 64..76 {
        put(vol, &mut e, lba, 5).await;
    }
    vol.flush().await.unwrap();
    e
}

async fn check_blocks(vol: &Volume, want: &BTreeMap<u64, u8>, what: &str) {
    for (&lba, &tag) in want {
        let got = vol.read(lba * BS, BS).await.unwrap();
        assert!(
            got == pattern(lba, 1, tag),
            "{what}: block {lba} is not write {tag}"
        );
    }
}

/// Reads the live map and every checkpoint (restoring each, then the live
/// state back from a checkpoint taken first).
async fn check_all(vol: &Volume, e: &Expect, what: &str) {
    check_blocks(vol, &e.live, &format!("{what}, live")).await;
    let names: Vec<String> = vol
        .checkpoints()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        names,
        e.ckpts.keys().cloned().collect::<Vec<_>>(),
        "{what}: checkpoints"
    );
    vol.checkpoint(Some("check")).await.unwrap();
    for (name, want) in &e.ckpts {
        vol.restore(name).await.unwrap();
        check_blocks(vol, want, &format!("{what}, checkpoint {name}")).await;
    }
    vol.restore("check").await.unwrap();
    vol.delete_checkpoint("check").await.unwrap();
    check_blocks(vol, &e.live, &format!("{what}, live after the checks")).await;
}

/// Segment objects that carry data (not the empty records of 0009: fences
/// and barriers).
async fn segment_objects(store: &Arc<dyn ObjectStore>) -> usize {
    store
        .list("segments/")
        .await
        .unwrap()
        .iter()
        .filter(|m| m.size > spritedisk_volume::segment::HEADER_BYTES as u64)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_exactly_the_unreferenced_segments() {
    let store = fresh_store();
    create(&store, 64 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    let vol = open(store.clone(), Some(dir.path()), opts(1)).await;
    let mut e = scenario(&vol).await;
    let before = segment_objects(&store).await;
    assert_eq!(before, 16 + 16 + 12 + 4 + 3);

    // A dry run changes nothing and says what a run would do.
    let dry = vol
        .gc(&GcOptions {
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (
            dry.segments_compacted,
            dry.bytes_copied,
            dry.segments_deleted
        ),
        (4, 4 * BS, 0)
    );
    assert_eq!(segment_objects(&store).await, before);

    // With both checkpoints alive only E is compacted: its 4 segments go,
    // one segment of copies comes.
    let r = vol.gc(&GcOptions::default()).await.unwrap();
    assert_eq!((r.segments_compacted, r.bytes_copied), (4, 4 * BS));
    assert_eq!(r.segments_deleted, 4);
    assert_eq!(segment_objects(&store).await, before - 4 + 1);
    check_all(&vol, &e, "after gc 1").await;
    // The checks made a checkpoint's worth of garbage of their own? No:
    // restores reference old segments only; nothing new was written.
    let after_checks = vol.gc(&GcOptions::default()).await.unwrap();
    assert_eq!(after_checks.segments_deleted, 0);

    // Deleting `a` frees exactly A's 16 segments.
    vol.delete_checkpoint("a").await.unwrap();
    e.ckpts.remove("a");
    let r = vol.gc(&GcOptions::default()).await.unwrap();
    assert_eq!((r.segments_deleted, r.segments_compacted), (16, 0));
    assert_eq!(segment_objects(&store).await, before - 4 + 1 - 16);
    check_all(&vol, &e, "after deleting a").await;

    // Deleting `b` frees the 12 B segments that C overwrote.
    vol.delete_checkpoint("b").await.unwrap();
    e.ckpts.remove("b");
    let r = vol.gc(&GcOptions::default()).await.unwrap();
    assert_eq!(r.segments_deleted, 12);
    let left = segment_objects(&store).await;
    assert_eq!(left, before - 4 + 1 - 16 - 12);
    assert_eq!(r.segments_kept as usize, left);
    check_all(&vol, &e, "after deleting b").await;
    let st = vol.stats().unwrap();
    assert!(
        st.segment_bytes_put > st.client_bytes_written,
        "copies count as bytes put"
    );
    vol.close().await.unwrap();

    // A fresh machine reads the same.
    let fresh = tempfile::tempdir().unwrap();
    let vol = open(store.clone(), Some(fresh.path()), opts(2)).await;
    check_all(&vol, &e, "fresh machine").await;
    vol.close().await.unwrap();

    // Segments alone can no longer rebuild the map: attach says so rather
    // than rolling forward over a history with holes.
    let e = Volume::open(store, "mem://test", None, opts(3))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("collected by gc"), "{e}");
}

/// Builds the scenario on a fresh in-memory store behind a fault injector.
async fn crashed_run(crash_after: u64, dir: &Path) -> (Arc<MemStore>, Expect, bool) {
    let mem = Arc::new(MemStore::new());
    let fault = Arc::new(FaultStore::new(
        mem.clone(),
        FaultConfig::default(),
        crash_after,
    ));
    let store: Arc<dyn ObjectStore> = fault.clone();
    create(&store, 64 * MIB).await;
    let vol = open(store.clone(), Some(dir), opts(crash_after)).await;
    let e = scenario(&vol).await;
    vol.delete_checkpoint("a").await.unwrap();
    let mut e2 = e.clone();
    e2.ckpts.remove("a");
    fault.crash_after_changes(crash_after);
    let finished = vol.gc(&GcOptions::default()).await.is_ok();
    vol.abandon();
    (mem, e2, finished)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_step_of_gc_and_compaction_loses_nothing() {
    let mut steps = 0;
    for crash_after in 0.. {
        let dir = tempfile::tempdir().unwrap();
        let t0 = std::time::Instant::now();
        let (mem, e, finished) = crashed_run(crash_after, dir.path()).await;
        eprintln!(
            "crash before change {crash_after}: gc finished {finished} ({:?})",
            t0.elapsed()
        );
        let store: Arc<dyn ObjectStore> = mem.clone();
        // With the local state the crash left, then from the store alone.
        let fresh = tempfile::tempdir().unwrap();
        for (d, how) in [(dir.path(), "local state"), (fresh.path(), "store alone")] {
            let what = format!("crash before change {crash_after}, reattached with {how}");
            let vol = Volume::open(
                store.clone(),
                "mem://test",
                Some(d),
                opts(100 + crash_after),
            )
            .await
            .unwrap_or_else(|err| panic!("{what}: {err}"));
            check_all(&vol, &e, &what).await;
            // A later run finishes the job: no orphan is left behind.
            vol.gc(&GcOptions::default()).await.unwrap();
            check_all(&vol, &e, &format!("{what}, after another gc")).await;
            let known = vol.stats().unwrap().segments;
            assert_eq!(
                store.list("segments/").await.unwrap().len() as u64,
                known,
                "{what}: orphans left"
            );
            vol.close().await.unwrap();
        }
        if finished {
            steps = crash_after;
            break;
        }
    }
    // Copies, map shipping, the replica mark and 20 deletions at least.
    assert!(steps >= 20, "gc made only {steps} changes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_running_beside_writes_loses_none() {
    let store = fresh_store();
    create(&store, 64 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    let vol = open(store.clone(), Some(dir.path()), opts(7)).await;
    let mut e = scenario(&vol).await;
    vol.delete_checkpoint("a").await.unwrap();
    e.ckpts.remove("a");
    let writer = {
        let vol = vol.clone();
        tokio::spawn(async move {
            let mut live = BTreeMap::new();
            for round in 0..6u8 {
                for lba in (0..80).step_by(3) {
                    let tag = 10 + round;
                    vol.write(lba * BS, pattern(lba, 1, tag), false)
                        .await
                        .unwrap();
                    live.insert(lba, tag);
                }
                vol.flush().await.unwrap();
            }
            live
        })
    };
    for _ in 0..4 {
        vol.gc(&GcOptions {
            compact_below_percent: 90,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    e.live.extend(writer.await.unwrap());
    vol.gc(&GcOptions {
        compact_below_percent: 90,
        ..Default::default()
    })
    .await
    .unwrap();
    check_all(&vol, &e, "gc beside writes").await;
    vol.close().await.unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let vol = open(store, Some(fresh.path()), opts(8)).await;
    check_all(&vol, &e, "gc beside writes, fresh machine").await;
}

/// A1 of the 5bc5be0 review: a read looked its block up, then GC
/// compacted the segment that held it (relocating the block) and deleted
/// it before the read's GET. The read must find the block where the map
/// says it is now, not fail with "referenced data is missing". Fails on
/// 1e22aec with that error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_overtaken_by_a_compaction_finds_the_data_moved() {
    let mem: Arc<dyn ObjectStore> = fresh_store();
    create(&mem, 64 * MIB).await;
    let gate = GateStore::new(mem.clone(), "segments/", Hold::Reads);
    let store: Arc<dyn ObjectStore> = gate.clone();
    // No read cache (cache_bytes 0): every read of flushed data is a GET.
    let dir = tempfile::tempdir().unwrap();
    let vol = open(store, Some(dir.path()), opts(1)).await;
    // One segment of 4 blocks, 3 of them overwritten: block 3 lives only
    // there, and compaction moves it.
    for lba in 0..4 {
        vol.write(lba * BS, pattern(lba, 1, 1), false)
            .await
            .unwrap();
    }
    vol.flush().await.unwrap();
    for lba in 0..3 {
        vol.write(lba * BS, pattern(lba, 1, 2), false)
            .await
            .unwrap();
    }
    vol.flush().await.unwrap();
    // The read looks block 3 up; its GET waits at the gate.
    let before = gate.close_for(1);
    let v = vol.clone();
    let read = tokio::spawn(async move { v.read(3 * BS, BS).await });
    assert!(
        gate.arrived_past(before).await,
        "setup: the read never fetched"
    );
    let report = vol.gc(&GcOptions::default()).await.unwrap();
    assert!(
        report.segments_compacted > 0 && report.segments_deleted > 0,
        "setup: GC moved nothing: {report:?}"
    );
    gate.open();
    let got = read.await.unwrap().expect("the read overtaken by GC");
    assert!(got == pattern(3, 1, 1), "block 3 is not its write");
    vol.close().await.unwrap();
}
