//! D6 of the 5bc5be0 review: the replay of the local write log (a daemon
//! that died with acknowledged, unflushed writes, restarted on the same
//! machine) is interrupted — killed, OOM, a permanent store error — and
//! started again. It must yield exactly the acknowledged writes, in order,
//! and every state the store shows on the way must be a prefix of them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use spritedisk_store::{ObjectMeta, ObjectStore, StoreError};
use spritedisk_volume::{EngineOptions, Volume};

const MIB: u64 = 1 << 20;
const A: u8 = 1;
const B: u8 = 2;
const C: u8 = 3;
const X: u8 = 4;

/// A daemon's view of the store: data segments (not fences or barriers)
/// land while its budget lasts; the next one waits forever, as do all its
/// operations once it is killed. A dead process's requests never land.
#[derive(Debug)]
struct Daemon {
    inner: Arc<dyn ObjectStore>,
    /// Data segments that may still land; `usize::MAX`: any number.
    budget: AtomicUsize,
    /// Fail the first data segment over budget permanently instead.
    fail: bool,
    held: tokio::sync::watch::Sender<usize>,
    killed: AtomicBool,
}

impl Daemon {
    fn new(inner: &Arc<dyn ObjectStore>, budget: usize, fail: bool) -> Arc<Daemon> {
        Arc::new(Daemon {
            inner: inner.clone(),
            budget: AtomicUsize::new(budget),
            fail,
            held: tokio::sync::watch::channel(0).0,
            killed: AtomicBool::new(false),
        })
    }

    async fn alive(&self) {
        if self.killed.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    /// Waits until a data segment is held (or failed) over the budget.
    async fn wait_held(&self) {
        let mut rx = self.held.subscribe();
        let _ = rx.wait_for(|&n| n > 0).await;
    }
}

#[async_trait::async_trait]
impl ObjectStore for Daemon {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.alive().await;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        self.alive().await;
        self.inner.get_range(key, offset, len).await
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        self.alive().await;
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        self.alive().await;
        if key.starts_with("segments/") && data.len() as u64 >= BS {
            let left = self.budget.load(Ordering::SeqCst);
            if left == 0 {
                self.held.send_modify(|n| *n += 1);
                if self.fail {
                    return Err(StoreError::InvalidKey(format!("{key} (injected)")));
                }
                std::future::pending::<()>().await;
            }
            if left != usize::MAX {
                self.budget.store(left - 1, Ordering::SeqCst);
            }
        }
        self.inner.put_if_absent(key, data).await
    }
    async fn put_if_match(&self, key: &str, data: Bytes, etag: &str) -> Result<String, StoreError> {
        self.alive().await;
        self.inner.put_if_match(key, data, etag).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.alive().await;
        self.inner.head(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.alive().await;
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.alive().await;
        self.inner.list(prefix).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

fn opts(seed: u64) -> EngineOptions {
    let mut o = small_opts(seed);
    // Room for every unflushed segment of the scenario.
    o.dirty_bytes_max = 64 * BS;
    o
}

/// Writes of 4 blocks each (one segment each), acknowledged and never
/// flushed: none of them lands (the daemon dies with all of them in its
/// write log only), nor does a last one of 2 blocks still buffered.
async fn die_with_unflushed(store: &Arc<dyn ObjectStore>, dir: &Path, writes: &[(u64, u8)]) {
    let d = Daemon::new(store, 0, false);
    let through: Arc<dyn ObjectStore> = d.clone();
    let w = open(through, Some(dir), opts(1)).await;
    for &(lba, tag) in writes {
        w.write(lba * BS, pattern(lba, 4, tag), false)
            .await
            .unwrap();
    }
    w.write(48 * BS, pattern(48, 2, C), false).await.unwrap();
    d.killed.store(true, Ordering::SeqCst);
    w.abandon();
}

/// Restarts on `dir` with room for only one unflushed segment, so the
/// replay waits for each upload; it lands `budget` data segments, then the
/// daemon is killed (with `fail`: the next PUT fails permanently, which
/// stops the engine, and then it is killed).
async fn replay_interrupted(store: &Arc<dyn ObjectStore>, dir: &Path, budget: usize, fail: bool) {
    let d = Daemon::new(store, budget, fail);
    let through: Arc<dyn ObjectStore> = d.clone();
    let dir: PathBuf = dir.to_path_buf();
    let mut o = opts(2);
    o.dirty_bytes_max = 4 * BS;
    let mut attach =
        tokio::spawn(async move { Volume::open(through, "mem://test", Some(&dir), o).await });
    tokio::select! {
        _ = d.wait_held() => {
            if fail {
                // The engine stopped: the attach fails or the volume is stopped.
                if let Ok(Ok(v)) = attach.await {
                    v.abandon();
                }
            } else {
                attach.abort(); // kill -9 in the middle of the replay
            }
        }
        done = &mut attach => {
            // Fewer segments to replay than the budget: it finished.
            if let Ok(v) = done.unwrap() {
                v.abandon();
            }
        }
    }
    d.killed.store(true, Ordering::SeqCst);
}

/// Which write the `n` blocks at `lba` hold, for messages.
async fn tag_at(v: &Volume, lba: u64, n: u64) -> String {
    match v.read(lba * BS, n * BS).await {
        Err(e) => format!("a read error ({e})"),
        Ok(got) if got.iter().all(|&b| b == 0) => "zeros".into(),
        Ok(got) => [A, B, C, X]
            .into_iter()
            .find(|&t| got == pattern(lba, n, t))
            .map_or("other data".into(), name),
    }
}

fn name(tag: u8) -> String {
    let letter = ["A", "B", "C", "X"][tag as usize - 1];
    format!("write {letter}")
}

/// The restarted daemon reads every acknowledged write: `expect` is
/// (lba, blocks, tag).
async fn expect_all(store: &Arc<dyn ObjectStore>, dir: &Path, expect: &[(u64, u64, u8)]) {
    let v = Volume::open(store.clone(), "mem://test", Some(dir), opts(3))
        .await
        .unwrap();
    let mut wrong = vec![];
    for &(lba, n, tag) in expect {
        let got = tag_at(&v, lba, n).await;
        if got != name(tag) {
            wrong.push(format!("block {lba} holds {got}, not {}", name(tag)));
        }
    }
    v.close().await.unwrap();
    assert!(wrong.is_empty(), "{}", wrong.join("; "));
}

const WRITES: [(u64, u8); 4] = [(0, A), (16, X), (32, A), (0, B)];
const EXPECT: [(u64, u64, u8); 4] = [(0, 4, B), (16, 4, X), (32, 4, A), (48, 2, C)];

/// A daemon dies with [`WRITES`] unflushed; its restart is interrupted
/// (see [`replay_interrupted`]); the next restart reads [`EXPECT`].
async fn interrupted_once(budget: usize, fail: bool) {
    let store = fresh_store();
    create(&store, 64 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    die_with_unflushed(&store, dir.path(), &WRITES).await;
    replay_interrupted(&store, dir.path(), budget, fail).await;
    expect_all(&store, dir.path(), &EXPECT).await;
}

/// (a) of the review: killed before any replayed segment landed. Fails on
/// d78739d: block 0 reads write A, which write B overwrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_before_anything_landed_is_replayed_in_order() {
    interrupted_once(0, false).await;
}

/// (b) of the review: killed after the first replayed segment landed.
/// Fails on d78739d: the write at block 16 is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_after_a_segment_landed_loses_nothing() {
    interrupted_once(1, false).await;
}

/// A permanent store error stops the replay's engine: the attach fails,
/// and the next one replays everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_stopped_by_a_store_error_is_replayed_whole_next_time() {
    interrupted_once(1, true).await;
}

/// Interrupted twice: what the store holds on the way is always the
/// state before the writes plus a prefix of them, so an attach from the
/// store alone (another machine) never reads a mix. Fails with a replay
/// that starts over from the first write (checked by replaying the files
/// whose segments the history holds): it lands A over B at block 0 while
/// X at block 16 stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_interrupted_twice_leaves_the_store_a_prefix() {
    let store = fresh_store();
    create(&store, 64 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    die_with_unflushed(&store, dir.path(), &[(0, A), (0, B), (16, X), (32, A)]).await;
    replay_interrupted(&store, dir.path(), 3, false).await;
    replay_interrupted(&store, dir.path(), 1, false).await;
    // Another machine, from the store alone.
    let elsewhere = tempfile::tempdir().unwrap();
    let v = Volume::open(store.clone(), "mem://test", Some(elsewhere.path()), opts(4))
        .await
        .unwrap();
    let state = (
        tag_at(&v, 0, 4).await,
        tag_at(&v, 16, 4).await,
        tag_at(&v, 32, 4).await,
        tag_at(&v, 48, 2).await,
    );
    v.close().await.unwrap();
    let w = name;
    let z = || "zeros".to_string();
    let prefixes = [
        (z(), z(), z(), z()),
        (w(A), z(), z(), z()),
        (w(B), z(), z(), z()),
        (w(B), w(X), z(), z()),
        (w(B), w(X), w(A), z()),
        (w(B), w(X), w(A), w(C)),
    ];
    assert!(
        prefixes.contains(&state),
        "the store holds {state:?}: not the writes' prefix"
    );
}

/// M5 of the 5bc5be0 review: the write log outlives a deleted meta.db.
/// Its files are replayed only when numbered after the history's tail:
/// a writer that attached since (another machine) fenced above them, so
/// they are stale and skipped; with nobody else since, they are this
/// directory's acknowledged writes and come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_log_without_its_database_is_replayed_only_if_nobody_wrote_since() {
    for other_writer in [false, true] {
        let store = fresh_store();
        create(&store, 64 * MIB).await;
        let dir = tempfile::tempdir().unwrap();
        die_with_unflushed(&store, dir.path(), &[(0, A)]).await;
        for f in ["meta.db", "meta.db-wal", "meta.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        if other_writer {
            let elsewhere = tempfile::tempdir().unwrap();
            let v = open(store.clone(), Some(elsewhere.path()), opts(5)).await;
            v.write(0, pattern(0, 4, B), true).await.unwrap();
            v.close().await.unwrap();
        }
        let v = Volume::open(store.clone(), "mem://test", Some(dir.path()), opts(6))
            .await
            .unwrap();
        let got = tag_at(&v, 0, 4).await;
        v.close().await.unwrap();
        let want = if other_writer { name(B) } else { name(A) };
        assert_eq!(got, want, "another writer since: {other_writer}");
    }
}

/// Found by the review of D6's fix: the replay deleted the dead daemon's
/// empty last file (what its last seal rotated to), leaving a gap in the
/// log's generations before the file the restarted daemon then logged its
/// own writes to; when that daemon died in turn, its next start took the
/// gap for a machine crash and dropped everything after it: the write the
/// restarted daemon had acknowledged was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_acknowledged_after_a_replay_survive_the_next_crash() {
    let store = fresh_store();
    create(&store, 64 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    // One full segment (its file, then the empty one it rotated to).
    let d = Daemon::new(&store, 0, false);
    let through: Arc<dyn ObjectStore> = d.clone();
    let w = open(through, Some(dir.path()), opts(1)).await;
    w.write(0, pattern(0, 4, A), false).await.unwrap();
    d.killed.store(true, Ordering::SeqCst);
    w.abandon();
    // Restarted: its replay's segment and its own write never land.
    let d = Daemon::new(&store, 0, false);
    let through: Arc<dyn ObjectStore> = d.clone();
    let w = open(through, Some(dir.path()), opts(2)).await;
    w.write(16 * BS, pattern(16, 2, X), false).await.unwrap();
    d.killed.store(true, Ordering::SeqCst);
    w.abandon();
    expect_all(&store, dir.path(), &[(0, 4, A), (16, 2, X)]).await;
}

/// Found by the second review of D6's fix: a restart that took the lease
/// and died before its fence (killed during its attach) left the lease's
/// epoch above the one the directory's database recorded, and the next
/// restart took that for another machine's attach and dropped the write
/// log: the writes the first daemon acknowledged were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_killed_before_its_fence_keeps_the_log_for_the_next() {
    let store = fresh_store();
    create(&store, 64 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    die_with_unflushed(&store, dir.path(), &[(0, A), (16, X)]).await;
    // The restart holds the lease; its fence never lands: it is killed.
    let gate = GateStore::new(store.clone(), "segments/", Hold::Puts);
    let before = gate.close();
    let through: Arc<dyn ObjectStore> = gate.clone();
    let d: PathBuf = dir.path().to_path_buf();
    let attach =
        tokio::spawn(async move { Volume::open(through, "mem://test", Some(&d), opts(2)).await });
    assert!(
        gate.arrived_past(before).await,
        "setup: no fence was placed"
    );
    attach.abort();
    expect_all(&store, dir.path(), &[(0, 4, A), (16, 4, X), (48, 2, C)]).await;
}
