//! The fuzz targets (fuzz/targets.rs) over their committed corpora, on
//! stable: every input that ever mattered to a fuzzer (seeds, finds,
//! regressions) is replayed by `make test`, whether or not a nightly
//! toolchain is there to fuzz further. `write_seeds` (ignored) regenerates
//! the hand-made seeds.

#[path = "../../fuzz/targets.rs"]
mod targets;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let d = std::fs::read(&p).unwrap();
            (p, d)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{}: empty corpus", dir.display());
    out
}

fn replay(target: &str, f: fn(&[u8])) {
    for (path, data) in corpus(target) {
        let res = std::panic::catch_unwind(|| f(&data));
        assert!(res.is_ok(), "{target} fails on {}", path.display());
    }
}

#[test]
fn segment_corpus() {
    replay("segment", targets::segment);
}

#[test]
fn ltx_corpus() {
    replay("ltx", targets::ltx);
}

#[test]
fn nbd_session_corpus() {
    replay("nbd_session", targets::nbd_session);
}

/// Valid inputs for each target, written into fuzz/corpus/*/seed-*.
#[test]
#[ignore]
fn write_seeds() {
    use bytes::Bytes;
    use spritedisk_volume::buffer::WriteBuffer;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let put = |t: &str, name: &str, d: &[u8]| std::fs::write(root.join(t).join(name), d).unwrap();

    let mut buf = WriteBuffer::default();
    buf.insert(0, 20, Some(Bytes::from(vec![7u8; 20 * 4096])), 4096);
    buf.insert(100, 3, None, 4096);
    buf.insert(40, 1, Some(Bytes::from(vec![9u8; 4096])), 4096);
    use spritedisk_volume::segment::Link;
    let link = |seq: u64, next_seq: u64| Link {
        seq,
        prev_seq: seq - 1,
        epoch: 5,
        next_seq,
    };
    // Format version 4 (the committed seed-writes and seed-copies are
    // versions 2 and 3, kept: the decoder still reads them).
    let seg = spritedisk_volume::segment::encode([3; 16], link(42, 43), 12345, &buf, 4096);
    put("segment", "seed-writes-v4", &seg.bytes);
    let fence = spritedisk_volume::segment::encode_empty([3; 16], link(44, 108), 12345);
    put("segment", "seed-fence-v4", &fence);
    let (copies, _) = spritedisk_volume::segment::encode_copies(
        [3; 16],
        link(43, 44),
        12345,
        &[
            (7, Bytes::from(vec![1u8; 8192])),
            (9, Bytes::from(vec![2u8; 4096])),
        ],
        4096,
    );
    put("segment", "seed-copies-v4", &copies);

    let h = spritedisk_meta::ltx::LtxHeader {
        page_size: 4096,
        commit: 3,
        min_txid: 1,
        max_txid: 1,
        timestamp_ms: 0,
    };
    let pages: Vec<Vec<u8>> = (1..=3u8).map(|i| vec![i; 4096]).collect();
    let ltx = spritedisk_meta::ltx::encode(
        &h,
        pages
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, p.as_slice())),
    )
    .unwrap();
    put("ltx", "seed-snapshot", &ltx);
    let h2 = spritedisk_meta::ltx::LtxHeader {
        min_txid: 2,
        max_txid: 2,
        ..h
    };
    let ltx2 = spritedisk_meta::ltx::encode(&h2, [(2u32, pages[1].as_slice())]).unwrap();
    put("ltx", "seed-changes", &ltx2);

    // Client flags, NBD_OPT_GO for the default export, then write, read,
    // flush, trim and disconnect.
    let mut s = vec![];
    s.extend(3u32.to_be_bytes());
    s.extend(0x4948_4156_454f_5054u64.to_be_bytes());
    s.extend(7u32.to_be_bytes());
    s.extend(6u32.to_be_bytes());
    s.extend(0u32.to_be_bytes());
    s.extend(0u16.to_be_bytes());
    let req = |s: &mut Vec<u8>, cmd: u16, off: u64, len: u32| {
        s.extend(0x2560_9513u32.to_be_bytes());
        s.extend(0u16.to_be_bytes());
        s.extend(cmd.to_be_bytes());
        s.extend(1u64.to_be_bytes());
        s.extend(off.to_be_bytes());
        s.extend(len.to_be_bytes());
    };
    req(&mut s, 1, 4096, 4096);
    s.extend(vec![0xab; 4096]);
    req(&mut s, 0, 4096, 4096);
    req(&mut s, 3, 0, 0);
    req(&mut s, 4, 0, 8192);
    req(&mut s, 2, 0, 0);
    put("nbd_session", "seed-session", &s);
    // The list option, then abort.
    let mut l = vec![];
    l.extend(3u32.to_be_bytes());
    for opt in [3u32, 2] {
        l.extend(0x4948_4156_454f_5054u64.to_be_bytes());
        l.extend(opt.to_be_bytes());
        l.extend(0u32.to_be_bytes());
    }
    put("nbd_session", "seed-list-abort", &l);
}
