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

/// A deleted lease.json restarts its epochs at 1, below the history's: the
/// next attach raises its epoch above every epoch on the chain, so its
/// fence still ends the older writer's branch (a live one is fenced, and
/// its FLUSH fails), and the history goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lease_restarts_above_the_history() {
    let store: Arc<dyn ObjectStore> = fresh_store();
    create(&store, 64 << 20).await;
    let a = open(store.clone(), None, polite()).await;
    a.close().await.unwrap();
    let b = open(store.clone(), None, polite()).await; // epoch 2
    b.write(0, pattern(0, 4, 1), false).await.unwrap();
    b.flush().await.unwrap();
    store.delete("lease.json").await.unwrap();

    let c = open(store.clone(), None, polite()).await;
    let raw = store.get("lease.json").await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(doc["epoch"], 3, "raised above the history's epoch 2");
    assert!(c.read(0, 4 * BS).await.unwrap() == pattern(0, 4, 1));
    b.write(0, pattern(0, 4, 2), false).await.unwrap_or(());
    assert!(
        matches!(b.flush().await, Err(VolumeError::Fenced(_))),
        "the writer whose lease was deleted is fenced by the new attach"
    );
    c.write(4 * BS, pattern(4, 4, 3), false).await.unwrap();
    c.close().await.unwrap();
    let d = open(store.clone(), None, polite()).await;
    assert!(
        d.read(0, 8 * BS).await.unwrap()[..] == [pattern(0, 4, 1), pattern(4, 4, 3)].concat()[..]
    );
    d.close().await.unwrap();
}

/// The lease is renewed from the moment it is taken, not once the attach is
/// done: an attach that spends longer than the TTL restoring its metadata
/// (a big map, a slow store) is not taken for dead meanwhile (A2 of the
/// 5bc5be0 review). Fails on 2540913: no renewal before the open returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_renewed_while_the_attach_is_still_restoring() {
    let store: Arc<dyn ObjectStore> = fresh_store();
    create(&store, 64 << 20).await;
    let d1 = tempfile::tempdir().unwrap();
    let a = open(store.clone(), Some(d1.path()), polite()).await;
    a.write(0, pattern(0, 4, 1), false).await.unwrap();
    a.close().await.unwrap(); // the replica holds the map

    // B's reads of the replica wait at the gate.
    let gate = GateStore::new(store.clone(), "meta/", Hold::Reads);
    gate.close();
    let slow: Arc<dyn ObjectStore> = gate.clone();
    let mut o = polite();
    o.lease_ttl = Duration::from_secs(1); // renewals every 333 ms
    let d2 = tempfile::tempdir().unwrap();
    let dir = d2.path().to_path_buf();
    let b = tokio::spawn(async move { open(slow, Some(&dir), o).await });
    assert!(
        gate.arrived_past(0).await,
        "setup: B never read its replica"
    );
    // B holds the lease and cannot finish its attach: the lease must
    // change meanwhile (a renewal).
    let taken = store.get("lease.json").await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&taken).unwrap();
    assert_eq!(
        doc["epoch"], 2,
        "setup: B reads its replica before it holds the lease"
    );
    let mut renewed = false;
    let t0 = std::time::Instant::now();
    while !renewed && t0.elapsed() < GATE_WAIT_MAX {
        tokio::time::sleep(Duration::from_millis(50)).await;
        renewed = store.get("lease.json").await.unwrap() != taken;
    }
    gate.open();
    let b = b.await.unwrap();
    assert!(
        renewed,
        "the lease was not renewed in 20 s of an attach waiting for its replica"
    );
    assert!(b.read(0, 4 * BS).await.unwrap() == pattern(0, 4, 1));
    b.close().await.unwrap();
}

/// A lease renewed by a holder on another machine whose clock is far
/// behind ours: by the clocks it expired long ago.
fn lease_from_a_lagging_clock(renewals: u64) -> bytes::Bytes {
    let mut holder =
        serde_json::to_value(spritedisk_volume::lease::Holder::this_process()).unwrap();
    holder["host"] = "another-machine".into();
    holder["boot_id"] = "00000000-0000-4000-8000-000000000000".into();
    holder["attach_id"] = "someone-else".into();
    let doc = serde_json::json!({
        "epoch": 5,
        "holder": holder,
        // Its clock is an hour behind ours; each renewal moves it on.
        "renewed_unix": spritedisk_volume::lease::now_unix() - 3600 + renewals as i64,
        "ttl_secs": 2,
        "released": false,
        "ack_grace_ms": 0,
    });
    bytes::Bytes::from(serde_json::to_vec_pretty(&doc).unwrap())
}

/// "Expired" is judged by renewals we observe, not by comparing the
/// holder's clock with ours (M2 of the 5bc5be0 review): a holder that keeps
/// renewing is refused however old its timestamps look, and one that
/// stopped is taken over after one TTL without a renewal.
/// Fails on 2540913: the renewing holder is taken over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_observed_renewals_not_clocks() {
    let store: Arc<dyn ObjectStore> = fresh_store();
    create(&store, 64 << 20).await;
    store
        .put("lease.json", lease_from_a_lagging_clock(0))
        .await
        .unwrap();
    let renewer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 1.. {
                tokio::time::sleep(Duration::from_millis(400)).await;
                store
                    .put("lease.json", lease_from_a_lagging_clock(i))
                    .await
                    .unwrap();
            }
        })
    };
    match Volume::open(store.clone(), "mem://test", None, polite()).await {
        Err(VolumeError::Leased { holder, .. }) => {
            assert!(holder.contains("another-machine"), "{holder}")
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(v) => {
            v.abandon();
            panic!("took over a holder that renews every 400 ms because its clock lags ours");
        }
    }
    renewer.abort();
    let _ = renewer.await;
    // It stopped renewing: gone after one TTL (2 s) of silence.
    let b = open(store.clone(), None, polite()).await;
    let raw = store.get("lease.json").await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(doc["epoch"], 6);
    b.close().await.unwrap();
}
