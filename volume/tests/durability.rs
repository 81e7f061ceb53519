//! `--durability local` (issue 22, docs/design/0014): a FLUSH returns at
//! the local write journal's fdatasync, before any upload. One test per
//! line of the contract: a daemon killed, a power cut with the disk kept,
//! the machine lost, another machine taking over (and the old directory
//! attached again after it), checkpoint and detach uploading everything,
//! a failing journal sending FLUSHes to the store, and concurrent FLUSHes
//! sharing one sync.
//!
//! Segment PUTs wait at a gate the test holds closed: a FLUSH that
//! returned did not wait for the store, and what is "not uploaded" is
//! exactly what the gate held. The power cut is `testing::power_cut`: the
//! journal cut back to what its syncs covered, from the file system's view
//! at each sync.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use spritedisk_store::ObjectStore;
use spritedisk_volume::{testing, Durability, EngineOptions, Volume};

const FLUSHED: u8 = 1;
const UNFLUSHED: u8 = 2;
const NEWER: u8 = 3;
/// Written and uploaded before the rest, through journal files that are
/// then recycled (docs/design/0015).
const OLD: u8 = 4;

/// Local durability; only a full buffer (4 blocks) or a FLUSH-less
/// barrier seals, so a few flushed blocks stay in the journal alone.
fn local(seed: u64) -> EngineOptions {
    EngineOptions {
        durability: Durability::Local,
        dirty_bytes_max: 64 * BS,
        ..small_opts(seed)
    }
}

/// A volume attached in local mode on `dir` through a gate on segment
/// PUTs (open while it attaches: its fence passes).
async fn gated(inner: &Arc<dyn ObjectStore>, dir: &Path, seed: u64) -> (Arc<GateStore>, Volume) {
    let gate = GateStore::new(inner.clone(), "segments/", Hold::Puts);
    let store: Arc<dyn ObjectStore> = gate.clone();
    let vol = Volume::open(store, "mem://test", Some(dir), local(seed))
        .await
        .unwrap();
    (gate, vol)
}

/// Writes blocks `lba..lba+n` (write `tag`), one request each.
async fn write(vol: &Volume, lba: u64, n: u64, tag: u8) {
    for b in lba..lba + n {
        vol.write(b * BS, pattern(b, 1, tag), false).await.unwrap();
    }
}

/// What blocks `lba..lba+n` hold: the write tag of every block, 0 for
/// zeros, 255 for anything else.
async fn tags(vol: &Volume, lba: u64, n: u64) -> Vec<u8> {
    let mut out = vec![];
    for b in lba..lba + n {
        let got = vol.read(b * BS, BS).await.unwrap();
        out.push(if got.iter().all(|&x| x == 0) {
            0
        } else {
            [FLUSHED, UNFLUSHED, NEWER, OLD]
                .into_iter()
                .find(|&t| got == pattern(b, 1, t))
                .unwrap_or(255)
        });
    }
    out
}

/// A store with a volume, a directory for "this machine", and one for
/// "another machine".
async fn setup() -> (Arc<dyn ObjectStore>, tempfile::TempDir) {
    let inner = fresh_store();
    create(&inner, 64 << 20).await;
    (inner, tempfile::tempdir().unwrap())
}

/// Three blocks written and FLUSHed with the gate closed: the FLUSH returns
/// with nothing uploaded (a store-mode FLUSH would wait at the gate until
/// its deadline and fail), and `stats` says what is not in the store yet.
async fn flushed_not_uploaded(inner: &Arc<dyn ObjectStore>, gate: &GateStore, vol: &Volume) {
    let before = segment_seqs(inner).await;
    gate.close();
    write(vol, 0, 3, FLUSHED).await;
    vol.flush().await.unwrap();
    assert_eq!(
        segment_seqs(inner).await,
        before,
        "a segment landed through a closed gate"
    );
    let s = vol.stats().unwrap();
    assert_eq!(s.durability, "local");
    assert!(s.session_journal_syncs >= 1, "no journal sync: {s:?}");
    assert!(
        s.dirty_bytes >= 3 * BS,
        "stats say {} bytes are not in the store; 3 blocks are not",
        s.dirty_bytes
    );
}

/// A daemon on `here` that dies (its engine stopped, its held uploads
/// never landing) after [`flushed_not_uploaded`]: blocks 0-2 are only in
/// its journal.
async fn die_with_flushed_only_in_the_journal(
    inner: &Arc<dyn ObjectStore>,
    here: &Path,
    seed: u64,
) {
    let (gate, vol) = gated(inner, here, seed).await;
    flushed_not_uploaded(inner, &gate, &vol).await;
    vol.abandon();
}

/// An attach on `here` through `dying`, which fails it with an injected
/// error; then the next attach must still read blocks 0-2 (write FLUSHED)
/// from the journal (`after`: what happened, for the message).
async fn the_next_attach_reads_the_journal(
    inner: &Arc<dyn ObjectStore>,
    here: &Path,
    dying: Arc<dyn ObjectStore>,
    after: &str,
) {
    let err = Volume::open(dying, "mem://test", Some(here), local(3))
        .await
        .err()
        .expect("setup: the attach survived its injected failure");
    assert!(err.to_string().contains("injected"), "{err}");
    let vol = open(inner.clone(), Some(here), local(4)).await;
    assert_eq!(
        tags(&vol, 0, 3).await,
        [FLUSHED; 3],
        "the journal was dropped after {after}"
    );
    vol.close().await.unwrap();
}

/// kill -9 of the daemon, restarted on its directory: every flushed write
/// is back, and so is every acknowledged one (the journal outlives the
/// process, 0002).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_restarted_loses_no_flushed_write() {
    let (inner, dir) = setup().await;
    let here = dir.path().join("here");
    let (gate, vol) = gated(&inner, &here, 1).await;
    flushed_not_uploaded(&inner, &gate, &vol).await;
    write(&vol, 3, 1, UNFLUSHED).await;
    vol.abandon();
    drop(vol);

    let vol = open(inner.clone(), Some(&here), local(2)).await;
    assert_eq!(
        tags(&vol, 0, 4).await,
        [FLUSHED, FLUSHED, FLUSHED, UNFLUSHED]
    );
    vol.close().await.unwrap();
}

/// A power cut with the machine's disk intact: the journal keeps what its
/// syncs covered, so every flushed write is back, and the unflushed one
/// after them is gone (the cut is real: it took something).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_with_the_disk_kept_loses_no_flushed_write() {
    let (inner, dir) = setup().await;
    let here = dir.path().join("here");
    let (gate, vol) = gated(&inner, &here, 1).await;
    flushed_not_uploaded(&inner, &gate, &vol).await;
    write(&vol, 3, 1, UNFLUSHED).await;
    vol.abandon();
    drop(vol);
    let (_, cut) = testing::power_cut(&here);
    assert!(cut > 0, "setup: the power cut took no unsynced bytes");

    let vol = open(inner.clone(), Some(&here), local(2)).await;
    assert_eq!(
        tags(&vol, 0, 4).await,
        [FLUSHED, FLUSHED, FLUSHED, 0],
        "after the power cut"
    );
    vol.close().await.unwrap();
}

/// Several FLUSHes, each followed by a power cut and a restart, with
/// segments sealed (and held) in between: every flushed write survives
/// every cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_writes_survive_repeated_power_cuts() {
    let (inner, dir) = setup().await;
    let here = dir.path().join("here");
    let mut expect = vec![0u8; 24];
    for round in 0..4u64 {
        let (gate, vol) = gated(&inner, &here, round).await;
        gate.close();
        // Six blocks a round: one full segment (held at the gate) and two
        // blocks in the buffer, then one unflushed block.
        let at = round * 6;
        write(&vol, at, 5, FLUSHED).await;
        vol.flush().await.unwrap();
        write(&vol, at + 5, 1, UNFLUSHED).await;
        for b in at..at + 5 {
            expect[b as usize] = FLUSHED;
        }
        vol.abandon();
        drop(vol);
        testing::power_cut(&here);
        let vol = open(inner.clone(), Some(&here), local(10 + round)).await;
        let got = tags(&vol, 0, 24).await;
        for (b, (&g, &e)) in got.iter().zip(&expect).enumerate() {
            assert!(
                e == 0 || g == e,
                "round {round}: block {b} holds write {g}, flushed as {e}"
            );
        }
        vol.abandon();
        drop(vol);
        testing::power_cut(&here);
    }
}

/// A power cut while a checkpoint's barrier is held: the barrier left an
/// empty journal file (its header only) before the file of the writes
/// flushed after it. The header is synced with them: a file cut to
/// nothing ends the journal, and would take the later file's flushed
/// writes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_behind_a_held_checkpoint_keeps_the_writes_flushed_after_it() {
    let (inner, dir) = setup().await;
    let here = dir.path().join("here");
    let (gate, vol) = gated(&inner, &here, 1).await;
    let arrived = gate.close();
    write(&vol, 0, 1, FLUSHED).await;
    let ckpt = tokio::spawn({
        let vol = vol.clone();
        async move { vol.checkpoint(Some("c1")).await }
    });
    // The checkpoint's upload of block 0 lands; its barrier is held.
    assert!(gate.arrived_past(arrived).await, "no upload came");
    gate.let_through(1);
    assert!(gate.arrived_past(arrived + 1).await, "no barrier came");
    write(&vol, 1, 1, NEWER).await;
    vol.flush().await.unwrap();
    vol.abandon();
    let _ = ckpt.await;
    drop(vol);
    testing::power_cut(&here);

    let vol = open(inner.clone(), Some(&here), local(2)).await;
    assert_eq!(tags(&vol, 0, 2).await, [FLUSHED, NEWER]);
    vol.close().await.unwrap();
}

/// A power cut where the disk kept some of what no sync covered (any
/// length each journal file had since its last sync, any whole pages;
/// files the directory never synced, or not), over many draws: the disk
/// after the restart always holds every flushed write, and the unflushed
/// ones after them form a prefix of what was written. A later journal
/// file that outlived the tail of an earlier one must not be replayed
/// past the hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_any_power_cut_the_disk_is_a_prefix_holding_every_flushed_write() {
    for seed in 0..200u64 {
        let (inner, dir) = setup().await;
        let here = dir.path().join("here");
        let (gate, vol) = gated(&inner, &here, seed).await;
        gate.close();
        write(&vol, 0, 2, FLUSHED).await;
        vol.flush().await.unwrap();
        // Unflushed, across three journal files (a segment is 4 blocks).
        write(&vol, 2, 10, UNFLUSHED).await;
        vol.abandon();
        drop(vol);
        testing::power_cut_seeded(&here, seed);
        let vol = open(inner.clone(), Some(&here), local(100 + seed)).await;
        let got = tags(&vol, 0, 12).await;
        vol.close().await.unwrap();
        let kept = got[2..].iter().take_while(|&&t| t == UNFLUSHED).count();
        assert!(
            got[..2] == [FLUSHED; 2] && got[2 + kept..].iter().all(|&t| t == 0),
            "seed {seed}: after the power cut the disk holds {got:?}: not the flushed writes and a prefix of the rest"
        );
    }
}

/// The same through recycled journal files (docs/design/0015): blocks
/// 0..12 were written (NEWER) and uploaded through journal files that
/// are then reused, still holding those records past their new ones; then
/// overwritten (OLD, one request) and uploaded. After any power cut the
/// flushed writes are back, then a prefix of the unflushed ones, then OLD:
/// no record of a file's earlier life (NEWER) is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_any_power_cut_a_recycled_journal_replays_no_earlier_life() {
    let spares = |here: &Path| -> Vec<std::ffi::OsString> {
        std::fs::read_dir(here.join("wlog"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().ends_with(".spare"))
            .collect()
    };
    let old: Vec<u8> = (0..12).flat_map(|b| pattern(b, 1, OLD)).collect();
    for seed in 0..100u64 {
        let (inner, dir) = setup().await;
        let here = dir.path().join("here");
        let (gate, vol) = gated(&inner, &here, seed).await;
        for seg in 0..3 {
            write(&vol, seg * 4, 4, NEWER).await;
            vol.flush_to_store().await.unwrap();
            // A round: the spares' names are durable, and they are taken.
            vol.flush().await.unwrap();
        }
        vol.write(0, old.clone().into(), false).await.unwrap();
        vol.flush_to_store().await.unwrap();
        vol.flush().await.unwrap();
        let before = spares(&here);
        assert!(!before.is_empty(), "setup: no spare journal file");
        // The FLUSHED records go into a recycled file: the current one is
        // longer than a header already.
        let current = std::fs::read_dir(here.join("wlog"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .max_by_key(|e| e.file_name())
            .unwrap();
        assert!(
            current.metadata().unwrap().len() > 4096,
            "setup: the current journal file is not a recycled one"
        );
        // Nothing uploaded from here on: no file retires while the power
        // cut looks at the journal.
        gate.close();
        write(&vol, 0, 2, FLUSHED).await;
        vol.flush().await.unwrap();
        write(&vol, 2, 10, UNFLUSHED).await;
        let after = spares(&here);
        assert!(
            before.iter().any(|n| !after.contains(n)),
            "setup: no spare was reused ({before:?}, then {after:?})"
        );
        vol.abandon();
        drop(vol);
        match seed {
            0 => testing::power_cut(&here),
            _ => testing::power_cut_seeded(&here, seed),
        };
        let vol = open(inner.clone(), Some(&here), local(100 + seed)).await;
        let got = tags(&vol, 0, 12).await;
        vol.close().await.unwrap();
        let kept = got[2..].iter().take_while(|&&t| t == UNFLUSHED).count();
        assert!(
            got[..2] == [FLUSHED; 2] && got[2 + kept..].iter().all(|&t| t == OLD),
            "seed {seed}: after the power cut the disk holds {got:?}: not the flushed writes, a prefix of the rest, then what was uploaded"
        );
    }
}

/// The machine is lost: another one attaches from the store alone. The
/// flushed writes not uploaded are gone, and the disk is a prefix of the
/// history: the uploaded writes before them are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_machine_leaves_a_prefix_of_its_history() {
    let (inner, dir) = setup().await;
    let (gate, vol) = gated(&inner, &dir.path().join("here"), 1).await;
    // Uploaded: a full segment of NEWER at 8..12, flushed, gate open.
    write(&vol, 8, 4, NEWER).await;
    vol.flush_to_store().await.unwrap();
    flushed_not_uploaded(&inner, &gate, &vol).await;
    vol.abandon();
    drop(vol);

    let elsewhere = open(inner.clone(), Some(&dir.path().join("there")), local(2)).await;
    assert_eq!(
        tags(&elsewhere, 0, 3).await,
        [0, 0, 0],
        "flushed writes that were never uploaded cannot be on another machine"
    );
    assert_eq!(tags(&elsewhere, 8, 4).await, [NEWER; 4]);
    elsewhere.close().await.unwrap();
}

/// Another machine takes the volume over while this one holds flushed
/// writes only in its journal; then this one's daemon, restarted on its
/// directory, must not replay them into the new history (they would mix
/// with the other machine's writes). And the old writer, still alive, lands
/// nothing once fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_never_sees_a_mixture_and_the_old_journal_is_not_replayed() {
    let (inner, dir) = setup().await;
    let here = dir.path().join("here");
    let (gate, old) = gated(&inner, &here, 1).await;
    flushed_not_uploaded(&inner, &gate, &old).await;

    let there = dir.path().join("there");
    let new = open(inner.clone(), Some(&there), local(2)).await;
    assert_eq!(tags(&new, 0, 3).await, [0, 0, 0]);
    write(&new, 1, 1, NEWER).await;
    new.close().await.unwrap();

    // The old writer's held segment (if any) and its next FLUSH: fenced.
    gate.open();
    // (The write itself may already fail: the old writer may have seen
    // its lease taken.)
    let _ = old.write(2 * BS, pattern(2, 1, UNFLUSHED), false).await;
    let sealed = old.flush_to_store().await;
    assert!(
        sealed.is_err(),
        "the fenced writer's data landed: {sealed:?}"
    );
    old.abandon();
    drop(old);

    // Its daemon restarted on its directory: the journal is dropped.
    let again = open(inner.clone(), Some(&here), local(3)).await;
    assert_eq!(
        tags(&again, 0, 3).await,
        [0, NEWER, 0],
        "the old machine's journal was replayed over the new history"
    );
    again.close().await.unwrap();
}

/// Which operations a [`Faulty`] store fails: (operation, key, how many
/// operations on that key came before).
type FailWhen = dyn Fn(&str, &str, usize) -> bool + Send + Sync;

/// A store that fails, for good, the operations its `fail` picks.
struct Faulty {
    inner: Arc<dyn ObjectStore>,
    seen: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
    fail: Box<FailWhen>,
}

impl std::fmt::Debug for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faulty")
    }
}

impl Faulty {
    fn wrap(
        inner: &Arc<dyn ObjectStore>,
        fail: impl Fn(&str, &str, usize) -> bool + Send + Sync + 'static,
    ) -> Arc<dyn ObjectStore> {
        Arc::new(Faulty {
            inner: inner.clone(),
            seen: Default::default(),
            fail: Box::new(fail),
        })
    }

    fn check(&self, op: &str, key: &str) -> Result<(), spritedisk_store::StoreError> {
        let n = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(format!("{op} {key}")).or_default();
            *n += 1;
            *n - 1
        };
        match (self.fail)(op, key, n) {
            true => Err(spritedisk_store::StoreError::InvalidKey(format!(
                "{op} {key} (injected)"
            ))),
            false => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for Faulty {
    async fn get(&self, key: &str) -> Result<bytes::Bytes, spritedisk_store::StoreError> {
        self.check("get", key)?;
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<bytes::Bytes, spritedisk_store::StoreError> {
        self.inner.get_range(key, offset, len).await
    }
    async fn put(
        &self,
        key: &str,
        data: bytes::Bytes,
    ) -> Result<String, spritedisk_store::StoreError> {
        self.check("put", key)?;
        self.inner.put(key, data).await
    }
    async fn put_if_absent(
        &self,
        key: &str,
        data: bytes::Bytes,
    ) -> Result<String, spritedisk_store::StoreError> {
        self.check("put_if_absent", key)?;
        self.inner.put_if_absent(key, data).await
    }
    async fn put_if_match(
        &self,
        key: &str,
        data: bytes::Bytes,
        etag: &str,
    ) -> Result<String, spritedisk_store::StoreError> {
        self.check("put_if_match", key)?;
        self.inner.put_if_match(key, data, etag).await
    }
    async fn head(
        &self,
        key: &str,
    ) -> Result<Option<spritedisk_store::ObjectMeta>, spritedisk_store::StoreError> {
        self.inner.head(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), spritedisk_store::StoreError> {
        self.inner.delete(key).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<spritedisk_store::ObjectMeta>, spritedisk_store::StoreError> {
        self.inner.list(prefix).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Found by the review of 0014: the restart of a killed daemon dies after
/// its lease write and before it read its directory (here its second read
/// of the volume config fails). The next restart finds a lease this
/// directory's database never heard of; it must still know it for its own
/// (the lease custody, recorded before the lease write), or it drops the
/// journal with the flushed writes in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_dies_after_its_lease_write_keeps_the_journal() {
    let (inner, dir) = setup().await;
    let here = dir.path().join("here");
    die_with_flushed_only_in_the_journal(&inner, &here, 1).await;

    // The volume config is read again once the lease is taken: that
    // second read fails (a flaky store at boot, say).
    let flaky = Faulty::wrap(&inner, |op, key, n| {
        op == "get" && key == spritedisk_volume::CONFIG_KEY && n == 1
    });
    the_next_attach_reads_the_journal(&inner, &here, flaky, "a restart died holding the lease")
        .await;
}

/// Found by the second review of 0014: lease.json rolled back (restored
/// from a backup) to a lease this directory held. The restart takes the
/// next lease from it (recorded as the directory's), finds the history's
/// epoch above it and raises its lease; it dies before anything else (its
/// fence fails). The next restart finds the raised lease: the directory
/// must know it as its own, or the journal goes, flushed writes and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_raises_its_lease_and_dies_keeps_the_journal() {
    let (inner, dir) = setup().await;
    let here = dir.path().join("here");
    let first = open(inner.clone(), Some(&here), local(1)).await;
    first.close().await.unwrap();
    let old_lease = inner
        .get(spritedisk_volume::lease::LEASE_KEY)
        .await
        .unwrap();
    die_with_flushed_only_in_the_journal(&inner, &here, 2).await;

    inner
        .put(spritedisk_volume::lease::LEASE_KEY, old_lease)
        .await
        .unwrap();
    // Its fence (the first record it writes) fails for good.
    let fences = Faulty::wrap(&inner, |op, key, _| {
        op == "put_if_absent" && key.starts_with("segments/")
    });
    the_next_attach_reads_the_journal(&inner, &here, fences, "a restart raised its lease and died")
        .await;
}

/// Found by the second review of 0014: `recover` on a directory whose
/// database is gone and whose lease custody is unreadable: nothing proves
/// its write log continues the history, but the device's filesystem may be
/// mounted on the writes it holds, so the log is not dropped silently: the
/// recovery is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_refuses_to_drop_a_log_nothing_vouches_for() {
    let (inner, dir) = setup().await;
    let here = dir.path().join("here");
    let vol = open(inner.clone(), Some(&here), local(1)).await;
    write(&vol, 0, 1, UNFLUSHED).await;
    vol.abandon();
    drop(vol);
    for f in [
        "meta.db",
        "meta.db-wal",
        "meta.db-shm",
        "lease-custody.json",
    ] {
        let _ = std::fs::remove_file(here.join(f));
    }
    let o = EngineOptions {
        reclaim: true,
        ..local(2)
    };
    let err = Volume::open(inner.clone(), "mem://test", Some(&here), o)
        .await
        .err()
        .expect("recover dropped a write log silently");
    assert!(err.to_string().contains("write log"), "{err}");
    assert!(
        std::fs::read_dir(here.join("wlog")).unwrap().count() > 0,
        "the refused recovery deleted the log"
    );
}

/// Raised by the review of 0014: a directory whose database is gone (a
/// discard interrupted between its two deletions, or a user) while its
/// journal is left, after another machine took the volume over and wrote.
/// Nothing proves the journal continues this history: it is dropped, never
/// replayed into the new one's. (Two guards hold this: the new writer's
/// fence moves the numbering a whole window past the old writer's files,
/// so a replay would skip them as already in the history, and an attach
/// without a database or the lease's custody drops the journal. Each alone
/// passes this test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_without_its_database_is_not_replayed_after_a_takeover() {
    let (inner, dir) = setup().await;
    let here = dir.path().join("here");
    let (gate, old) = gated(&inner, &here, 1).await;
    // Five segments' worth, flushed, none uploaded: journal files for
    // several positions past the one the next writer fences.
    gate.close();
    write(&old, 0, 18, FLUSHED).await;
    old.flush().await.unwrap();
    old.abandon();
    drop(old);
    let new = open(inner.clone(), Some(&dir.path().join("there")), local(2)).await;
    write(&new, 1, 1, NEWER).await;
    new.close().await.unwrap();

    for f in ["meta.db", "meta.db-wal", "meta.db-shm"] {
        let _ = std::fs::remove_file(here.join(f));
    }
    let again = open(inner.clone(), Some(&here), local(3)).await;
    let mut want = [0u8; 18];
    want[1] = NEWER;
    assert_eq!(
        tags(&again, 0, 18).await,
        want,
        "a journal nothing vouches for was replayed over another machine's writes"
    );
    again.close().await.unwrap();
}

/// A checkpoint and a detach upload everything first, in local mode too:
/// another machine reads what was written before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_and_detach_upload_everything() {
    let (inner, dir) = setup().await;
    let vol = open(inner.clone(), Some(&dir.path().join("here")), local(1)).await;
    write(&vol, 0, 2, FLUSHED).await;
    vol.flush().await.unwrap();
    vol.checkpoint(Some("c1")).await.unwrap();
    assert_eq!(
        vol.stats().unwrap().dirty_bytes,
        0,
        "checkpoint left data behind"
    );
    write(&vol, 2, 1, NEWER).await;
    vol.close().await.unwrap();

    let elsewhere = open(inner.clone(), Some(&dir.path().join("there")), local(2)).await;
    assert_eq!(tags(&elsewhere, 0, 3).await, [FLUSHED, FLUSHED, NEWER]);
    elsewhere.close().await.unwrap();
}

/// The journal fails (the next file cannot be created: its name is
/// taken): the files it has are kept, since they hold flushed writes not
/// yet uploaded (store mode deletes them), and FLUSHes wait for the store
/// from then on. Killed then, the daemon's restart replays them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_journal_keeps_its_files_and_sends_flushes_to_the_store() {
    let (inner, dir) = setup().await;
    let here = dir.path().join("here");
    let (gate, vol) = gated(&inner, &here, 1).await;
    let arrived = gate.close();
    write(&vol, 0, 1, FLUSHED).await;
    vol.flush().await.unwrap();
    // The journal's next file name, taken.
    let last = std::fs::read_dir(here.join("wlog"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap();
    std::fs::write(
        here.join("wlog").join(format!("{:020}.log", last + 1)),
        b"x",
    )
    .unwrap();
    // A full buffer (blocks 0-3) seals, and the journal cannot start the
    // next file.
    write(&vol, 1, 4, NEWER).await;
    write(&vol, 5, 1, NEWER).await;
    let flush = tokio::spawn({
        let vol = vol.clone();
        async move { vol.flush().await }
    });
    assert!(
        gate.arrived_past(arrived).await,
        "the FLUSH sent nothing to the store"
    );
    assert!(
        !flush.is_finished(),
        "a FLUSH returned with the journal failed and every segment held"
    );
    vol.abandon();
    assert!(flush.await.unwrap().is_err());
    drop(vol);

    // Blocks 0-3 were in the journal when it failed (block 3 filled the
    // buffer, whose seal found the next name taken); blocks 4 and 5 came
    // after, unlogged and never flushed: as safe as in store mode.
    let vol = open(inner.clone(), Some(&here), local(2)).await;
    assert_eq!(
        tags(&vol, 0, 4).await,
        [FLUSHED, NEWER, NEWER, NEWER],
        "the failed journal's files were not kept"
    );
    vol.close().await.unwrap();
}

/// Local mode needs the journal's directory: refused without one, before
/// anything is written to the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_durability_without_a_cache_directory_is_refused() {
    let (inner, _dir) = setup().await;
    let before = inner.list("").await.unwrap().len();
    let err = Volume::open(inner.clone(), "mem://test", None, local(1))
        .await
        .err()
        .expect("attached in local mode without a cache directory");
    assert!(err.to_string().contains("cache directory"), "{err}");
    assert_eq!(inner.list("").await.unwrap().len(), before);
}

/// Sixteen FLUSHes that come while none has synced share one sync round
/// (group commit): a single-threaded runtime, the journal's sync inline, so
/// every FLUSH has asked before the round runs.
#[test]
fn concurrent_flushes_share_one_journal_sync() {
    let _inline = spritedisk_store::blocking::run_inline_on_this_thread();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (inner, dir) = setup().await;
        let vol = open(inner.clone(), Some(&dir.path().join("here")), local(1)).await;
        let before = vol.stats().unwrap();
        let mut flushes = vec![];
        for w in 0..16u64 {
            vol.write(w * BS, pattern(w, 1, FLUSHED), false)
                .await
                .unwrap();
            let v = vol.clone();
            flushes.push(tokio::spawn(async move { v.flush().await }));
        }
        for f in flushes {
            f.await.unwrap().unwrap();
        }
        let after = vol.stats().unwrap();
        let syncs = after.session_journal_syncs - before.session_journal_syncs;
        let n = after.session_flushes - before.session_flushes;
        assert_eq!(n, 16);
        assert_eq!(
            syncs, 1,
            "{n} concurrent FLUSHes made {syncs} journal syncs"
        );
        // And each was durable: a power cut keeps all sixteen.
        vol.abandon();
        drop(vol);
        testing::power_cut(&dir.path().join("here"));
        let vol = open(inner.clone(), Some(&dir.path().join("here")), local(2)).await;
        assert_eq!(tags(&vol, 0, 16).await, [FLUSHED; 16]);
        vol.close().await.unwrap();
    });
}
