//! Deterministic simulation of the single-writer protocol, GC and forks
//! (issues 19 and 20, docs/design/0009, docs/reliability.md "Simulation").
//!
//! Real engines (`Volume`), real SQLite and write logs in temporary
//! directories, a volume and up to two forks of it (five in the forks
//! profile) in file:// stores (in a tmpfs when there is one: a fork opens
//! its parent by URL), all on one current-thread tokio runtime whose clock
//! is paused: time moves only when the simulation says so, and only when
//! every task is idle. Blocking work (SQLite, files) runs inline on that
//! one thread (`spritedisk_store::blocking`), so that nothing finishes in
//! the host's own time. Every change a writer sends to a store (PUT,
//! conditional PUT, DELETE) waits at a gate until the simulation lets it
//! land (and performs it then, while every task is idle), fails it, or
//! lands it and loses the reply; a crashed writer's changes still waiting
//! may land much later (a late PUT) or never. A paused writer's reads wait
//! too; a writer may lose the store, or only the `meta/` prefix (S3
//! throttles per prefix). Every choice comes from one seeded RNG.
//!
//! Writers attach (plain or `--force`, with a fresh directory, the directory
//! of a writer that died, or a copy of one taken even while it ran), write,
//! FLUSH, read, checkpoint, delete checkpoints, restore, run GC, fork,
//! detach, crash and pause, several at once. A model of each volume's
//! accepted history checks, after every step:
//! - every attach reads the history so far: what the previous owner had at
//!   its attach, plus a prefix of its writes at least through its last
//!   acknowledged FLUSH (two observers with no write between them read the
//!   same, and the disk is a prefix of the accepted history);
//! - a FLUSH (checkpoint, restore, delete) a fenced writer acknowledges
//!   after the next writer read the volume is in what that writer read;
//! - every acknowledged checkpoint is listed by every later writer, no
//!   deleted one is, and a restore reads back the checkpoint's content;
//! - the owner reads its own writes, and no read finds referenced data
//!   missing from the store;
//! - a daemon restarted on a dead writer's directory, with no other attach
//!   to the volume since that writer attached, reads every write it
//!   acknowledged, flushed or not (the local write log's contract, issue
//!   20).
//!
//! In the mixed profile, 30% of the seeds run daemon restarts: a daemon
//! killed right after an acknowledged write (its segments in flight die
//! with it) is restarted on its directory, tight on memory, so it replays
//! its write log; one killed again while it attaches (its replay in
//! flight) is mostly restarted once more; and swarm testing leaves some
//! kinds of action out of the seed. The other seeds run the mix the
//! fenced-history reverts were tuned on.
//!
//! The forks profile (its own test, `simulation_of_forks_racing_gc…`,
//! issue 20) makes GC, compaction (often of every segment not wholly
//! referenced), checkpoint deletions and forks race: `spritedisk fork` run
//! by another process while the owner collects or deletes the checkpoint
//! being forked; a client read beside GC whose segment GETs mostly wait
//! (it may look a piece up before GC moves it and fetch it after GC
//! deleted it); a takeover during GC from an older copy of the owner's
//! directory (or one taken just before the GC), whose walk of the chain is
//! slow; GC by a taken-over writer. Its owners live longer (fewer
//! takeovers and crashes, swarm testing of the disturbances) and its store
//! answers faster, so that GC has something to do. Every fork is read back
//! at the end (the last writer of each volume), so a segment GC deleted
//! under a fork is found.
//!
//! `tools/dst-prove.sh` takes each fix back (`tools/dst-reverts/`) and
//! shows which seeds find it.
//!
//! `SPRITEDISK_DST_SEEDS=N` runs N seeds (default: the CI budget),
//! `SPRITEDISK_DST_SEED=S` one seed (with its trace on failure), and
//! `SPRITEDISK_DST_STEPS` sets the steps per seed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use spritedisk_store::{ObjectMeta, ObjectStore, StoreError};
use spritedisk_volume::fork::fork_volume;
use spritedisk_volume::{create_volume, EngineOptions, GcOptions, Volume};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const BS: u64 = 4096;
/// Blocks the writers use: few, so writes overwrite each other often.
const BLOCKS: usize = 10;
/// Seeds `make test` runs (the CI budget) and steps per seed.
const CI_SEEDS: u64 = 400;
/// Seeds of the forks profile `make test` runs.
const CI_FORK_SEEDS: u64 = 200;
const STEPS: usize = 300;

// ---------------------------------------------------------------- the store

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Put,
    PutIfAbsent,
    PutIfMatch,
    Delete,
    Read,
}

#[derive(Debug, Clone, Copy)]
enum Verdict {
    Land,
    /// Fails before reaching the store (a transient error).
    Fail,
    /// Lands, but the writer hears a transient error.
    LandReplyLost,
    /// Lands after its writer crashed: nobody hears back.
    LandLate,
}

struct PendingOp {
    id: u64,
    writer: usize,
    kind: Kind,
    key: String,
    /// A segment with data in it (not a fence or a barrier).
    data: bool,
    /// A slow read: mostly waits while something else can go.
    slow: bool,
    /// A change: the store operation itself, which the simulation performs
    /// when it lets the change land (`decide`), while every task is idle.
    /// (When the writer's task performed it after the verdict, it ran on
    /// tokio's blocking pool beside whatever else that step woke, another
    /// writer's listing or a restarted daemon's walk, and which came first
    /// was the host's scheduling, not the seed's. It also means a change
    /// the simulation lands really lands, even if its writer was killed in
    /// the same step.)
    exec: Option<StoreOp>,
    tx: oneshot::Sender<(Verdict, Option<Landed>)>,
}

/// What a change returns: an etag, or nothing (a DELETE).
type Landed = Result<Option<String>, StoreError>;
type StoreOp = std::pin::Pin<Box<dyn std::future::Future<Output = Landed> + Send>>;

tokio::task_local! {
    /// Set for a client read beside GC: its segment GETs are slow, GC's
    /// own are not (the same writer's store serves both).
    static SLOW_CLIENT_READ: bool;
}

#[derive(Default)]
struct Gate {
    pending: Vec<PendingOp>,
    next_id: u64,
    paused: BTreeSet<usize>,
    /// Crashed writers: what they send from now on never arrives.
    dead: BTreeSet<usize>,
    /// Writers cut off from the store: everything they send fails.
    outage: BTreeSet<usize>,
    /// Writers whose changes under `meta/` fail (S3 throttles per prefix):
    /// segments land, the replica does not.
    meta_outage: BTreeSet<usize>,
    /// Writers whose reads of segments (listings included) wait at the
    /// gate like changes, and mostly after them: a takeover during GC whose
    /// walk of the chain comes late.
    slow_walks: BTreeSet<usize>,
}

impl Gate {
    /// Whether this read of `writer` waits at the gate like a change.
    fn slow(&self, writer: usize, key: &str) -> bool {
        self.slow_walks.contains(&writer) && key.starts_with("segments/")
    }
}

/// What the simulation can do to a writer for a while.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Nothing of it runs: its reads and changes wait.
    Pause,
    /// Everything it sends fails.
    Outage,
    /// Its changes under `meta/` fail (S3 throttles per prefix).
    MetaOutage,
}

impl Fault {
    const ALL: [Fault; 3] = [Fault::Pause, Fault::Outage, Fault::MetaOutage];

    /// The writers it holds.
    fn of(self, g: &mut Gate) -> &mut BTreeSet<usize> {
        match self {
            Fault::Pause => &mut g.paused,
            Fault::Outage => &mut g.outage,
            Fault::MetaOutage => &mut g.meta_outage,
        }
    }

    fn starts(self) -> &'static str {
        match self {
            Fault::Pause => "pauses",
            Fault::Outage => "loses the store",
            Fault::MetaOutage => "cannot write under meta/",
        }
    }

    fn ends(self) -> &'static str {
        match self {
            Fault::Pause => "resumes",
            Fault::Outage => "reaches the store again",
            Fault::MetaOutage => "can write under meta/ again",
        }
    }
}

struct World {
    gate: Mutex<Gate>,
}

/// One writer's view of the shared store, through the gate.
#[derive(Clone)]
struct SimStore {
    world: Arc<World>,
    writer: usize,
    /// The volume's store (file://, so a fork's parent opens by URL).
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for SimStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sim store (writer {})", self.writer)
    }
}

impl SimStore {
    /// Waits for the simulation's verdict on one operation (a change's
    /// result too: the simulation performed it).
    async fn admit(
        &self,
        kind: Kind,
        key: &str,
        data: bool,
        exec: Option<StoreOp>,
    ) -> Result<(Verdict, Option<Landed>), StoreError> {
        let slow = kind == Kind::Read
            && (SLOW_CLIENT_READ.try_with(|s| *s).unwrap_or(false) && key.starts_with("segments/"));
        let rx = {
            let mut g = self.world.gate.lock().unwrap();
            let slow = slow || (kind == Kind::Read && g.slow(self.writer, key));
            if g.dead.contains(&self.writer) {
                None
            } else if kind == Kind::Read
                && !g.paused.contains(&self.writer)
                && !g.outage.contains(&self.writer)
                && !slow
            {
                return Ok((Verdict::Land, None));
            } else {
                let (tx, rx) = oneshot::channel();
                g.next_id += 1;
                let id = g.next_id;
                g.pending.push(PendingOp {
                    id,
                    writer: self.writer,
                    kind,
                    key: key.to_string(),
                    data,
                    slow,
                    exec,
                    tx,
                });
                Some(rx)
            }
        };
        let verdict = match rx {
            Some(rx) => rx.await.ok(),
            None => None,
        };
        match verdict {
            Some((Verdict::Fail, _)) => Err(StoreError::Injected(format!("sim: {kind:?} {key}"))),
            Some(v) => Ok(v),
            // A crashed writer's operation that never arrives.
            None => futures::future::pending().await,
        }
    }

    /// Reads pass the gate, then read.
    async fn read(&self, key: &str) -> Result<(), StoreError> {
        self.admit(Kind::Read, key, false, None).await.map(|_| ())
    }

    /// A change: the simulation performs `exec` when it lets it land.
    async fn change(
        &self,
        kind: Kind,
        key: &str,
        data: bool,
        exec: StoreOp,
    ) -> Result<Option<String>, StoreError> {
        let (verdict, res) = self.admit(kind, key, data, Some(exec)).await?;
        let res = res.expect("a change that landed has its result");
        match verdict {
            Verdict::LandReplyLost => Err(StoreError::Injected(format!(
                "sim: reply to {kind:?} {key} lost"
            ))),
            // Its writer is gone: it must not go on (it would touch the
            // directory a new writer may use).
            Verdict::LandLate => futures::future::pending().await,
            _ => res,
        }
    }

    fn put_op(&self, key: &str, data: Bytes, how: PutHow) -> StoreOp {
        let store = self.store.clone();
        let key = key.to_string();
        Box::pin(async move {
            match how {
                PutHow::Plain => store.put(&key, data).await,
                PutHow::IfAbsent => store.put_if_absent(&key, data).await,
                PutHow::IfMatch(etag) => store.put_if_match(&key, data, &etag).await,
            }
            .map(Some)
        })
    }
}

enum PutHow {
    Plain,
    IfAbsent,
    IfMatch(String),
}

fn etag(landed: Result<Option<String>, StoreError>) -> Result<String, StoreError> {
    landed.map(|e| e.expect("a PUT returns its etag"))
}

#[async_trait]
impl ObjectStore for SimStore {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.read(key).await?;
        self.store.get(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        self.read(key).await?;
        self.store.get_range(key, offset, len).await
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        let op = self.put_op(key, data, PutHow::Plain);
        etag(self.change(Kind::Put, key, false, op).await)
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        // A segment's header alone is far less than a block.
        let carries = key.starts_with("segments/") && data.len() as u64 >= BS;
        let op = self.put_op(key, data, PutHow::IfAbsent);
        etag(self.change(Kind::PutIfAbsent, key, carries, op).await)
    }
    async fn put_if_match(
        &self,
        key: &str,
        data: Bytes,
        etag_: &str,
    ) -> Result<String, StoreError> {
        let op = self.put_op(key, data, PutHow::IfMatch(etag_.to_string()));
        etag(self.change(Kind::PutIfMatch, key, false, op).await)
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.read(key).await?;
        self.store.head(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let store = self.store.clone();
        let k = key.to_string();
        let op: StoreOp = Box::pin(async move { store.delete(&k).await.map(|()| None) });
        self.change(Kind::Delete, key, false, op).await.map(|_| ())
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.read(prefix).await?;
        self.store.list(prefix).await
    }
    fn describe(&self) -> String {
        format!("{} (writer {})", self.store.describe(), self.writer)
    }
}

// ---------------------------------------------------------------- the model

type Blocks = [u64; BLOCKS];

/// One way the history may be: a state, and the index of the owner's write
/// from which its writes apply on top of it.
#[derive(Clone, Debug, PartialEq)]
struct Cand {
    state: Blocks,
    start: usize,
    /// A state the owner's attach read past: writes of the writer before
    /// it that it replayed from that writer's write log are the owner's own
    /// until it acknowledges a FLUSH, so a crash may still lose them.
    replayed: bool,
}

/// What the writer that took a volume over read of a writer's work.
#[derive(Clone, Debug)]
struct Retired {
    /// How many of its writes the next writer read.
    included: usize,
    /// What it read.
    seen: Blocks,
    /// The checkpoints it listed.
    listed: BTreeSet<String>,
}

#[derive(Clone, Debug)]
enum Cp {
    /// Acknowledged: every later writer lists it.
    Exists(Vec<Blocks>),
    /// In flight or failed (create or delete): may be listed.
    Maybe(Vec<Blocks>),
    /// Deleted (acknowledged), or found absent: no later writer lists it.
    Gone,
}

#[derive(Default)]
struct Model {
    /// The writer whose writes extend the history (None: none yet).
    owner: Option<usize>,
    cands: Vec<Cand>,
    /// Each writer's writes that returned Ok, in order: (block, tag).
    writes: BTreeMap<usize, Vec<(usize, u64)>>,
    /// Each writer's writes covered by an acknowledged FLUSH (a count).
    acked: BTreeMap<usize, usize>,
    retired: BTreeMap<usize, Retired>,
    cps: BTreeMap<String, Cp>,
    /// The histories consistent with what the owner last read: once it
    /// acknowledges a FLUSH, the history is one of those (a restore that
    /// failed may or may not have happened, but not the other way round
    /// from what the owner served).
    served: Option<Vec<Cand>>,
}

impl Model {
    /// A volume whose content is one of `states` (zeros, or what a fork's
    /// checkpoint may hold).
    fn starting_among(states: &[Blocks]) -> Model {
        Model {
            cands: states
                .iter()
                .map(|&state| Cand {
                    state,
                    start: 0,
                    replayed: false,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn writes_of(&self, w: usize) -> &[(usize, u64)] {
        self.writes.get(&w).map_or(&[], |v| v.as_slice())
    }

    /// The states the owner's volume may have now.
    fn owner_states(&self) -> Vec<Blocks> {
        let n = self.owner.map_or(0, |o| self.writes_of(o).len());
        self.owner_states_from(n)
    }

    /// The states the owner's volume may hold after losing any of its
    /// writes past its first `floor` (a power cut keeps what its local
    /// journal synced: every write a local FLUSH covered, maybe more).
    fn owner_states_from(&self, floor: usize) -> Vec<Blocks> {
        let writes = self.owner.map_or(&[][..], |o| self.writes_of(o));
        let mut out: Vec<Blocks> = Vec::new();
        for c in self.cands.iter().filter(|c| !c.replayed) {
            let start = c.start.min(writes.len());
            for p in floor.clamp(start, writes.len())..=writes.len() {
                let mut s = c.state;
                for &(b, t) in &writes[start..p] {
                    s[b] = t;
                }
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        out
    }

    /// The checkpoints known to exist, with the contents each may hold.
    fn existing_cps(&self) -> Vec<(String, Vec<Blocks>)> {
        self.cps
            .iter()
            .filter_map(|(n, c)| match c {
                Cp::Exists(c) => Some((n.clone(), c.clone())),
                _ => None,
            })
            .collect()
    }

    /// A new writer read `seen` and listed `listed` right after its attach.
    fn observe(&mut self, w: usize, seen: Blocks, listed: BTreeSet<String>) -> Result<(), String> {
        let mut included: Option<usize> = None;
        // The states the history may hold below what was read: a prefix
        // the read included but that may be only in a write log it replayed.
        let mut below: Vec<Blocks> = Vec::new();
        match self.owner {
            None => {
                if !self.cands.iter().any(|c| c.state == seen) {
                    return Err(format!(
                        "the first attach read {} (expected {})",
                        show(&seen),
                        show(&self.cands[0].state)
                    ));
                }
            }
            Some(o) => {
                let writes = self.writes_of(o);
                let acked = self.acked.get(&o).copied().unwrap_or(0);
                for c in &self.cands {
                    let mut s = c.state;
                    for k in c.start..=writes.len() {
                        if k > c.start {
                            let (b, t) = writes[k - 1];
                            s[b] = t;
                        }
                        if k >= acked && s == seen {
                            included = Some(included.map_or(k, |i: usize| i.max(k)));
                        }
                    }
                }
                if let Some(k) = included {
                    for c in &self.cands {
                        let mut s = c.state;
                        for (j, &(b, t)) in writes.iter().enumerate().take(k).skip(c.start) {
                            if j >= acked && !below.contains(&s) && s != seen {
                                below.push(s);
                            }
                            s[b] = t;
                        }
                    }
                }
                if included.is_none() {
                    return Err(format!(
                        "writer {w} attached and read {}: not the history (writer {o}'s \
                         states {:?} plus a prefix of its writes {:?}, at least {acked} of them: \
                         its acknowledged FLUSH)",
                        show(&seen),
                        self.cands
                            .iter()
                            .map(|c| (show(&c.state), c.start))
                            .collect::<Vec<_>>(),
                        writes
                    ));
                }
            }
        }
        for (name, cp) in &self.cps {
            match cp {
                Cp::Exists(_) if !listed.contains(name) => {
                    return Err(format!(
                        "writer {w} attached and does not list checkpoint {name}, acknowledged before"
                    ))
                }
                Cp::Gone if listed.contains(name) => {
                    return Err(format!(
                        "writer {w} attached and lists checkpoint {name}, deleted (acknowledged) before"
                    ))
                }
                _ => {}
            }
        }
        if let Some(n) = listed.iter().find(|n| !self.cps.contains_key(*n)) {
            return Err(format!("writer {w} lists checkpoint {n}, never made"));
        }
        // The history up to the new writer's fence is now fixed.
        for (name, cp) in self.cps.iter_mut() {
            if let Cp::Maybe(c) = cp {
                *cp = if listed.contains(name) {
                    Cp::Exists(std::mem::take(c))
                } else {
                    Cp::Gone
                };
            }
        }
        if let (Some(o), Some(k)) = (self.owner, included) {
            self.retired.insert(
                o,
                Retired {
                    included: k,
                    seen,
                    listed: listed.clone(),
                },
            );
        }
        self.owner = Some(w);
        self.served = None;
        self.cands = vec![Cand {
            state: seen,
            start: 0,
            replayed: false,
        }];
        self.cands.extend(below.into_iter().map(|state| Cand {
            state,
            start: 0,
            replayed: true,
        }));
        Ok(())
    }

    /// Writer `w` acknowledged that its first `covered` writes are durable.
    fn acknowledged(&mut self, w: usize, covered: usize, what: &str) -> Result<(), String> {
        if let Some(r) = self.retired.get(&w) {
            if covered > r.included {
                return Err(format!(
                    "writer {w} acknowledged a {what} covering {covered} writes after the next \
                     writer read only {} of them: an acknowledged write is lost",
                    r.included
                ));
            }
            return Ok(());
        }
        let a = self.acked.entry(w).or_default();
        *a = (*a).max(covered);
        // What the owner read at its attach is durable now, and so is
        // what it served.
        self.cands.retain(|c| !c.replayed);
        if let Some(served) = self.served.take() {
            self.cands.retain(|c| served.contains(c));
        }
        Ok(())
    }
}

fn show(b: &Blocks) -> String {
    format!("{b:?}")
}

// ---------------------------------------------------------------- data

fn block(lba: usize, tag: u64) -> Bytes {
    let mut v = Vec::with_capacity(BS as usize);
    for _ in 0..BS / 16 {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&(lba as u64).to_le_bytes());
    }
    Bytes::from(v)
}

fn decode(data: &[u8]) -> Result<Blocks, String> {
    let mut out = [0u64; BLOCKS];
    for (lba, b) in data.chunks(BS as usize).enumerate() {
        if b.iter().all(|&x| x == 0) {
            continue;
        }
        let tag = u64::from_le_bytes(b[..8].try_into().unwrap());
        if block(lba, tag) != b {
            return Err(format!("block {lba} holds bytes no write made"));
        }
        out[lba] = tag;
    }
    Ok(out)
}

// ---------------------------------------------------------------- writers

#[derive(Debug, Clone, Copy, PartialEq)]
enum Life {
    Attaching,
    Live,
    /// A `spritedisk fork` run by another process (its `v` is the child):
    /// it only forks, while the parent's owner goes on (issue 20 D1).
    Forking,
    /// Crashed, detached or failed to attach: no more operations.
    Gone,
}

struct Writer {
    /// Which volume (index into `Sim::vols`).
    v: usize,
    vol: Option<Volume>,
    dir: PathBuf,
    life: Life,
    busy: bool,
    /// Its next operation reads (what a user does after a failed restore).
    must_read: bool,
    /// A daemon restarted on a dead writer's directory, with no other
    /// attach to its volume since: what its attach must read (every write
    /// the dead writer acknowledged: they are all in its write log), the
    /// attach count that says nobody else came, and the dead writer.
    must_see: Option<(Vec<Blocks>, usize, usize)>,
    /// Its volume's attach count when it started attaching (its own
    /// included).
    started_at: usize,
    /// Local durability: the writes its last acknowledged FLUSH covered
    /// (in its journal, synced: a power cut keeps them).
    flushed: usize,
}

enum Op {
    Attach,
    Fork {
        child: usize,
    },
    Write {
        lba: usize,
        tag: u64,
    },
    Flush {
        covered: usize,
    },
    Read {
        /// The states the owner's volume may have.
        expect: Vec<Blocks>,
    },
    /// A read by the owner while its GC runs (a second client request).
    ReadDuringGc {
        expect: Vec<Blocks>,
    },
    Checkpoint {
        name: String,
        covered: usize,
    },
    DeleteCheckpoint {
        name: String,
    },
    Restore {
        name: String,
        covered: usize,
        contents: Vec<Blocks>,
    },
    Gc {
        covered: usize,
    },
    Close {
        covered: usize,
    },
}

enum Outcome {
    Attached(Result<(Volume, Blocks, BTreeSet<String>), String>),
    Done(Result<(), String>),
    Read(Result<Blocks, String>),
}

struct Task {
    writer: usize,
    op: Op,
    handle: JoinHandle<Outcome>,
}

fn opts(seed: u64, take_over: bool) -> EngineOptions {
    EngineOptions {
        segment_bytes: 2 * BS,
        dirty_bytes_max: 8 * BS,
        upload_inflight_max: 3,
        flush_timeout: Duration::from_secs(20),
        writeback_delay: Duration::from_secs(2),
        retry_backoff_min: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(500),
        cache_bytes: 0,
        prefetch_window_bytes: 0,
        seed,
        replica_interval: Duration::from_millis(300),
        lease_ttl: Duration::from_secs(30),
        take_over,
        reclaim: false,
        map_readers: true,
        lookup_memo: true,
        durability: spritedisk_volume::Durability::Store,
    }
}

/// One volume: the first, or a fork.
struct Vol {
    url: String,
    store: Arc<dyn ObjectStore>,
    model: Model,
    /// Created (a fork whose `fork` failed is never used).
    ready: bool,
    /// Directories of its gone writers, and old copies of its directories.
    spare_dirs: Vec<PathBuf>,
    /// Attaches started (their fence may end a dead writer's history).
    attach_starts: usize,
}

/// Volumes at most (the first and its forks).
const VOLUMES_MAX: usize = 3;

struct Sim {
    rng: SmallRng,
    seed: u64,
    world: Arc<World>,
    root: PathBuf,
    vols: Vec<Vol>,
    writers: Vec<Writer>,
    tasks: Vec<Task>,
    next_tag: u64,
    next_cp: u64,
    trace: Vec<String>,
    step: usize,
    /// Swarm testing: the kinds of action this seed leaves out, so that
    /// some seeds run a few behaviours long and undisturbed (a daemon
    /// restarting on its directory with nobody else attaching, say).
    left_out: BTreeSet<&'static str>,
    /// This seed's profile is daemons dying and restarting on their
    /// directories (write-log replays, interrupted attaches, swarm); the
    /// others run the mix the fenced-history reverts were tuned on.
    restarts: bool,
    /// This seed's profile is GC and forks racing each other (issue 20
    /// D1): forks made by another process while the parent's owner
    /// compacts, collects or deletes the checkpoint being forked, GC by a
    /// writer that was taken over, and compaction of half-dead segments.
    forks: bool,
    /// Writers attach with `--durability local` (docs/design/0014): a
    /// FLUSH returns at the journal's sync, so it promises nothing to
    /// another machine (only checkpoints, restores, GC and detaches do),
    /// and a daemon may die by a power cut, restarted with what its
    /// journal synced.
    local: bool,
}

/// The kinds of action a seed may leave out (see `Sim::left_out`).
const SWARM_KINDS: [&str; 6] = ["stale writer", "attach", "crash", "pause", "outage", "copy"];

impl Sim {
    fn does(&self, kind: &str) -> bool {
        !self.left_out.contains(kind)
    }

    fn log(&mut self, s: String) {
        // Without the temporary directory's random name.
        let s = s.replace(&*self.root.to_string_lossy(), "<tmp>");
        self.trace.push(format!("{:4} {s}", self.step));
    }

    /// Writer `w`'s view of volume `v`'s store.
    fn store_for(&self, w: usize, v: usize) -> Arc<dyn ObjectStore> {
        Arc::new(SimStore {
            world: self.world.clone(),
            writer: w,
            store: self.vols[v].store.clone(),
        })
    }

    /// The model of writer `w`'s volume.
    fn m(&mut self, w: usize) -> &mut Model {
        let v = self.writers[w].v;
        &mut self.vols[v].model
    }

    /// A new volume's entry: its store in the simulation's directory.
    fn new_vol(&mut self, model: Model, ready: bool) -> usize {
        let v = self.vols.len();
        let path = self.root.join(format!("store{v}"));
        std::fs::create_dir_all(&path).unwrap();
        self.vols.push(Vol {
            url: format!("file://{}", path.display()),
            store: Arc::new(spritedisk_store::FileStore::new(path)),
            model,
            ready,
            spare_dirs: Vec::new(),
            attach_starts: 0,
        });
        v
    }

    /// Lets every task run until all wait for the gate, a timer or each other.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    fn owner_idle(&self, v: usize) -> Option<usize> {
        let o = self.vols[v].model.owner?;
        let w = &self.writers[o];
        (w.life == Life::Live && !w.busy && !self.paused(o)).then_some(o)
    }

    fn paused(&self, w: usize) -> bool {
        self.world.gate.lock().unwrap().paused.contains(&w)
    }

    fn spawn(
        &mut self,
        w: usize,
        op: Op,
        fut: impl std::future::Future<Output = Outcome> + Send + 'static,
    ) {
        self.writers[w].busy = true;
        let handle = tokio::spawn(fut);
        self.tasks.push(Task {
            writer: w,
            op,
            handle,
        });
    }

    async fn run(&mut self, steps: usize) -> Result<(), String> {
        for step in 0..steps {
            self.step = step;
            self.act().await;
            self.settle().await;
            self.harvest().await?;
        }
        self.drain().await?;
        Ok(())
    }

    async fn act(&mut self) {
        // Pauses and outages end after 20 steps on average.
        for f in Fault::ALL {
            for w in self.holding(f) {
                if self.rng.gen_bool(0.05) {
                    self.end(f, w);
                }
            }
        }
        let roll = self.rng.gen_range(0..100);
        match roll {
            // The forks profile's operations are long (GC, fork): the
            // store answers faster there.
            0..=35 if self.forks => (0..3).for_each(|_| self.release_one()),
            0..=35 => self.release_one(),
            36..=73 => self.owner_op(),
            74..=76 if self.does("stale writer") => self.stale_writer_op(),
            // The forks profile needs owners that last: fewer takeovers
            // and crashes, and a volume left without one is attached.
            77..=80 if !self.forks || roll == 77 => self.attach(true),
            78..=80 => self.attach(false),
            81..=82 if self.does("crash") && (!self.forks || roll == 81) => self.crash_one(),
            83..=84 if self.does("pause") => self.toggle(Fault::Pause),
            85..=86 if self.does("outage") => self.toggle(Fault::Outage),
            87..=88 if self.does("copy") => self.copy_dir(),
            _ => {
                let d = match self.rng.gen_range(0..10) {
                    0..=5 => Duration::from_millis(self.rng.gen_range(1..200)),
                    6..=7 => Duration::from_secs(self.rng.gen_range(1..5)),
                    _ => Duration::from_secs(self.rng.gen_range(5..40)),
                };
                self.log(format!("time +{d:?}"));
                tokio::time::sleep(d).await;
            }
        }
    }

    /// Lets one waiting store operation go (or fails it, or loses its reply).
    fn release_one(&mut self) {
        let pins = self.pin_names();
        let mut g = self.world.gate.lock().unwrap();
        let paused = g.paused.clone();
        let mut eligible: Vec<usize> = (0..g.pending.len())
            .filter(|&i| !paused.contains(&g.pending[i].writer))
            .collect();
        if eligible.is_empty() {
            return;
        }
        // Slow reads mostly wait while something else can go.
        let slow = |i: &usize| g.pending[*i].slow;
        if eligible.iter().any(slow) && !eligible.iter().all(slow) && self.rng.gen_bool(0.9) {
            eligible.retain(|i| !slow(i));
        }
        // Independent of the order the tasks happened to arrive in, and of
        // the random ids pins are named by (a listing of pins returns them
        // in id order).
        let key = |k: &str| {
            pins.get(k)
                .cloned()
                .unwrap_or_else(|| stable_key(k).to_string())
        };
        eligible.sort_by(|&a, &b| {
            let (x, y) = (&g.pending[a], &g.pending[b]);
            (x.writer, x.kind, key(&x.key), x.id).cmp(&(y.writer, y.kind, key(&y.key), y.id))
        });
        let i = eligible[self.rng.gen_range(0..eligible.len())];
        let op = g.pending.remove(i);
        drop(g);
        // Buggify: a writer still attaching that sends data is replaying a
        // dead writer's log; crash it with that segment in flight.
        if self.restarts
            && op.data
            && self.writers[op.writer].life == Life::Attaching
            && self.rng.gen_bool(0.3)
        {
            self.log(format!(
                "writer {}: crash while attaching, {} in flight",
                op.writer,
                stable_key(&op.key)
            ));
            // Mostly restarted at once (systemd's restart of a `recover`
            // its start timeout killed), else left for a later attach.
            if self.rng.gen_bool(0.7) {
                self.restart(op.writer, false);
            } else {
                self.kill(op.writer);
            }
        }
        let g = self.world.gate.lock().unwrap();
        let dead = g.dead.contains(&op.writer);
        let outage = g.outage.contains(&op.writer)
            || (g.meta_outage.contains(&op.writer) && op.key.starts_with("meta/"));
        drop(g);
        let verdict = match self.rng.gen_range(0..100) {
            _ if outage && !dead => Some(Verdict::Fail),
            // A crashed writer's operation in flight: lands late, or never.
            _ if dead && self.rng.gen_bool(0.4) => None,
            _ if dead => Some(Verdict::LandLate),
            0..=84 => Some(Verdict::Land),
            85..=92 => Some(Verdict::Fail),
            _ => Some(Verdict::LandReplyLost),
        };
        self.log(format!(
            "{} {:?} {} of writer {}{}",
            match verdict {
                None => "lose",
                Some(Verdict::Land) => "land",
                Some(Verdict::Fail) => "fail",
                Some(Verdict::LandReplyLost) => "land (reply lost)",
                Some(Verdict::LandLate) => "land late",
            },
            op.kind,
            stable_key(&op.key),
            op.writer,
            if dead { " (crashed)" } else { "" }
        ));
        let (kind, key, writer) = (op.kind, op.key.clone(), op.writer);
        if let Some(v) = verdict {
            decide(op, v);
        }
        // Buggify: right after a segment of a writer still attaching lands
        // (its fence, or a segment of its replay of a dead writer's log) is
        // where an interrupted attach shows what it left half done.
        let attaching = self.writers[writer].life == Life::Attaching;
        if self.restarts
            && attaching
            && kind == Kind::PutIfAbsent
            && key.starts_with("segments/")
            && matches!(verdict, Some(Verdict::Land))
            && self.rng.gen_bool(0.2)
        {
            self.log(format!("writer {}: crash while attaching", writer));
            self.kill(writer);
        }
    }

    /// Each fork's pin key (`forks/<child id>.json`, the id random) named
    /// by the child's index instead.
    fn pin_names(&self) -> BTreeMap<String, String> {
        let mut names = BTreeMap::new();
        for v in 0..self.vols.len() {
            let config = self.root.join(format!("store{v}")).join("volume.json");
            let Ok(raw) = std::fs::read(config) else {
                continue;
            };
            if let Ok(c) = serde_json::from_slice::<serde_json::Value>(&raw) {
                if let Some(id) = c["id"].as_str() {
                    names.insert(
                        format!("forks/{id}.json"),
                        format!("forks/<volume {v}>.json"),
                    );
                }
            }
        }
        names
    }

    fn owner_op(&mut self) {
        let owners: Vec<usize> = (0..self.vols.len())
            .filter_map(|v| self.owner_idle(v))
            .collect();
        if owners.is_empty() {
            return;
        }
        let o = owners[self.rng.gen_range(0..owners.len())];
        let v = self.writers[o].v;
        let vol = self.writers[o]
            .vol
            .clone()
            .expect("live writer has a volume");
        let covered = self.vols[v].model.writes_of(o).len();
        let mut roll = self.rng.gen_range(0..100);
        if std::mem::take(&mut self.writers[o].must_read) {
            roll = 60;
        } else if self.forks {
            // More checkpoints, deletes, GC and forks, fewer FLUSHes and
            // restores (GC flushes).
            roll = match roll {
                0..=44 => roll, // write
                45..=49 => 45,  // flush
                50..=54 => 60,  // read
                55..=66 => 70,  // checkpoint
                67..=74 => 80,  // delete a checkpoint
                75..=76 => 84,  // restore
                77..=91 => 89,  // gc
                92..=98 => 93,  // fork
                _ => 99,        // detach
            };
        }
        match roll {
            0..=44 => self.write(o, vol),
            45..=59 => {
                self.log(format!("writer {o}: flush"));
                self.spawn(o, Op::Flush { covered }, async move {
                    Outcome::Done(vol.flush().await.map_err(|e| e.to_string()))
                });
            }
            60..=69 => {
                let expect = self.vols[v].model.owner_states();
                self.log(format!("writer {o}: read"));
                self.spawn(o, Op::Read { expect }, read_all(vol));
            }
            70..=79 => {
                self.next_cp += 1;
                let name = format!("c{}", self.next_cp);
                let contents = self.vols[v].model.owner_states();
                self.vols[v]
                    .model
                    .cps
                    .insert(name.clone(), Cp::Maybe(contents));
                self.log(format!("writer {o}: checkpoint {name}"));
                self.maybe_brownout(o);
                let n = name.clone();
                self.spawn(o, Op::Checkpoint { name, covered }, async move {
                    Outcome::Done(
                        vol.checkpoint(Some(&n))
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                    )
                });
            }
            80..=83 => {
                let Some(name) = self.pick_cp(v) else { return };
                if let Some(Cp::Exists(c)) = self.vols[v].model.cps.get(&name).cloned() {
                    self.vols[v].model.cps.insert(name.clone(), Cp::Maybe(c));
                }
                self.log(format!("writer {o}: delete checkpoint {name}"));
                let n = name.clone();
                self.spawn(o, Op::DeleteCheckpoint { name: name.clone() }, async move {
                    Outcome::Done(vol.delete_checkpoint(&n).await.map_err(|e| e.to_string()))
                });
                // Buggify: another process forks the checkpoint being deleted.
                if self.forks && self.rng.gen_bool(0.5) {
                    self.fork_elsewhere(v, Some(name));
                }
            }
            84..=88 => {
                let Some(name) = self.pick_cp(v) else { return };
                let contents = match self.vols[v].model.cps.get(&name) {
                    Some(Cp::Exists(c)) | Some(Cp::Maybe(c)) => c.clone(),
                    _ => return,
                };
                self.log(format!("writer {o}: restore {name}"));
                self.maybe_brownout(o);
                // Until it is acknowledged, it may or may not have happened.
                self.vols[v].model.served = None;
                let len = self.vols[v].model.writes_of(o).len();
                for s in &contents {
                    let c = Cand {
                        state: *s,
                        start: len,
                        replayed: false,
                    };
                    if !self.vols[v].model.cands.contains(&c) {
                        self.vols[v].model.cands.push(c);
                    }
                }
                let n = name.clone();
                self.spawn(
                    o,
                    Op::Restore {
                        name,
                        covered,
                        contents,
                    },
                    async move {
                        Outcome::Done(vol.restore(&n).await.map(|_| ()).map_err(|e| e.to_string()))
                    },
                );
            }
            89..=92 => {
                // A copy of the owner's directory from before this GC (a
                // disk snapshot of its machine).
                let before = self.root.join(format!("copy{}", self.trace.len()));
                if self.forks {
                    copy_tree(&self.writers[o].dir, &before);
                }
                self.gc(o, vol, covered);
                if self.forks {
                    match self.rng.gen_range(0..12) {
                        // Buggify: a fork made by another process while GC runs.
                        0..=4 => self.fork_elsewhere(v, None),
                        // Buggify: a client read beside the GC, its GETs slow:
                        // it may look a piece up before GC moves it and fetch
                        // it after GC deleted it.
                        7..=11 => {
                            let expect = self.vols[v].model.owner_states();
                            self.log(format!("writer {o}: read (beside its gc, slow GETs)"));
                            let vol = self.writers[o].vol.clone().expect("live writer");
                            self.spawn(
                                o,
                                Op::ReadDuringGc { expect },
                                SLOW_CLIENT_READ.scope(true, read_all(vol)),
                            );
                        }
                        // Buggify: a takeover from the copy while GC runs: it
                        // may read the mark before GC's and walk the chain
                        // while GC deletes.
                        5..=6 if self.does("attach") && !self.attaching(v) => {
                            // Mostly an older directory (its walk crosses what
                            // this GC deletes), else the copy from just now.
                            let spare = &mut self.vols[v].spare_dirs;
                            let dir = if !spare.is_empty() && self.rng.gen_bool(0.7) {
                                let _ = std::fs::remove_dir_all(&before);
                                spare.remove(self.rng.gen_range(0..spare.len()))
                            } else {
                                let d = self.writers[o].dir.clone();
                                self.log(format!(
                                    "copy {} (as it was before writer {o}'s gc) to {}",
                                    d.strip_prefix(&self.root).unwrap().display(),
                                    before.strip_prefix(&self.root).unwrap().display()
                                ));
                                before
                            };
                            self.attach_with(v, true, Some(dir), false);
                            // Its lease and the mark it reads are quick, its
                            // walk of the chain (listing and reading segments)
                            // slow: GC may mark and delete in between.
                            let b = self.writers.len() - 1;
                            self.world.gate.lock().unwrap().slow_walks.insert(b);
                            return;
                        }
                        _ => {}
                    }
                }
                let _ = std::fs::remove_dir_all(before);
            }
            93..=97 if self.forks && self.rng.gen_bool(0.5) => self.fork_elsewhere(v, None),
            93..=97 => self.fork(o),
            _ => {
                self.log(format!("writer {o}: detach"));
                self.spawn(o, Op::Close { covered }, async move {
                    Outcome::Done(vol.close().await.map_err(|e| e.to_string()))
                });
            }
        }
    }

    /// Owner `o` forks a checkpoint of its volume whose content is known
    /// exactly into a new volume.
    fn fork(&mut self, o: usize) {
        let v = self.writers[o].v;
        // Forks that failed leave a volume that is never used.
        if self.volumes_full() {
            return;
        }
        let known = self.vols[v].model.existing_cps();
        if known.is_empty() {
            return;
        }
        let (name, contents) = known[self.rng.gen_range(0..known.len())].clone();
        let child = self.new_vol(Model::starting_among(&contents), false);
        let dir = self.root.join(format!("fork{child}"));
        let parent = self.store_for(o, v);
        let child_store = self.store_for(o, child);
        let (purl, curl) = (self.vols[v].url.clone(), self.vols[child].url.clone());
        let o2 = opts(self.seed ^ (child as u64) << 8, false);
        self.log(format!("writer {o}: fork {name} as volume {child}"));
        self.spawn(o, Op::Fork { child }, async move {
            Outcome::Done(
                fork_volume(&parent, &purl, &name, child_store, &curl, &dir, o2)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            )
        });
    }

    /// Owner `o` runs GC (in the forks profile, sometimes compacting every
    /// segment not wholly referenced: with two blocks a segment, the
    /// default threshold compacts nothing).
    fn gc(&mut self, o: usize, vol: Volume, covered: usize) {
        let mut gc_opts = GcOptions::default();
        if self.forks && self.rng.gen_bool(0.8) {
            gc_opts.compact_below_percent = 100;
        }
        self.log(format!(
            "writer {o}: gc (compacting below {}%)",
            gc_opts.compact_below_percent
        ));
        self.spawn(o, Op::Gc { covered }, async move {
            Outcome::Done(
                vol.gc(&gc_opts)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            )
        });
    }

    /// Another process (`spritedisk fork`) forks a checkpoint of volume `v`
    /// (`name`, else one known to exist) while the owner goes on.
    fn fork_elsewhere(&mut self, v: usize, name: Option<String>) {
        if self.volumes_full() {
            return;
        }
        let (name, contents) = match name {
            // One being deleted: what it holds is still known.
            Some(n) => match self.vols[v].model.cps.get(&n) {
                Some(Cp::Exists(c)) | Some(Cp::Maybe(c)) => (n, c.clone()),
                _ => return,
            },
            None => {
                let known = self.vols[v].model.existing_cps();
                if known.is_empty() {
                    return;
                }
                known[self.rng.gen_range(0..known.len())].clone()
            }
        };
        let child = self.new_vol(Model::starting_among(&contents), false);
        let dir = self.root.join(format!("fork{child}"));
        let f = self.writers.len();
        self.writers.push(Writer {
            v: child,
            vol: None,
            dir: dir.clone(),
            life: Life::Forking,
            busy: false,
            must_read: false,
            must_see: None,
            started_at: 0,
            flushed: 0,
        });
        let parent = self.store_for(f, v);
        let child_store = self.store_for(f, child);
        let (purl, curl) = (self.vols[v].url.clone(), self.vols[child].url.clone());
        let o2 = opts(self.seed ^ (child as u64) << 8, false);
        self.log(format!(
            "writer {f}: fork (another process) {name} of volume {v} as volume {child}"
        ));
        self.spawn(f, Op::Fork { child }, async move {
            Outcome::Done(
                fork_volume(&parent, &purl, &name, child_store, &curl, &dir, o2)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            )
        });
    }

    /// No room for another fork (the forks profile makes more of them).
    fn volumes_full(&self) -> bool {
        let max = if self.forks {
            2 * VOLUMES_MAX
        } else {
            VOLUMES_MAX
        };
        let ready = self.vols.iter().filter(|v| v.ready).count();
        ready >= max || self.vols.len() >= 2 * max
    }

    fn pick_cp(&mut self, v: usize) -> Option<String> {
        let names: Vec<String> = self.vols[v]
            .model
            .cps
            .iter()
            .filter(|(_, c)| !matches!(c, Cp::Gone))
            .map(|(n, _)| n.clone())
            .collect();
        if names.is_empty() {
            return None;
        }
        Some(names[self.rng.gen_range(0..names.len())].clone())
    }

    fn write(&mut self, w: usize, vol: Volume) {
        let lba = self.rng.gen_range(0..BLOCKS);
        self.next_tag += 1;
        let tag = self.next_tag;
        self.log(format!("writer {w}: write block {lba} = {tag}"));
        self.spawn(w, Op::Write { lba, tag }, async move {
            Outcome::Done(
                vol.write(lba as u64 * BS, block(lba, tag), false)
                    .await
                    .map_err(|e| e.to_string()),
            )
        });
    }

    /// A writer that was taken over but is still running (it may not know).
    fn stale_writer_op(&mut self) {
        let stale: Vec<usize> = (0..self.writers.len())
            .filter(|&w| {
                Some(w) != self.vols[self.writers[w].v].model.owner
                    && self.writers[w].life == Life::Live
                    && !self.writers[w].busy
                    && !self.paused(w)
            })
            .collect();
        if stale.is_empty() {
            return;
        }
        let w = stale[self.rng.gen_range(0..stale.len())];
        let vol = self.writers[w].vol.clone().unwrap();
        let covered = self.m(w).writes_of(w).len();
        // In the forks profile, a taken-over writer may also run GC.
        let kinds = if self.forks { 5 } else { 4 };
        match self.rng.gen_range(0..kinds) {
            4 => self.gc(w, vol, covered),
            0 | 1 => self.write(w, vol),
            2 => {
                self.log(format!("writer {w} (taken over): flush"));
                self.spawn(w, Op::Flush { covered }, async move {
                    Outcome::Done(vol.flush().await.map_err(|e| e.to_string()))
                });
            }
            _ => {
                self.next_cp += 1;
                let name = format!("c{}", self.next_cp);
                self.log(format!("writer {w} (taken over): checkpoint {name}"));
                let n = name.clone();
                self.spawn(w, Op::Checkpoint { name, covered }, async move {
                    Outcome::Done(
                        vol.checkpoint(Some(&n))
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                    )
                });
            }
        }
    }

    /// A new writer attaches to a volume no other writer is attaching to.
    /// (`takeover`: also one that has a live writer, unless this seed
    /// leaves takeovers out.)
    fn attach(&mut self, takeover: bool) {
        // Without "attach", only a volume nobody writes gets a writer.
        let others = takeover && self.does("attach");
        let free: Vec<usize> = (0..self.vols.len())
            .filter(|&v| {
                self.vols[v].ready
                    && !self.attaching(v)
                    && (others
                        || !self
                            .writers
                            .iter()
                            .any(|w| w.v == v && w.life == Life::Live))
            })
            .collect();
        if free.is_empty() {
            return;
        }
        let v = free[self.rng.gen_range(0..free.len())];
        let force = self.rng.gen_bool(0.8);
        let spare = &mut self.vols[v].spare_dirs;
        let dir = if !spare.is_empty() && self.rng.gen_bool(0.5) {
            let i = self.rng.gen_range(0..spare.len());
            Some(spare.remove(i))
        } else {
            None
        };
        self.attach_with(v, force, dir, false);
    }

    fn attaching(&self, v: usize) -> bool {
        self.writers
            .iter()
            .any(|w| w.v == v && w.life == Life::Attaching)
    }

    /// The writer's daemon dies with acknowledged writes that may be only
    /// in its write log, and restarts on the same machine (its directory):
    /// `recover` after a kill -9, the common way a replay happens.
    /// With `power_cut`, the machine loses power instead: the journal
    /// keeps only what its syncs covered (`testing::power_cut`), and the
    /// restart must read at least every write a FLUSH acknowledged.
    fn restart(&mut self, w: usize, power_cut: bool) {
        // Its segments in flight die with it (kill -9 of a daemon): what
        // they carry is only in its write log now.
        let lost = {
            let mut g = self.world.gate.lock().unwrap();
            let before = g.pending.len();
            g.pending.retain(|op| !(op.writer == w && op.data));
            before - g.pending.len()
        };
        self.log(format!(
            "writer {w}: {} with {lost} segments in flight, restarted on its directory",
            if power_cut { "power cut" } else { "killed" }
        ));
        let v = self.writers[w].v;
        // What the restart must read: all the dead owner acknowledged (or
        // what a restart killed while attaching had to).
        // Only if nobody else started attaching since it did: a writer that
        // took the lease meanwhile (even one that died before its fence)
        // makes its log stale, and discarding it is right.
        let alone = self.vols[v].attach_starts == self.writers[w].started_at;
        let must_see = match self.writers[w].life {
            _ if !alone => None,
            Life::Live if self.vols[v].model.owner == Some(w) && power_cut => Some((
                self.vols[v]
                    .model
                    .owner_states_from(self.writers[w].flushed),
                w,
            )),
            Life::Live if self.vols[v].model.owner == Some(w) => {
                Some((self.vols[v].model.owner_states(), w))
            }
            Life::Attaching if !power_cut => {
                self.writers[w].must_see.clone().map(|(s, _, d)| (s, d))
            }
            _ => None,
        };
        self.kill(w);
        if power_cut {
            let seed = self.rng.gen();
            let (files, bytes) =
                spritedisk_volume::testing::power_cut_seeded(&self.writers[w].dir, seed);
            self.log(format!(
                "writer {w}: the power cut took {files} journal files and {bytes} bytes"
            ));
        }
        if self.attaching(v) {
            return;
        }
        let dir = self.writers[w].dir.clone();
        self.vols[v].spare_dirs.retain(|d| *d != dir);
        // With room for one segment, its replay waits for each upload.
        self.attach_with(v, true, Some(dir), true);
        let starts = self.vols[v].attach_starts;
        let r = self.writers.len() - 1;
        self.writers[r].must_see = must_see.map(|(s, d)| (s, starts, d));
    }

    /// A new writer attaches volume `v` (with `dir`, else a new directory;
    /// `tight`: with room for one unflushed segment).
    fn attach_with(&mut self, v: usize, force: bool, dir: Option<std::path::PathBuf>, tight: bool) {
        let w = self.writers.len();
        let dir = dir.unwrap_or_else(|| {
            let d = self.root.join(format!("w{w}"));
            std::fs::create_dir_all(&d).unwrap();
            d
        });
        self.log(format!(
            "writer {w}: attach{} to volume {v} with {}",
            if force { " --force" } else { "" },
            dir.strip_prefix(&self.root).unwrap().display()
        ));
        self.vols[v].attach_starts += 1;
        let started_at = self.vols[v].attach_starts;
        self.writers.push(Writer {
            v,
            vol: None,
            dir: dir.clone(),
            life: Life::Attaching,
            busy: false,
            must_read: false,
            must_see: None,
            started_at,
            flushed: 0,
        });
        let store = self.store_for(w, v);
        let url = self.vols[v].url.clone();
        let mut o = opts(self.seed ^ w as u64, force);
        if self.local {
            o.durability = spritedisk_volume::Durability::Local;
        }
        if tight || (self.restarts && self.rng.gen_bool(0.3)) {
            // One block per segment and room for two (the least the CLI
            // allows): every write is a segment, and writes (and a replay
            // of a dead writer's log) wait for uploads.
            o.segment_bytes = BS;
            o.dirty_bytes_max = 2 * BS;
        }
        self.spawn(w, Op::Attach, async move {
            let vol = match Volume::open(store, &url, Some(&dir), o).await {
                Ok(v) => v,
                Err(e) => return Outcome::Attached(Err(e.to_string())),
            };
            let seen = match read_all(vol.clone()).await {
                Outcome::Read(Ok(b)) => b,
                Outcome::Read(Err(e)) => {
                    vol.abandon();
                    return Outcome::Attached(Err(format!("first read: {e}")));
                }
                _ => unreachable!(),
            };
            let listed = match vol.checkpoints() {
                Ok(c) => c.into_iter().map(|c| c.name).collect(),
                Err(e) => {
                    vol.abandon();
                    return Outcome::Attached(Err(format!("listing checkpoints: {e}")));
                }
            };
            Outcome::Attached(Ok((vol, seen, listed)))
        });
    }

    /// Kills a live writer, or one still attaching (its replay of a dead
    /// writer's log, its fence, its restore from the replica: wherever the
    /// scheduler has it).
    fn crash_one(&mut self) {
        let live: Vec<usize> = (0..self.writers.len())
            .filter(|&w| match self.writers[w].life {
                Life::Live => true,
                Life::Attaching => self.restarts,
                _ => false,
            })
            .collect();
        if live.is_empty() {
            return;
        }
        let w = live[self.rng.gen_range(0..live.len())];
        self.log(format!("writer {w}: crash"));
        self.kill(w);
    }

    fn kill(&mut self, w: usize) {
        self.world.gate.lock().unwrap().dead.insert(w);
        if let Some(v) = self.writers[w].vol.take() {
            v.abandon();
        }
        self.writers[w].life = Life::Gone;
        // Its tasks die with it; their operations already at the gate stay
        // there (they may land late).
        for t in self.tasks.iter().filter(|t| t.writer == w) {
            t.handle.abort();
        }
        let v = self.writers[w].v;
        let dir = self.writers[w].dir.clone();
        self.vols[v].spare_dirs.push(dir);
    }

    /// Whom a pause or an outage toggles: mostly one it holds (so that
    /// most end after a few steps), else any writer still around.
    fn pick_toggle(&mut self, held: &[usize]) -> Option<usize> {
        let held: Vec<usize> = held
            .iter()
            .copied()
            .filter(|&w| self.writers[w].life != Life::Gone)
            .collect();
        if !held.is_empty() && self.rng.gen_bool(0.75) {
            return Some(held[self.rng.gen_range(0..held.len())]);
        }
        let live: Vec<usize> = (0..self.writers.len())
            .filter(|&w| self.writers[w].life != Life::Gone)
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(live[self.rng.gen_range(0..live.len())])
    }

    /// The writers fault `f` holds now.
    fn holding(&self, f: Fault) -> Vec<usize> {
        let mut g = self.world.gate.lock().unwrap();
        f.of(&mut g).iter().copied().collect()
    }

    fn start(&mut self, f: Fault, w: usize) {
        f.of(&mut self.world.gate.lock().unwrap()).insert(w);
        self.log(format!("writer {w} {}", f.starts()));
    }

    fn end(&mut self, f: Fault, w: usize) {
        f.of(&mut self.world.gate.lock().unwrap()).remove(&w);
        self.log(format!("writer {w} {}", f.ends()));
    }

    /// Ends fault `f` for a writer it holds, or starts it for another.
    fn toggle(&mut self, f: Fault) {
        let held = self.holding(f);
        let Some(w) = self.pick_toggle(&held) else {
            return;
        };
        if held.contains(&w) {
            self.end(f, w);
        } else {
            self.start(f, w);
        }
    }

    /// Faults where they hurt most (FoundationDB's "buggify"): sometimes
    /// the store goes away just as a metadata operation starts.
    fn maybe_brownout(&mut self, w: usize) {
        match self.rng.gen_range(0..100) {
            0..=19 => self.start(Fault::Outage, w),
            20..=39 => self.start(Fault::MetaOutage, w),
            _ => {}
        }
    }

    /// A copy of a directory (a gone writer's, or a live one's as a disk
    /// snapshot would take it: every task is idle), for a later attach.
    fn copy_dir(&mut self) {
        let mut dirs: Vec<(usize, PathBuf)> = Vec::new();
        for (v, vol) in self.vols.iter().enumerate() {
            dirs.extend(vol.spare_dirs.iter().map(|d| (v, d.clone())));
        }
        dirs.extend(
            self.writers
                .iter()
                .filter(|w| w.life == Life::Live)
                .map(|w| (w.v, w.dir.clone())),
        );
        if dirs.is_empty() {
            return;
        }
        let (v, src) = dirs[self.rng.gen_range(0..dirs.len())].clone();
        let n = self.trace.len();
        let dst = self.root.join(format!("copy{n}"));
        copy_tree(&src, &dst);
        self.log(format!(
            "copy {} to {}",
            src.strip_prefix(&self.root).unwrap().display(),
            dst.strip_prefix(&self.root).unwrap().display()
        ));
        self.vols[v].spare_dirs.push(dst);
    }

    async fn harvest(&mut self) -> Result<(), String> {
        let mut i = 0;
        while i < self.tasks.len() {
            if !self.tasks[i].handle.is_finished() {
                i += 1;
                continue;
            }
            let t = self.tasks.remove(i);
            let Ok(out) = t.handle.await else {
                continue; // aborted with its crashed writer
            };
            self.finish(t.writer, t.op, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, w: usize, op: Op, out: Outcome) -> Result<(), String> {
        // Busy while any of its operations runs (a read beside its GC).
        self.writers[w].busy = self.tasks.iter().any(|t| t.writer == w);
        if !self.writers[w].busy {
            let mut g = self.world.gate.lock().unwrap();
            g.slow_walks.remove(&w);
        }
        let op = match op {
            Op::ReadDuringGc { expect } => Op::Read { expect },
            op => op,
        };
        if self.writers[w].life == Life::Gone {
            return Ok(());
        }
        if self.writers[w].life == Life::Forking {
            // Its work is done: what it sends from now on is nobody's.
            self.writers[w].life = Life::Gone;
            self.world.gate.lock().unwrap().dead.insert(w);
        }
        let v = self.writers[w].v;
        match (op, out) {
            (Op::Attach, Outcome::Attached(Ok((vol, seen, listed)))) => {
                self.log(format!(
                    "writer {w}: attached, read {}, lists {listed:?}",
                    show(&seen)
                ));
                if let Some((states, starts, dead)) = &self.writers[w].must_see {
                    if *starts == self.vols[v].attach_starts && !states.contains(&seen) {
                        return Err(format!(
                            "writer {w} restarted on the directory of writer {dead}, which died with no other \
                             attach since, and read {}: not every write writer {dead} \
                             acknowledged ({:?}): its write log lost or reordered some",
                            show(&seen),
                            states.iter().map(show).collect::<Vec<_>>()
                        ));
                    }
                }
                self.writers[w].vol = Some(vol);
                self.writers[w].life = Life::Live;
                self.vols[v].model.observe(w, seen, listed)?;
            }
            (Op::Attach, Outcome::Attached(Err(e))) => {
                self.log(format!("writer {w}: attach failed: {e}"));
                if data_lost(&e) {
                    return Err(format!("writer {w} attached and could not read: {e}"));
                }
                self.writers[w].life = Life::Gone;
                self.world.gate.lock().unwrap().dead.insert(w);
                let dir = self.writers[w].dir.clone();
                self.vols[v].spare_dirs.push(dir);
            }
            (Op::Fork { child }, Outcome::Done(r)) => {
                self.log(format!("writer {w}: fork as volume {child}: {r:?}"));
                if r.is_ok() {
                    self.vols[child].ready = true;
                    let dir = self.root.join(format!("fork{child}"));
                    self.vols[child].spare_dirs.push(dir);
                }
            }
            (Op::Write { lba, tag }, Outcome::Done(r)) => {
                self.log(format!("writer {w}: write {tag}: {r:?}"));
                if r.is_ok() {
                    self.vols[v]
                        .model
                        .writes
                        .entry(w)
                        .or_default()
                        .push((lba, tag));
                    // Buggify: acknowledged writes whose segments are
                    // still on their way are what a restarted daemon
                    // replays from its log; two or more make a replay of
                    // several segments.
                    let in_flight = {
                        let g = self.world.gate.lock().unwrap();
                        g.pending
                            .iter()
                            .filter(|op| op.writer == w && op.data)
                            .count()
                    };
                    if self.restarts && in_flight >= 1 && self.rng.gen_bool(0.3) {
                        // In local durability, half of them by a power cut:
                        // writes past the last FLUSH, unsynced, some kept.
                        let cut = self.local && self.rng.gen_bool(0.5);
                        self.restart(w, cut);
                    }
                }
            }
            (Op::Flush { covered }, Outcome::Done(r)) if self.local => {
                self.log(format!("writer {w}: flush (local): {r:?}"));
                if r.is_ok() {
                    // In the journal only: nothing another machine must see.
                    self.writers[w].flushed = self.writers[w].flushed.max(covered);
                    let owner = self.vols[v].model.owner == Some(w);
                    if self.restarts && owner && self.rng.gen_bool(0.15) {
                        self.restart(w, true);
                    } else if self.rng.gen_bool(0.05) {
                        self.log(format!("writer {w}: crash"));
                        self.kill(w);
                    }
                }
            }
            (Op::Flush { covered }, Outcome::Done(r)) => {
                self.log(format!("writer {w}: flush: {r:?}"));
                if r.is_ok() {
                    self.vols[v].model.acknowledged(w, covered, "FLUSH")?;
                    // Buggify: the moment after an acknowledgement is where a
                    // crash shows what was not durable.
                    if (!self.forks || self.does("crash")) && self.rng.gen_bool(0.1) {
                        self.log(format!("writer {w}: crash"));
                        self.kill(w);
                    }
                }
            }
            (Op::Read { expect }, Outcome::Read(r)) => {
                self.log(format!("writer {w}: read: {:?}", r.as_ref().map(show)));
                if let Err(e) = &r {
                    if data_lost(e) {
                        return Err(format!("writer {w} could not read its volume: {e}"));
                    }
                }
                if let Ok(seen) = r {
                    let owner = Some(w) == self.vols[v].model.owner
                        && !self.vols[v].model.retired.contains_key(&w);
                    if owner && !expect.contains(&seen) {
                        return Err(format!(
                            "writer {w} read {} but its volume holds one of {:?}",
                            show(&seen),
                            expect.iter().map(show).collect::<Vec<_>>()
                        ));
                    }
                    if owner {
                        let writes = self.vols[v].model.writes_of(w).to_vec();
                        let served: Vec<Cand> = self.vols[v]
                            .model
                            .cands
                            .iter()
                            .filter(|c| {
                                let mut s = c.state;
                                for &(b, t) in &writes[c.start.min(writes.len())..] {
                                    s[b] = t;
                                }
                                !c.replayed && s == seen
                            })
                            .cloned()
                            .collect();
                        self.vols[v].model.served = Some(served);
                    }
                }
            }
            (Op::Checkpoint { name, covered }, Outcome::Done(r)) => {
                self.log(format!("writer {w}: checkpoint {name}: {r:?}"));
                if r.is_ok() {
                    self.vols[v].model.acknowledged(w, covered, "checkpoint")?;
                    if let Some(ret) = self.vols[v].model.retired.get(&w) {
                        if !ret.listed.contains(&name) {
                            return Err(format!(
                                "writer {w} acknowledged checkpoint {name} after the writer that \
                                 took over listed its checkpoints without it"
                            ));
                        }
                    } else if let Some(Cp::Maybe(c)) = self.vols[v].model.cps.get(&name).cloned() {
                        self.vols[v].model.cps.insert(name, Cp::Exists(c));
                    }
                }
            }
            (Op::DeleteCheckpoint { name }, Outcome::Done(r)) => {
                self.log(format!("writer {w}: delete {name}: {r:?}"));
                if r.is_ok() {
                    if let Some(ret) = self.vols[v].model.retired.get(&w) {
                        if ret.listed.contains(&name) {
                            return Err(format!(
                                "writer {w} acknowledged deleting checkpoint {name} after the \
                                 writer that took over listed it"
                            ));
                        }
                    } else {
                        self.vols[v].model.cps.insert(name, Cp::Gone);
                    }
                }
            }
            (
                Op::Restore {
                    name,
                    covered,
                    contents,
                },
                Outcome::Done(r),
            ) => {
                self.log(format!("writer {w}: restore {name}: {r:?}"));
                let len = self.vols[v].model.writes_of(w).len();
                match r {
                    Ok(()) => {
                        self.vols[v].model.acknowledged(w, covered, "restore")?;
                        if let Some(ret) = self.vols[v].model.retired.get(&w) {
                            if !contents.contains(&ret.seen) {
                                return Err(format!(
                                    "writer {w} acknowledged restoring {name} after the writer \
                                     that took over read {} (the checkpoint holds one of {:?})",
                                    show(&ret.seen),
                                    contents.iter().map(show).collect::<Vec<_>>()
                                ));
                            }
                        } else {
                            self.vols[v].model.cands = contents
                                .iter()
                                .map(|s| Cand {
                                    state: *s,
                                    start: len,
                                    replayed: false,
                                })
                                .collect();
                            self.vols[v].model.acked.insert(w, len);
                            self.vols[v].model.served = None;
                        }
                    }
                    // Maybe it happened: both histories stay possible (the
                    // restore's candidates were added when it was asked for).
                    Err(_) => self.writers[w].must_read = true,
                }
            }
            (Op::Gc { covered }, Outcome::Done(r)) => {
                self.log(format!("writer {w}: gc: {r:?}"));
                if r.is_ok() {
                    self.vols[v]
                        .model
                        .acknowledged(w, covered, "GC (which flushes)")?;
                }
            }
            (Op::Close { covered }, Outcome::Done(r)) => {
                self.log(format!("writer {w}: detach: {r:?}"));
                if r.is_ok() {
                    self.vols[v]
                        .model
                        .acknowledged(w, covered, "detach (which flushes)")?;
                }
                self.writers[w].vol = None;
                self.writers[w].life = Life::Gone;
                self.world.gate.lock().unwrap().dead.insert(w);
                let dir = self.writers[w].dir.clone();
                self.vols[v].spare_dirs.push(dir);
            }
            _ => unreachable!("an outcome of another operation"),
        }
        Ok(())
    }

    /// The end: every writer resumes, the store answers everything, and a
    /// last writer takes the volume over and must read the history.
    async fn drain(&mut self) -> Result<(), String> {
        self.step = usize::MAX / 2;
        {
            let mut g = self.world.gate.lock().unwrap();
            g.paused.clear();
            g.outage.clear();
            g.meta_outage.clear();
        }
        for _ in 0..2000 {
            let busy = self.tasks.iter().any(|t| !t.handle.is_finished());
            let ops: Vec<PendingOp> = self.world.gate.lock().unwrap().pending.drain(..).collect();
            if ops.is_empty() && !busy {
                break;
            }
            for op in ops {
                let dead = self.world.gate.lock().unwrap().dead.contains(&op.writer);
                decide(
                    op,
                    if dead {
                        Verdict::LandLate
                    } else {
                        Verdict::Land
                    },
                );
            }
            self.settle().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.harvest().await?;
        }
        for w in 0..self.writers.len() {
            if self.writers[w].life == Life::Live {
                self.log(format!("writer {w}: crash (end)"));
                self.kill(w);
            }
        }
        // Late PUTs of the crashed writers: all land now.
        let ops: Vec<PendingOp> = self.world.gate.lock().unwrap().pending.drain(..).collect();
        for op in ops {
            self.log(format!(
                "land {:?} {} of writer {} (late)",
                op.kind, op.key, op.writer
            ));
            decide(op, Verdict::LandLate);
        }
        self.settle().await;
        for v in 0..self.vols.len() {
            if self.vols[v].ready {
                self.attach_final(v).await?;
            }
        }
        Ok(())
    }

    async fn attach_final(&mut self, v: usize) -> Result<(), String> {
        let w = self.writers.len();
        let dir = self.root.join(format!("final{v}"));
        std::fs::create_dir_all(&dir).unwrap();
        self.writers.push(Writer {
            v,
            vol: None,
            dir: dir.clone(),
            life: Life::Attaching,
            busy: false,
            must_read: false,
            must_see: None,
            started_at: 0,
            flushed: 0,
        });
        self.log(format!("writer {w}: attach --force to volume {v} (final)"));
        let store = self.vols[v].store.clone();
        let url = self.vols[v].url.clone();
        let vol = Volume::open(store, &url, Some(&dir), opts(self.seed, true))
            .await
            .map_err(|e| format!("the final attach failed: {e}"))?;
        let seen = match read_all(vol.clone()).await {
            Outcome::Read(r) => r?,
            _ => unreachable!(),
        };
        let listed = vol
            .checkpoints()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|c| c.name)
            .collect();
        self.log(format!("writer {w}: attached, read {}", show(&seen)));
        self.vols[v].model.observe(w, seen, listed)?;
        // Each listed checkpoint restores to its content.
        let cps = self.vols[v].model.existing_cps();
        for (name, contents) in cps {
            vol.restore(&name)
                .await
                .map_err(|e| format!("the final writer cannot restore {name}: {e}"))?;
            let got = match read_all(vol.clone()).await {
                Outcome::Read(r) => r?,
                _ => unreachable!(),
            };
            if !contents.contains(&got) {
                return Err(format!(
                    "checkpoint {name} of volume {v} restores to {}, it holds one of {:?}",
                    show(&got),
                    contents.iter().map(show).collect::<Vec<_>>()
                ));
            }
        }
        vol.close().await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Sends the verdict on `op`; a change that lands is performed here and
/// now, to its end, while every task is idle (`PendingOp::exec`). Blocking
/// this thread (the runtime's only one) keeps every task from running
/// meanwhile; the file store's own work runs inline on it too
/// (`spritedisk_store::blocking`).
fn decide(op: PendingOp, verdict: Verdict) {
    let landed = match (verdict, op.exec) {
        (Verdict::Fail, _) | (_, None) => None,
        (_, Some(exec)) => Some(futures::executor::block_on(exec)),
    };
    let _ = op.tx.send((verdict, landed));
}

/// An object key without the random volume id a fork's pin is named by,
/// so that the order of operations and the trace do not depend on it.
fn stable_key(key: &str) -> &str {
    if key.starts_with("forks/") {
        "forks/<child id>.json"
    } else {
        key
    }
}

/// A read error that means data the volume references is gone from the
/// store (not a store outage, not a stopped engine).
fn data_lost(e: &str) -> bool {
    e.contains("referenced data is missing")
}

/// As a frontend reads: on the caller's thread if nothing must wait
/// (`read_now`, into a buffer holding garbage), else through the engine.
async fn read_all(vol: Volume) -> Outcome {
    let mut now = vec![0xa5u8; BLOCKS * BS as usize];
    if let Some(r) = spritedisk_volume::BlockIo::read_now(&vol, 0, &mut now) {
        return Outcome::Read(match r {
            Ok(()) => decode(&now),
            Err(e) => Err(e.to_string()),
        });
    }
    Outcome::Read(match vol.read(0, BLOCKS as u64 * BS).await {
        Ok(d) => decode(&d),
        Err(e) => Err(e.to_string()),
    })
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// Runs one seed; the error carries the end of its trace.
fn run_seed(seed: u64, steps: usize, profile: Profile) -> Result<u64, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    // Stores, databases and write logs in memory when the machine has a
    // tmpfs: the simulation is about order, not disks.
    let tmp = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    // Every task's blocking work (SQLite, files) runs in its own poll, on
    // this one thread: nothing finishes in the host's time.
    let _inline = spritedisk_store::blocking::run_inline_on_this_thread();
    rt.block_on(async {
        let mut sim = Sim {
            rng: SmallRng::seed_from_u64(seed),
            seed,
            world: Arc::new(World {
                gate: Mutex::new(Gate::default()),
            }),
            root: tmp.path().to_path_buf(),
            vols: Vec::new(),
            writers: Vec::new(),
            tasks: Vec::new(),
            next_tag: 0,
            next_cp: 0,
            trace: Vec::new(),
            step: 0,
            left_out: BTreeSet::new(),
            restarts: false,
            forks: false,
            local: false,
        };
        match profile {
            Profile::Mixed => {
                sim.restarts = sim.rng.gen_bool(0.3);
                // From the seed's bits, not its generator: the other seeds
                // run as they did before local mode.
                sim.local = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 62 == 0;
            }
            Profile::Forks => sim.forks = true,
        }
        if sim.local {
            sim.log("profile: local durability (a FLUSH at the journal's sync; power cuts)".into());
        }
        if sim.forks {
            sim.log("profile: forks race GC".into());
            // Swarm: half the seeds leave each disturbance out, so that
            // owners live long enough to collect and compact.
            for kind in SWARM_KINDS {
                if sim.rng.gen_bool(0.5) {
                    sim.left_out.insert(kind);
                }
            }
        }
        if sim.restarts {
            sim.log("profile: daemons restart on their directories".into());
            for kind in SWARM_KINDS {
                if sim.rng.gen_bool(0.3) {
                    sim.left_out.insert(kind);
                }
            }
        }
        if !sim.left_out.is_empty() {
            let out: Vec<&str> = sim.left_out.iter().copied().collect();
            sim.log(format!("swarm: this seed leaves out {}", out.join(", ")));
        }
        let v = sim.new_vol(Model::starting_among(&[[0; BLOCKS]]), true);
        create_volume(&sim.vols[v].store, &sim.vols[v].url, 1 << 30)
            .await
            .unwrap();
        // The first writer attaches before anything else happens.
        sim.attach(true);
        let res = sim.run(steps).await;
        // Error messages name pids, wall-clock times (a lease's age) and
        // volume ids: the digest leaves their hex digits out.
        let digest = sim.trace.iter().fold(0xcbf29ce484222325u64, |h, l| {
            let cut = ["Err(", "failed:"]
                .iter()
                .filter_map(|m| l.find(m))
                .min()
                .unwrap_or(l.len());
            let (head, tail) = l.split_at(cut);
            head.bytes()
                .chain(tail.bytes().filter(|b| !b.is_ascii_hexdigit()))
                .fold(h, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
        });
        if std::env::var_os("SPRITEDISK_DST_TRACE").is_some() {
            eprintln!("--- seed {seed} ---\n{}", sim.trace.join("\n"));
        }
        match res {
            Ok(()) => Ok(digest),
            Err(e) => {
                let tail = sim.trace.len().saturating_sub(80);
                Err(format!(
                    "seed {seed}: {e}\n--- trace (last {} of {} events) ---\n{}",
                    sim.trace.len() - tail,
                    sim.trace.len(),
                    sim.trace[tail..].join("\n")
                ))
            }
        }
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
    })
}

/// What a seed runs (each simulation test runs its own seeds).
#[derive(Debug, Clone, Copy)]
enum Profile {
    /// The fenced-history mix (70% of the seeds) and the daemon-restart
    /// profile (30%).
    Mixed,
    /// Forks, GC, compaction and deletes racing each other (issue 20).
    Forks,
}

fn simulate(profile: Profile, budget: u64) {
    let steps = env_u64("SPRITEDISK_DST_STEPS").map_or(STEPS, |s| s as usize);
    let seeds: Vec<u64> = match env_u64("SPRITEDISK_DST_SEED") {
        Some(s) => vec![s],
        None => (1..=env_u64("SPRITEDISK_DST_SEEDS").unwrap_or(budget)).collect(),
    };
    let mut failures = Vec::new();
    for &seed in &seeds {
        if let Err(e) = run_seed(seed, steps, profile) {
            eprintln!("{profile:?} profile, {e}\n");
            failures.push(seed);
        }
    }
    assert!(
        failures.is_empty(),
        "{profile:?} profile: {} of {} seeds failed: {failures:?} (rerun one with SPRITEDISK_DST_SEED=S)",
        failures.len(),
        seeds.len()
    );
}

/// The tests of this file run one at a time, so that the runs the
/// determinism test compares do not share the cores with a simulation.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn simulation_finds_no_lost_or_stale_data() {
    let _one = one_at_a_time();
    simulate(Profile::Mixed, CI_SEEDS);
}

#[test]
fn simulation_of_forks_racing_gc_finds_no_lost_data() {
    let _one = one_at_a_time();
    simulate(Profile::Forks, CI_FORK_SEEDS);
}

/// A seed runs the same every time, however loaded the host: every
/// task's blocking work runs inline on the simulation's one thread
/// (`spritedisk_store::blocking`), and the simulation performs each change
/// it lets land itself, while every task is idle (`decide`). Before both,
/// the forks profile's seed 3 ran three different ways in three runs on a
/// loaded CI machine. Seeds 5 and 10 of the mixed profile run in local
/// durability (journal syncs as tasks, power cuts).
#[test]
fn the_same_seed_runs_the_same() {
    let _one = one_at_a_time();
    for profile in [Profile::Mixed, Profile::Forks] {
        for seed in [1, 3, 5, 7, 10, 11, 40] {
            let runs: Vec<_> = (0..3).map(|_| run_seed(seed, 150, profile)).collect();
            assert!(
                runs.iter().all(|r| *r == runs[0]),
                "seed {seed} ({profile:?}) ran differently in three runs: the simulation is not deterministic: {runs:?}"
            );
        }
    }
}
