//! Bad input gets a clear error naming the cause, and loses nothing: wrong
//! URLs, existing volumes, unaligned and out-of-range NBD requests, a
//! corrupted segment, a full disk under the store.

use std::process::Command;

use spritedisk_e2e::*;
use spritedisk_nbd::client::NbdClient;
use spritedisk_nbd::proto::{CMD_READ, CMD_WRITE};

#[test]
fn wrong_urls_and_existing_volumes_are_refused_by_name() {
    let env = Env::new();
    let cases: [(&[&str], &str); 6] = [
        (&["create", "http://example.com/v"], "unsupported scheme \"http\""),
        (&["create", "file://relative/dir"], "absolute path"),
        (&["create", "/no/scheme"], "not a URL"),
        (&["attach", "file:///nonexistent/vol", "--nbd", "/tmp/x.sock"], "no volume at file:///nonexistent/vol: run 'spritedisk create file:///nonexistent/vol' first"),
        (&["stats", "file:///nonexistent/vol"], "run 'spritedisk create"),
        (&["create", "file:///tmp/x", "--size", "12Q"], "invalid size unit"),
    ];
    for (args, needle) in cases {
        let o = spritedisk(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&o).contains(needle),
            "{args:?}: expected {needle:?} in {}",
            stderr(&o)
        );
    }
    let o = spritedisk(&["create"]);
    assert!(
        !o.status.success() && stderr(&o).contains("<URL>"),
        "missing URL: {}",
        stderr(&o)
    );

    let url = env.create("vol", "1G");
    let o = spritedisk(&["create", &url]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    // The leftovers of a deleted volume (here its lease and replica mark):
    // refused, naming them and the way out, which works.
    let left = env.url("left");
    with_store(&left, |s| async move {
        for key in ["lease.json", "meta/restored.json"] {
            s.put(key, bytes::Bytes::from_static(b"{}")).await.unwrap();
        }
    });
    let o = spritedisk(&["create", &left]);
    assert!(
        !o.status.success()
            && stderr(&o).contains("is not empty")
            && stderr(&o).contains("lease.json")
            && stderr(&o).contains(&format!("spritedisk rm {left}")),
        "{}",
        stderr(&o)
    );
    let o = spritedisk(&["rm", &left]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("leftovers"), "{}", stdout(&o));
    env.create("left", "1G");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaligned_and_out_of_range_requests_get_einval_and_the_connection_stays_usable() {
    let env = Env::new();
    let url = env.create("vol", "16M");
    let d = Daemon::attach(&url, &env.sock(), &env.path("cache"), &[]);
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    assert_eq!((c.size_bytes(), c.block_size()), (16 << 20, 4096));
    c.write(0, &[7u8; 8192], false).await.unwrap();
    const EINVAL: u32 = 22;
    assert_eq!(c.raw_request(CMD_READ, 0, 100, 4096, &[]).await, EINVAL);
    assert_eq!(c.raw_request(CMD_READ, 0, 0, 1000, &[]).await, EINVAL);
    assert_eq!(
        c.raw_request(CMD_WRITE, 0, 512, 4096, &[9u8; 4096]).await,
        EINVAL
    );
    assert_eq!(
        c.raw_request(CMD_READ, 0, 16 << 20, 4096, &[]).await,
        EINVAL
    );
    assert_eq!(
        c.raw_request(CMD_WRITE, 0, (16 << 20) - 4096, 8192, &[9u8; 8192])
            .await,
        EINVAL
    );
    assert_eq!(
        c.raw_request(CMD_READ, 0, u64::MAX - 4095, 4096, &[]).await,
        EINVAL
    );
    // Same connection, still in sync, nothing changed by the refused writes.
    assert_eq!(c.read(0, 8192).await.unwrap(), vec![7u8; 8192]);
    c.flush().await.unwrap();
    c.disconnect().await;
    assert_eq!(d.detach(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_segment_reads_as_eio_and_verify_names_it() {
    let env = Env::new();
    let url = env.create("vol", "16M");
    // No read cache: it would (rightly) serve its own verified copy of the
    // piece, and this test is about corruption in the store.
    let d = Daemon::attach(
        &url,
        &env.sock(),
        &env.path("cache"),
        &["--cache-size", "0"],
    );
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    c.write(0, &[1u8; 65536], false).await.unwrap();
    c.flush().await.unwrap();
    c.write(1 << 20, &[2u8; 4096], false).await.unwrap();
    c.flush().await.unwrap();
    // Flip one bit in the data of the first segment (after the attach's
    // fence at 1 and its window: docs/design/0009), behind the daemon's back.
    let seg = env.path("vol/segments/00000000000000000065.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 1000] ^= 0x10;
    std::fs::write(&seg, bytes).unwrap();

    assert_eq!(
        c.read(0, 4096).await,
        Err(5),
        "a checksum failure must be EIO, never wrong data"
    );
    assert_eq!(
        c.read(1 << 20, 4096).await.unwrap(),
        vec![2u8; 4096],
        "other segments still read"
    );
    c.disconnect().await;
    assert!(
        d.log().contains("00000000000000000065.seg"),
        "the daemon log names the object: {}",
        d.log()
    );

    let o = spritedisk(&[
        "verify",
        &url,
        "--cache-dir",
        env.path("cache").to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "verify must fail");
    assert!(
        stdout(&o).contains("segments/00000000000000000065.seg: checksum mismatch"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("1 problems"), "{}", stdout(&o));
    assert_eq!(d.detach(), 0);
}

/// A store directory on a small tmpfs that fills up: FLUSH fails with EIO,
/// nothing acknowledged is lost, and once space is freed the flush succeeds.
/// A tmpfs of a given size, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            // 0700: a tmpfs root is 1777 by default, which a cache
            // directory must not be (docs/design/0017).
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_store_fails_flush_and_loses_nothing() {
    let env = Env::new();
    let mnt = env.path("small");
    let _guard = SmallDisk::mount(&mnt, "6m");

    let url = format!("file://{}/vol", mnt.display());
    let o = spritedisk(&["create", &url, "--size", "64M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let args = ["--flush-timeout", "2", "--segment-size", "1M"];
    let d = Daemon::attach(&url, &env.sock(), &env.path("cache"), &args);
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    let a = vec![0xa1u8; 1 << 20];
    c.write(0, &a, false).await.unwrap();
    c.flush().await.unwrap();

    // Fill the filesystem to the last byte.
    let filler = mnt.join("filler");
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .arg("bs=64k")
        .output();
    let b = vec![0xb2u8; 2 << 20];
    c.write(4 << 20, &b, false).await.unwrap();
    assert_eq!(
        c.flush().await,
        Err(5),
        "FLUSH on a full store must fail with EIO"
    );
    assert!(
        d.log().contains("No space left on device"),
        "the log names the store error: {}",
        d.log()
    );
    // Acknowledged but unflushed data is still served.
    assert_eq!(c.read(4 << 20, 2 << 20).await.unwrap(), b);

    std::fs::remove_file(&filler).unwrap();
    c.flush().await.unwrap();
    c.disconnect().await;
    assert_eq!(d.detach(), 0);

    // Everything is in the store: attach with no local state.
    let d = Daemon::attach(&url, &env.sock(), &env.path("cache-fresh"), &[]);
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    assert_eq!(c.read(0, 1 << 20).await.unwrap(), a);
    assert_eq!(c.read(4 << 20, 2 << 20).await.unwrap(), b);
    c.disconnect().await;
    assert_eq!(d.detach(), 0);
}

/// A cache directory on a disk that fills up: reads and writes keep working
/// (uncached), the stats count the cache's write errors, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_disk_degrades_to_uncached_reads() {
    let env = Env::new();
    let url = env.create("vol", "64M");
    let cache = env.path("cache");
    let _guard = SmallDisk::mount(&cache, "64m");
    let args = ["--cache-size", "32M", "--segment-size", "1M"];
    let d = Daemon::attach(&url, &env.sock(), &cache, &args);
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    // Fill the cache disk to the last byte, then write and read 16 MiB.
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", cache.join("filler").display()))
        .arg("bs=64k")
        .output();
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i / 4096 * 7 + i % 251) as u8)
        .collect();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        c.write((i as u64) << 20, chunk, false).await.unwrap();
    }
    c.flush().await.unwrap();
    for _ in 0..2 {
        let back = c.read(0, 16 << 20).await.unwrap();
        assert!(back == data, "reads through a full cache disk are wrong");
    }
    let o = spritedisk(&[
        "stats",
        &url,
        "--cache-dir",
        cache.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut st: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    // Live stats are published every 2 s: wait for a set taken after the reads.
    for _ in 0..100 {
        if st["live"]["session_gets"].as_u64() > Some(0) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let o = spritedisk(&[
            "stats",
            &url,
            "--cache-dir",
            cache.to_str().unwrap(),
            "--json",
        ]);
        st = serde_json::from_str(&stdout(&o)).unwrap();
    }
    assert!(
        d.log().contains("the local disk is full"),
        "the log tells the operator: {}",
        d.log()
    );
    c.disconnect().await;
    assert_eq!(d.detach(), 0);
    let live = &st["live"]["cache"];
    assert!(
        live["write_errors"].as_u64().unwrap() > 0,
        "stats show the cache's write errors: {st:#}"
    );
    std::fs::remove_file(cache.join("filler")).unwrap();

    // Nothing was lost: a fresh attach reads it all back.
    let d = Daemon::attach(&url, &env.sock(), &env.path("cache-fresh"), &[]);
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    assert!(c.read(0, 16 << 20).await.unwrap() == data);
    c.disconnect().await;
    assert_eq!(d.detach(), 0);
}
