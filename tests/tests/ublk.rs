//! The ublk frontend. On the host (no ublk driver): attach fails at once with
//! a clear message and creates nothing. In the VM rig (a kernel with ublk):
//! tests/vm/ublk.sh — ext4 round trip, fio verify on 2 queues, kill -9 and
//! recover with fsck, detach leaving nothing behind; tests/vm/pool.sh — the
//! warm pool; tests/vm/crash.sh —
//! ext4 across guest kills; tests/vm/workloads.sh — PostgreSQL with
//! `checkpoint --freeze` under pgbench, and a build.
//!
//! libtest starts tests in the order of their names, two at a time here:
//! the two longest guests (ublk.sh, workloads.sh) have names that sort
//! first so that they start together and the shorter ones fill in after.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spritedisk_e2e::*;

#[test]
fn attach_without_a_ublk_driver_fails_at_once_and_creates_nothing() {
    if std::path::Path::new("/dev/ublk-control").exists() {
        eprintln!("this kernel has ublk: the no-driver path is not reachable here");
        return;
    }
    let env = Env::new();
    let url = env.create("vol", "1G");
    let cache = env.path("cache");
    let o = spritedisk(&["attach", &url, "--cache-dir", cache.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(
            "ublk driver not loaded: modprobe ublk_drv (Linux >= 6.0 with CONFIG_BLK_DEV_UBLK), or use --nbd SOCKET"
        ),
        "{}",
        stderr(&o)
    );
    assert!(
        !cache.exists(),
        "attach created its cache directory before failing"
    );
    let o = spritedisk(&["recover", "/dev/ublkb0"]);
    assert!(!o.status.success() && stderr(&o).contains("ublk driver not loaded"));
}

#[test]
fn pool_commands_without_a_ublk_driver_fail_at_once() {
    if std::path::Path::new("/dev/ublk-control").exists() {
        eprintln!("this kernel has ublk: the no-driver path is not reachable here");
        return;
    }
    let env = Env::new();
    let url = env.create("vol", "100G");
    let run_dir = env.path("run");
    let pool_cache = env.path("pool");
    let run = |args: &[&str]| {
        with_store_env(
            Command::new(bin())
                .args(args)
                .env("SPRITEDISK_RUN_DIR", &run_dir)
                .env("SPRITEDISK_CACHE_DIR", &pool_cache),
        )
        .output()
        .expect("run spritedisk")
    };
    for args in [
        &["pool", "start", "--size", "2"][..],
        &["attach", &url, "--pool"][..],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains("ublk driver not loaded"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    assert!(
        !pool_cache.exists(),
        "pool start created its cache before failing"
    );
    let o = run(&["pool", "status"]);
    assert!(
        o.status.success() && stdout(&o).contains("pool: not running"),
        "{}",
        stdout(&o)
    );
    let o = run(&["pool", "stop"]);
    assert!(
        !o.status.success() && stderr(&o).contains("no pool is running"),
        "{}",
        stderr(&o)
    );
    // A pool device's local state is its slot's: --cache-dir cannot apply.
    let o = run(&["attach", &url, "--pool", "--cache-dir", "/tmp/x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
    let o = run(&["pool", "start", "--size", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn block_device_end_to_end_on_ublk_in_the_vm() {
    run_vm_script("tests/vm/ublk.sh", "== 1. ", &[]);
}

/// The warm pool (tests/vm/pool.sh): a pool of 2 serving 3 volumes, a
/// detach returning a clean device that the next volume re-uses, a killed
/// standby replaced, a volume of another size attached cold.
#[test]
fn warm_pool_in_the_vm() {
    run_vm_script("tests/vm/pool.sh", "== 1. ", &[]);
}

/// PostgreSQL with `checkpoint --freeze` under pgbench, and a build, on
/// /dev/ublkb0 (tests/vm/workloads.sh); prints the ratios to the scratch disk.
#[test]
fn database_and_build_workloads_on_ublk_in_the_vm() {
    require("pgbench", "postgresql");
    let sqlite = sqlite_amalgamation();
    let console = run_vm_script(
        "tests/vm/workloads.sh",
        "== 1a. ",
        &[("SPRITEDISK_SQLITE_SRC", sqlite.to_str().unwrap())],
    );
    let results: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("RESULT "))
        .collect();
    eprintln!("{}", results.join("\n"));
}

/// The SQLite amalgamation that rusqlite's bundled build compiles (in the
/// cargo registry): the source tree the workload test builds.
fn sqlite_amalgamation() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let registry = home.join("registry/src");
    std::fs::read_dir(&registry)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|index| {
            std::fs::read_dir(index.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|krate| krate.path().join("sqlite3"))
        .find(|d| {
            d.parent()
                .and_then(|p| p.file_name())
                .is_some_and(|n| n.to_string_lossy().starts_with("libsqlite3-sys-"))
                && d.join("sqlite3.c").exists()
        })
        .unwrap_or_else(|| panic!("no libsqlite3-sys sources under {}", registry.display()))
}

/// Runs `script` in the VM rig (8G scratch disk) and asserts it printed
/// ALL OK; returns the console. The rig boots again a guest that died before
/// the script started; the script's steps (`== ` lines) and results are
/// shown as they happen. The rig's timeout is a hang guard only: the
/// scripts take 10-25 minutes under TCG, two guests at a time.
fn run_vm_script(script: &str, started: &str, envs: &[(&str, &str)]) -> String {
    let runner = vm_runner();
    bin(); // the guest runs the host's build
    let t0 = Instant::now();
    progress(&format!("{script}: booting the VM"));
    let mut child = Command::new(&runner)
        .args(["--scratch", "8G", "--timeout", "2400", "--", "bash", script])
        .envs(envs.iter().copied())
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the VM");
    let err = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
    let mut console = String::new();
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if line.starts_with("== ") || line.starts_with("FAIL") || line.starts_with("ALL OK") {
            progress(&format!("{script} +{}s: {line}", t0.elapsed().as_secs()));
        }
        console.push_str(&line);
        console.push('\n');
    }
    let status = child.wait().expect("wait for the VM");
    let stderr = err.join().unwrap();
    progress(&format!(
        "{script}: done ({status}) after {}s",
        t0.elapsed().as_secs()
    ));
    let steps: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("FAIL"))
        .collect();
    eprintln!("{}", steps.join("\n"));
    let tail: Vec<&str> = console.lines().rev().take(80).collect();
    assert!(
        console.contains(started),
        "{script} never started in the VM ({status}):\n{}\n{stderr}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    );
    let tail: Vec<&str> = console.lines().rev().take(80).collect();
    assert!(
        status.success() && console.contains("ALL OK"),
        "{script} failed in the VM ({status}):\n{}\n{stderr}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    );
    console
}

/// The last `n` lines of a guest's console, for failure messages.
fn last_lines(console: &str, n: usize) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One guest life of the ext4 crash cycle: boots the VM on
/// tests/vm/crash.sh, and once it says it is writing, kills QEMU (SIGKILL
/// to its process group: a power cut) after `kill_after`. Returns the
/// console. `None` for `kill_after`: the final guest, which only checks.
/// With `disk` (a raw image the guest's lives share as /dev/vda), the
/// daemon runs with --durability local, its cache directory on that disk.
fn guest_life(
    runner: &Path,
    dir: &Path,
    cycle: u64,
    kill_after: Option<Duration>,
    disk: Option<&Path>,
) -> (String, Option<i32>) {
    let mut cmd = Command::new(runner);
    cmd.args(["--timeout", "900"]);
    if let Some(disk) = disk {
        // cache=writeback: what the guest wrote to the disk is in the
        // host's page cache, which outlives QEMU; the guest's own page
        // cache does not.
        cmd.args([
            "--drive",
            &format!(
                "file={},if=virtio,format=raw,cache=writeback",
                disk.display()
            ),
        ])
        .env("SPRITEDISK_VM_CRASH_LOCAL", "1");
    }
    cmd.args(["--", "bash", "tests/vm/crash.sh"])
        .current_dir(repo_root())
        .env("SPRITEDISK_VM_CRASH_DIR", dir)
        .env("SPRITEDISK_VM_CRASH_CYCLE", cycle.to_string())
        .env(
            "SPRITEDISK_VM_CRASH_FINAL",
            if kill_after.is_none() { "1" } else { "0" },
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().expect("run the VM");
    let pgid = child.id() as i32;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut console = String::new();
    let mut kill_at: Option<Instant> = None;
    loop {
        let wait = kill_at.map_or(Duration::from_millis(200), |t| {
            t.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        match rx.recv_timeout(wait) {
            Ok(line) => {
                if line.starts_with("== writing until killed") {
                    kill_at = kill_after.map(|d| Instant::now() + d);
                }
                console.push_str(&line);
                console.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            // SAFETY: signalling the process group we created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            kill_at = None;
        }
    }
    let status = child.wait().expect("wait for the VM");
    (console, status.code())
}

/// ext4 on /dev/ublkb0 while the whole guest is killed (QEMU, SIGKILL) in
/// the middle of a copy-and-fsync loop; each new guest attaches from the
/// store alone, replays the journal, `fsck.ext4 -n -f` is clean and every
/// file listed as fsynced is intact. `VM_CRASH_CYCLES` kills (2 in CI; `make
/// vm-crash-test` runs 20).
#[test]
fn ext4_survives_guest_kills_in_the_vm() {
    let runner = vm_runner();
    bin();
    let cycles: u64 = std::env::var("VM_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let seed: u64 = std::env::var("VM_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64);
    eprintln!("ext4 crash cycle: {cycles} kills, seed {seed} (VM_CRASH_SEED)");
    let dir = repo_root().join("target/vm-crash");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut x = seed | 1;
    for cycle in 0..=cycles {
        let last = cycle == cycles;
        // A few seconds of writing under TCG: tens of fsynced files.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let kill_after = (!last).then(|| Duration::from_millis(3000 + x % 12000));
        progress(&format!("ext4 crash cycle {cycle} of {cycles}: booting"));
        // The rig boots again a guest that died before the script started.
        let (console, code) = guest_life(&runner, &dir, cycle, kill_after, None);
        let tail = last_lines(&console, 60);
        assert!(
            !console.contains("FAIL:"),
            "cycle {cycle} (seed {seed}):\n{tail}"
        );
        if cycle > 0 {
            assert!(
                dir.join(format!("checked.{cycle}")).exists(),
                "cycle {cycle} (seed {seed}) did not check the previous guest's files:\n{tail}"
            );
        }
        if last {
            assert_eq!(code, Some(0), "the final guest failed:\n{tail}");
        } else {
            assert!(
                console.contains("== writing until killed"),
                "cycle {cycle} never wrote:\n{tail}"
            );
        }
        let checked =
            std::fs::read_to_string(dir.join(format!("checked.{cycle}"))).unwrap_or_default();
        progress(&format!(
            "ext4 crash cycle {cycle}: killed after {kill_after:?} of writing; {} fsynced files checked",
            checked.trim()
        ));
    }
}

/// `--durability local` across a power cut with the machine's disk kept
/// (issue 22, docs/design/0014): the guest's daemon keeps its cache
/// directory on a virtio disk that outlives the guest and uploads nothing
/// by itself, so the files ext4 fsynced are only in its journal when QEMU
/// is killed; the next guest, on the same disk, must replay the journal
/// (tests/vm/crash.sh checks it did), and fsck is clean and every file
/// listed as fsynced is intact. A FLUSH that returned before its journal
/// was synced leaves those records in the dead guest's page cache.
#[test]
fn local_durability_survives_a_guest_power_cut_in_the_vm() {
    let runner = vm_runner();
    bin();
    let dir = repo_root().join("target/vm-crash-local");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("persist.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 30))
        .unwrap();
    for cycle in 0..=1u64 {
        let last = cycle == 1;
        // Killed well within the guest's dirty page expiry (30 s): what the
        // journal did not sync is still only in the guest's memory.
        let kill_after = (!last).then(|| Duration::from_secs(8));
        progress(&format!("local durability power cut: guest life {cycle}"));
        let (console, code) = guest_life(&runner, &dir, cycle, kill_after, Some(&disk));
        let tail = last_lines(&console, 60);
        assert!(!console.contains("FAIL:"), "guest life {cycle}:\n{tail}");
        if last {
            assert_eq!(
                code,
                Some(0),
                "the guest after the power cut failed:\n{tail}"
            );
            let checked =
                std::fs::read_to_string(dir.join(format!("checked.{cycle}"))).unwrap_or_default();
            assert!(
                checked.trim().parse::<u64>().unwrap_or(0) > 0,
                "no fsynced file was checked:\n{tail}"
            );
            progress(&format!(
                "local durability power cut: {} fsynced files intact from the journal",
                checked.trim()
            ));
        } else {
            assert!(
                console.contains("== writing until killed"),
                "the first guest never wrote:\n{tail}"
            );
        }
    }
}
