//! One writer per volume, with real daemons: a second attach is refused by
//! name, `--force` takes over and the first daemon's next flush fails.

use spritedisk_e2e::*;
use spritedisk_nbd::client::NbdClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_attach_is_refused_and_force_fences_the_first() {
    let env = Env::new();
    let url = env.create("vol", "1G");
    let first = Daemon::attach(&url, &env.sock(), &env.path("cache-a"), &[]);
    let mut a = NbdClient::connect_unix(&first.sock, "").await.unwrap();
    a.write(0, &[0xa1; 65536], false).await.unwrap();
    a.flush().await.unwrap();

    // A second attach (another cache directory: another machine) is refused.
    let sock_b = env.path("b.sock");
    let o = spritedisk(&[
        "attach",
        &url,
        "--nbd",
        sock_b.to_str().unwrap(),
        "--cache-dir",
        env.path("cache-b").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(
        err.contains(&format!("is attached by host {}, pid", host.trim()))
            && err.contains("--force"),
        "names the holder and the way out: {err}"
    );

    // --force takes over: it sees what the first daemon flushed.
    let second = Daemon::attach(&url, &sock_b, &env.path("cache-b"), &["--force"]);
    let mut b = NbdClient::connect_unix(&second.sock, "").await.unwrap();
    assert_eq!(b.read(0, 65536).await.unwrap(), vec![0xa1; 65536]);
    b.write(65536, &[0xb2; 65536], false).await.unwrap();
    b.flush().await.unwrap();

    // The fenced daemon's next flush fails (EIO), and it writes no more.
    a.write(0, &[0x66; 65536], false).await.unwrap();
    assert_eq!(
        a.flush().await,
        Err(5),
        "the fenced writer's flush must fail"
    );
    assert!(
        first.log().contains("fenced"),
        "its log says why: {}",
        first.log()
    );
    assert!(a.write(0, &[0x67; 4096], true).await.is_err());
    a.disconnect().await;
    first.kill();

    // What survives is the new writer's history.
    assert_eq!(b.read(0, 65536).await.unwrap(), vec![0xa1; 65536]);
    b.disconnect().await;
    assert_eq!(second.detach(), 0);
    let d = env.attach_copy_elsewhere("vol");
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    assert_eq!(
        c.read(0, 65536).await.unwrap(),
        vec![0xa1; 65536],
        "the fenced write never appears"
    );
    assert_eq!(c.read(65536, 65536).await.unwrap(), vec![0xb2; 65536]);
    c.disconnect().await;
    assert_eq!(d.detach(), 0);
}

/// D2 of the 5bc5be0 review, black-box with the real binary: a daemon that
/// was taken over still has an acknowledged write in flight (its PUTs take
/// 2 s to land); the daemon that took over writes nothing and detaches.
/// Whatever the timing, a later attach from the store alone reads what the
/// taker read, and a FLUSH the fenced daemon acknowledged is in it.
/// (Before the fenced chain, the late segment was rolled forward there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_daemons_late_segment_is_never_read() {
    let env = Env::new();
    let url = env.create("vol", "1G");
    let first = Daemon::attach(
        &url,
        &env.sock(),
        &env.path("cache-a"),
        &["--simulate-put-latency-ms", "2000"],
    );
    let mut a = NbdClient::connect_unix(&first.sock, "").await.unwrap();
    a.write(0, &[0xa1; 65536], false).await.unwrap();
    a.flush().await.unwrap();
    // Acknowledged, not yet durable; a FLUSH starts its upload, which takes
    // 2 s to land.
    a.write(0, &[0xa2; 65536], false).await.unwrap();
    let flushing = tokio::spawn(async move {
        let r = a.flush().await;
        (a, r)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // Another machine takes over meanwhile, reads, writes nothing, detaches.
    let sock_b = env.path("b.sock");
    let second = Daemon::attach(&url, &sock_b, &env.path("cache-b"), &["--force"]);
    let mut b = NbdClient::connect_unix(&second.sock, "").await.unwrap();
    let taker_read = b.read(0, 65536).await.unwrap();
    b.disconnect().await;
    assert_eq!(second.detach(), 0);

    // The fenced daemon's upload lands (or fails) by now.
    let (a, acked) = flushing.await.unwrap();
    a.disconnect().await;
    first.kill();

    let third = env.attach_copy_elsewhere("vol");
    let mut c = NbdClient::connect_unix(&third.sock, "").await.unwrap();
    let later = c.read(0, 65536).await.unwrap();
    c.disconnect().await;
    assert_eq!(third.detach(), 0);
    let what = |d: &[u8]| format!("0x{:02x}", d[0]);
    assert_eq!(
        what(&later),
        what(&taker_read),
        "the taker read {} with nothing written after it, a later attach reads {} \
         (the fenced daemon's FLUSH: {acked:?})",
        what(&taker_read),
        what(&later)
    );
    if acked.is_ok() {
        assert_eq!(
            what(&later),
            "0xa2",
            "the fenced daemon acknowledged its FLUSH, but the write is not in the volume"
        );
    }
}
