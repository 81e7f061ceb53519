//! The NBD frontend with real clients: qemu-io (qemu-utils) and fio's nbd
//! engine (libnbd). Data is verified after detach and re-attach, and after
//! attaching a copy of the store with no local metadata (a fresh machine).

use std::process::Command;

use spritedisk_e2e::*;
use spritedisk_nbd::client::NbdClient;

/// (offset, length, pattern byte): aligned and unaligned (qemu read-modify-writes those).
const PATTERNS: [(u64, u64, u8); 5] = [
    (0, 1 << 20, 0xab),
    (4096, 512, 0xcd),
    (5 << 20, 8192, 0x11),
    (7 << 20, 3 * 4096 + 100, 0x5a),
    (63 << 20, 1 << 20, 0xee),
];

fn writes() -> Vec<String> {
    PATTERNS
        .iter()
        .map(|(o, l, p)| format!("write -P {p:#x} {o} {l}"))
        .collect()
}

fn reads() -> Vec<String> {
    // The 512-byte overwrite at 4096 lands inside the first pattern.
    let mut r: Vec<String> = PATTERNS[1..]
        .iter()
        .map(|(o, l, p)| format!("read -P {p:#x} {o} {l}"))
        .collect();
    r.push("read -P 0xab 0 4096".into());
    r.push(format!("read -P 0xab 4608 {}", (1 << 20) - 4608));
    r.push("read -P 0 2097152 4096".into()); // never written: zeros
    r
}

#[test]
fn qemu_io_patterns_survive_detach_and_a_fresh_machine() {
    require("qemu-io", "qemu-utils");
    let env = Env::new();
    let url = env.create("vol", "64M");
    let d = Daemon::attach(&url, &env.sock(), &env.path("cache"), &[]);
    qemu_io(&d, &[writes(), vec!["flush".into()], reads()].concat());
    assert_eq!(d.detach(), 0);

    let d = Daemon::attach(&url, &env.sock(), &env.path("cache"), &[]);
    qemu_io(&d, &reads());
    assert_eq!(d.detach(), 0);

    // A copy of the store alone, attached with an empty cache directory.
    let d = env.attach_copy_elsewhere("vol");
    qemu_io(&d, &reads());
    assert_eq!(d.detach(), 0);
}

/// Runs fio with the nbd engine and returns its JSON report; fails on any fio error.
fn fio(d: &Daemon, job: &[&str]) -> serde_json::Value {
    let out = Command::new("fio")
        .args(["--name=e2e", "--ioengine=nbd", "--output-format=json"])
        .arg(format!("--uri={}", d.nbd_uri()))
        .args(job)
        .output()
        .expect("run fio");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('{').unwrap_or_else(|| {
        panic!(
            "fio printed no JSON: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let v: serde_json::Value = serde_json::from_str(&text[start..]).expect("fio JSON");
    assert!(
        out.status.success(),
        "fio failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    assert_eq!(v["jobs"][0]["error"], 0, "fio job error: {v}");
    v
}

const VERIFY_JOBS: [&[&str]; 2] = [
    &[
        "--rw=randwrite",
        "--bs=4k",
        "--size=48M",
        "--iodepth=16",
        "--randseed=7",
    ],
    &[
        "--rw=randwrite",
        "--bssplit=4k/40:16k/20:64k/20:1m/20",
        "--size=48M",
        "--offset=64M",
        "--iodepth=8",
        "--randseed=9",
    ],
];

fn verify_args(job: &[&str], only: bool) -> Vec<String> {
    let mut a: Vec<String> = job.iter().map(|s| s.to_string()).collect();
    a.push("--verify=crc32c".into());
    a.push("--verify_fatal=1".into());
    if only {
        a.push("--verify_only".into());
    } else {
        a.push("--do_verify=1".into());
    }
    a
}

fn run_verify(d: &Daemon, only: bool) {
    for job in VERIFY_JOBS {
        let args = verify_args(job, only);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let v = fio(d, &args);
        let read = v["jobs"][0]["read"]["io_bytes"].as_u64().unwrap();
        assert!(read >= 48 << 20, "fio verified only {read} bytes: {v}");
    }
}

#[test]
fn fio_verify_survives_reattach_and_a_fresh_machine() {
    require("fio", "fio");
    let env = Env::new();
    let url = env.create("vol", "1G");
    let d = Daemon::attach(
        &url,
        &env.sock(),
        &env.path("cache"),
        &["--segment-size", "1M"],
    );
    run_verify(&d, false);
    assert_eq!(d.detach(), 0);

    let d = Daemon::attach(&url, &env.sock(), &env.path("cache"), &[]);
    run_verify(&d, true);
    // The verify pass read everything the first run wrote: from the warm cache.
    let live = wait_live_stats(&url, &env.path("cache"));
    assert!(
        live["cache"]["hits"].as_u64().unwrap() > 0,
        "no cache hits after a warm restart: {live}"
    );
    assert_eq!(
        live["session_gets"], 0,
        "a warm restart re-read its data from the store: {live}"
    );
    assert_eq!(d.detach(), 0);

    let d = env.attach_copy_elsewhere("vol");
    run_verify(&d, true);
    assert_eq!(d.detach(), 0);

    let o = spritedisk(&[
        "verify",
        &url,
        "--cache-dir",
        env.path("cache").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("0 problems"));
}

/// `spritedisk stats --json` of an attached volume, once its daemon has published live numbers.
fn wait_live_stats(url: &str, cache: &std::path::Path) -> serde_json::Value {
    for _ in 0..50 {
        let o = spritedisk(&[
            "stats",
            url,
            "--json",
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if !v["live"].is_null() && v["live"]["cache"]["hits"].as_u64().unwrap_or(0) > 0 {
            return v["live"].clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("the daemon published no live stats with cache hits");
}

/// Segment objects in the store at `url`.
fn segments_in(url: &str) -> usize {
    with_store(
        url,
        |s| async move { s.list("segments/").await.unwrap().len() },
    )
}

/// D6 of the 5bc5be0 review, black-box: a daemon is killed with five
/// acknowledged, unflushed writes (a raw NBD client hangs up without a
/// FLUSH); its restart is killed in turn while replaying them, once one
/// replayed segment has landed. The third start reads the last write at
/// every block. Before, the first write at 0 came back over the last, and
/// the write at 64k was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_halfway_is_resumed_in_order() {
    let env = Env::new();
    let url = env.create("vol", "64M");
    let cache = env.path("cache");
    const K64: u64 = 65536;
    let writes = [
        (0, 0xaa),
        (K64, 0x11),
        (2 * K64, 0x22),
        (3 * K64, 0x33),
        (0, 0xbb),
    ];
    // One segment per write; each PUT takes 3 s, so none lands before the kill.
    let first = Daemon::attach(
        &url,
        &env.sock(),
        &cache,
        &[
            "--segment-size",
            "64K",
            "--dirty-max",
            "1M",
            "--simulate-put-latency-ms",
            "3000",
        ],
    );
    let before = segments_in(&url);
    let mut c = NbdClient::connect_unix(&first.sock, "").await.unwrap();
    for (off, byte) in writes {
        c.write(off, &[byte; K64 as usize], false).await.unwrap();
    }
    first.kill();
    assert_eq!(
        segments_in(&url),
        before,
        "setup: a segment of the first daemon landed before it was killed"
    );
    // The restart holds one segment in flight at most (PUTs of 1 s).
    let second = Daemon::start(
        &url,
        &env.sock(),
        &cache,
        &[
            "--segment-size",
            "64K",
            "--dirty-max",
            "128K",
            "--simulate-put-latency-ms",
            "1000",
        ],
    );
    second.wait_log("replaying acknowledged writes");
    // Its fence, then its first replayed segment.
    let start = std::time::Instant::now();
    while segments_in(&url) < before + 2 {
        assert!(
            start.elapsed().as_secs() < 60,
            "the replay landed nothing: {}",
            second.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !second.log().contains("replayed the acknowledged writes"),
        "setup: the replay finished"
    );
    second.kill();

    let third = Daemon::attach(&url, &env.sock(), &cache, &[]);
    let mut c = NbdClient::connect_unix(&third.sock, "").await.unwrap();
    let mut wrong = vec![];
    for (off, byte) in [(0, 0xbb), (K64, 0x11), (2 * K64, 0x22), (3 * K64, 0x33)] {
        let got = c.read(off, K64 as u32).await.unwrap();
        if got != vec![byte; K64 as usize] {
            wrong.push(format!("{off}: 0x{:02x}, not 0x{byte:02x}", got[0]));
        }
    }
    c.disconnect().await;
    assert_eq!(third.detach(), 0);
    assert!(wrong.is_empty(), "after the replay: {}", wrong.join("; "));
}

/// `--durability local` (docs/design/0014), black-box over NBD: a FLUSH
/// returns with nothing uploaded, and `stats` says what is not in the
/// store. The daemon is then killed (-9). A copy of the store taken then
/// (the machine lost: another one attaches with --force) reads the disk
/// from before the flushed writes, never part of them; the daemon
/// restarted on its own directory reads them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_durability_survives_kill_9_and_a_lost_machine_leaves_a_prefix() {
    const K64: usize = 65536;
    let env = Env::new();
    let url = env.create("vol", "64M");
    let cache = env.path("cache");
    // Uploaded first: 0x11 at 0.
    let d = Daemon::attach(&url, &env.sock(), &cache, &[]);
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    c.write(0, &[0x11; K64], false).await.unwrap();
    c.flush().await.unwrap();
    c.disconnect().await;
    assert_eq!(d.detach(), 0);

    let d = Daemon::attach(
        &url,
        &env.sock(),
        &cache,
        &["--durability", "local", "--writeback-delay", "3600"],
    );
    let before = segments_in(&url);
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    c.write(0, &[0x22; K64], false).await.unwrap();
    c.write(K64 as u64, &[0x33; K64], false).await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(
        segments_in(&url),
        before,
        "a local-mode FLUSH waited for an upload"
    );
    let mut live = serde_json::Value::Null;
    for _ in 0..50 {
        let o = spritedisk(&[
            "stats",
            &url,
            "--json",
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if v["live"]["session_flushes"].as_u64().unwrap_or(0) >= 1 {
            live = v["live"].clone();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(live["durability"], "local", "live stats: {live}");
    assert!(
        live["dirty_bytes"].as_u64().unwrap() >= 2 * K64 as u64,
        "stats do not show the flushed writes as not in the store: {live}"
    );
    d.kill();

    let other = env.attach_copy_elsewhere_with("vol", &["--force"]);
    let mut c = NbdClient::connect_unix(&other.sock, "").await.unwrap();
    let first = c.read(0, K64 as u32).await.unwrap();
    let second = c.read(K64 as u64, K64 as u32).await.unwrap();
    c.disconnect().await;
    assert_eq!(other.detach(), 0);
    assert!(
        first == vec![0x11; K64] && second == vec![0; K64],
        "another machine read {:#04x} at 0 and {:#04x} at 64K: not the disk before the lost writes",
        first[0],
        second[0]
    );

    let d = Daemon::attach(&url, &env.sock(), &cache, &[]);
    let mut c = NbdClient::connect_unix(&d.sock, "").await.unwrap();
    assert_eq!(c.read(0, K64 as u32).await.unwrap(), vec![0x22; K64]);
    assert_eq!(
        c.read(K64 as u64, K64 as u32).await.unwrap(),
        vec![0x33; K64]
    );
    c.disconnect().await;
    assert_eq!(d.detach(), 0);
}

#[test]
fn sigkill_of_the_daemon_loses_no_acknowledged_write() {
    require("qemu-io", "qemu-utils");
    let env = Env::new();
    let url = env.create("vol", "64M");
    let d = Daemon::attach(&url, &env.sock(), &env.path("cache"), &[]);
    qemu_io(&d, &["write -P 0x42 0 2M", "flush", "write -P 0x43 1M 64k"]);
    d.kill();
    // Restarted on the same machine, the daemon replays its local write log:
    // the unflushed overwrite is back too.
    let d = Daemon::attach(&url, &env.sock(), &env.path("cache"), &[]);
    qemu_io(
        &d,
        &[
            "read -P 0x42 0 1M",
            "read -P 0x43 1M 64k",
            "read -P 0x42 1114112 983040",
        ],
    );
    assert_eq!(d.detach(), 0);
    // On another machine (the store alone) the flushed data is there; the
    // overwrite too, because the restarted daemon flushed it at detach.
    let d = env.attach_copy_elsewhere("vol");
    qemu_io(&d, &["read -P 0x42 0 1M", "read -P 0x43 1M 64k"]);
    assert_eq!(d.detach(), 0);
}
