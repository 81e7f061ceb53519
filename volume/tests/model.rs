//! The engine against a plain byte-array model: random writes, reads,
//! flushes, discards, write-zeroes, checkpoints, restores, checkpoint
//! deletions, GC runs and crashes (with puts in flight lost, torn or landed
//! out of order) on the in-memory store, with transient store errors. Reads must equal the
//! model; after a crash the disk must equal the model as of the last
//! completed FLUSH or a later prefix of the history — never a mixture.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use spritedisk_store::{CrashPolicy, FaultConfig, FaultStore, ObjectStore};
use spritedisk_volume::GcOptions;

const BLOCKS: u64 = 48;

#[derive(Debug, Clone)]
enum Op {
    Write {
        lba: u64,
        n: u64,
        tag: u8,
        fua: bool,
    },
    Read {
        lba: u64,
        n: u64,
    },
    Flush,
    Discard {
        lba: u64,
        n: u64,
    },
    WriteZeroes {
        lba: u64,
        n: u64,
    },
    /// `keep_local`: the daemon died and restarts with its local state (metadata and write log);
    /// otherwise the machine died and the volume is attached elsewhere from the store alone.
    Crash {
        keep_local: bool,
    },
    Checkpoint,
    /// Restore the i-th checkpoint (modulo how many there are).
    Restore(usize),
    DeleteCheckpoint(usize),
    Gc,
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..BLOCKS).prop_flat_map(|lba| (Just(lba), 1..=(BLOCKS - lba).min(9)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (range(), any::<u8>(), prop::bool::weighted(0.1)).prop_map(|((lba, n), tag, fua)| Op::Write { lba, n, tag, fua }),
        3 => range().prop_map(|(lba, n)| Op::Read { lba, n }),
        2 => Just(Op::Flush),
        1 => range().prop_map(|(lba, n)| Op::Discard { lba, n }),
        1 => range().prop_map(|(lba, n)| Op::WriteZeroes { lba, n }),
        1 => any::<bool>().prop_map(|keep_local| Op::Crash { keep_local }),
        1 => Just(Op::Checkpoint),
        1 => any::<usize>().prop_map(Op::Restore),
        1 => any::<usize>().prop_map(Op::DeleteCheckpoint),
        1 => Just(Op::Gc),
    ]
}

fn run(ops: Vec<Op>, seed: u64) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mem: Arc<dyn ObjectStore> = fresh_store();
        create(&mem, BLOCKS * BS).await;
        let fault_cfg = FaultConfig { error_rate: 0.05, put_delay_max: Duration::from_millis(3), ..Default::default() };
        let mut incarnation = 0u64;
        let mut local = tempfile::tempdir().unwrap();
        let mut fault = Arc::new(FaultStore::new(mem.clone(), fault_cfg.clone(), seed));
        let mut vol = open(fault.clone(), Some(local.path()), small_opts(seed)).await;
        let mut model = vec![0u8; (BLOCKS * BS) as usize];
        // States since the last completed flush; any of them may survive a crash.
        let mut history = vec![model.clone()];
        // Checkpoints by name (with the map version each froze, the order
        // `checkpoints()` lists them in): durable once taken, whatever crashes after.
        let mut ckpts: std::collections::BTreeMap<String, (u64, Vec<u8>)> = Default::default();
        // Every name a checkpoint ever had, deleted or not.
        let mut named: std::collections::BTreeSet<String> = Default::default();
        for op in ops {
            match op {
                Op::Write { lba, n, tag, fua } => {
                    let data = pattern(lba, n, tag);
                    vol.write(lba * BS, data.clone(), fua).await.unwrap();
                    model[(lba * BS) as usize..((lba + n) * BS) as usize].copy_from_slice(&data);
                    history.push(model.clone());
                    if fua {
                        history = vec![model.clone()];
                    }
                }
                Op::Read { lba, n } => {
                    let got = vol.read(lba * BS, n * BS).await.unwrap();
                    prop_assert!(got[..] == model[(lba * BS) as usize..((lba + n) * BS) as usize], "read {lba}+{n}");
                }
                Op::Flush => {
                    vol.flush().await.unwrap();
                    history = vec![model.clone()];
                }
                Op::Discard { lba, n } | Op::WriteZeroes { lba, n } => {
                    if matches!(op, Op::Discard { .. }) {
                        vol.discard(lba * BS, n * BS, false).await.unwrap();
                    } else {
                        vol.write_zeroes(lba * BS, n * BS, false).await.unwrap();
                    }
                    model[(lba * BS) as usize..((lba + n) * BS) as usize].fill(0);
                    history.push(model.clone());
                }
                Op::Crash { keep_local } => {
                    fault.crash(CrashPolicy::Random);
                    vol.abandon();
                    drop(vol);
                    // Let puts that were in flight land, tear or vanish.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    incarnation += 1;
                    if !keep_local {
                        local = tempfile::tempdir().unwrap();
                    }
                    fault = Arc::new(FaultStore::new(mem.clone(), fault_cfg.clone(), seed ^ incarnation));
                    vol = open(fault.clone(), Some(local.path()), small_opts(seed)).await;
                    let disk = vol.read(0, BLOCKS * BS).await.unwrap();
                    if keep_local {
                        // Only the daemon died: its local write log brings back every acknowledged write.
                        prop_assert!(disk[..] == model[..], "after crash {incarnation} with local state, acknowledged writes are missing");
                    }
                    prop_assert!(history.iter().any(|h| h[..] == disk[..]), "after crash {incarnation} the disk is not a prefix of the history since the last flush");
                    // The recovered state may come partly from the local write
                    // log, which is not durable: the floor stays the last FLUSH.
                    let k = history.iter().rposition(|h| h[..] == disk[..]).unwrap();
                    model = history[k].clone();
                    history.truncate(k + 1);
                    let names: Vec<String> = vol.checkpoints().unwrap().into_iter().map(|c| c.name).collect();
                    let mut want: Vec<(&u64, &String)> = ckpts.iter().map(|(name, (version, _))| (version, name)).collect();
                    want.sort();
                    let want: Vec<String> = want.into_iter().map(|(_, name)| name.clone()).collect();
                    prop_assert_eq!(names, want, "after crash {}", incarnation);
                }
                Op::Checkpoint => {
                    let c = vol.checkpoint(None).await.unwrap();
                    prop_assert!(named.insert(c.name.clone()), "auto-name {} handed out twice", c.name);
                    ckpts.insert(c.name, (c.version, model.clone()));
                    history = vec![model.clone()];
                }
                Op::Restore(i) | Op::DeleteCheckpoint(i) => {
                    let Some(name) = ckpts.keys().nth(i % ckpts.len().max(1)).cloned() else { continue };
                    if matches!(op, Op::Restore(_)) {
                        vol.restore(&name).await.unwrap();
                        model = ckpts[&name].1.clone();
                        history = vec![model.clone()];
                    } else {
                        vol.delete_checkpoint(&name).await.unwrap();
                        ckpts.remove(&name);
                    }
                }
                Op::Gc => {
                    vol.gc(&GcOptions { compact_below_percent: 75, ..Default::default() }).await.unwrap();
                    history = vec![model.clone()];
                }
            }
        }
        vol.flush().await.unwrap();
        let disk = vol.read(0, BLOCKS * BS).await.unwrap();
        prop_assert!(disk[..] == model[..]);
        // Every checkpoint still reads as it was taken, after all the GC.
        vol.checkpoint(Some("end")).await.unwrap();
        for (name, (_, want)) in &ckpts {
            vol.restore(name).await.unwrap();
            let got = vol.read(0, BLOCKS * BS).await.unwrap();
            prop_assert!(got[..] == want[..], "checkpoint {} reads differently", name);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn engine_matches_model(ops in prop::collection::vec(op(), 1..60), seed in any::<u64>()) {
        run(ops, seed)?;
    }
}
