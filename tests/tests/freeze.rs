//! `checkpoint --freeze` on the host: a real ext4 on a loop device, frozen
//! with FIFREEZE while a real daemon (over NBD) takes the checkpoint. The
//! filesystem here is not on the volume (the host has no ublk or NBD
//! driver); what is checked is the freeze itself: the filesystem is thawed
//! on every way out (success, refusals, a stalled store, SIGINT, SIGKILL)
//! and a checkpoint is recorded only while it is frozen. The consistency of
//! a frozen checkpoint of a live database is tested in the VM
//! (tests/vm/workloads.sh).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use spritedisk_e2e::*;

/// How long a write to a thawed filesystem may take before the test calls
/// it frozen.
const WRITABLE_WAIT: Duration = Duration::from_secs(10);

/// An ext4 image mounted through a loop device; unmounted (thawed first) on drop.
struct LoopFs {
    mnt: PathBuf,
}

impl LoopFs {
    fn new(env: &Env) -> LoopFs {
        let img = env.path("fs.img");
        let mnt = env.path("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        run_ok(Command::new("truncate").args(["-s", "64M"]).arg(&img));
        run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
        run_ok(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt),
        );
        LoopFs { mnt }
    }

    fn path(&self) -> &str {
        self.mnt.to_str().unwrap()
    }

    /// Whether a file can be written and fsynced within WRITABLE_WAIT. If
    /// not, the filesystem is thawed here so the stuck writer finishes.
    fn writable(&self, name: &str) -> bool {
        let p = self.mnt.join(name);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = std::fs::write(&p, b"probe").and_then(|_| std::fs::File::open(&p)?.sync_all());
            let _ = tx.send(r.is_ok());
        });
        match rx.recv_timeout(WRITABLE_WAIT) {
            Ok(ok) => ok,
            Err(_) => {
                thaw(&self.mnt);
                let _ = rx.recv();
                false
            }
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        thaw(&self.mnt);
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

fn thaw(mnt: &Path) {
    // EINVAL when it is not frozen: nothing to do.
    let _ = Command::new("fsfreeze")
        .arg("--unfreeze")
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
}

fn checkpoint_names(url: &str, cache: &str) -> Vec<String> {
    let o = spritedisk(&["checkpoints", url, "--json", "--cache-dir", cache]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn fails_with(args: &[&str], needle: &str) {
    let o = spritedisk(args);
    assert!(!o.status.success(), "{args:?} succeeded: {}", stdout(&o));
    assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
}

/// `checkpoint --freeze` started in the background; returns once it logged
/// that the filesystem is frozen, with the rest of its stderr to come.
fn start_frozen_checkpoint(args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = with_store_env(Command::new(bin()).args(args))
        .env("SPRITEDISK_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains("froze ") => return (child, rx),
            Ok(_) => continue,
            Err(e) => panic!("checkpoint --freeze never froze: {e:?}"),
        }
    }
}

fn require_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "freezing a filesystem and mounting a loop device need root (CI runs as root)"
    );
}

#[test]
fn freeze_checkpoints_and_thaws_and_refusals_freeze_nothing() {
    require_root();
    require("fsfreeze", "util-linux");
    let env = Env::new();
    let url = env.create("vol", "1G");
    let cache = env.path("cache");
    let c = cache.to_str().unwrap();
    let d = Daemon::attach(&url, &env.sock(), &cache, &[]);
    let fs = LoopFs::new(&env);
    std::fs::write(fs.mnt.join("dirty"), vec![7u8; 1 << 20]).unwrap();

    let o = spritedisk(&[
        "checkpoint",
        &url,
        "a",
        "--cache-dir",
        c,
        "--freeze",
        fs.path(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("checkpoint a of") && out.contains("frozen for"),
        "{out}"
    );
    assert!(fs.writable("after-a"), "still frozen after a checkpoint");
    assert_eq!(checkpoint_names(&url, c), ["a"]);

    // Refused before anything is frozen.
    let freeze = ["--cache-dir", c, "--freeze", fs.path()];
    fails_with(
        &[&["checkpoint", &url, "a"][..], &freeze].concat(),
        "already exists; nothing was frozen",
    );
    let elsewhere = env.path("not-attached");
    fails_with(
        &[
            "checkpoint",
            &url,
            "b",
            "--cache-dir",
            elsewhere.to_str().unwrap(),
            "--freeze",
            fs.path(),
        ],
        "is not attached on this machine",
    );
    let missing = env.path("no-such-dir");
    for (mountpoint, needle) in [
        ("/proc", "cannot be frozen"),
        (missing.to_str().unwrap(), "no-such-dir"),
    ] {
        fails_with(
            &[
                "checkpoint",
                &url,
                "b",
                "--cache-dir",
                c,
                "--freeze",
                mountpoint,
            ],
            needle,
        );
    }
    assert!(fs.writable("after-refusals"));

    // Frozen by someone else: refused, and left frozen (not ours to thaw).
    run_ok(Command::new("fsfreeze").arg("--freeze").arg(&fs.mnt));
    fails_with(
        &[&["checkpoint", &url, "b"][..], &freeze].concat(),
        "frozen already",
    );
    assert!(
        !fs.writable("while-frozen-by-fsfreeze"),
        "thawed a freeze it did not make"
    );
    assert!(fs.writable("after-fsfreeze-thaw"));

    // A daemon that does not answer: nothing is frozen, and the command ends.
    // SAFETY: signals to our own child.
    unsafe { libc::kill(d.pid() as i32, libc::SIGSTOP) };
    fails_with(
        &[
            &["checkpoint", &url, "b"][..],
            &freeze,
            &["--freeze-timeout", "1"],
        ]
        .concat(),
        "does not answer within the freeze timeout",
    );
    unsafe { libc::kill(d.pid() as i32, libc::SIGCONT) };
    assert!(fs.writable("after-stalled-daemon"));
    assert_eq!(checkpoint_names(&url, c), ["a"]);
    assert_eq!(d.detach(), 0);
}

/// A store whose every PUT takes 3 s makes the checkpoint's flush outlast
/// the freeze: the command thaws at its timeout, or at SIGINT, or its
/// watchdog does after SIGKILL, and the daemon records nothing.
#[test]
fn a_stalled_checkpoint_is_thawed_on_timeout_sigint_and_sigkill_and_records_nothing() {
    require_root();
    require("fsfreeze", "util-linux");
    require("qemu-io", "qemu-utils");
    let env = Env::new();
    let url = env.create("vol", "1G");
    let cache = env.path("cache");
    let c = cache.to_str().unwrap();
    let d = Daemon::attach(
        &url,
        &env.sock(),
        &cache,
        &[
            "--simulate-put-latency-ms",
            "3000",
            "--writeback-delay",
            "60",
        ],
    );
    let fs = LoopFs::new(&env);
    // A write the daemon holds in its buffer: qemu-io stays connected and
    // sends no FLUSH (writeback mode) and the daemon's writeback waits a
    // minute, so the checkpoint's flush makes the PUT, which takes 3 s.
    let dirty = |pattern: u8| {
        let mut w = Command::new("qemu-io")
            .args(["-t", "writeback", "-f", "raw", &d.nbd_uri()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = w.stdin.take().unwrap();
        writeln!(stdin, "write -P {pattern} 0 1M").unwrap();
        let mut out = BufReader::new(w.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("wrote ") {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "qemu-io ended before writing"
            );
        }
        (w, stdin)
    };
    // Closing qemu-io's stdin ends it (its disconnect flushes).
    let done = |(mut w, stdin): (std::process::Child, std::process::ChildStdin)| {
        drop(stdin);
        w.wait().unwrap();
    };

    let w = dirty(1);
    let args = [
        "checkpoint",
        &url,
        "t",
        "--cache-dir",
        c,
        "--freeze",
        fs.path(),
    ];
    // The command gives up half a second after the deadline (or the
    // daemon's refusal comes first, if it is quicker).
    let o = spritedisk(&[&args[..], &["--freeze-timeout", "1"]].concat());
    let said = stderr(&o);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(
        said.contains("was thawed")
            && (said.contains("deadline passed") || said.contains("within the freeze timeout")),
        "{said}"
    );
    assert!(
        fs.writable("after-timeout"),
        "still frozen after the timeout"
    );
    done(w);

    let w = dirty(2);
    let (mut cp, rest) =
        start_frozen_checkpoint(&[&args[..], &["--freeze-timeout", "60"]].concat());
    // SAFETY: signals to our own child.
    unsafe { libc::kill(cp.id() as i32, libc::SIGINT) };
    assert!(!cp.wait().unwrap().success());
    let said: String = rest.iter().collect();
    assert!(
        said.contains("interrupted (SIGINT)") && said.contains("nothing was recorded"),
        "{said}"
    );
    assert!(fs.writable("after-sigint"), "still frozen after SIGINT");
    done(w);

    let w = dirty(3);
    let (mut cp, _) = start_frozen_checkpoint(&[&args[..], &["--freeze-timeout", "2"]].concat());
    cp.kill().unwrap();
    cp.wait().unwrap();
    // The watchdog thaws 2 s after the daemon's deadline.
    assert!(fs.writable("after-sigkill"), "still frozen after SIGKILL");
    done(w);

    // Whatever the daemon was doing has ended; it recorded none of them.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        checkpoint_names(&url, c).is_empty(),
        "{:?}",
        checkpoint_names(&url, c)
    );
    drop(d);
}
