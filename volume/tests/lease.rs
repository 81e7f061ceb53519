//! One writer per volume: a second attach is refused, `take_over` (--force)
//! fences the first writer, an expired lease is taken over, and the history
//! after a takeover is the new writer's (docs/design/0003).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use spritedisk_store::ObjectStore;
use spritedisk_volume::{EngineOptions, Volume, VolumeError, CHAIN_WINDOW, EPOCH_SEQ_RANGE};

fn polite() -> EngineOptions {
    let mut o = small_opts(7);
    o.take_over = false;
    o
}

fn forceful() -> EngineOptions {
    small_opts(8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_is_refused_with_the_holder_named() {
    let store: Arc<dyn ObjectStore> = fresh_store();
    create(&store, 64 << 20).await;
    let a = open(store.clone(), None, polite()).await;
    let e = Volume::open(store.clone(), "mem://test", None, polite())
        .await
        .err()
        .expect("a second attach must be refused");
    let msg = e.to_string();
    assert!(matches!(e, VolumeError::Leased { .. }), "{msg}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(msg.contains(host.trim()), "names the host: {msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "names the pid: {msg}"
    );
    assert!(msg.contains("--force"), "says how to take over: {msg}");
    // The first writer is untouched.
    a.write(0, pattern(0, 4, 1), true).await.unwrap();
    a.close().await.unwrap();
    // Released at close: the next attach needs no force; its fence goes at
    // the end of the history, with no jump to another range of numbers.
    let b = open(store.clone(), None, polite()).await;
    b.write(4 * BS, pattern(4, 4, 2), true).await.unwrap();
    assert!(segment_seqs(&store)
        .await
        .iter()
        .all(|&s| s < EPOCH_SEQ_RANGE));
    assert!(b.read(0, 4 * BS).await.unwrap() == pattern(0, 4, 1));
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_fences_the_old_writer_and_its_late_segments_lose() {
    let store: Arc<dyn ObjectStore> = fresh_store();
    create(&store, 64 << 20).await;
    let a = open(store.clone(), None, polite()).await;
    a.write(0, pattern(0, 4, 1), true).await.unwrap();

    let b = open(store.clone(), None, forceful()).await;
    // The old writer's next flush fails as fenced, and it stops writing.
    a.write(0, pattern(0, 4, 66), false).await.unwrap();
    let e = a.flush().await.unwrap_err();
    assert!(matches!(e, VolumeError::Fenced(_)), "{e}");
    assert_eq!(e.errno(), spritedisk_volume::libc_errno::EIO);
    assert!(
        e.to_string().contains("epoch 2"),
        "names the new holder: {e}"
    );
    assert!(a.write(0, pattern(0, 4, 67), true).await.is_err());
    // The taker's fence took the old writer's next position (0009): its late
    // segment never landed. The store holds a's fence and data, b's fence.
    let before_b = segment_seqs(&store).await;
    assert_eq!(before_b.len(), 3, "{before_b:?}");
    let b_fence = *before_b.last().unwrap();

    // The new writer sees the old writer's flushed data, never its fenced write.
    assert!(b.read(0, 4 * BS).await.unwrap() == pattern(0, 4, 1));
    b.write(8 * BS, pattern(8, 4, 3), true).await.unwrap();
    let mine: Vec<u64> = segment_seqs(&store)
        .await
        .into_iter()
        .filter(|&s| s > b_fence)
        .collect();
    assert_eq!(
        mine,
        [b_fence + CHAIN_WINDOW],
        "the new writer's segments start past its fence's window"
    );
    b.abandon(); // a crash: the next attach rolls forward from the store alone

    // The chain goes to the new writer's segment, not the fenced one's late P+1.
    let c = open(store.clone(), None, forceful()).await;
    assert!(
        c.read(0, 4 * BS).await.unwrap() == pattern(0, 4, 1),
        "the fenced write never appears"
    );
    assert!(c.read(8 * BS, 4 * BS).await.unwrap() == pattern(8, 4, 3));
    // Nothing of the history, fences included, was deleted.
    let left = segment_seqs(&store).await;
    assert!(before_b.iter().all(|s| left.contains(s)), "{left:?}");
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holder_is_taken_over_once_its_lease_expires() {
    let store: Arc<dyn ObjectStore> = fresh_store();
    create(&store, 64 << 20).await;
    let mut o = polite();
    o.lease_ttl = Duration::from_secs(1);
    let a = open(store.clone(), None, o.clone()).await;
    a.write(0, pattern(0, 4, 1), true).await.unwrap();
    a.abandon(); // died: no more renewals
    assert!(matches!(
        Volume::open(store.clone(), "mem://test", None, o.clone())
            .await
            .err(),
        Some(VolumeError::Leased { .. })
    ));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let b = open(store.clone(), None, o).await;
    assert!(b.read(0, 4 * BS).await.unwrap() == pattern(0, 4, 1));
    b.close().await.unwrap();
}

/// A FLUSH is one PUT round trip: it never reads the lease (the chain's
/// fence protects it, docs/design/0009), where 0007 read it every
/// `--lease-ack-grace` and before that on every FLUSH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_never_reads_the_lease() {
    let mem: Arc<dyn ObjectStore> = Arc::new(spritedisk_store::MemStore::new());
    let counted = Arc::new(spritedisk_store::FaultStore::new(
        mem,
        Default::default(),
        1,
    ));
    let store: Arc<dyn ObjectStore> = counted.clone();
    create(&store, 64 << 20).await;
    let a = open(store.clone(), None, polite()).await;
    let before = counted.reads_of("lease.json");
    let puts_before = counted.puts();
    for i in 0..20 {
        a.write(i * BS, pattern(i, 1, 1), false).await.unwrap();
        a.flush().await.unwrap();
    }
    assert_eq!(a.stats().unwrap().session_flushes, 20);
    assert_eq!(
        counted.reads_of("lease.json") - before,
        0,
        "20 FLUSHes read the lease"
    );
    assert_eq!(
        counted.puts() - puts_before,
        20,
        "each FLUSH of one write is one segment PUT"
    );
    a.close().await.unwrap();
}

/// A lease written before 0009's second step may name a grace in which its
/// holder acknowledges FLUSHes without the chain's protection: one who
/// takes it over waits that out and records it (so one who takes over soon
/// after waits too); holders since write none, and a released lease leaves
/// nothing to wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_grace_from_an_older_holder_is_waited_out() {
    let store: Arc<dyn ObjectStore> = fresh_store();
    create(&store, 64 << 20).await;
    let a = open(store.clone(), None, polite()).await;
    assert_eq!(
        doc_grace_ms(&store).await,
        0,
        "this version writes no grace"
    );
    a.abandon();
    // What a daemon of the 0007 era, still alive, left.
    let raw = store.get("lease.json").await.unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    doc["ack_grace_ms"] = 700.into();
    store
        .put("lease.json", serde_json::to_vec(&doc).unwrap().into())
        .await
        .unwrap();
    let b = open(store.clone(), None, forceful()).await;
    assert_eq!(doc_grace_ms(&store).await, 700);
    b.close().await.unwrap();
    let c = open(store.clone(), None, forceful()).await;
    assert_eq!(doc_grace_ms(&store).await, 0);
    c.close().await.unwrap();
}

async fn doc_grace_ms(store: &Arc<dyn ObjectStore>) -> u64 {
    let raw = store.get("lease.json").await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    doc["ack_grace_ms"].as_u64().unwrap()
}

/// Lease fields come from the store: one that would make an attach wait
/// for decades is refused as invalid, naming the fields (M3 of the review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_with_unbounded_fields_is_refused_not_waited_for() {
    let store: Arc<dyn ObjectStore> = fresh_store();
    create(&store, 64 << 20).await;
    let a = open(store.clone(), None, polite()).await;
    a.abandon();
    let raw = store.get("lease.json").await.unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    doc["ack_grace_ms"] = u64::MAX.into();
    store
        .put("lease.json", serde_json::to_vec(&doc).unwrap().into())
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let e = Volume::open(store.clone(), "mem://test", None, forceful())
        .await
        .err()
        .expect("refused");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "it waited"
    );
    assert!(e.to_string().contains("acknowledgement grace"), "{e}");
}
