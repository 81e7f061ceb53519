//! Forks through the engine: a fork reads as its parent's checkpoint, then
//! the two diverge independently; the parent keeps what the fork shares
//! (its base checkpoint cannot be deleted, its GC leaves the shared
//! segments); a fresh machine reads the fork from its store alone.

mod common;

use std::sync::Arc;

use common::*;
use spritedisk_store::{ObjectStore, StoreError};
use spritedisk_volume::fork::fork_volume;
use spritedisk_volume::{create_volume, GcOptions, Volume, VolumeError};

const MIB: u64 = 1 << 20;

async fn expect(vol: &Volume, lba: u64, n: u64, tag: u8, what: &str) {
    for b in lba..lba + n {
        let got = vol.read(b * BS, BS).await.unwrap();
        assert!(
            got == pattern(b, 1, tag),
            "{what}: block {b} is not write {tag}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_shares_the_checkpoint_and_diverges() {
    let root = tempfile::tempdir().unwrap();
    let (pstore, purl) = url_store(root.path(), "parent");
    let (cstore, curl) = url_store(root.path(), "child");
    create_volume(&pstore, &purl, 64 * MIB).await.unwrap();
    let pdir = root.path().join("pcache");
    let parent = Volume::open(pstore.clone(), &purl, Some(&pdir), small_opts(1))
        .await
        .unwrap();
    write_flushed(&parent, 0, 32, 1).await;
    parent.checkpoint(Some("base")).await.unwrap();
    write_flushed(&parent, 0, 16, 2).await;

    let cdir = root.path().join("ccache");
    let r = fork_volume(
        &pstore,
        &purl,
        "base",
        cstore.clone(),
        &curl,
        &cdir,
        small_opts(2),
    )
    .await
    .unwrap();
    assert_eq!(r.checkpoint, "base");
    assert!(r.shared_segments > 0);
    // A fork copies no data: its store holds only its first attach's fence.
    for m in cstore.list("segments/").await.unwrap() {
        let b = cstore.get(&m.key).await.unwrap();
        let h = spritedisk_volume::segment::decode_header(&b).unwrap();
        assert_eq!(h.entry_count, 0, "{} holds data: a fork copies none", m.key);
    }

    let child = Volume::open(cstore.clone(), &curl, Some(&cdir), small_opts(3))
        .await
        .unwrap();
    expect(&child, 0, 32, 1, "fork").await;
    // They diverge: each sees only its own writes.
    write_flushed(&child, 8, 16, 3).await;
    expect(&child, 0, 8, 1, "fork").await;
    expect(&child, 8, 16, 3, "fork").await;
    expect(&child, 24, 8, 1, "fork").await;
    expect(&parent, 0, 16, 2, "parent").await;
    expect(&parent, 16, 16, 1, "parent").await;

    // The parent keeps what the fork shares.
    let e = parent.delete_checkpoint("base").await.unwrap_err();
    assert!(matches!(e, VolumeError::ForkBase { .. }), "{e}");
    assert!(e.to_string().contains(&curl), "{e}");
    write_flushed(&parent, 0, 32, 4).await;
    let r = parent.gc(&GcOptions::default()).await.unwrap();
    assert_eq!(
        r.segments_compacted, 0,
        "segments a fork reads are not compacted"
    );
    // The first 16 blocks' second version is now unreferenced everywhere.
    assert!(r.segments_deleted > 0);
    expect(&child, 0, 8, 1, "fork after the parent's gc").await;
    expect(&child, 24, 8, 1, "fork after the parent's gc").await;
    // The fork's own GC never touches the parent's segments.
    let before = pstore.list("segments/").await.unwrap();
    child.gc(&GcOptions::default()).await.unwrap();
    assert_eq!(pstore.list("segments/").await.unwrap(), before);
    child.close().await.unwrap();
    parent.close().await.unwrap();

    // A fresh machine reads the fork from the stores alone.
    let fresh = root.path().join("fresh");
    let child = Volume::open(cstore, &curl, Some(&fresh), small_opts(4))
        .await
        .unwrap();
    expect(&child, 0, 8, 1, "fork on a fresh machine").await;
    expect(&child, 8, 16, 3, "fork on a fresh machine").await;
    expect(&child, 24, 8, 1, "fork on a fresh machine").await;
    child.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_of_a_missing_checkpoint_is_refused_and_pins_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (pstore, purl) = url_store(root.path(), "parent2");
    let (cstore, curl) = url_store(root.path(), "child2");
    create_volume(&pstore, &purl, 64 * MIB).await.unwrap();
    let pdir = root.path().join("pcache");
    let parent = Volume::open(pstore.clone(), &purl, Some(&pdir), small_opts(1))
        .await
        .unwrap();
    write_flushed(&parent, 0, 4, 1).await;
    parent.checkpoint(Some("a")).await.unwrap();
    let e = fork_volume(
        &pstore,
        &purl,
        "nope",
        cstore,
        &curl,
        &root.path().join("c"),
        small_opts(2),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("no checkpoint named \"nope\""), "{e}");
    assert!(pstore.list("forks/").await.unwrap().is_empty());
    parent.delete_checkpoint("a").await.unwrap();
    parent.close().await.unwrap();
}

/// A parent on file:// whose shipped metadata (its LTX PUTs) can be held
/// at a gate, and the store and URL of a fork of it.
struct GatedParent {
    root: tempfile::TempDir,
    gate: Arc<GateStore>,
    parent: Volume,
    pstore: Arc<dyn ObjectStore>,
    purl: String,
    cstore: Arc<dyn ObjectStore>,
    curl: String,
}

async fn gated_parent() -> GatedParent {
    let root = tempfile::tempdir().unwrap();
    let (pstore, purl) = url_store(root.path(), "parent");
    let (cstore, curl) = url_store(root.path(), "child");
    create_volume(&pstore, &purl, 64 * MIB).await.unwrap();
    // The replica's whole prefix: its LTX files are `meta/ltx/<level>/` on
    // file:// and `meta/<level:04x>/` on s3://, as litestream reads them.
    let gate = GateStore::new(pstore.clone(), "meta/", Hold::Puts);
    let through: Arc<dyn ObjectStore> = gate.clone();
    let mut o = small_opts(1);
    // Only the commands under test ship the metadata.
    o.replica_interval = std::time::Duration::from_secs(3600);
    let pdir = root.path().join("pcache");
    let parent = Volume::open(through, &purl, Some(&pdir), o).await.unwrap();
    GatedParent {
        root,
        gate,
        parent,
        pstore,
        purl,
        cstore,
        curl,
    }
}

impl GatedParent {
    /// Runs `op` on the parent; once it ships its metadata (held at the
    /// gate), forks `checkpoint`, which reads the replica without that
    /// change; then lets the ship land and returns what `op` returned.
    async fn fork_during<T, F>(&self, what: &str, checkpoint: &str, op: F) -> T
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let before = self.gate.close();
        let op = tokio::spawn(op);
        assert!(
            self.gate.arrived_past(before).await,
            "setup: {what} never shipped its metadata"
        );
        let cdir = self.root.path().join("ccache");
        fork_volume(
            &self.pstore,
            &self.purl,
            checkpoint,
            self.cstore.clone(),
            &self.curl,
            &cdir,
            small_opts(2),
        )
        .await
        .unwrap();
        self.gate.open();
        op.await.unwrap()
    }

    /// A fresh machine reads the fork: block `lba` holds write `tag`.
    async fn expect_fork(&self, blocks: &[(u64, u8)], whose: &str) {
        let fresh = self.root.path().join("fresh");
        let child = Volume::open(self.cstore.clone(), &self.curl, Some(&fresh), small_opts(3))
            .await
            .unwrap();
        for &(b, tag) in blocks {
            let got = child
                .read(b * BS, BS)
                .await
                .unwrap_or_else(|e| panic!("the fork cannot read block {b}: {e}"));
            assert!(
                got == pattern(b, 1, tag),
                "block {b} of the fork is not {whose}"
            );
        }
        child.close().await.unwrap();
    }
}

/// D1 of the 5bc5be0 review: a fork made while the parent's GC compacts
/// reads the checkpoint's rows from the parent's replica before the GC
/// shipped its relocation, so it references the segment the compaction
/// emptied; the GC must not delete it. Fails on 7908174: the block only
/// that segment held is "referenced data is missing" in the fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_made_during_a_compaction_keeps_what_it_reads() {
    let g = gated_parent().await;
    // One segment of 4 blocks, 3 of them overwritten: a compaction victim
    // whose last block only it holds, for the live map and for v1.
    write_flushed(&g.parent, 0, 4, 1).await;
    write_flushed(&g.parent, 0, 3, 2).await;
    g.parent.checkpoint(Some("v1")).await.unwrap();
    let p = g.parent.clone();
    let report = g
        .fork_during("GC", "v1", async move { p.gc(&GcOptions::default()).await })
        .await
        .unwrap();
    assert!(
        report.segments_compacted > 0,
        "setup: nothing was compacted: {report:?}"
    );
    g.expect_fork(&[(0, 2), (1, 2), (2, 2), (3, 1)], "v1's")
        .await;
    g.parent.close().await.unwrap();
}

/// L2 of the second review of 0009 step 2b: a checkpoint deleted while a
/// fork of it is being made, then made again under the same name, is
/// another checkpoint: the fork's segments are still the parent's to keep.
/// Fails on 4e5531c: GC takes the new checkpoint for the fork's base and
/// deletes the segment only the old one referenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_made_again_under_its_name_does_not_stand_for_a_forks_base() {
    let g = gated_parent().await;
    write_flushed(&g.parent, 0, 4, 1).await;
    g.parent.checkpoint(Some("X")).await.unwrap();
    write_flushed(&g.parent, 0, 4, 2).await; // the first segment: X's alone
    let p = g.parent.clone();
    g.fork_during(
        "deleting X",
        "X",
        async move { p.delete_checkpoint("X").await },
    )
    .await
    .unwrap();
    // Another checkpoint named X, then GC.
    g.parent.checkpoint(Some("X")).await.unwrap();
    g.parent.gc(&GcOptions::default()).await.unwrap();
    g.expect_fork(&[(0, 1), (1, 1), (2, 1), (3, 1)], "the first X's")
        .await;
    g.parent.close().await.unwrap();
}

/// A store whose PUTs under `prefix` misbehave: with `refuse`, each fails
/// with a permanent error; else the first create-once PUT lands and then
/// reports a transient error, as if its reply were lost.
#[derive(Debug)]
struct FlakyPuts {
    inner: Arc<dyn ObjectStore>,
    prefix: &'static str,
    refuse: bool,
    tripped: std::sync::atomic::AtomicBool,
}

impl FlakyPuts {
    fn refused(&self, key: &str) -> Result<(), StoreError> {
        if self.refuse && key.starts_with(self.prefix) {
            return Err(StoreError::InvalidKey(format!(
                "{key} (refused by the test)"
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for FlakyPuts {
    async fn get(&self, key: &str) -> Result<bytes::Bytes, StoreError> {
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<bytes::Bytes, StoreError> {
        self.inner.get_range(key, offset, len).await
    }
    async fn put(&self, key: &str, data: bytes::Bytes) -> Result<String, StoreError> {
        self.refused(key)?;
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: bytes::Bytes) -> Result<String, StoreError> {
        self.refused(key)?;
        let r = self.inner.put_if_absent(key, data).await;
        if !self.refuse
            && key.starts_with(self.prefix)
            && !self.tripped.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            r?;
            return Err(StoreError::Injected(format!(
                "reply to the PUT of {key} lost"
            )));
        }
        r
    }
    async fn put_if_match(
        &self,
        key: &str,
        data: bytes::Bytes,
        etag: &str,
    ) -> Result<String, StoreError> {
        self.refused(key)?;
        self.inner.put_if_match(key, data, etag).await
    }
    async fn head(&self, key: &str) -> Result<Option<spritedisk_store::ObjectMeta>, StoreError> {
        self.inner.head(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<spritedisk_store::ObjectMeta>, StoreError> {
        self.inner.list(prefix).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

fn reply_lost_once(inner: Arc<dyn ObjectStore>, prefix: &'static str) -> Arc<dyn ObjectStore> {
    Arc::new(FlakyPuts {
        inner,
        prefix,
        refuse: false,
        tripped: Default::default(),
    })
}

/// A transient error on the child's volume.json or on the parent's pin
/// (landed, its reply lost) is retried, not a failed fork. Fails on
/// c34c84a: the fork fails on the first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_rides_out_lost_replies_of_its_first_puts() {
    let root = tempfile::tempdir().unwrap();
    let (pstore, purl, cstore, curl) = parent_with_base(root.path(), 4, None).await;
    let flaky_parent = reply_lost_once(pstore.clone(), "forks/");
    let flaky_child = reply_lost_once(cstore.clone(), "volume.json");
    fork_volume(
        &flaky_parent,
        &purl,
        "base",
        flaky_child,
        &curl,
        &root.path().join("c"),
        small_opts(2),
    )
    .await
    .expect("a lost reply is retried");
    let child = Volume::open(
        cstore,
        &curl,
        Some(&root.path().join("fresh")),
        small_opts(3),
    )
    .await
    .unwrap();
    expect(&child, 0, 4, 1, "fork").await;
    child.close().await.unwrap();
}

/// A parent with checkpoint `base`, and a fork of it that failed after its
/// first attach: every PUT of the child's restore mark was refused.
async fn a_fork_failing_after_its_first_attach(
    root: &std::path::Path,
) -> (Arc<dyn ObjectStore>, String, Arc<dyn ObjectStore>, String) {
    let (pstore, purl, cstore, curl) = parent_with_base(root, 4, None).await;
    let failing: Arc<dyn ObjectStore> = Arc::new(FlakyPuts {
        inner: cstore.clone(),
        prefix: "meta/restored.json",
        refuse: true,
        tripped: Default::default(),
    });
    let e = fork_volume(
        &pstore,
        &purl,
        "base",
        failing,
        &curl,
        &root.join("c"),
        small_opts(2),
    )
    .await
    .unwrap_err();
    eprintln!("the fork failed as set up: {e}");
    (pstore, purl, cstore, curl)
}

/// L3 of the second review of 0009: a fork that fails after its first
/// attach (here its restore mark cannot be written) may have left a child
/// whose metadata is durable: its pin stays, so the parent keeps what the
/// child may read, and `rm` of the child releases it. Fails on c34c84a:
/// the pin was deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_failing_after_its_first_attach_keeps_its_pin() {
    let root = tempfile::tempdir().unwrap();
    let (pstore, purl, cstore, curl) = a_fork_failing_after_its_first_attach(root.path()).await;
    assert_eq!(
        pstore.list("forks/").await.unwrap().len(),
        1,
        "the pin of a fork that may be usable stays"
    );
    let r = spritedisk_volume::remove_volume(&cstore, &curl, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r.released_pin_in.as_deref(), Some(purl.as_str()), "{r:?}");
    assert!(pstore.list("forks/").await.unwrap().is_empty());
}

/// The same, with the child's replica lost as well (its restore mark
/// refused, then every object under `meta/` gone: a fork that died before
/// it shipped anything): `rm` of the child cannot learn its parent from the
/// replica. Fails on 7567daa: it warned and left the pin, so the parent's
/// checkpoint could not be deleted. The child's `volume.json` names its
/// parent now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_of_a_fork_without_its_replica_releases_its_pin() {
    let root = tempfile::tempdir().unwrap();
    let (pstore, purl, cstore, curl) = a_fork_failing_after_its_first_attach(root.path()).await;
    for m in cstore.list("meta/").await.unwrap() {
        cstore.delete(&m.key).await.unwrap();
    }
    assert_eq!(pstore.list("forks/").await.unwrap().len(), 1, "setup");
    let r = spritedisk_volume::remove_volume(&cstore, &curl, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r.released_pin_in.as_deref(), Some(purl.as_str()), "{r:?}");
    assert!(pstore.list("forks/").await.unwrap().is_empty());
    assert!(
        cstore.list("").await.unwrap().is_empty(),
        "the child is gone"
    );
}
