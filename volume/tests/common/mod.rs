//! Helpers shared by the engine's tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spritedisk_store::ObjectStore;
use spritedisk_volume::{create_volume, EngineOptions, Volume};

pub const BS: u64 = 4096;

/// Small segments and buffers so a few writes exercise sealing, parallel
/// uploads and backpressure.
pub fn small_opts(seed: u64) -> EngineOptions {
    EngineOptions {
        segment_bytes: 4 * BS,
        dirty_bytes_max: 16 * BS,
        upload_inflight_max: 4,
        flush_timeout: Duration::from_secs(20),
        writeback_delay: Duration::from_secs(3600),
        retry_backoff_min: Duration::from_millis(1),
        retry_backoff_max: Duration::from_millis(20),
        cache_bytes: 0,
        prefetch_window_bytes: 0,
        seed,
        // Often, so the model's crashes hit shipping and restores use it.
        replica_interval: Duration::from_millis(20),
        lease_ttl: Duration::from_secs(30),
        // Tests reopen after simulated crashes, whose leases are not released.
        take_over: true,
        reclaim: false,
    }
}

/// An empty store for one test: in memory, or a fresh prefix of the test
/// bucket on moto when `SPRITEDISK_TEST_STORE=s3` (the engine's suite on s3://).
pub fn fresh_store() -> Arc<dyn ObjectStore> {
    if spritedisk_store::testing::s3_selected() {
        spritedisk_store::testing::use_s3_env();
        spritedisk_store::open_url(&spritedisk_store::testing::s3_url("engine")).unwrap()
    } else {
        Arc::new(spritedisk_store::MemStore::new())
    }
}

pub async fn create(store: &Arc<dyn ObjectStore>, size: u64) {
    create_volume(store, "mem://test", size).await.unwrap();
}

pub async fn open(store: Arc<dyn ObjectStore>, dir: Option<&Path>, opts: EngineOptions) -> Volume {
    Volume::open(store, "mem://test", dir, opts).await.unwrap()
}

/// `n` blocks whose every byte says where it is and which write made it.
pub fn pattern(lba: u64, n: u64, tag: u8) -> Bytes {
    let mut v = vec![0u8; (n * BS) as usize];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (lba as usize * 7 + i / 512 + tag as usize * 31) as u8 | 1;
    }
    Bytes::from(v)
}

/// The positions of the segment objects in the store, in order.
pub async fn segment_seqs(store: &Arc<dyn ObjectStore>) -> Vec<u64> {
    store
        .list("segments/")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| spritedisk_volume::segment::parse_segment_key(&m.key))
        .collect()
}
