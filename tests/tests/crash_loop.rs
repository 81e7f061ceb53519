//! The crash loop: a writer with a known history of writes and FLUSHes,
//! through NBD to a real daemon, killed with SIGKILL at a random moment
//! (while the store fails 5% of requests with transient errors), then
//! re-attached with its local state (a daemon crash) or from the store alone
//! (a machine crash). After each kill:
//! - with local state, every acknowledged write is there (the write log);
//! - from the store alone, every write acknowledged before the last
//!   completed FLUSH is there;
//! - either way the disk equals the history at one point — never a mixture.
//!
//! Half the daemons run with `--durability local` (docs/design/0014): their
//! FLUSH returns at the journal's fdatasync, so from the store alone only
//! the prefix rule holds (flushed writes not uploaded yet are lost with
//! the machine); with local state, every acknowledged write is there.
//!
//! CI runs `CRASH_ITERATIONS` (default 6); `make crash-test` runs 1000 and
//! prints the counts. A failure prints the seed (`CRASH_SEED` replays it).

use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use spritedisk_e2e::*;
use spritedisk_nbd::client::NbdClient;
use spritedisk_nbd::proto::{CMD_FLUSH, CMD_READ, CMD_WRITE};

const BS: usize = 4096;
/// The region written: small, so writes often hit the same blocks.
const BLOCKS: u64 = 512;
const MAGIC: &[u8; 8] = b"CRASHLP1";

/// A block that says which write made it: (block, generation).
fn stamp(block: u64, gen: u64) -> Vec<u8> {
    let mut b = vec![(gen % 251) as u8; BS];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&block.to_le_bytes());
    b[16..24].copy_from_slice(&gen.to_le_bytes());
    b
}

/// The generation a block holds (0: never written), or why it is neither.
fn generation(block: u64, b: &[u8]) -> Result<u64, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(0);
    }
    let gen = u64::from_le_bytes(b[16..24].try_into().unwrap());
    if &b[..8] != MAGIC || b[8..16] != block.to_le_bytes() || b != stamp(block, gen) {
        return Err(format!(
            "block {block} holds data no write made (torn or misplaced)"
        ));
    }
    Ok(gen)
}

/// One write of the history: blocks `[lba, lba + n)` got generation `gen`.
#[derive(Clone, Copy, Debug)]
struct Write {
    lba: u64,
    n: u64,
    gen: u64,
}

/// What the writer saw before the daemon died.
#[derive(Default)]
struct Seen {
    /// Writes sent, in order (QD1: the order is the history).
    writes: Vec<Write>,
    /// Writes acknowledged: a prefix of `writes`.
    acked: usize,
    /// Writes acknowledged before the last acknowledged FLUSH.
    flushed: usize,
    flushes: u64,
}

async fn writer(sock: &Path, rng: &mut SmallRng, next_gen: &mut u64, until: Instant) -> Seen {
    let mut seen = Seen::default();
    let Ok(mut c) = NbdClient::connect_unix(sock, "").await else {
        return seen;
    };
    while Instant::now() < until {
        if rng.gen_bool(0.08) {
            if c.submit(CMD_FLUSH, 0, 0, 0, &[]).await.is_err() {
                break;
            }
            match c.next_reply().await {
                Ok(r) if r.errno == 0 => {
                    seen.flushed = seen.acked;
                    seen.flushes += 1;
                }
                _ => break,
            }
            continue;
        }
        let n = rng.gen_range(1..=8u64);
        let lba = rng.gen_range(0..=BLOCKS - n);
        *next_gen += 1;
        let gen = *next_gen;
        let data: Vec<u8> = (lba..lba + n).flat_map(|b| stamp(b, gen)).collect();
        seen.writes.push(Write { lba, n, gen });
        if c.submit(CMD_WRITE, 0, lba * BS as u64, data.len() as u32, &data)
            .await
            .is_err()
        {
            break;
        }
        match c.next_reply().await {
            Ok(r) if r.errno == 0 => seen.acked += 1,
            _ => break,
        }
    }
    seen
}

async fn read_disk(sock: &Path) -> Vec<Vec<u8>> {
    let mut c = NbdClient::connect_unix(sock, "").await.expect("connect");
    let mut out = vec![];
    for b in (0..BLOCKS).step_by(64) {
        c.submit(CMD_READ, 0, b * BS as u64, (64 * BS) as u32, &[])
            .await
            .unwrap();
        let r = c.next_reply().await.unwrap();
        assert_eq!(r.errno, 0, "read at block {b}");
        out.extend(r.data.unwrap().chunks(BS).map(<[u8]>::to_vec));
    }
    c.disconnect().await;
    out
}

/// The disk state after the first `p` writes of `seen`, from `base`.
fn state_after(base: &[u64], seen: &Seen, p: usize) -> Vec<u64> {
    let mut s = base.to_vec();
    for w in &seen.writes[..p] {
        for b in w.lba..w.lba + w.n {
            s[b as usize] = w.gen;
        }
    }
    s
}

#[derive(Default, Debug)]
struct Counts {
    iterations: u64,
    with_local_state: u64,
    from_store_alone: u64,
    writes_acked: u64,
    flushes_acked: u64,
    /// Acknowledged writes after the last FLUSH that a store-alone attach lost (allowed).
    unflushed_lost: u64,
    /// Iterations whose writer ran with `--durability local`.
    local_durability: u64,
    /// Acknowledged, flushed writes of a local-durability writer that a
    /// store-alone attach lost (allowed: not uploaded yet).
    flushed_not_uploaded_lost: u64,
}

#[test]
fn crash_loop() {
    require("qemu-io", "qemu-utils");
    let iterations: u64 = std::env::var("CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u32>() as u64);
    eprintln!("crash loop: seed {seed} (CRASH_SEED={seed} replays it), {iterations} iterations");
    let mut rng = SmallRng::seed_from_u64(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let env = Env::new();
    let url = env.create("vol", "64M");
    let sock = env.sock();
    let mut cache = env.path("cache-0");
    let faults = [
        "--simulate-store-errors",
        "0.05",
        "--segment-size",
        "64K",
        "--dirty-max",
        "1M",
    ];
    let mut base = vec![0u64; BLOCKS as usize];
    let mut next_gen = 0;
    let mut counts = Counts::default();
    for i in 0..iterations {
        let local = rng.gen_bool(0.5);
        let mut args = faults.to_vec();
        if local {
            args.extend(["--durability", "local"]);
        }
        let d = Daemon::attach(&url, &sock, &cache, &args);
        let run_ms = rng.gen_range(20..400);
        let seen = rt.block_on(writer(
            &sock,
            &mut rng,
            &mut next_gen,
            Instant::now() + Duration::from_millis(run_ms),
        ));
        d.kill();
        let keep_local = rng.gen_bool(0.5);
        if !keep_local {
            // Another machine: nothing local survives (and the dead one's
            // directory, with its preallocated reserve, goes).
            let _ = std::fs::remove_dir_all(&cache);
            cache = env.path(&format!("cache-{}", i + 1));
        }
        let d = Daemon::attach(&url, &sock, &cache, &faults);
        let disk = rt.block_on(read_disk(&sock));
        d.detach();
        let gens: Vec<u64> = disk
            .iter()
            .enumerate()
            .map(|(b, data)| generation(b as u64, data))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("seed {seed}, iteration {i}: {e}"));
        // The writes the disk may reflect: at least every acknowledged one
        // (local state) or every flushed one (store alone; with local
        // durability, any prefix); at most every one sent (the last may
        // have landed without its reply).
        let floor = match (keep_local, local) {
            (true, _) => seen.acked,
            (false, false) => seen.flushed,
            (false, true) => 0,
        };
        let p = (floor..=seen.writes.len())
            .find(|&p| state_after(&base, &seen, p) == gens)
            .unwrap_or_else(|| {
                panic!(
                    "seed {seed}, iteration {i} ({}, durability {}): the disk is not the history after {floor}..={} writes \
                     ({} acknowledged, {} before the last flush)",
                    if keep_local { "local state" } else { "store alone" },
                    if local { "local" } else { "store" },
                    seen.writes.len(),
                    seen.acked,
                    seen.flushed
                )
            });
        counts.iterations += 1;
        if keep_local {
            counts.with_local_state += 1;
        } else {
            counts.from_store_alone += 1;
            counts.unflushed_lost += seen.acked.saturating_sub(p.max(seen.flushed)) as u64;
            counts.flushed_not_uploaded_lost += seen.flushed.saturating_sub(p) as u64;
        }
        counts.local_durability += local as u64;
        counts.writes_acked += seen.acked as u64;
        counts.flushes_acked += seen.flushes;
        base = gens;
    }
    eprintln!("crash loop: seed {seed}: {counts:?}");
}
