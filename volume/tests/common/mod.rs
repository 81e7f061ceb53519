//! Helpers shared by the engine's tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spritedisk_store::{ObjectMeta, ObjectStore, StoreError};
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
        map_readers: true,
        lookup_memo: true,
        durability: spritedisk_volume::Durability::Store,
    }
}

/// A store named `name` under `dir` (file://), or a fresh prefix of the
/// test bucket on s3 (`SPRITEDISK_TEST_STORE=s3`), and its URL: for tests
/// where one volume opens another by URL (forks).
pub fn url_store(dir: &Path, name: &str) -> (Arc<dyn ObjectStore>, String) {
    let url = if spritedisk_store::testing::s3_selected() {
        spritedisk_store::testing::use_s3_env();
        spritedisk_store::testing::s3_url(name)
    } else {
        format!("file://{}/{name}", dir.display())
    };
    (spritedisk_store::open_url(&url).unwrap(), url)
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

/// Writes blocks `lba..lba+n` (write `tag`), one block per request, then
/// FLUSHes.
pub async fn write_flushed(vol: &Volume, lba: u64, n: u64, tag: u8) {
    for b in lba..lba + n {
        vol.write(b * BS, pattern(b, 1, tag), false).await.unwrap();
    }
    vol.flush().await.unwrap();
}

/// A detached parent volume (URL store `parent` under `root`, its cache
/// directory `root/p`) whose `blocks` first blocks hold write 1, taken as
/// checkpoint `base`, then overwritten with `then` (a write tag) if given;
/// and the store and URL a fork of it is made at (`child`).
pub async fn parent_with_base(
    root: &Path,
    blocks: u64,
    then: Option<u8>,
) -> (Arc<dyn ObjectStore>, String, Arc<dyn ObjectStore>, String) {
    let (pstore, purl) = url_store(root, "parent");
    let (cstore, curl) = url_store(root, "child");
    create_volume(&pstore, &purl, 64 << 20).await.unwrap();
    let parent = Volume::open(pstore.clone(), &purl, Some(&root.join("p")), small_opts(1))
        .await
        .unwrap();
    write_flushed(&parent, 0, blocks, 1).await;
    parent.checkpoint(Some("base")).await.unwrap();
    if let Some(tag) = then {
        write_flushed(&parent, 0, blocks, tag).await;
    }
    parent.close().await.unwrap();
    (pstore, purl, cstore, curl)
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

/// What a [`GateStore`] holds at its gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// GETs (whole and ranged).
    Reads,
    /// PUTs, plain and conditional.
    Puts,
    /// DELETEs.
    Deletes,
    /// LISTs (their prefix is the key).
    Lists,
}

/// Wraps a store: while its gate is closed, the operations of one kind on
/// keys under a prefix wait there. Counts those that reached it, so a test
/// orders events by awaiting them, never by sleeping.
#[derive(Debug)]
pub struct GateStore {
    inner: Arc<dyn ObjectStore>,
    prefix: &'static str,
    hold: Hold,
    open: tokio::sync::watch::Sender<bool>,
    /// How many more operations a closed gate holds (the rest pass).
    holds_left: std::sync::atomic::AtomicUsize,
    arrived: tokio::sync::watch::Sender<usize>,
    /// Operations a closed gate lets through, one each, oldest waiter not
    /// guaranteed first ([`GateStore::let_through`]).
    permits: tokio::sync::watch::Sender<usize>,
    /// Keys a closed gate lets through ([`GateStore::let_key_through`]).
    keys: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The keys of the operations that reached the gate, in order.
    arrivals: std::sync::Mutex<Vec<String>>,
}

/// How long a test waits for an event its setup makes happen at once.
pub const GATE_WAIT_MAX: Duration = Duration::from_secs(20);

impl GateStore {
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: &'static str, hold: Hold) -> Arc<GateStore> {
        Arc::new(GateStore {
            inner,
            prefix,
            hold,
            open: tokio::sync::watch::channel(true).0,
            holds_left: std::sync::atomic::AtomicUsize::new(usize::MAX),
            arrived: tokio::sync::watch::channel(0).0,
            permits: tokio::sync::watch::channel(0).0,
            keys: Default::default(),
            arrivals: Default::default(),
        })
    }

    /// The key of the last operation that reached the gate.
    pub fn last_arrival(&self) -> Option<String> {
        self.arrivals.lock().unwrap().last().cloned()
    }

    /// Lets the operations on `key` held at the closed gate (or arriving
    /// later) through.
    pub fn let_key_through(&self, key: &str) {
        self.keys.lock().unwrap().insert(key.to_string());
        // Wakes the held operations to look.
        self.permits.send_modify(|_| {});
    }

    /// Lets `n` operations held at the closed gate (or arriving later)
    /// through; the gate stays closed for the rest.
    pub fn let_through(&self, n: usize) {
        self.permits.send_modify(|p| *p += n);
    }

    /// Closes the gate; returns how many operations reached it so far.
    pub fn close(&self) -> usize {
        self.close_for(usize::MAX)
    }

    /// Closes the gate for the next `n` operations only; the later ones
    /// pass. Returns how many operations reached it so far.
    pub fn close_for(&self, n: usize) -> usize {
        self.holds_left
            .store(n, std::sync::atomic::Ordering::SeqCst);
        self.open.send_replace(false);
        *self.arrived.borrow()
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Waits until more than `n` operations reached the gate; false after
    /// [`GATE_WAIT_MAX`].
    pub async fn arrived_past(&self, n: usize) -> bool {
        let mut rx = self.arrived.subscribe();
        let reached = tokio::time::timeout(GATE_WAIT_MAX, rx.wait_for(|&a| a > n))
            .await
            .is_ok();
        reached
    }

    async fn gate(&self, hold: Hold, key: &str) {
        use std::sync::atomic::Ordering::SeqCst;
        let held = || {
            !*self.open.borrow()
                && self
                    .holds_left
                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok()
        };
        if hold == self.hold && key.starts_with(self.prefix) {
            // Whether it is held is decided before it counts as arrived: a
            // test that saw it arrive then lets others run (a GC, a second
            // FLUSH), and one of theirs must not take its place at the
            // gate (a GC in `gc.rs` hung about once in a hundred runs that
            // way, holding the gate's only place while the test waited for
            // it to finish).
            let held = held();
            self.arrivals.lock().unwrap().push(key.to_string());
            self.arrived.send_modify(|n| *n += 1);
            if held {
                let mut open = self.open.subscribe();
                let mut permits = self.permits.subscribe();
                loop {
                    if *open.borrow_and_update() {
                        break;
                    }
                    // Seen before the take: a permit given after it wakes
                    // the select below.
                    permits.borrow_and_update();
                    if self.keys.lock().unwrap().contains(key) {
                        break;
                    }
                    let took = self.permits.send_if_modified(|p| match *p {
                        0 => false,
                        _ => {
                            *p -= 1;
                            true
                        }
                    });
                    if took {
                        break;
                    }
                    tokio::select! {
                        _ = open.changed() => {}
                        _ = permits.changed() => {}
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for GateStore {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.gate(Hold::Reads, key).await;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        self.gate(Hold::Reads, key).await;
        self.inner.get_range(key, offset, len).await
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        self.gate(Hold::Puts, key).await;
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        self.gate(Hold::Puts, key).await;
        self.inner.put_if_absent(key, data).await
    }
    async fn put_if_match(&self, key: &str, data: Bytes, etag: &str) -> Result<String, StoreError> {
        self.gate(Hold::Puts, key).await;
        self.inner.put_if_match(key, data, etag).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.inner.head(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.gate(Hold::Deletes, key).await;
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.gate(Hold::Lists, prefix).await;
        self.inner.list(prefix).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}
