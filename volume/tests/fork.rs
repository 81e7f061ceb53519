//! Forks through the engine: a fork reads as its parent's checkpoint, then
//! the two diverge independently; the parent keeps what the fork shares
//! (its base checkpoint cannot be deleted, its GC leaves the shared
//! segments); a fresh machine reads the fork from its store alone.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use spritedisk_store::ObjectStore;
use spritedisk_volume::fork::fork_volume;
use spritedisk_volume::{create_volume, GcOptions, Volume, VolumeError};

const MIB: u64 = 1 << 20;

/// A store with a URL a fork can name: a directory, or a prefix of the
/// test bucket when the suite runs on s3.
fn url_store(dir: &Path, name: &str) -> (Arc<dyn ObjectStore>, String) {
    let url = if spritedisk_store::testing::s3_selected() {
        spritedisk_store::testing::use_s3_env();
        spritedisk_store::testing::s3_url(name)
    } else {
        format!("file://{}/{name}", dir.display())
    };
    (spritedisk_store::open_url(&url).unwrap(), url)
}

async fn expect(vol: &Volume, lba: u64, n: u64, tag: u8, what: &str) {
    for b in lba..lba + n {
        let got = vol.read(b * BS, BS).await.unwrap();
        assert!(
            got == pattern(b, 1, tag),
            "{what}: block {b} is not write {tag}"
        );
    }
}

async fn write(vol: &Volume, lba: u64, n: u64, tag: u8) {
    for b in lba..lba + n {
        vol.write(b * BS, pattern(b, 1, tag), false).await.unwrap();
    }
    vol.flush().await.unwrap();
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
    write(&parent, 0, 32, 1).await;
    parent.checkpoint(Some("base")).await.unwrap();
    write(&parent, 0, 16, 2).await;

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
    write(&child, 8, 16, 3).await;
    expect(&child, 0, 8, 1, "fork").await;
    expect(&child, 8, 16, 3, "fork").await;
    expect(&child, 24, 8, 1, "fork").await;
    expect(&parent, 0, 16, 2, "parent").await;
    expect(&parent, 16, 16, 1, "parent").await;

    // The parent keeps what the fork shares.
    let e = parent.delete_checkpoint("base").await.unwrap_err();
    assert!(matches!(e, VolumeError::ForkBase { .. }), "{e}");
    assert!(e.to_string().contains(&curl), "{e}");
    write(&parent, 0, 32, 4).await;
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
    write(&parent, 0, 4, 1).await;
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

/// Holds PUTs under a prefix while its gate is closed.
#[derive(Debug)]
struct HoldPuts {
    inner: Arc<dyn ObjectStore>,
    prefix: &'static str,
    open: tokio::sync::watch::Receiver<bool>,
    arrived: tokio::sync::watch::Sender<usize>,
}

impl HoldPuts {
    async fn gate(&self, key: &str) {
        if key.starts_with(self.prefix) {
            self.arrived.send_modify(|n| *n += 1);
            let mut open = self.open.clone();
            let _ = open.wait_for(|o| *o).await;
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for HoldPuts {
    async fn get(&self, key: &str) -> Result<bytes::Bytes, spritedisk_store::StoreError> {
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
        self.gate(key).await;
        self.inner.put(key, data).await
    }
    async fn put_if_absent(
        &self,
        key: &str,
        data: bytes::Bytes,
    ) -> Result<String, spritedisk_store::StoreError> {
        self.gate(key).await;
        self.inner.put_if_absent(key, data).await
    }
    async fn put_if_match(
        &self,
        key: &str,
        data: bytes::Bytes,
        etag: &str,
    ) -> Result<String, spritedisk_store::StoreError> {
        self.gate(key).await;
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

/// D1 of the 5bc5be0 review: a fork made while the parent's GC compacts
/// reads the checkpoint's rows from the parent's replica before the GC
/// shipped its relocation, so it references the segment the compaction
/// emptied; the GC must not delete it. Fails on 7908174: the block only
/// that segment held is "referenced data is missing" in the fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_made_during_a_compaction_keeps_what_it_reads() {
    let root = tempfile::tempdir().unwrap();
    let (pstore, purl) = url_store(root.path(), "parent");
    let (cstore, curl) = url_store(root.path(), "child");
    create_volume(&pstore, &purl, 64 * MIB).await.unwrap();
    let (open, gate) = tokio::sync::watch::channel(true);
    let held = Arc::new(HoldPuts {
        inner: pstore.clone(),
        prefix: "meta/ltx/",
        open: gate,
        arrived: tokio::sync::watch::channel(0).0,
    });
    let through: Arc<dyn ObjectStore> = held.clone();
    let mut o = small_opts(1);
    // Only the commands under test ship the metadata.
    o.replica_interval = std::time::Duration::from_secs(3600);
    let pdir = root.path().join("pcache");
    let parent = Volume::open(through, &purl, Some(&pdir), o).await.unwrap();
    // One segment of 4 blocks, 3 of them overwritten: a compaction victim
    // whose last block only it holds, for the live map and for v1.
    write(&parent, 0, 4, 1).await;
    write(&parent, 0, 3, 2).await;
    parent.checkpoint(Some("v1")).await.unwrap();

    // GC compacts; its shipped relocation waits at the gate.
    open.send_replace(false);
    let arrived = held.arrived.borrow().to_owned();
    let p = parent.clone();
    let gc = tokio::spawn(async move { p.gc(&GcOptions::default()).await });
    let mut rx = held.arrived.subscribe();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        rx.wait_for(|&n| n > arrived),
    )
    .await
    .expect("setup: GC never shipped its metadata")
    .unwrap();
    // Meanwhile a fork of v1 reads the parent's replica.
    let cdir = root.path().join("ccache");
    fork_volume(
        &pstore,
        &purl,
        "v1",
        cstore.clone(),
        &curl,
        &cdir,
        small_opts(2),
    )
    .await
    .unwrap();
    open.send_replace(true);
    let report = gc.await.unwrap().unwrap();
    assert!(
        report.segments_compacted > 0,
        "setup: nothing was compacted: {report:?}"
    );

    // A fresh machine reads the fork: every block of v1.
    let fresh = root.path().join("fresh");
    let child = Volume::open(cstore, &curl, Some(&fresh), small_opts(3))
        .await
        .unwrap();
    for (b, tag) in [(0, 2), (1, 2), (2, 2), (3, 1)] {
        let got = child
            .read(b * BS, BS)
            .await
            .unwrap_or_else(|e| panic!("the fork cannot read block {b}: {e}"));
        assert!(
            got == pattern(b, 1, tag),
            "block {b} of the fork is not v1's"
        );
    }
    child.close().await.unwrap();
    parent.close().await.unwrap();
}

/// L2 of the second review of 0009 step 2b: a checkpoint deleted while a
/// fork of it is being made, then made again under the same name, is
/// another checkpoint: the fork's segments are still the parent's to keep.
/// Fails on 4e5531c: GC takes the new checkpoint for the fork's base and
/// deletes the segment only the old one referenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_made_again_under_its_name_does_not_stand_for_a_forks_base() {
    let root = tempfile::tempdir().unwrap();
    let (pstore, purl) = url_store(root.path(), "parent");
    let (cstore, curl) = url_store(root.path(), "child");
    create_volume(&pstore, &purl, 64 * MIB).await.unwrap();
    let (open, gate) = tokio::sync::watch::channel(true);
    let held = Arc::new(HoldPuts {
        inner: pstore.clone(),
        prefix: "meta/ltx/",
        open: gate,
        arrived: tokio::sync::watch::channel(0).0,
    });
    let through: Arc<dyn ObjectStore> = held.clone();
    let mut o = small_opts(1);
    o.replica_interval = std::time::Duration::from_secs(3600);
    let pdir = root.path().join("pcache");
    let parent = Volume::open(through, &purl, Some(&pdir), o).await.unwrap();
    write(&parent, 0, 4, 1).await;
    parent.checkpoint(Some("X")).await.unwrap();
    write(&parent, 0, 4, 2).await; // the first segment: X's alone

    // Deleting X ships; the ship waits at the gate.
    open.send_replace(false);
    let arrived = held.arrived.borrow().to_owned();
    let p = parent.clone();
    let delete = tokio::spawn(async move { p.delete_checkpoint("X").await });
    let mut rx = held.arrived.subscribe();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        rx.wait_for(|&n| n > arrived),
    )
    .await
    .expect("setup: the deletion never shipped")
    .unwrap();
    // A fork of X reads the replica, which still has it.
    let cdir = root.path().join("ccache");
    fork_volume(
        &pstore,
        &purl,
        "X",
        cstore.clone(),
        &curl,
        &cdir,
        small_opts(2),
    )
    .await
    .unwrap();
    open.send_replace(true);
    delete.await.unwrap().unwrap();
    // Another checkpoint named X, then GC.
    parent.checkpoint(Some("X")).await.unwrap();
    parent.gc(&GcOptions::default()).await.unwrap();

    let fresh = root.path().join("fresh");
    let child = Volume::open(cstore, &curl, Some(&fresh), small_opts(3))
        .await
        .unwrap();
    for b in 0..4 {
        let got = child
            .read(b * BS, BS)
            .await
            .unwrap_or_else(|e| panic!("the fork cannot read block {b}: {e}"));
        assert!(
            got == pattern(b, 1, 1),
            "block {b} of the fork is not the first X's"
        );
    }
    child.close().await.unwrap();
    parent.close().await.unwrap();
}
