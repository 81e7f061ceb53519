//! `checkpoint --freeze MOUNTPOINT`: an app-consistent checkpoint of a
//! mounted filesystem without unmounting it (docs/design/0006-freeze.md).
//!
//! syncfs first (so the frozen window holds only what is written after it),
//! FIFREEZE, the checkpoint through the daemon with a deadline, FITHAW. The
//! filesystem is thawed on every way out: success, error, the deadline,
//! SIGINT/SIGTERM/SIGHUP, a panic (Drop), and SIGKILL of this process (a
//! watchdog child thaws at the deadline). Never before the daemon can no
//! longer record the checkpoint: a checkpoint must not hold writes made
//! after the thaw.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};

use crate::control;

// Not in the libc crate: _IOWR('X', 119, int) and _IOWR('X', 120, int)
// from linux/fs.h.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// How long after the daemon's deadline the watchdog thaws when this
/// process died or hangs.
const WATCHDOG_MARGIN_MS: u64 = 2_000;

/// What a frozen checkpoint took, for the command's output.
pub struct FrozenTimes {
    pub sync: Duration,
    pub freeze: Duration,
    pub checkpoint: Duration,
    pub thaw: Duration,
    /// From the FIFREEZE call to the end of FITHAW.
    pub frozen: Duration,
}

/// Freezes `mountpoint`, checkpoints the volume served from `cache_dir`,
/// thaws. The daemon records the checkpoint only before the thaw deadline
/// (`timeout` after the freeze), so a checkpoint never holds writes made
/// after the thaw.
pub async fn checkpoint_frozen(
    url: &str,
    cache_dir: &Path,
    name: Option<&str>,
    mountpoint: &Path,
    timeout: Duration,
) -> Result<(Value, FrozenTimes)> {
    // Everything that can be refused is refused before the freeze.
    let probe = control::call(cache_dir, json!({ "op": "checkpoints" }));
    let existing = tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the daemon at {} does not answer within the freeze timeout ({} ms); nothing was frozen",
                control::socket_path(cache_dir).display(),
                timeout.as_millis()
            )
        })??
        .with_context(|| {
            format!(
                "--freeze: {url} is not attached on this machine (no daemon at {}); \
                 attach it and mount its device first",
                control::socket_path(cache_dir).display()
            )
        })?;
    if let Some(n) = name {
        if existing
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == n)
        {
            bail!("a checkpoint named {n:?} already exists; nothing was frozen");
        }
    }
    check_device(url, mountpoint)?;

    let mut signals = Signals::new()?;
    let mut frozen = Frozen::new(mountpoint)?;
    let t_sync = Instant::now();
    // SAFETY: syncfs on a file descriptor we own.
    if unsafe { libc::syncfs(frozen.dir.as_raw_fd()) } != 0 {
        bail!(
            "syncfs {}: {}",
            mountpoint.display(),
            std::io::Error::last_os_error()
        );
    }
    let sync = t_sync.elapsed();
    let t_frozen = Instant::now();
    frozen.freeze()?;
    let freeze = t_frozen.elapsed();
    let not_after = SystemTime::now() + timeout;
    frozen.arm(not_after)?;
    tracing::info!(
        "froze {} in {} ms; checkpointing",
        mountpoint.display(),
        freeze.as_millis()
    );
    let not_after_unix_ms = not_after.duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let request =
        json!({ "op": "checkpoint", "name": name, "not_after_unix_ms": not_after_unix_ms });
    // Past this the daemon records nothing: thawing is safe whatever it says.
    let too_late = tokio::time::Instant::now() + timeout + Duration::from_millis(500);
    let t_ckpt = Instant::now();
    let mut conv = control::start(cache_dir, request)
        .await?
        .context("the daemon went away")?;
    let late = || {
        anyhow::anyhow!(
            "the daemon did not take the checkpoint within the freeze timeout ({} ms); \
             it records none after that deadline",
            timeout.as_millis()
        )
    };
    let mut interrupted = None;
    let mut first = tokio::select! {
        r = conv.next() => r,
        _ = tokio::time::sleep_until(too_late) => Err(late()),
        sig = signals.recv() => {
            interrupted = Some(sig);
            Err(anyhow::anyhow!("interrupted ({sig})"))
        }
    };
    if let Some(sig) = interrupted {
        // Thawing now could let the daemon record writes made after the
        // thaw: cancel, and thaw once it says it did (or took it already).
        // If the cancel cannot be sent the daemon is gone: the next read
        // then fails, and a gone daemon records nothing.
        conv.cancel().await.ok();
        first = tokio::select! {
            r = conv.next() => r,
            _ = tokio::time::sleep_until(too_late) => Err(late()),
            again = signals.recv() => Err(anyhow::anyhow!(
                "interrupted again ({again}); thawed without waiting for the daemon: \
                 check `spritedisk checkpoints` for a checkpoint taken after the thaw"
            )),
        };
        first = first.and_then(|a| match a {
            control::Answer::Progress(k, row) if k == "taken" => Err(anyhow::anyhow!(
                "checkpoint {} was taken while frozen, before the interruption: it is \
                 consistent, and the daemon finishes making it durable",
                row["name"]
            )),
            _ => Err(anyhow::anyhow!("no checkpoint was taken")),
        });
        first = first.map_err(|e| e.context(format!("interrupted ({sig})")));
    }
    let checkpoint = t_ckpt.elapsed();
    let t_thaw = Instant::now();
    let thawed = frozen.thaw();
    let thaw = t_thaw.elapsed();
    let times = FrozenTimes {
        sync,
        freeze,
        checkpoint,
        thaw,
        frozen: t_frozen.elapsed(),
    };
    drop(frozen);
    thawed?;
    let row = match first.with_context(|| format!("{} was thawed", mountpoint.display()))? {
        control::Answer::Progress(k, row) if k == "taken" => row,
        control::Answer::Progress(k, _) => bail!("the daemon answered {k:?}"),
        control::Answer::Done(_) => bail!("the daemon answered without taking the checkpoint"),
    };
    // Thawed; the checkpoint is consistent, and durable once the daemon has
    // shipped the metadata (bounded by its flush timeout).
    let durable = tokio::select! {
        r = conv.next() => r,
        sig = signals.recv() => Err(anyhow::anyhow!("interrupted ({sig})")),
    };
    match durable {
        Ok(control::Answer::Done(v)) => Ok((v, times)),
        Ok(control::Answer::Progress(k, _)) => bail!("the daemon answered {k:?} twice"),
        Err(e) => Err(e).with_context(|| {
            format!(
                "checkpoint {} was taken while {} was frozen, but is not known to be durable \
                 (see `spritedisk checkpoints`)",
                row["name"],
                mountpoint.display()
            )
        }),
    }
}

/// SIGINT, SIGTERM and SIGHUP, caught from before the freeze on: each one
/// leads to a thaw instead of killing the process.
struct Signals([tokio::signal::unix::Signal; 3]);

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals([
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ]))
    }

    async fn recv(&mut self) -> &'static str {
        let [a, b, c] = &mut self.0;
        tokio::select! {
            _ = a.recv() => "SIGINT",
            _ = b.recv() => "SIGTERM",
            _ = c.recv() => "SIGHUP",
        }
    }
}

/// Refuses a mountpoint that is not on the volume's ublk device, when the
/// volume is attached here as one (over NBD the device is not ours to know).
fn check_device(url: &str, mountpoint: &Path) -> Result<()> {
    let meta = std::fs::metadata(mountpoint)
        .with_context(|| format!("--freeze {}", mountpoint.display()))?;
    let Some(entry) = crate::registry::find(url) else {
        return Ok(());
    };
    let dev =
        std::fs::metadata(&entry.device).with_context(|| format!("{} of {url}", entry.device))?;
    if dev.rdev() != meta.dev() {
        let (maj, min) = (libc::major(meta.dev()), libc::minor(meta.dev()));
        bail!(
            "--freeze {}: that filesystem is on device {maj}:{min}, not on {} where {url} is \
             attached; freezing it would not make this checkpoint consistent",
            mountpoint.display(),
            entry.device
        );
    }
    Ok(())
}

/// A filesystem this process froze (or is about to). Thaws on drop.
struct Frozen {
    dir: File,
    path: PathBuf,
    frozen: bool,
    watchdog: Child,
}

impl Frozen {
    /// Opens the mountpoint and starts the watchdog; does not freeze yet.
    fn new(mountpoint: &Path) -> Result<Self> {
        let dir =
            File::open(mountpoint).with_context(|| format!("--freeze {}", mountpoint.display()))?;
        let mut watchdog = Command::new(std::env::current_exe()?)
            .arg("freeze-watchdog")
            .arg(mountpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the thaw watchdog")?;
        // It says when it holds the mountpoint open.
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("piped")).read_line(&mut line)?;
        if line.trim() != "armed" {
            let _ = watchdog.kill();
            bail!("the thaw watchdog did not start: {line:?}");
        }
        Ok(Frozen {
            dir,
            path: mountpoint.to_path_buf(),
            frozen: false,
            watchdog,
        })
    }

    fn freeze(&mut self) -> Result<()> {
        ioctl(&self.dir, FIFREEZE).map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::EBUSY) => {
                    " (it is frozen already: by fsfreeze or another checkpoint --freeze?)"
                }
                Some(libc::EOPNOTSUPP) => " (this filesystem cannot be frozen)",
                Some(libc::EPERM) => " (freezing needs root: CAP_SYS_ADMIN)",
                _ => "",
            };
            anyhow::anyhow!(
                "freezing {}: {e}{why}; nothing was checkpointed",
                self.path.display()
            )
        })?;
        self.frozen = true;
        Ok(())
    }

    /// Tells the watchdog the daemon's deadline: if this process dies, it
    /// thaws a little after it (when the daemon can no longer record).
    fn arm(&mut self, not_after: SystemTime) -> Result<()> {
        let ms = not_after.duration_since(UNIX_EPOCH)?.as_millis() as u64 + WATCHDOG_MARGIN_MS;
        let stdin = self.watchdog.stdin.as_mut().expect("piped");
        writeln!(stdin, "{ms}").context("arming the thaw watchdog")?;
        Ok(())
    }

    fn thaw(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.frozen) {
            return Ok(());
        }
        ioctl(&self.dir, FITHAW).with_context(|| {
            format!(
                "thawing {}: run `fsfreeze --unfreeze {}`",
                self.path.display(),
                self.path.display()
            )
        })
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = self.thaw() {
            tracing::error!("{e:#}");
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

fn ioctl(dir: &File, request: libc::c_ulong) -> std::io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE and FITHAW take an int argument the kernel ignores.
    if unsafe { libc::ioctl(dir.as_raw_fd(), request, &mut arg) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The hidden `freeze-watchdog` command. It holds the mountpoint open and
/// reads the thaw deadline (unix ms) from its parent once the parent has
/// frozen the filesystem. If the parent dies before sending it, no
/// checkpoint was requested yet and it thaws at once; else it thaws at the
/// deadline, when the daemon can no longer record one. (Thawing as soon as
/// the parent dies could let the daemon record writes made after the thaw.)
/// The parent kills it once it has thawed by itself.
pub fn watchdog(mountpoint: &Path) -> Result<i32> {
    let dir =
        File::open(mountpoint).with_context(|| format!("watchdog: {}", mountpoint.display()))?;
    println!("armed");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if let Ok(ms) = line.trim().parse::<u64>() {
        let deadline = UNIX_EPOCH + Duration::from_millis(ms);
        if let Ok(wait) = deadline.duration_since(SystemTime::now()) {
            std::thread::sleep(wait);
        }
    }
    match ioctl(&dir, FITHAW) {
        // Not frozen (the parent thawed it, or never froze it).
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(0),
        Err(e) => bail!("watchdog: thawing {}: {e}", mountpoint.display()),
        Ok(()) => {
            eprintln!(
                "spritedisk freeze-watchdog: thawed {} (its checkpoint --freeze died or hung)",
                mountpoint.display()
            );
            Ok(0)
        }
    }
}
