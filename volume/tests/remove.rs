//! Volume lifecycle (issue 20): `rm` deletes a volume and every object
//! under its URL, refused while it is attached or while forks read from it
//! (naming them); removing a fork releases its pin in the parent; `create`
//! refuses a URL that is not empty.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use spritedisk_store::ObjectStore;
use spritedisk_volume::fork::fork_volume;
use spritedisk_volume::{create_volume, remove_volume, GcOptions, Volume, VolumeError};

const MIB: u64 = 1 << 20;
const TTL: Duration = Duration::from_secs(30);

async fn keys(store: &Arc<dyn ObjectStore>) -> Vec<String> {
    store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_is_refused_while_attached_then_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (store, url) = url_store(root.path(), "vol");
    create_volume(&store, &url, 64 * MIB).await.unwrap();
    let mut o = small_opts(1);
    o.take_over = false;
    let vol = Volume::open(store.clone(), &url, Some(&root.path().join("c")), o)
        .await
        .unwrap();
    write_flushed(&vol, 0, 8, 1).await;
    vol.checkpoint(Some("v1")).await.unwrap();

    let e = remove_volume(&store, &url, TTL).await.unwrap_err();
    assert!(
        matches!(e, VolumeError::Leased { .. }),
        "rm of an attached volume must be refused, naming the holder: {e}"
    );
    assert!(
        keys(&store).await.iter().any(|k| k == "volume.json"),
        "a refused rm deletes nothing"
    );
    vol.close().await.unwrap();

    let r = remove_volume(&store, &url, TTL).await.unwrap();
    assert!(r.objects_deleted > 3 && !r.leftovers_only, "{r:?}");
    assert_eq!(keys(&store).await, Vec::<String>::new(), "rm left objects");
    let e = remove_volume(&store, &url, TTL).await.unwrap_err();
    assert!(matches!(e, VolumeError::NoVolume { .. }), "{e}");
    // The URL is free again.
    create_volume(&store, &url, 64 * MIB).await.unwrap();
}

/// M13 of the 5bc5be0 review: `create` accepted a URL holding a deleted
/// volume's replica, lease or pins (only segments/ and volume.json were
/// checked); the first attach then restored the old volume's metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_refuses_leftovers_and_rm_removes_them() {
    let root = tempfile::tempdir().unwrap();
    let (store, url) = url_store(root.path(), "vol");
    for key in ["meta/restored.json", "lease.json"] {
        store.put(key, Bytes::from_static(b"{}")).await.unwrap();
    }
    let e = create_volume(&store, &url, 64 * MIB).await.unwrap_err();
    assert!(matches!(e, VolumeError::NotEmpty { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("lease.json") && msg.contains("spritedisk rm"),
        "names what is there and the way out: {msg}"
    );
    let r = remove_volume(&store, &url, TTL).await.unwrap();
    assert!(r.leftovers_only && r.objects_deleted == 2, "{r:?}");
    create_volume(&store, &url, 64 * MIB).await.unwrap();
    let e = create_volume(&store, &url, 64 * MIB).await.unwrap_err();
    assert!(matches!(e, VolumeError::AlreadyExists { .. }), "{e}");
}

/// A parent whose checkpoint `base` was overwritten, and a fork of it.
async fn parent_and_fork(
    root: &std::path::Path,
) -> (Arc<dyn ObjectStore>, String, Arc<dyn ObjectStore>, String) {
    let (pstore, purl, cstore, curl) = parent_with_base(root, 8, Some(2)).await;
    fork_volume(
        &pstore,
        &purl,
        "base",
        cstore.clone(),
        &curl,
        &root.join("c"),
        small_opts(2),
    )
    .await
    .unwrap();
    (pstore, purl, cstore, curl)
}

/// A parent is not removed while a fork reads its segments; removing the
/// fork releases its pin, and then the parent's checkpoint can go, GC
/// collects what only it held, and the parent can be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_keeps_its_parent_until_it_is_removed() {
    let root = tempfile::tempdir().unwrap();
    let (pstore, purl, cstore, curl) = parent_and_fork(root.path()).await;

    let e = remove_volume(&pstore, &purl, TTL).await.unwrap_err();
    assert!(
        matches!(e, VolumeError::HasForks { .. }) && e.to_string().contains(&curl),
        "rm of a parent names its fork: {e}"
    );
    let r = remove_volume(&cstore, &curl, TTL).await.unwrap();
    assert_eq!(r.released_pin_in.as_deref(), Some(purl.as_str()), "{r:?}");
    assert_eq!(keys(&cstore).await, Vec::<String>::new());

    let parent = Volume::open(
        pstore.clone(),
        &purl,
        Some(&root.path().join("p")),
        small_opts(3),
    )
    .await
    .unwrap();
    parent
        .delete_checkpoint("base")
        .await
        .expect("the fork's pin is released");
    let gc = parent.gc(&GcOptions::default()).await.unwrap();
    assert!(gc.segments_deleted > 0, "base's segments collected: {gc:?}");
    parent.close().await.unwrap();
    remove_volume(&pstore, &purl, TTL).await.unwrap();
    assert_eq!(keys(&pstore).await, Vec::<String>::new());
}

/// Starts `rm` of the volume at `url`; returns once its deletion of
/// volume.json waits at the gate (open it to let `rm` go on).
async fn rm_held_at_its_delete(
    store: &Arc<dyn ObjectStore>,
    url: &str,
) -> (
    Arc<GateStore>,
    tokio::task::JoinHandle<Result<spritedisk_volume::RemoveReport, VolumeError>>,
) {
    let gate = GateStore::new(store.clone(), "volume.json", Hold::Deletes);
    let before = gate.close();
    let (t, u): (Arc<dyn ObjectStore>, String) = (gate.clone(), url.to_string());
    let rm = tokio::spawn(async move { remove_volume(&t, &u, TTL).await });
    assert!(
        gate.arrived_past(before).await,
        "setup: rm never deleted volume.json"
    );
    (gate, rm)
}

/// A fork pins the parent after `rm` checked for pins and before it
/// deleted volume.json (the fork then reads the parent): the check after
/// the deletion sees it, and `rm` puts volume.json back and refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_pinning_during_rm_keeps_the_parent() {
    let root = tempfile::tempdir().unwrap();
    let (pstore, purl) = url_store(root.path(), "parent");
    create_volume(&pstore, &purl, 64 * MIB).await.unwrap();
    let (gate, rm) = rm_held_at_its_delete(&pstore, &purl).await;
    // The fork's pin lands now.
    pstore
        .put(
            "forks/late.json",
            Bytes::from(
                serde_json::json!({
                    "child_url": "file:///late-fork",
                    "child_id": "late",
                    "checkpoint": "base",
                    "seq_max": u64::MAX,
                    "created_unix": 0,
                })
                .to_string(),
            ),
        )
        .await
        .unwrap();
    gate.open();
    let e = rm.await.unwrap().unwrap_err();
    assert!(
        matches!(e, VolumeError::HasForks { .. }) && e.to_string().contains("late-fork"),
        "{e}"
    );
    spritedisk_volume::inspect_volume(&pstore, &purl, None)
        .await
        .expect("the parent is still a volume");
    // Had that rm died before putting volume.json back, running it again
    // finds leftovers: with a fork's pin among them, it still refuses.
    pstore.delete("volume.json").await.unwrap();
    let e = remove_volume(&pstore, &purl, TTL).await.unwrap_err();
    assert!(matches!(e, VolumeError::HasForks { .. }), "{e}");
    assert!(!keys(&pstore).await.is_empty());
}

/// A `--force` attach that loaded volume.json before `rm` deleted it and
/// takes the lease right after: `rm` sees the takeover when it reads the
/// lease afresh, puts volume.json back and stops; the attach goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_attach_during_rm_keeps_the_volume() {
    let root = tempfile::tempdir().unwrap();
    let (store, url) = url_store(root.path(), "vol");
    create_volume(&store, &url, 64 * MIB).await.unwrap();
    let (gate, rm) = rm_held_at_its_delete(&store, &url).await;
    // The forced attach takes the lease while rm's delete is on its way.
    let taker = tokio::spawn({
        let (s, u, d) = (store.clone(), url.clone(), root.path().join("c"));
        async move {
            let mut o = small_opts(2);
            o.take_over = true;
            Volume::open(s, &u, Some(&d), o).await
        }
    });
    // It holds the lease once it reads the config again: wait for that.
    let start = std::time::Instant::now();
    loop {
        let raw = store.get("lease.json").await.unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        if doc["epoch"].as_u64() > Some(1) {
            break;
        }
        assert!(
            start.elapsed() < GATE_WAIT_MAX,
            "setup: the attach never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.open();
    let e = rm.await.unwrap().unwrap_err();
    assert!(matches!(e, VolumeError::Fenced(_)), "rm must stop: {e}");
    let vol = taker.await.unwrap().expect("the forced attach goes on");
    write_flushed(&vol, 0, 4, 1).await;
    vol.close().await.unwrap();
    assert!(keys(&store).await.iter().any(|k| k == "volume.json"));
}

/// A copy of a fork at another URL (objects copied, as a backup or a
/// migration would) shares the fork's id and `volume.json`. Its `rm` must
/// not release the pin that protects the original: the parent would then
/// let its base checkpoint go and collect segments the original reads.
/// Fails on 52e46c7 (the pin was deleted by its key alone); its last
/// step, another spelling of the URL, fails with the URLs compared as
/// strings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_of_a_copy_of_a_fork_keeps_the_originals_pin() {
    let root = tempfile::tempdir().unwrap();
    let (pstore, purl, cstore, curl) = parent_and_fork(root.path()).await;
    let (copy, copy_url) = url_store(root.path(), "copy");
    for k in keys(&cstore).await {
        copy.put(&k, cstore.get(&k).await.unwrap()).await.unwrap();
    }
    let r = remove_volume(&copy, &copy_url, TTL).await.unwrap();
    assert_eq!(r.released_pin_in, None, "{r:?}");
    assert_eq!(
        pstore.list("forks/").await.unwrap().len(),
        1,
        "the original fork's pin is gone"
    );
    let e = remove_volume(&pstore, &purl, TTL).await.unwrap_err();
    assert!(matches!(e, VolumeError::HasForks { .. }), "{e}");
    // The original's rm releases it, also under another spelling of its URL.
    let r = remove_volume(&cstore, &format!("{curl}/"), TTL)
        .await
        .unwrap();
    assert_eq!(r.released_pin_in.as_deref(), Some(purl.as_str()), "{r:?}");
}
