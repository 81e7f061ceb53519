//! The map against a reference model: a plain array of "which (seg, piece block)" per block.

use proptest::prelude::*;

use crate::*;

fn vol() -> VolumeRecord {
    VolumeRecord {
        id: "v".into(),
        size_bytes: 1 << 20,
        block_size: 4096,
        created_unix: 0,
    }
}

fn db() -> MetaDb {
    let mut db = MetaDb::open_in_memory().unwrap();
    db.init_volume(&vol()).unwrap();
    db
}

/// Per block: Some((seg, piece_off, block index inside the piece)).
type Model = Vec<Option<(u64, u64, u64)>>;

fn resolve(db: &MetaDb, n: u64) -> Model {
    let mut m = vec![None; n as usize];
    for e in db.lookup(0, n).unwrap() {
        for i in 0..e.blocks {
            m[(e.lba + i) as usize] = Some((e.seg, e.piece.piece_off, e.skip_blocks + i));
        }
    }
    m
}

#[test]
fn overwrite_splits_an_extent() {
    let mut db = db();
    let p = PieceRef {
        piece_off: 100,
        piece_blocks: 10,
        crc: 1,
    };
    db.apply_segment(&SegmentApply {
        seq: 1,
        prev_seq: 0,
        epoch: 1,
        next_seq: 1 + 1,
        size_bytes: 50_000,
        client_bytes_total: 40960,
        changes: &[MapChange {
            lba: 10,
            blocks: 10,
            piece: Some(p),
        }],
    })
    .unwrap();
    let q = PieceRef {
        piece_off: 7,
        piece_blocks: 2,
        crc: 2,
    };
    db.apply_segment(&SegmentApply {
        seq: 2,
        prev_seq: 1,
        epoch: 1,
        next_seq: 2 + 1,
        size_bytes: 9000,
        client_bytes_total: 49152,
        changes: &[MapChange {
            lba: 13,
            blocks: 2,
            piece: Some(q),
        }],
    })
    .unwrap();
    let ex = db.lookup(0, 100).unwrap();
    let spans: Vec<_> = ex
        .iter()
        .map(|e| (e.lba, e.blocks, e.seg, e.skip_blocks))
        .collect();
    assert_eq!(spans, [(10, 3, 1, 0), (13, 2, 2, 0), (15, 5, 1, 5)]);
    let segs = db.segments().unwrap();
    assert_eq!(segs[0].live_bytes, 8 * 4096);
    assert_eq!(segs[1].live_bytes, 2 * 4096);
    // Clipped lookups.
    let ex = db.lookup(11, 5).unwrap();
    let spans: Vec<_> = ex
        .iter()
        .map(|e| (e.lba, e.blocks, e.seg, e.skip_blocks))
        .collect();
    assert_eq!(spans, [(11, 2, 1, 1), (13, 2, 2, 0), (15, 1, 1, 5)]);
    assert!(matches!(
        db.apply_segment(&SegmentApply {
            seq: 5,
            prev_seq: 4,
            epoch: 1,
            next_seq: 5 + 1,
            size_bytes: 1,
            client_bytes_total: 0,
            changes: &[]
        }),
        Err(MetaError::OutOfOrder {
            applied: 2,
            prev: 4,
            ..
        })
    ));
    let st = db.stats().unwrap();
    assert_eq!(
        (
            st.segments,
            st.extents,
            st.stored_bytes,
            st.client_bytes_written
        ),
        (2, 3, 59000, 49152)
    );
}

#[test]
fn survives_reopen_and_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    {
        let mut db = MetaDb::open(&path).unwrap();
        db.init_volume(&vol()).unwrap();
        let p = PieceRef {
            piece_off: 0,
            piece_blocks: 4,
            crc: 9,
        };
        db.apply_segment(&SegmentApply {
            seq: 1,
            prev_seq: 0,
            epoch: 1,
            next_seq: 1 + 1,
            size_bytes: 100,
            client_bytes_total: 1,
            changes: &[MapChange {
                lba: 0,
                blocks: 4,
                piece: Some(p),
            }],
        })
        .unwrap();
    }
    let db = MetaDb::open(&path).unwrap();
    assert_eq!(db.applied_seq().unwrap(), 1);
    assert_eq!(db.volume().unwrap().unwrap(), vol());
    let copy = MetaDb::open_copy(&path).unwrap();
    assert_eq!(copy.lookup(0, 10).unwrap(), db.lookup(0, 10).unwrap());
    let mut db = db;
    let other = VolumeRecord {
        id: "w".into(),
        ..vol()
    };
    assert!(matches!(
        db.init_volume(&other),
        Err(MetaError::Mismatch(_))
    ));
}

#[test]
fn a_garbage_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = MetaDb::open(&path).unwrap_err().to_string();
    assert!(err.contains("meta.db"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn map_matches_model(ops in proptest::collection::vec((0u64..64, 1u64..20, any::<bool>()), 1..40)) {
        const N: u64 = 96;
        let mut db = db();
        let mut model: Model = vec![None; N as usize];
        for (i, (lba, blocks, unmap)) in ops.into_iter().enumerate() {
            let seq = i as u64 + 1;
            let piece = (!unmap).then_some(PieceRef { piece_off: seq * 1000, piece_blocks: blocks as u32, crc: 0 });
            db.apply_segment(&SegmentApply {
                seq, prev_seq: seq - 1, epoch: 1, next_seq: seq + 1, size_bytes: blocks * 4096, client_bytes_total: 0,
                changes: &[MapChange { lba, blocks, piece }],
            }).unwrap();
            for b in 0..blocks {
                model[(lba + b) as usize] = piece.map(|p| (seq, p.piece_off, b));
            }
            prop_assert_eq!(&resolve(&db, N), &model);
            // Any sub-range reads the model's blocks, clipped to it.
            let (a, b) = (lba.saturating_sub(3), (lba + blocks + 2).min(N));
            let mut sub = vec![None; (b - a) as usize];
            for e in db.lookup(a, b - a).unwrap() {
                prop_assert!(e.lba >= a && e.end() <= b, "clipped: {:?}", e);
                for i in 0..e.blocks {
                    sub[(e.lba + i - a) as usize] = Some((e.seg, e.piece.piece_off, e.skip_blocks + i));
                }
            }
            prop_assert_eq!(&sub[..], &model[a as usize..b as usize]);
            // Live bytes per segment equal what the model still references.
            for s in db.segments().unwrap() {
                let live = model.iter().filter(|m| m.map(|x| x.0) == Some(s.seq)).count() as u64 * 4096;
                prop_assert_eq!(s.live_bytes, live, "segment {}", s.seq);
            }
        }
    }
}

/// The chain's order (docs/design/0009): a record applies only at the
/// position its predecessor named, after it, with an epoch no lower.
#[test]
fn segments_apply_only_at_the_named_position_and_never_from_an_older_epoch() {
    let mut db = db();
    let seg = |seq, prev_seq, epoch, next_seq| SegmentApply {
        seq,
        prev_seq,
        epoch,
        next_seq,
        size_bytes: 96,
        client_bytes_total: 0,
        changes: &[],
    };
    db.apply_segment(&seg(1, 0, 2, 2)).unwrap();
    // A fence of epoch 3 at 2 whose successor is 66 (a window of 64).
    db.apply_segment(&seg(2, 1, 3, 66)).unwrap();
    // An epoch-2 record at 3 following the fence: dead, refused.
    assert!(matches!(
        db.apply_segment(&seg(3, 2, 2, 4)),
        Err(MetaError::OutOfOrder { .. })
    ));
    // Epoch 3, but not where the fence said its successor is.
    assert!(matches!(
        db.apply_segment(&seg(3, 2, 3, 4)),
        Err(MetaError::OutOfOrder { .. })
    ));
    db.apply_segment(&seg(66, 2, 3, 67)).unwrap();
    let t = db.chain_tail().unwrap();
    assert_eq!((t.seq, t.epoch, t.next), (66, 3, 67));
    // An epoch-0 record (written before epochs existed) may still not go
    // behind a newer epoch.
    assert!(matches!(
        db.apply_segment(&seg(1 << 40, 66, 0, (1 << 40) + 1)),
        Err(MetaError::OutOfOrder { .. })
    ));
}

/// The read path's own connections (readers.rs, docs/design/0011) see
/// exactly the committed map: not a transaction still open on the
/// writer's connection, and every commit that returned before the lookup.
#[test]
fn readers_see_every_returned_commit_and_nothing_uncommitted() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = MetaDb::open(&dir.path().join("meta.db")).unwrap();
    db.init_volume(&vol()).unwrap();
    let readers = db.readers().expect("an on-disk database has readers");
    assert!(MetaDb::open_in_memory().unwrap().readers().is_none());
    let apply = |db: &mut MetaDb, seq: u64, lba: u64, blocks: u64| {
        db.apply_segment(&SegmentApply {
            seq,
            prev_seq: seq - 1,
            epoch: 1,
            next_seq: seq + 1,
            size_bytes: blocks * 4096,
            client_bytes_total: 0,
            changes: &[MapChange {
                lba,
                blocks,
                piece: Some(PieceRef {
                    piece_off: seq * 1000,
                    piece_blocks: blocks as u32,
                    crc: 0,
                }),
            }],
        })
        .unwrap();
    };
    apply(&mut db, 1, 10, 10);
    let got = readers.lookup(&[(12, 14), (18, 30)]).unwrap().unwrap();
    assert_eq!(
        got,
        db.lookup(12, 2)
            .unwrap()
            .into_iter()
            .chain(db.lookup(18, 12).unwrap())
            .collect::<Vec<_>>()
    );
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].lba, got[0].blocks, got[0].skip_blocks), (12, 2, 2));
    assert_eq!((got[1].lba, got[1].blocks, got[1].skip_blocks), (18, 2, 8));
    // An apply in flight on the writer's connection is invisible...
    db.conn
        .execute_batch("BEGIN IMMEDIATE; DELETE FROM extents;")
        .unwrap();
    assert_eq!(
        readers.lookup(&[(0, 96)]).unwrap().unwrap().len(),
        1,
        "an open transaction is not seen"
    );
    db.conn.execute_batch("ROLLBACK").unwrap();
    // ...and a returned commit is seen by the next lookup, on a pooled connection.
    apply(&mut db, 2, 15, 10);
    let got = readers.lookup(&[(0, 96)]).unwrap().unwrap();
    assert_eq!(got, db.lookup(0, 96).unwrap());
    assert_eq!(
        got.iter().map(|e| (e.lba, e.seg)).collect::<Vec<_>>(),
        [(10, 1), (15, 2)]
    );
    // Another database put in its place (another daemon rebuilding the
    // directory) is never read: a new connection, opened by path (two
    // lookups at once need two), refuses it; a pooled one holds the
    // writer's file.
    let other = dir.path().join("other.db");
    let mut o = MetaDb::open(&other).unwrap();
    o.init_volume(&vol()).unwrap();
    drop(o);
    std::fs::rename(&other, dir.path().join("meta.db")).unwrap();
    assert!(MapReaders::new(&dir.path().join("missing.db")).is_none());
    let pooled = readers.idle.lock().unwrap().pop().unwrap();
    assert_eq!(
        readers.lookup(&[(0, 96)]).unwrap(),
        None,
        "the replaced file is refused"
    );
    readers.idle.lock().unwrap().push(pooled);
    assert_eq!(readers.lookup(&[(0, 96)]).unwrap(), Some(got));
}
