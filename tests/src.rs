//! Harness for the end-to-end tests: runs the real `spritedisk` binary and
//! real clients (qemu-io, fio) against it. `make test` builds the binary first.

#[path = "proxy.rs"]
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a daemon may take to print its "attached" line.
const ATTACH_WAIT_MAX: Duration = Duration::from_secs(60);

/// The repository's root (the VM scripts are under tests/vm).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `spritedisk` binary of this build (target/<profile>/spritedisk). When
/// it is missing (`cargo test --workspace` on a fresh checkout), the first
/// test to need it builds it with `cargo build --bins`. Only then: run from a
/// test, cargo sees the environment it gives tests (LD_LIBRARY_PATH among
/// it), and build scripts that watch it re-ran: measured, two minutes of
/// rebuilding aws-sdk-s3 and its dependents per test binary. `make test`
/// builds the binary first, so it never tests a stale one.
pub fn bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            let dir = exe
                .parent()
                .and_then(|d| d.parent())
                .expect("target/<profile>/deps")
                .to_path_buf();
            let b = dir.join("spritedisk");
            if b.exists() {
                return b;
            }
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build
                .args(["build", "--bins", "--quiet"])
                .current_dir(repo_root());
            if dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build --bins");
            assert!(status.success(), "cargo build --bins failed: {status}");
            assert!(b.exists(), "{} is missing after cargo build", b.display());
            b
        })
        .clone()
}

/// The VM rig's runner (tests/vm/rig/run-in-vm.sh), or the one
/// `SPRITEDISK_VM_RUNNER` names.
pub fn vm_runner() -> PathBuf {
    let runner = std::env::var_os("SPRITEDISK_VM_RUNNER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/vm/rig/run-in-vm.sh"));
    assert!(
        runner.exists(),
        "{} is missing (SPRITEDISK_VM_RUNNER)",
        runner.display()
    );
    runner
}

/// A progress line of a long test, on the process's stderr at once: libtest
/// captures only `print!`/`eprint!`, so a 10-minute VM test says what it is
/// doing while `make test` runs instead of staying silent until it ends.
pub fn progress(msg: &str) {
    use std::io::Write;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() % 86_400)
        .unwrap_or(0);
    let line = format!(
        "  [{:02}:{:02}:{:02} {}] {msg}\n",
        t / 3600,
        t / 60 % 60,
        t % 60,
        std::thread::current().name().unwrap_or("test")
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Fails with an install hint when a client the test needs is missing: a
/// skipped end-to-end test would pass without testing anything.
pub fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .unwrap()
        .status
        .success();
    assert!(
        found,
        "{tool} is not installed: apt-get install {package} (.ci/run does)"
    );
}

/// Whether this run's volumes live on s3:// (`SPRITEDISK_TEST_STORE=s3`:
/// moto on 127.0.0.1, started by the harness) rather than file://.
pub fn on_s3() -> bool {
    spritedisk_store::testing::s3_selected()
}

/// Points a child process at this run's store.
pub fn with_store_env(cmd: &mut Command) -> &mut Command {
    if on_s3() {
        cmd.envs(spritedisk_store::testing::s3_env())
            .env_remove("AWS_CA_BUNDLE");
    }
    cmd
}

/// Runs `spritedisk ARGS` to completion.
pub fn spritedisk(args: &[&str]) -> Output {
    with_store_env(Command::new(bin()).args(args).env("SPRITEDISK_LOG", "warn"))
        .output()
        .expect("run spritedisk")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A volume in a temp directory (or under a fresh prefix of the test
/// bucket, on s3): its store, a cache dir and a socket path.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// On s3: this environment's prefix in the test bucket.
    s3_root: Option<String>,
}

impl Env {
    pub fn new() -> Self {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
            s3_root: on_s3().then(|| spritedisk_store::testing::s3_url("e2e")),
        }
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    pub fn url(&self, name: &str) -> String {
        match &self.s3_root {
            Some(root) => format!("{root}/{name}"),
            None => format!("file://{}", self.path(name).display()),
        }
    }
    pub fn sock(&self) -> PathBuf {
        self.path("nbd.sock")
    }
    /// Copies the store of volume `name` and attaches the copy with an empty
    /// cache directory: the volume as another machine sees it.
    pub fn attach_copy_elsewhere(&self, name: &str) -> Daemon {
        self.attach_copy_elsewhere_with(name, &[])
    }

    /// [`Env::attach_copy_elsewhere`] with more `attach` arguments (e.g.
    /// `--force` for a copy whose lease a killed daemon still holds).
    pub fn attach_copy_elsewhere_with(&self, name: &str, extra: &[&str]) -> Daemon {
        let copy = format!("{name}-copy");
        if self.s3_root.is_some() {
            copy_objects(&self.url(name), &self.url(&copy));
        } else {
            let _ = std::fs::remove_dir_all(self.path(&copy));
            run_ok(
                Command::new("cp")
                    .arg("-a")
                    .arg(self.path(name))
                    .arg(self.path(&copy)),
            );
        }
        let _ = std::fs::remove_dir_all(self.path("cache-elsewhere"));
        Daemon::attach(
            &self.url(&copy),
            &self.sock(),
            &self.path("cache-elsewhere"),
            extra,
        )
    }

    /// `spritedisk create` of a volume named `name`; panics on failure.
    pub fn create(&self, name: &str, size: &str) -> String {
        let url = self.url(name);
        let o = spritedisk(&["create", &url, "--size", size]);
        assert!(o.status.success(), "create failed: {}", stderr(&o));
        url
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `spritedisk attach --nbd` daemon.
pub struct Daemon {
    child: Option<Child>,
    pub sock: PathBuf,
    stderr_log: PathBuf,
}

impl Daemon {
    /// Starts the daemon and waits until it prints that it is attached.
    pub fn attach(url: &str, sock: &Path, cache_dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::attach_with_env(url, sock, cache_dir, extra, &[])
    }

    /// [`Daemon::attach`] with extra environment (e.g. another endpoint).
    pub fn attach_with_env(
        url: &str,
        sock: &Path,
        cache_dir: &Path,
        extra: &[&str],
        envs: &[(&str, String)],
    ) -> Daemon {
        let (mut d, rx) = Daemon::spawn(url, sock, cache_dir, extra, envs);
        match rx.recv_timeout(ATTACH_WAIT_MAX) {
            Ok(line) if line.starts_with("attached ") => d,
            other => {
                let status = d.child.as_mut().unwrap().try_wait();
                panic!(
                    "attach did not come up ({other:?}, {status:?}): {}",
                    d.log()
                );
            }
        }
    }

    /// Starts the daemon without waiting for it to attach (to kill it
    /// during its attach).
    pub fn start(url: &str, sock: &Path, cache_dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::spawn(url, sock, cache_dir, extra, &[]).0
    }

    fn spawn(
        url: &str,
        sock: &Path,
        cache_dir: &Path,
        extra: &[&str],
        envs: &[(&str, String)],
    ) -> (Daemon, mpsc::Receiver<String>) {
        let stderr_log = cache_dir.with_extension("stderr.log");
        let log = std::fs::File::create(&stderr_log).unwrap();
        let mut child = with_store_env(&mut Command::new(bin()))
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["attach", url, "--nbd"])
            .arg(sock)
            .arg("--cache-dir")
            .arg(cache_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn spritedisk attach");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let d = Daemon {
            child: Some(child),
            sock: sock.to_path_buf(),
            stderr_log,
        };
        (d, rx)
    }

    /// Waits until the daemon's log contains `needle` (an event the test
    /// orders on); panics, with the log, if it does not within
    /// [`ATTACH_WAIT_MAX`].
    pub fn wait_log(&self, needle: &str) {
        let start = std::time::Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < ATTACH_WAIT_MAX,
                "the daemon never logged {needle:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn nbd_uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, sig) };
        child.wait().expect("wait for daemon")
    }

    /// SIGTERM: the daemon flushes and exits; returns its exit code.
    pub fn detach(mut self) -> i32 {
        let st = self.signal(libc::SIGTERM);
        st.code().unwrap_or(-1)
    }

    /// SIGKILL: a crash.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Copies every object under store URL `from` to `to` (s3: another machine's
/// view of a volume is a copy of its objects).
pub fn copy_objects(from: &str, to: &str) {
    let to = to.to_string();
    with_store(from, |a| async move {
        let b = spritedisk_store::open_url(&to).unwrap();
        for m in a.list("").await.unwrap() {
            b.put(&m.key, a.get(&m.key).await.unwrap()).await.unwrap();
        }
    })
}

/// Runs `f` on the store at `url` (file:// or s3://) on a runtime of its own.
pub fn with_store<T, F, Fut>(url: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(std::sync::Arc<dyn spritedisk_store::ObjectStore>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    if on_s3() {
        spritedisk_store::testing::use_s3_env();
    }
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async { f(spritedisk_store::open_url(&url).unwrap()).await })
    })
    .join()
    .expect("store access")
}

/// Keys under `prefix` of the volume at `url`.
pub fn list_keys(url: &str, prefix: &str) -> Vec<String> {
    let prefix = prefix.to_string();
    with_store(url, |s| async move {
        s.list(&prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect()
    })
}

/// Flips one byte in the middle of object `key` of the volume at `url`.
pub fn corrupt_object(url: &str, key: &str) {
    let key = key.to_string();
    with_store(url, |s| async move {
        let mut raw = s.get(&key).await.unwrap().to_vec();
        let mid = raw.len() / 2;
        raw[mid] ^= 0xff;
        s.put(&key, raw.into()).await.unwrap();
    })
}

/// Runs qemu-io commands against the daemon's NBD export; a failed `-P`
/// pattern check fails the test.
pub fn qemu_io<S: AsRef<str>>(d: &Daemon, cmds: &[S]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", &d.nbd_uri()]);
    for cmd in cmds {
        c.args(["-c", cmd.as_ref()]);
    }
    let out = run_ok(&mut c);
    assert!(!out.contains("verification failed"), "qemu-io: {out}");
    out
}

/// Runs a command; panics with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{cmd:?} failed ({}):\n{text}", o.status);
    text
}
