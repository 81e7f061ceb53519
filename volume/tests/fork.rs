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
