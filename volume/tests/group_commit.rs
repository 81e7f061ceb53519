//! Group commit (issue 22, docs/design/0013): FLUSHes that arrive while a
//! FLUSH's round (its seal, PUT and map commit) is in flight share the next
//! round, and none returns before the round that holds its writes is
//! applied.

mod common;

use std::sync::Arc;

use common::*;
use spritedisk_store::{ObjectMeta, ObjectStore, StoreError};
use spritedisk_volume::segment::parse_segment_key;
use spritedisk_volume::{EngineOptions, Volume};

const WRITERS: u64 = 16;

/// Room for every writer's block in one segment: only FLUSHes seal.
fn roomy(seed: u64) -> EngineOptions {
    let mut o = small_opts(seed);
    o.segment_bytes = 4 * WRITERS * BS;
    o.dirty_bytes_max = 16 * WRITERS * BS;
    o
}

/// Sixteen writers each write a block and FLUSH while the first FLUSH's
/// PUT is held. They share one round: two segments in all, not sixteen.
/// Each FLUSH returns only once its own block's segment is in the store,
/// and the store alone reads every block back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_during_a_round_share_the_next_one() {
    let (inner, gate, vol) = gated_volume(roomy(1)).await;
    let before = segment_seqs(&inner).await.len();
    // Round 1: the first writer's block; its PUT waits at the gate.
    let first = round_one_held(&gate, &vol, 1).await;

    // The others write and FLUSH while round 1 is in flight, one after
    // the other: each FLUSH has started (and decided what it waits for)
    // before the next writer writes. Each records how many segments the
    // store held when its FLUSH returned.
    let mut later = vec![];
    for w in 1..WRITERS {
        vol.write(w * BS, pattern(w, 1, 1), false).await.unwrap();
        let (v, inner) = (vol.clone(), inner.clone());
        later.push(tokio::spawn(async move {
            v.flush().await?;
            let applied = v.stats().unwrap().applied_seq;
            Ok::<_, spritedisk_volume::VolumeError>((segment_seqs(&inner).await.len(), applied))
        }));
        flushes_reach(&vol, w + 1).await;
    }
    assert!(
        !first.is_finished() && later.iter().all(|f| !f.is_finished()),
        "a FLUSH returned while nothing could land"
    );

    // Round 1 lands; round 2 (everyone else's blocks) is sealed and held.
    let arrived = gate.close();
    gate.let_through(1);
    first.await.unwrap().unwrap();
    assert!(gate.arrived_past(arrived).await, "round 2's PUT never came");
    let round2 = parse_segment_key(&gate.last_arrival().unwrap()).unwrap();
    assert!(
        later.iter().all(|f| !f.is_finished()),
        "a FLUSH returned while the round holding its block was held"
    );
    gate.open();
    for (i, f) in later.into_iter().enumerate() {
        let (held, applied) = f.await.unwrap().unwrap();
        assert!(
            held >= before + 2 && applied >= round2,
            "writer {}'s FLUSH returned when the store held {} new segment(s) and {applied} was applied: its block is only in the second, {round2}",
            i + 1,
            held - before
        );
    }
    let new = segment_seqs(&inner).await.len() - before;
    assert_eq!(
        new, 2,
        "{WRITERS} FLUSHes made {new} segments: the ones that came during round 1 should share round 2"
    );
    let stats = vol.stats().unwrap();
    assert_eq!(stats.session_flush_rounds, 2, "{stats:?}");

    // The store alone holds every block.
    vol.abandon();
    let again = open(inner.clone(), None, roomy(2)).await;
    for w in 0..WRITERS {
        assert!(
            again.read(w * BS, BS).await.unwrap() == pattern(w, 1, 1),
            "block {w} lost"
        );
    }
}

/// A FLUSH waits for the first segment sealed after it began, whoever
/// sealed it, not for whatever gathered in the buffer after that: here a
/// write that fills the buffer seals writer A's block (not a FLUSH round)
/// while A waits for round 1; C writes after it. A returns once that
/// segment is applied, while C's round is still held (found by review:
/// A waited for a round holding only C's block, and with writes arriving
/// all the time, for as many rounds as came, up to its deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_waits_for_the_first_seal_after_it_not_later_rounds() {
    let o = roomy(4);
    let fill = o.segment_bytes / BS;
    let (inner, gate, vol) = gated_volume(o).await;
    let first = round_one_held(&gate, &vol, 3).await;
    let round1 = gate.last_arrival().unwrap();
    // A writes and FLUSHes during round 1.
    vol.write(BS, pattern(1, 1, 3), false).await.unwrap();
    let a = tokio::spawn({
        let vol = vol.clone();
        async move {
            let res = vol.flush().await;
            (res, vol.stats().unwrap().applied_seq)
        }
    });
    flushes_reach(&vol, 2).await;
    // A write that fills the buffer seals it (A's block with it).
    let arrived = gate.close();
    vol.write(100 * BS, pattern(100, fill, 3), false)
        .await
        .unwrap();
    assert!(
        gate.arrived_past(arrived).await,
        "the full buffer was not sealed"
    );
    let full = gate.last_arrival().unwrap();
    // C writes and FLUSHes: its block is in no segment yet.
    vol.write(2 * BS, pattern(2, 1, 3), false).await.unwrap();
    let c = tokio::spawn({
        let vol = vol.clone();
        async move { vol.flush().await }
    });
    flushes_reach(&vol, 3).await;

    // Round 1 lands; A's block is in the next segment, still held.
    gate.let_key_through(&round1);
    first.await.unwrap().unwrap();
    // C's round (sealed once round 1 is applied) reaches the gate.
    assert!(gate.arrived_past(arrived + 1).await, "C's round never came");
    assert!(
        !a.is_finished(),
        "A's FLUSH returned before its block's segment landed"
    );
    // The full buffer's segment lands: A returns, C's round is still held.
    gate.let_key_through(&full);
    let (res, applied) = tokio::time::timeout(GATE_WAIT_MAX, a)
        .await
        .expect("A's FLUSH waited for a round after the segment holding its block")
        .unwrap();
    res.unwrap();
    let full_seq = parse_segment_key(&full).unwrap();
    assert!(
        applied >= full_seq,
        "A's FLUSH returned with only {applied} applied, its block is in {full_seq}"
    );
    assert!(
        !c.is_finished(),
        "C's FLUSH returned before its round landed"
    );
    gate.open();
    c.await.unwrap().unwrap();
    vol.abandon();
    let again = open(inner.clone(), None, roomy(5)).await;
    for (lba, n) in [(0, 1), (1, 1), (2, 1), (100, fill)] {
        assert!(
            again.read(lba * BS, n * BS).await.unwrap() == pattern(lba, n, 3),
            "block {lba} lost"
        );
    }
}

/// A fresh volume whose segment PUTs pass a gate; the store behind it.
async fn gated_volume(o: EngineOptions) -> (Arc<dyn ObjectStore>, Arc<GateStore>, Volume) {
    let inner = fresh_store();
    create(&inner, 64 << 20).await;
    let gate = GateStore::new(inner.clone(), "segments/", Hold::Puts);
    let store: Arc<dyn ObjectStore> = gate.clone();
    let vol = open(store, None, o).await;
    (inner, gate, vol)
}

/// Closes the gate, writes block 0 (write `tag`) and starts a FLUSH: round
/// 1, whose PUT waits at the gate when this returns.
async fn round_one_held(
    gate: &GateStore,
    vol: &Volume,
    tag: u8,
) -> tokio::task::JoinHandle<Result<(), spritedisk_volume::VolumeError>> {
    let arrived = gate.close();
    vol.write(0, pattern(0, 1, tag), false).await.unwrap();
    let first = tokio::spawn({
        let vol = vol.clone();
        async move { vol.flush().await }
    });
    assert!(gate.arrived_past(arrived).await, "round 1's PUT never came");
    first
}

/// Waits until `n` FLUSHes have started (counted on entry, under the
/// engine's lock, once each decided what it waits for).
async fn flushes_reach(vol: &Volume, n: u64) {
    let deadline = tokio::time::Instant::now() + GATE_WAIT_MAX;
    while vol.stats().unwrap().session_flushes < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "FLUSH {n} never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// A FLUSH with nothing in flight seals at once: a lone writer's FLUSHes
/// each make their own round (group commit costs a QD1 writer nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_flush_seals_at_once() {
    let inner = fresh_store();
    create(&inner, 64 << 20).await;
    let vol = open(inner.clone(), None, roomy(3)).await;
    let before = segment_seqs(&inner).await.len();
    for w in 0..5 {
        vol.write(w * BS, pattern(w, 1, 2), false).await.unwrap();
        vol.flush().await.unwrap();
        assert_eq!(segment_seqs(&inner).await.len(), before + w as usize + 1);
    }
    // A FLUSH with nothing new to seal makes no round.
    vol.flush().await.unwrap();
    let stats = vol.stats().unwrap();
    assert_eq!((stats.session_flushes, stats.session_flush_rounds), (6, 5));
}

/// A store whose PUTs take 20 ms (of the test's clock), as from a region.
#[derive(Debug)]
struct SlowPuts(Arc<dyn ObjectStore>);

const PUT_TAKES: std::time::Duration = std::time::Duration::from_millis(20);

#[async_trait::async_trait]
impl ObjectStore for SlowPuts {
    async fn get(&self, key: &str) -> Result<bytes::Bytes, StoreError> {
        self.0.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<bytes::Bytes, StoreError> {
        self.0.get_range(key, offset, len).await
    }
    async fn put(&self, key: &str, data: bytes::Bytes) -> Result<String, StoreError> {
        tokio::time::sleep(PUT_TAKES).await;
        self.0.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: bytes::Bytes) -> Result<String, StoreError> {
        tokio::time::sleep(PUT_TAKES).await;
        self.0.put_if_absent(key, data).await
    }
    async fn put_if_match(
        &self,
        key: &str,
        data: bytes::Bytes,
        etag: &str,
    ) -> Result<String, StoreError> {
        tokio::time::sleep(PUT_TAKES).await;
        self.0.put_if_match(key, data, etag).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.0.head(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.0.list(prefix).await
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// docs/design/0016: sixteen clients that FLUSH together are released
/// together when their round is applied, and the first one back waits for
/// the others (a bounded moment) rather than sealing alone and making the
/// other fifteen wait out its round and then their own. After the first
/// exchange, one round per exchange; without gathering, two. On a paused
/// clock (the simulation's), so the bound never runs out while the
/// clients are on their way back. Every block reads back from the store.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn flushers_released_together_share_the_next_round() {
    const EXCHANGES: u64 = 6;
    // In memory on every pass: the clock is paused (an HTTP store's
    // timeouts would fire at once), and SlowPuts is the store's latency.
    let inner: Arc<dyn ObjectStore> = Arc::new(spritedisk_store::MemStore::new());
    create(&inner, 64 << 20).await;
    let slow: Arc<dyn ObjectStore> = Arc::new(SlowPuts(inner.clone()));
    let vol = open(slow, None, roomy(4)).await;
    let clients: Vec<_> = (0..WRITERS)
        .map(|w| {
            let vol = vol.clone();
            tokio::spawn(async move {
                for x in 1..=EXCHANGES {
                    vol.write(w * BS, pattern(w, 1, x as u8), false).await?;
                    vol.flush().await?;
                }
                Ok::<_, spritedisk_volume::VolumeError>(())
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap().unwrap();
    }
    let stats = vol.stats().unwrap();
    assert_eq!(stats.session_flushes, WRITERS * EXCHANGES);
    assert!(
        stats.session_flush_rounds <= EXCHANGES + 1,
        "{} FLUSHes in {EXCHANGES} exchanges of {WRITERS} clients made {} rounds (two per exchange: the first one back sealed alone)",
        stats.session_flushes,
        stats.session_flush_rounds
    );
    vol.abandon();
    let again = open(inner.clone(), None, roomy(5)).await;
    for w in 0..WRITERS {
        assert!(
            again.read(w * BS, BS).await.unwrap() == pattern(w, 1, EXCHANGES as u8),
            "block {w} lost"
        );
    }
}

/// docs/design/0016: a FLUSH that finds its writes sealed already (here
/// by a full buffer) waits for no round and is not counted as one a round
/// carried; else a lone client's next FLUSH would wait for it to come
/// back (found by the benchmark: QD1 FLUSHes slowed by the bound).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lone_client_never_gathers_for_a_flush_that_had_nothing_to_seal() {
    // In memory on every pass: the clock is paused (an HTTP store's
    // timeouts would fire at once), and SlowPuts is the store's latency.
    let inner: Arc<dyn ObjectStore> = Arc::new(spritedisk_store::MemStore::new());
    create(&inner, 64 << 20).await;
    let slow: Arc<dyn ObjectStore> = Arc::new(SlowPuts(inner.clone()));
    // A segment is 4 blocks: the fourth write seals the buffer.
    let vol = open(slow, None, small_opts(6)).await;
    for b in 0..4 {
        vol.write(b * BS, pattern(b, 1, 1), false).await.unwrap();
    }
    vol.flush().await.unwrap();
    let mut took = vec![];
    for b in 4..7 {
        vol.write(b * BS, pattern(b, 1, 1), false).await.unwrap();
        let t0 = tokio::time::Instant::now();
        vol.flush().await.unwrap();
        took.push(t0.elapsed());
    }
    assert_eq!(
        took, [PUT_TAKES; 3],
        "a lone client's FLUSH is one PUT: one waited to gather"
    );
    assert_eq!(vol.stats().unwrap().session_flush_rounds, 3);
}
