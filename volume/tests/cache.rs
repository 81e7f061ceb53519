//! The read cache as the engine uses it: exact hit/miss accounting counted
//! in GETs through the store wrapper, write-populated lines, warm restart,
//! corruption, crash, and a deleted cache directory.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use spritedisk_store::{FaultConfig, FaultStore, ObjectStore};
use spritedisk_volume::Volume;

const MIB: u64 = 1 << 20;

fn opts() -> spritedisk_volume::EngineOptions {
    let mut o = small_opts(3);
    o.segment_bytes = MIB;
    o.dirty_bytes_max = 8 * MIB;
    o.cache_bytes = 8 * MIB;
    o
}

async fn setup() -> (Arc<dyn ObjectStore>, tempfile::TempDir) {
    let mem: Arc<dyn ObjectStore> = fresh_store();
    create(&mem, 64 * MIB).await;
    (mem, tempfile::tempdir().unwrap())
}

fn counted(mem: &Arc<dyn ObjectStore>) -> Arc<FaultStore> {
    Arc::new(FaultStore::new(mem.clone(), FaultConfig::default(), 1))
}

/// GETs of segment data (attach also reads the config and the lease).
fn data_gets(store: &FaultStore) -> u64 {
    store.gets_in("segments")
}

/// Writes 128 pieces of 64 KiB (8 MiB, one write each), detaches and
/// deletes the cache directory: a volume whose every read is cold.
async fn write_pieces_and_drop_the_cache(vol: Volume, dir: &std::path::Path, tag: u8) {
    for i in 0..128u64 {
        vol.write(i * (64 << 10), pattern(i * 16, 16, tag), false)
            .await
            .unwrap();
    }
    vol.close().await.unwrap();
    std::fs::remove_dir_all(dir.join("cache")).unwrap();
}

/// Writes 2 MiB (32 pieces of 64 KiB) and flushes.
async fn write_2mib(vol: &Volume) {
    vol.write(0, pattern(0, 512, 1), true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_writes_and_warm_restarts_read_with_zero_gets() {
    let (mem, dir) = setup().await;
    let store = counted(&mem);
    let vol = open(store.clone(), Some(dir.path()), opts()).await;
    write_2mib(&vol).await;
    assert_eq!(vol.read(0, 2 * MIB).await.unwrap(), pattern(0, 512, 1));
    assert_eq!(data_gets(&store), 0, "written pieces are in the cache");
    let st = vol.stats().unwrap();
    assert_eq!(
        (st.cache.hits, st.cache.misses, st.cache.lines),
        (32, 0, 32)
    );
    vol.close().await.unwrap();

    // Warm restart: same cache directory, zero GETs.
    let store = counted(&mem);
    let vol = open(store.clone(), Some(dir.path()), opts()).await;
    assert_eq!(vol.read(0, 2 * MIB).await.unwrap(), pattern(0, 512, 1));
    assert_eq!(data_gets(&store), 0, "a clean restart keeps the cache warm");
    vol.close().await.unwrap();

    // Deleting the cache directory while detached is safe: one GET per piece, then warm.
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    let store = counted(&mem);
    let vol = open(store.clone(), Some(dir.path()), opts()).await;
    assert_eq!(vol.read(0, 2 * MIB).await.unwrap(), pattern(0, 512, 1));
    assert_eq!(data_gets(&store), 32);
    assert_eq!(vol.read(0, 2 * MIB).await.unwrap(), pattern(0, 512, 1));
    assert_eq!(data_gets(&store), 32, "fetched pieces are cached");
    let st = vol.stats().unwrap();
    assert_eq!((st.cache.hits, st.cache.misses), (32, 32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_leaves_nothing_trusted_and_corruption_is_refetched() {
    let (mem, dir) = setup().await;
    let vol = open(counted(&mem), Some(dir.path()), opts()).await;
    write_2mib(&vol).await;
    vol.abandon(); // crash: no index saved
    drop(vol);
    let store = counted(&mem);
    let vol = open(store.clone(), Some(dir.path()), opts()).await;
    assert_eq!(vol.read(0, 2 * MIB).await.unwrap(), pattern(0, 512, 1));
    assert_eq!(
        data_gets(&store),
        32,
        "after a crash every line is refetched"
    );
    vol.close().await.unwrap();

    // Flip bits all over the cache file: reads stay right, the counters show the refetches.
    let data = dir.path().join("cache/cache.data");
    let mut raw = std::fs::read(&data).unwrap();
    for i in (0..raw.len()).step_by(65536) {
        raw[i + 77] ^= 0x20;
    }
    std::fs::write(&data, raw).unwrap();
    let store = counted(&mem);
    let vol = open(store.clone(), Some(dir.path()), opts()).await;
    assert_eq!(vol.read(0, 2 * MIB).await.unwrap(), pattern(0, 512, 1));
    assert_eq!(data_gets(&store), 32);
    assert_eq!(vol.stats().unwrap().cache.corrupt_drops, 32);
    // Truncated to nothing: still right.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_eq!(vol.read(0, 2 * MIB).await.unwrap(), pattern(0, 512, 1));
    assert_eq!(data_gets(&store), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_set_ten_times_the_cache_stays_within_its_bound() {
    let (mem, dir) = setup().await;
    let mut o = opts();
    o.cache_bytes = 2 * MIB;
    let vol = open(counted(&mem), Some(dir.path()), o).await;
    for i in 0..10u64 {
        vol.write(i * 2 * MIB, pattern(i * 512, 512, 2), true)
            .await
            .unwrap();
    }
    for i in 0..10u64 {
        assert_eq!(
            vol.read(i * 2 * MIB, 2 * MIB).await.unwrap(),
            pattern(i * 512, 512, 2)
        );
    }
    let st = vol.stats().unwrap().cache;
    assert!(
        st.physical_bytes <= 2 * MIB,
        "cache uses {} bytes of disk",
        st.physical_bytes
    );
    let du = std::process::Command::new("du")
        .arg("-k")
        .arg(dir.path().join("cache/cache.data"))
        .output()
        .unwrap();
    let kib: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kib <= 2048, "du says {kib} KiB");
    assert!(st.evictions > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_reader_finds_the_next_window_prefetched() {
    let (mem, dir) = setup().await;
    let vol = open(counted(&mem), Some(dir.path()), opts()).await;
    let piece = 64 << 10;
    write_pieces_and_drop_the_cache(vol, dir.path(), 4).await;

    let mut o = opts();
    o.cache_bytes = 64 * MIB;
    o.prefetch_window_bytes = 4 * MIB;
    let store = counted(&mem);
    let vol = open(store.clone(), Some(dir.path()), o).await;
    // Two reads in a row make a sequential reader: the next 4 MiB (64 pieces) are fetched ahead.
    for i in 0..2u64 {
        assert!(
            vol.read(i * piece, piece).await.unwrap() == pattern(i * 16, 16, 4),
            "piece {i}"
        );
    }
    let mut waited = 0;
    while vol.stats().unwrap().cache.prefetch_inserts < 64 {
        assert!(
            waited < 500,
            "read-ahead did not arrive: {:?}",
            vol.stats().unwrap().cache
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    // Adjacent pieces of a segment come in one GET: segments hold 16 pieces
    // (1 MiB), so pieces 2..66 are runs 2..16, 16..32, 32..48, 48..64, 64..66.
    assert_eq!(data_gets(&store), 2 + 5);
    for i in 2..66u64 {
        assert!(
            vol.read(i * piece, piece).await.unwrap() == pattern(i * 16, 16, 4),
            "piece {i}"
        );
    }
    let st = vol.stats().unwrap().cache;
    assert_eq!(
        st.misses, 2,
        "only the two reads before the stream was detected missed"
    );
    assert_eq!(st.prefetch_hits, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_a_piece_being_fetched_wait_for_that_get() {
    let (mem, dir) = setup().await;
    let vol = open(counted(&mem), Some(dir.path()), opts()).await;
    vol.write(0, pattern(0, 16, 5), true).await.unwrap();
    vol.close().await.unwrap();
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();

    let slow = FaultConfig {
        get_delay: Duration::from_millis(100),
        ..Default::default()
    };
    let store = Arc::new(FaultStore::new(mem.clone(), slow, 1));
    let vol = open(store.clone(), Some(dir.path()), opts()).await;
    // Four readers of four blocks of one cold piece, at once.
    let reads = (0..4u64).map(|i| {
        let vol = vol.clone();
        tokio::spawn(async move { vol.read(i * 4 * 4096, 4096).await.unwrap() })
    });
    for (i, r) in futures::future::join_all(reads)
        .await
        .into_iter()
        .enumerate()
    {
        let want = pattern(0, 16, 5).slice(i * 4 * 4096..(i * 4 + 1) * 4096);
        assert!(r.unwrap() == want, "reader {i}");
    }
    assert_eq!(
        data_gets(&store),
        1,
        "one GET for the piece, shared by its readers"
    );
}

/// Lines are keyed by segment, not by LBA: a restore, which points the map
/// back at older segments, and compaction, which moves pieces into a new
/// segment, leave every line that is still referenced usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_stay_valid_across_restore_and_compaction() {
    let (mem, dir) = setup().await;
    let store = counted(&mem);
    let vol = open(store.clone(), Some(dir.path()), opts()).await;
    write_2mib(&vol).await;
    vol.checkpoint(Some("a")).await.unwrap();
    vol.write(0, pattern(0, 256, 2), true).await.unwrap();
    assert!(vol.read(0, MIB).await.unwrap() == pattern(0, 256, 2));
    vol.restore("a").await.unwrap();
    assert!(vol.read(0, 2 * MIB).await.unwrap() == pattern(0, 512, 1));
    assert_eq!(data_gets(&store), 0, "the restored data was cached");
    // Half of the first segment is now referenced by nothing: compaction
    // copies the other half, and the copies are cached as they are written.
    vol.restore("a").await.unwrap();
    vol.delete_checkpoint("a").await.unwrap();
    vol.write(0, pattern(0, 256, 3), true).await.unwrap();
    let r = vol
        .gc(&spritedisk_volume::GcOptions {
            compact_below_percent: 60,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.segments_compacted >= 1, "{r:?}");
    assert!(vol.read(0, MIB).await.unwrap() == pattern(0, 256, 3));
    assert!(vol.read(MIB, MIB).await.unwrap() == pattern(256, 256, 1));
    assert_eq!(data_gets(&store), 0, "compaction's copies were cached");
    vol.close().await.unwrap();
}

/// What a frontend serves on its own thread (`read_now`, docs/design/0011):
/// from the write buffer, the cache and unmapped blocks (zeros, whatever
/// the buffer held), with no GET; a block that needs the store is left to
/// the engine (None), and once fetched it is served here too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_served_without_waiting_are_the_newest_data_and_never_get() {
    use spritedisk_volume::BlockIo;
    let (mem, dir) = setup().await;
    let store = counted(&mem);
    let vol = open(store.clone(), Some(dir.path()), opts()).await;
    // Blocks 0..4 durable; 4..8 never written; 8..12 buffered, not flushed;
    // 2..3 overwritten in the buffer.
    vol.write(0, pattern(0, 4, 1), true).await.unwrap();
    vol.write(8 * BS, pattern(8, 4, 2), false).await.unwrap();
    vol.write(2 * BS, pattern(2, 1, 3), false).await.unwrap();
    let mut want = pattern(0, 12, 0).to_vec();
    want[..(4 * BS) as usize].copy_from_slice(&pattern(0, 4, 1));
    want[(2 * BS) as usize..(3 * BS) as usize].copy_from_slice(&pattern(2, 1, 3));
    want[(4 * BS) as usize..(8 * BS) as usize].fill(0);
    want[(8 * BS) as usize..].copy_from_slice(&pattern(8, 4, 2));
    let mut out = vec![0xeeu8; (12 * BS) as usize];
    let r = vol.read_now(0, &mut out);
    assert!(matches!(r, Some(Ok(()))), "all of it is local: {r:?}");
    assert!(out == want, "read_now returns the newest data and zeros");
    assert_eq!(data_gets(&store), 0);
    // Bad input is refused here, not left to the engine.
    let r = vol.read_now(1, &mut out);
    assert!(matches!(r, Some(Err(_))), "an unaligned read: {r:?}");
    vol.close().await.unwrap();

    // Cold: the cache is gone, so the durable blocks need the store.
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    let store = counted(&mem);
    let vol = open(store.clone(), Some(dir.path()), opts()).await;
    let mut out = vec![0xeeu8; (12 * BS) as usize];
    assert!(vol.read_now(0, &mut out).is_none(), "a cold block waits");
    assert_eq!(data_gets(&store), 0, "read_now never GETs");
    let st = vol.stats().unwrap().cache;
    assert_eq!(
        (st.hits, st.misses),
        (0, 0),
        "a read left to the engine is counted there, once"
    );
    let mut zeros = vec![0xeeu8; (4 * BS) as usize];
    assert!(matches!(vol.read_now(4 * BS, &mut zeros), Some(Ok(()))));
    assert!(zeros.iter().all(|&b| b == 0), "unmapped blocks are zeros");
    assert_eq!(vol.read(0, 12 * BS).await.unwrap(), want);
    let gets = data_gets(&store);
    assert!(gets > 0);
    let mut out = vec![0xeeu8; (12 * BS) as usize];
    assert!(
        matches!(vol.read_now(0, &mut out), Some(Ok(()))),
        "now cached"
    );
    assert!(out == want);
    assert_eq!(data_gets(&store), gets);
}

/// Read-ahead widens while a sequential stream lasts and starts over when
/// it stops (docs/design/0011): each request reaches twice as far as the
/// last, once the reader has used a quarter of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_widens_with_the_stream_and_starts_over_after_it() {
    let (mem, dir) = setup().await;
    let vol = open(mem.clone(), Some(dir.path()), opts()).await;
    let piece = 64 << 10;
    write_pieces_and_drop_the_cache(vol, dir.path(), 6).await;

    let mut o = opts();
    o.cache_bytes = 64 * MIB;
    o.prefetch_window_bytes = MIB; // 16 pieces
    let vol = open(mem.clone(), Some(dir.path()), o).await;
    let read = |i: u64| {
        let vol = vol.clone();
        async move {
            assert!(
                vol.read(i * piece, piece).await.unwrap() == pattern(i * 16, 16, 6),
                "piece {i}"
            );
        }
    };
    let settled_at = |n: u64| {
        let vol = vol.clone();
        async move {
            let inserts = || vol.stats().unwrap().cache.prefetch_inserts;
            for _ in 0..500 {
                if inserts() >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Nothing more arrives.
            tokio::time::sleep(Duration::from_millis(200)).await;
            inserts()
        }
    };
    // Pieces 0, 1: a stream; the first window is 2..18.
    read(0).await;
    read(1).await;
    assert_eq!(settled_at(16).await, 16);
    // A quarter of it used (2..6): the next window is twice as wide,
    // 6..38, of which 18..38 is new (a fixed window: 18..22).
    for i in 2..6 {
        read(i).await;
    }
    assert_eq!(settled_at(36).await, 36, "the second window is 32 pieces");
    // A read elsewhere ends the stream; the next starts from the first
    // window again: 92..108 (still wide, it would be 92..128).
    read(90).await;
    read(91).await;
    assert_eq!(settled_at(52).await, 52, "a new stream starts narrow");
}

/// A long sequential stream's read-ahead GETs grow with its window
/// (docs/design/0011): at most a sixteenth of the window each, from 1 MiB
/// up to 4 MiB, so a long cold read makes fewer, larger requests than one
/// per MiB, and reads back exactly what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_reads_ahead_in_fewer_larger_gets() {
    const TOTAL: u64 = 128 * MIB;
    let mem: Arc<dyn ObjectStore> = fresh_store();
    create(&mem, 2 * TOTAL).await;
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.segment_bytes = 8 * MIB;
    o.dirty_bytes_max = 32 * MIB;
    let vol = open(mem.clone(), Some(dir.path()), o.clone()).await;
    let blocks_per_mib = MIB / BS;
    for m in 0..TOTAL / MIB {
        vol.write(
            m * MIB,
            pattern(m * blocks_per_mib, blocks_per_mib, 8),
            false,
        )
        .await
        .unwrap();
    }
    vol.close().await.unwrap();
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();

    o.cache_bytes = 4 * TOTAL;
    o.prefetch_window_bytes = 4 * MIB;
    let store = counted(&mem);
    let vol = open(store.clone(), Some(dir.path()), o).await;
    let mut before_stream = 0;
    for m in 0..TOTAL / MIB {
        assert!(
            vol.read(m * MIB, MIB).await.unwrap() == pattern(m * blocks_per_mib, blocks_per_mib, 8),
            "MiB {m}"
        );
        // The first two reads are the reader's own (one GET per piece);
        // the second starts the stream.
        if m == 1 {
            before_stream = data_gets(&store);
        }
    }
    let gets = data_gets(&store) - before_stream;
    let mibs = TOTAL / MIB - 2;
    // Windows of 4, 8 and 16 MiB use GETs of up to 1 MiB (the limit of
    // every GET before they grew), 32 MiB ones 2 MiB, 64 MiB ones 4 MiB
    // (segments of 8 MiB hold 4 MiB runs of pieces).
    assert_eq!(
        store.longest_ranged_get(),
        4 * MIB,
        "{gets} GETs for {mibs} MiB read in sequence"
    );
    // Fewer requests than one per MiB (here about 55 of them); a loaded
    // machine where the reader outruns read-ahead adds 16 per MiB it
    // fetches itself, so the bound is loose.
    assert!(gets < mibs, "{gets} GETs for {mibs} MiB read in sequence");
}
