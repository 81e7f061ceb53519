//! The versioned map against a reference model: the live map and every
//! checkpoint as plain per-block arrays, through writes, unmaps,
//! checkpoints, restores and deletes in any order.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::*;

const N: u64 = 96;
const BS: u64 = 4096;

/// Per block: Some((seg, piece_off, block index inside the piece)).
type Model = Vec<Option<(u64, u64, u64)>>;

fn db() -> MetaDb {
    let mut db = MetaDb::open_in_memory().unwrap();
    db.init_volume(&VolumeRecord {
        id: "v".into(),
        size_bytes: N * BS,
        block_size: BS as u32,
        created_unix: 0,
    })
    .unwrap();
    db
}

fn paint(extents: &[Extent]) -> Model {
    let mut m = vec![None; N as usize];
    for e in extents {
        for i in 0..e.blocks {
            let slot = &mut m[(e.lba + i) as usize];
            assert!(slot.is_none(), "rows overlap at block {}", e.lba + i);
            *slot = Some((e.seg, e.piece.piece_off, e.skip_blocks + i));
        }
    }
    m
}

#[derive(Debug, Clone)]
enum Op {
    Write { lba: u64, blocks: u64, unmap: bool },
    Checkpoint,
    Restore(usize),
    Delete(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..80, 1u64..17, proptest::bool::weighted(0.15))
            .prop_map(|(lba, blocks, unmap)| Op::Write { lba, blocks, unmap }),
        2 => Just(Op::Checkpoint),
        1 => (0usize..8).prop_map(Op::Restore),
        1 => (0usize..8).prop_map(Op::Delete),
    ]
}

/// Blocks of `name`'s map that neither the live map nor another checkpoint has.
fn unique_blocks(name: &str, live: &Model, ckpts: &BTreeMap<String, Model>) -> u64 {
    let mine = &ckpts[name];
    (0..N as usize)
        .filter(|&b| mine[b].is_some())
        .filter(|&b| {
            let x = mine[b];
            let elsewhere = |m: &Model| m.contains(&x);
            !elsewhere(live) && !ckpts.iter().any(|(n, m)| n != name && elsewhere(m))
        })
        .count() as u64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn checkpoints_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut db = db();
        let mut live: Model = vec![None; N as usize];
        let mut ckpts: BTreeMap<String, Model> = BTreeMap::new();
        let mut seq = 0;
        let mut restored = false;
        for op in ops {
            match op {
                Op::Write { lba, blocks, unmap } => {
                    seq += 1;
                    let piece = (!unmap).then_some(PieceRef {
                        piece_off: seq * 1000,
                        piece_blocks: blocks as u32,
                        crc: 0,
                    });
                    db.apply_segment(&SegmentApply {
                        seq,
                        prev_seq: seq - 1,
                        epoch: 1,
                        next_seq: seq + 1,
                        size_bytes: blocks * BS,
                        client_bytes_total: 0,
                        changes: &[MapChange { lba, blocks, piece }],
                    })
                    .unwrap();
                    for b in 0..blocks {
                        live[(lba + b) as usize] = piece.map(|p| (seq, p.piece_off, b));
                    }
                }
                Op::Checkpoint => {
                    let c = db.create_checkpoint(None, 0).unwrap();
                    prop_assert_eq!(c.extents as usize, db.lookup(0, N).unwrap().len());
                    ckpts.insert(c.name, live.clone());
                }
                Op::Restore(i) => {
                    if let Some(name) = ckpts.keys().nth(i).cloned() {
                        db.restore_checkpoint(&name).unwrap();
                        live = ckpts[&name].clone();
                        restored = true;
                    }
                }
                Op::Delete(i) => {
                    if let Some(name) = ckpts.keys().nth(i).cloned() {
                        db.delete_checkpoint(&name).unwrap();
                        ckpts.remove(&name);
                    }
                }
            }
            prop_assert_eq!(&paint(&db.lookup(0, N).unwrap()), &live);
            let listed = db.checkpoints().unwrap();
            prop_assert_eq!(listed.len(), ckpts.len());
            for c in &listed {
                prop_assert_eq!(&paint(&db.checkpoint_extents(&c.name).unwrap()), &ckpts[&c.name], "checkpoint {}", &c.name);
                let unique = unique_blocks(&c.name, &live, &ckpts) * BS;
                // A restore brings rows back as new rows, so the same data
                // can be counted alone by two checkpoints: never less.
                if restored {
                    prop_assert!(c.unique_bytes >= unique, "{} {} < {}", c.name, c.unique_bytes, unique);
                } else {
                    prop_assert_eq!(c.unique_bytes, unique, "checkpoint {}", &c.name);
                }
            }
            for s in db.segments().unwrap() {
                let refs = live.iter().filter(|m| m.map(|x| x.0) == Some(s.seq)).count() as u64;
                prop_assert_eq!(s.live_bytes, refs * BS, "segment {}", s.seq);
            }
            // Dead rows are only kept for a checkpoint that sees them.
            let kept = db.dead_rows().unwrap();
            if ckpts.is_empty() {
                prop_assert_eq!(kept, 0);
            }
        }
    }
}

/// An auto-name is never handed out twice, even after the checkpoint
/// that had it is deleted; a name the user took is skipped.
#[test]
fn auto_names_are_never_reused() {
    let mut db = db();
    let name = |db: &mut MetaDb| db.create_checkpoint(None, 0).unwrap().name;
    assert_eq!(
        [name(&mut db), name(&mut db), name(&mut db)],
        ["v1", "v2", "v3"]
    );
    db.delete_checkpoint("v2").unwrap();
    db.delete_checkpoint("v3").unwrap();
    assert_eq!(name(&mut db), "v4");
    db.create_checkpoint(Some("v6"), 0).unwrap();
    assert_eq!(name(&mut db), "v7");
    let listed: Vec<String> = db
        .checkpoints()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(listed, ["v1", "v4", "v6", "v7"], "oldest first");
}

/// A database written before the versioned map (checkpoints as copied
/// rows) opens with its checkpoints intact.
#[test]
fn a_revision_0_database_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE volume (id TEXT NOT NULL, size_bytes INTEGER NOT NULL, block_size INTEGER NOT NULL,
                 created_unix INTEGER NOT NULL, applied_seq INTEGER NOT NULL, client_bytes_written INTEGER NOT NULL);
             CREATE TABLE writer (epoch INTEGER NOT NULL);
             CREATE TABLE segments (seq INTEGER PRIMARY KEY, size_bytes INTEGER NOT NULL, live_bytes INTEGER NOT NULL);
             CREATE TABLE extents (lba INTEGER PRIMARY KEY, blocks INTEGER NOT NULL, seg INTEGER NOT NULL,
                 piece_off INTEGER NOT NULL, piece_blocks INTEGER NOT NULL, skip_blocks INTEGER NOT NULL, crc INTEGER NOT NULL);
             CREATE TABLE checkpoints (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_unix INTEGER NOT NULL,
                 client_bytes_written INTEGER NOT NULL, applied_seq INTEGER NOT NULL, extents INTEGER NOT NULL);
             CREATE TABLE checkpoint_extents (ckpt INTEGER NOT NULL, lba INTEGER NOT NULL, blocks INTEGER NOT NULL,
                 seg INTEGER NOT NULL, piece_off INTEGER NOT NULL, piece_blocks INTEGER NOT NULL,
                 skip_blocks INTEGER NOT NULL, crc INTEGER NOT NULL, PRIMARY KEY (ckpt, lba)) WITHOUT ROWID;
             INSERT INTO volume VALUES ('v', 393216, 4096, 0, 2, 0);
             INSERT INTO segments VALUES (1, 8192, 0), (2, 8192, 8192);
             INSERT INTO extents VALUES (0, 2, 2, 0, 2, 0, 7);
             INSERT INTO checkpoints VALUES (1, 'a', 0, 0, 1, 1);
             INSERT INTO checkpoint_extents VALUES (1, 0, 2, 1, 0, 2, 0, 5);",
        )
        .unwrap();
    }
    let mut db = MetaDb::open(&path).unwrap();
    let a = db.checkpoint_extents("a").unwrap();
    assert_eq!((a.len(), a[0].seg, a[0].piece.crc), (1, 1, 5));
    assert_eq!(db.lookup(0, 2).unwrap()[0].seg, 2);
    db.restore_checkpoint("a").unwrap();
    assert_eq!(db.lookup(0, 2).unwrap()[0].seg, 1);
    let b = db.create_checkpoint(None, 0).unwrap();
    assert_eq!(b.version, 2);
    drop(db);
    // Opening again changes nothing.
    let db = MetaDb::open(&path).unwrap();
    assert_eq!(db.checkpoints().unwrap().len(), 2);
}

/// Timing of the map side of checkpoint and restore on a fragmented map
/// (run by hand: `cargo test --release -p spritedisk-meta -- --ignored
/// --nocapture map_timing`; `make bench` measures the whole command).
#[test]
#[ignore]
fn map_timing() {
    let n: u64 = std::env::var("EXTENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let mut db = MetaDb::open(&dir.path().join("m.db")).unwrap();
    db.init_volume(&VolumeRecord {
        id: "v".into(),
        size_bytes: 100 << 30,
        block_size: 4096,
        created_unix: 0,
    })
    .unwrap();
    let mut seq = 0;
    let per = 10_000u64;
    let mut x: u64 = 12345;
    let mut rand_lba = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % (25 << 20)
    };
    let mut write = |db: &mut MetaDb, count: u64| {
        let changes: Vec<MapChange> = (0..count)
            .map(|i| MapChange {
                lba: rand_lba(),
                blocks: 1,
                piece: Some(PieceRef {
                    piece_off: i * 4096,
                    piece_blocks: 1,
                    crc: 0,
                }),
            })
            .collect();
        seq += 1;
        db.apply_segment(&SegmentApply {
            seq,
            prev_seq: seq - 1,
            epoch: 1,
            next_seq: seq + 1,
            size_bytes: count * 4096,
            client_bytes_total: 0,
            changes: &changes,
        })
        .unwrap();
    };
    for _ in 0..n / per {
        write(&mut db, per);
    }
    let t = std::time::Instant::now();
    let c = db.create_checkpoint(Some("base"), 0).unwrap();
    eprintln!("{} extents: checkpoint {:?}", c.extents, t.elapsed());
    // CHANGES: rows rewritten between the checkpoint and the restore.
    let changes: u64 = std::env::var("CHANGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    for _ in 0..changes.div_ceil(per) {
        write(&mut db, changes.min(per));
    }
    let t = std::time::Instant::now();
    db.restore_checkpoint("base").unwrap();
    eprintln!("restore after {changes} writes {:?}", t.elapsed());
    let t = std::time::Instant::now();
    db.checkpoints().unwrap();
    eprintln!("list {:?}", t.elapsed());
}
