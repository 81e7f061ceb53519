//! Fault-injecting wrapper for tests: transient errors, delays that reorder
//! parallel puts, an outage switch, and a simulated crash that leaves each
//! put still in flight lost, torn or complete — so a test can produce
//! "segment N+1 in the store without segment N". Every choice comes from a
//! seeded RNG, so a failing run is reproducible from its seed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{ObjectMeta, ObjectStore, StoreError};

#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// Probability that an operation fails with a transient error before reaching the store.
    pub error_rate: f64,
    /// Each put sleeps a random time up to this before it lands (reorders parallel puts).
    pub put_delay_max: Duration,
    /// Each get waits this long before it is answered (a remote store's latency).
    pub get_delay: Duration,
    /// Each put waits this long before it lands (a slow or stalling store).
    pub put_delay: Duration,
}

/// What happens to a put that is in flight when [`FaultStore::crash`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPolicy {
    /// Each in-flight put is, at random, lost, torn (a prefix lands) or completed.
    Random,
    /// Every in-flight put is lost.
    LoseAll,
}

#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    config: FaultConfig,
    rng: Mutex<SmallRng>,
    outage: AtomicBool,
    crashed: Mutex<Option<CrashPolicy>>,
    crashed_flag: AtomicBool,
    gets: AtomicU64,
    /// GETs by the first component of their key (`segments`, `meta`, ...).
    gets_by_dir: Mutex<std::collections::HashMap<String, u64>>,
    /// Reads (GET, ranged GET, HEAD) by key.
    reads_by_key: Mutex<std::collections::HashMap<String, u64>>,
    puts: AtomicU64,
    /// The longest ranged GET so far, in bytes.
    longest_range: AtomicU64,
    /// Changes (puts, deletes) left before a crash; u64::MAX: none planned.
    changes_left: AtomicU64,
    changes: AtomicU64,
}

impl FaultStore {
    pub fn new(inner: Arc<dyn ObjectStore>, config: FaultConfig, seed: u64) -> Self {
        FaultStore {
            inner,
            config,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            outage: AtomicBool::new(false),
            crashed: Mutex::new(None),
            crashed_flag: AtomicBool::new(false),
            gets: AtomicU64::new(0),
            gets_by_dir: Default::default(),
            reads_by_key: Default::default(),
            puts: AtomicU64::new(0),
            longest_range: AtomicU64::new(0),
            changes_left: AtomicU64::new(u64::MAX),
            changes: AtomicU64::new(0),
        }
    }

    /// While on, every operation fails with a transient error (a store outage).
    pub fn set_outage(&self, on: bool) {
        self.outage.store(on, Ordering::SeqCst);
    }

    /// Simulates the writer's machine dying: from now on this wrapper refuses
    /// everything, and puts still in flight resolve by `policy`.
    pub fn crash(&self, policy: CrashPolicy) {
        *self.crashed.lock().unwrap() = Some(policy);
        self.crashed_flag.store(true, Ordering::SeqCst);
    }

    /// Number of get / get_range calls that reached the inner store.
    /// GETs (whole or ranged) of keys under `dir/` (or of the key `dir`).
    /// Crashes (losing every change in flight and failing every later
    /// operation) just before the `n`-th change from now: puts and deletes
    /// are counted, so a test can stop a multi-step operation at each step.
    pub fn crash_after_changes(&self, n: u64) {
        self.changes_left.store(n, Ordering::SeqCst);
    }

    /// Changes (puts and deletes) that reached the store.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Counts one change, crashing first if the planned crash is due.
    fn change(&self) {
        let left = self.changes_left.load(Ordering::SeqCst);
        if left == 0 {
            self.crash(CrashPolicy::LoseAll);
        } else if left != u64::MAX {
            self.changes_left.store(left - 1, Ordering::SeqCst);
        }
    }

    pub fn gets_in(&self, dir: &str) -> u64 {
        self.gets_by_dir
            .lock()
            .unwrap()
            .get(dir)
            .copied()
            .unwrap_or(0)
    }

    /// Reads (GET, ranged GET or HEAD) of `key` so far.
    pub fn reads_of(&self, key: &str) -> u64 {
        self.reads_by_key
            .lock()
            .unwrap()
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    fn count_read(&self, key: &str) {
        *self
            .reads_by_key
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default() += 1;
    }

    fn count_get(&self, key: &str) {
        self.count_read(key);
        self.gets.fetch_add(1, Ordering::SeqCst);
        let dir = key.split('/').next().unwrap_or(key).to_string();
        *self.gets_by_dir.lock().unwrap().entry(dir).or_default() += 1;
    }

    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }

    /// The longest ranged GET so far, in bytes (0: none yet).
    pub fn longest_ranged_get(&self) -> u64 {
        self.longest_range.load(Ordering::SeqCst)
    }

    /// Number of puts that reached the inner store.
    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }

    fn gate(&self, op: &str, key: &str) -> Result<(), StoreError> {
        if self.crashed_flag.load(Ordering::SeqCst) {
            return Err(StoreError::Injected(format!("{op} {key}: writer crashed")));
        }
        if self.outage.load(Ordering::SeqCst) {
            return Err(StoreError::Injected(format!("{op} {key}: store outage")));
        }
        if self.config.error_rate > 0.0 && self.rng.lock().unwrap().gen_bool(self.config.error_rate)
        {
            return Err(StoreError::Injected(format!("{op} {key}: transient error")));
        }
        Ok(())
    }

    /// Delays a put, then decides whether it lands whole, torn or not at all.
    /// Returns the bytes to write, or None when the put is lost; `Err` marks a
    /// put that was cut short by a crash (written or not, the caller sees failure).
    async fn land(&self, key: &str, data: Bytes) -> Result<Option<Bytes>, StoreError> {
        self.change();
        self.gate("put", key)?;
        if !self.config.put_delay.is_zero() {
            tokio::time::sleep(self.config.put_delay).await;
        }
        if !self.config.put_delay_max.is_zero() {
            let nanos = self.config.put_delay_max.as_nanos() as u64;
            let d = self.rng.lock().unwrap().gen_range(0..=nanos);
            tokio::time::sleep(Duration::from_nanos(d)).await;
        }
        let policy = *self.crashed.lock().unwrap();
        match policy {
            None => Ok(Some(data)),
            Some(CrashPolicy::LoseAll) => Ok(None),
            Some(CrashPolicy::Random) => {
                let mut rng = self.rng.lock().unwrap();
                Ok(match rng.gen_range(0..3) {
                    0 => None,
                    1 if !data.is_empty() => Some(data.slice(..rng.gen_range(0..data.len()))),
                    _ => Some(data),
                })
            }
        }
    }

    fn crashed_err(key: &str) -> StoreError {
        StoreError::Injected(format!("put {key}: writer crashed mid-put"))
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.gate("get", key)?;
        self.count_get(key);
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        self.gate("get", key)?;
        self.count_get(key);
        self.longest_range.fetch_max(len, Ordering::SeqCst);
        if !self.config.get_delay.is_zero() {
            tokio::time::sleep(self.config.get_delay).await;
        }
        self.inner.get_range(key, offset, len).await
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        let crashed_before = self.crashed_flag.load(Ordering::SeqCst);
        match self.land(key, data).await? {
            Some(d) => {
                self.puts.fetch_add(1, Ordering::SeqCst);
                self.changes.fetch_add(1, Ordering::SeqCst);
                let r = self.inner.put(key, d).await;
                if crashed_before || self.crashed_flag.load(Ordering::SeqCst) {
                    return Err(Self::crashed_err(key));
                }
                r
            }
            None => Err(Self::crashed_err(key)),
        }
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        match self.land(key, data).await? {
            Some(d) => {
                self.puts.fetch_add(1, Ordering::SeqCst);
                self.changes.fetch_add(1, Ordering::SeqCst);
                let r = self.inner.put_if_absent(key, d).await;
                if self.crashed_flag.load(Ordering::SeqCst) {
                    return Err(Self::crashed_err(key));
                }
                r
            }
            None => Err(Self::crashed_err(key)),
        }
    }

    async fn put_if_match(&self, key: &str, data: Bytes, etag: &str) -> Result<String, StoreError> {
        match self.land(key, data).await? {
            Some(d) => {
                self.puts.fetch_add(1, Ordering::SeqCst);
                self.changes.fetch_add(1, Ordering::SeqCst);
                let r = self.inner.put_if_match(key, d, etag).await;
                if self.crashed_flag.load(Ordering::SeqCst) {
                    return Err(Self::crashed_err(key));
                }
                r
            }
            None => Err(Self::crashed_err(key)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.gate("head", key)?;
        self.count_read(key);
        self.inner.head(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.change();
        self.gate("delete", key)?;
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.gate("list", prefix)?;
        self.inner.list(prefix).await
    }

    fn describe(&self) -> String {
        format!("fault({})", self.inner.describe())
    }
}
