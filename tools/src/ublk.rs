//! The ublk side of the CLI: `attach` (a daemon serving /dev/ublkbN),
//! `detach`, `list` and `recover`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use spritedisk_ublk::{driver_loaded, kill_device, remove_device, UblkOptions, DRIVER_MISSING};
use spritedisk_volume::Volume;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{default_cache_dir, AttachArgs};
use crate::registry::{self, Entry};

/// How long `detach` waits for a daemon to flush and exit.
const DETACH_WAIT_MAX: Duration = Duration::from_secs(300);
/// How long `attach` waits for its daemon to bring the device up.
const START_WAIT_MAX: Duration = Duration::from_secs(120);
const DAEMON_LOG: &str = "daemon.log";

/// Prints to stdout, ignoring a closed pipe: a daemon's parent stops reading
/// once the device is up.
fn say(msg: &str) {
    let _ = writeln!(std::io::stdout(), "{msg}");
    let _ = std::io::stdout().flush();
}

pub async fn attach(args: AttachArgs) -> Result<i32> {
    // Before anything is created: no driver, no device, nothing on disk.
    if !driver_loaded() {
        bail!(DRIVER_MISSING);
    }
    if args.foreground {
        serve(args).await
    } else {
        start_daemon(&args)
    }
}

/// Re-runs this binary as `attach --foreground` in a new session, relays
/// its "attached … at /dev/ublkbN" line and returns; the daemon keeps serving.
fn start_daemon(args: &AttachArgs) -> Result<i32> {
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(&args.url));
    // Checked before the log is opened in it (docs/design/0017).
    spritedisk_volume::ensure_private_dir(&cache_dir)?;
    let log_path = cache_dir.join(DAEMON_LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("attach")
        .arg(&args.url)
        .arg("--foreground")
        .arg("--cache-dir")
        .arg(&cache_dir);
    cmd.args(["--queue-depth", &args.queue_depth.to_string()]);
    cmd.args([
        "--segment-size",
        &args.segment_size.to_string(),
        "--dirty-max",
        &args.dirty_max.to_string(),
    ]);
    cmd.args([
        "--uploads",
        &args.uploads.to_string(),
        "--flush-timeout",
        &args.flush_timeout.to_string(),
    ]);
    cmd.args(["--writeback-delay", &args.writeback_delay.to_string()]);
    cmd.args(["--cache-size", &args.cache_size.to_string()]);
    cmd.args(["--prefetch-window", &args.prefetch_window.to_string()]);
    cmd.args(["--lease-ttl", &args.lease_ttl.to_string()]);
    cmd.args(["--durability", args.durability.as_str()]);
    if args.force {
        cmd.arg("--force");
    }
    if let Some(ms) = args.simulate_get_latency_ms {
        cmd.args(["--simulate-get-latency-ms", &ms.to_string()]);
    }
    if let Some(q) = args.queues {
        cmd.args(["--queues", &q.to_string()]);
    }
    if let Some(id) = args.recover_dev {
        cmd.args(["--recover-dev", &id.to_string()]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    crate::daemon::in_new_session(&mut cmd);
    let mut child = cmd.spawn().context("starting the daemon")?;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + START_WAIT_MAX;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.starts_with("attached ") => {
                println!("{}", line.rsplit(' ').next().unwrap_or(&line));
                return Ok(0);
            }
            Ok(line) => eprintln!("{line}"),
            Err(_) => {
                if let Some(status) = child.try_wait()? {
                    crate::daemon::print_log_tail(&log_path, 5);
                    bail!(
                        "the daemon exited ({status}) before the device came up; its log: {}",
                        log_path.display()
                    );
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!(
                        "the device did not come up within {START_WAIT_MAX:?}; see {}",
                        log_path.display()
                    );
                }
            }
        }
    }
}

/// Foreground daemon: opens the volume, serves /dev/ublkbN until SIGTERM,
/// SIGINT or the device being stopped, then flushes and deletes the device.
async fn serve(args: AttachArgs) -> Result<i32> {
    let opts = args.engine_options()?;
    let url = args.url.clone();
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(&url));
    let store = args.open_store()?;
    let t0 = Instant::now();
    let volume = Volume::open(store, &url, Some(&cache_dir), opts).await?;
    tracing::info!(
        url,
        open_ms = t0.elapsed().as_millis() as u64,
        "volume opened"
    );

    let uopts = UblkOptions {
        queues: args.queues.unwrap_or_else(|| UblkOptions::default().queues),
        depth: args.queue_depth,
        recover_dev_id: args.recover_dev,
        ..UblkOptions::default()
    };
    let (live_tx, live_rx) = tokio::sync::oneshot::channel();
    let engine = Arc::new(volume.clone());
    let rt = tokio::runtime::Handle::current();
    let opts2 = uopts.clone();
    let mut serving = tokio::task::spawn_blocking(move || {
        spritedisk_ublk::serve(engine, rt, &opts2, move |id, path| {
            let _ = live_tx.send((id, path));
        })
    });
    let (dev_id, device) = tokio::select! {
        live = live_rx => live.context("the device never came up")?,
        res = &mut serving => {
            volume.close().await.ok();
            return Err(match res {
                Ok(Err(e)) => anyhow::Error::from(e),
                Ok(Ok(_)) => anyhow::anyhow!("the device stopped before it came up"),
                Err(e) => anyhow::Error::from(e),
            });
        }
    };
    registry::write(&Entry {
        dev_id,
        device: device.clone(),
        url: url.clone(),
        pid: std::process::id(),
        cache_dir: cache_dir.clone(),
        queues: uopts.queues,
        queue_depth: uopts.depth,
        since_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        pool_slot: None,
        durability: args.durability,
    })?;
    tracing::info!(url, device, dev_id, "device live");
    let _publisher = crate::inspect::publish_stats(volume.clone(), cache_dir.clone());
    let _control = crate::control::serve(volume.clone(), &cache_dir)?;
    say(&format!("attached {url} at {device}"));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stopped_outside = tokio::select! {
        _ = term.recv() => false,
        _ = int.recv() => false,
        _ = &mut serving => true,
    };
    if !stopped_outside {
        tracing::info!(device, "detaching: stopping the device");
        if let Err(e) = kill_device(dev_id) {
            tracing::warn!(error = %e, "stopping the device");
        }
        match serving.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "device ended with an error"),
            Err(e) => tracing::warn!(error = %e, "device thread"),
            Ok(Ok(_)) => {}
        }
    } else {
        tracing::warn!(device, "the device was stopped from outside");
    }
    let res = volume.close().await;
    registry::remove(dev_id);
    match res {
        Ok(()) => {
            tracing::info!(device, "detached: everything written is durable");
            say(&format!("detached {url} from {device}"));
            Ok(0)
        }
        Err(e) => {
            tracing::error!(error = %e, "final flush failed: writes since the last successful FLUSH are lost");
            Ok(1)
        }
    }
}

pub async fn detach(target: &str) -> Result<i32> {
    let Some(e) = registry::find(target) else {
        bail!("{target} is not attached here (see 'spritedisk list')");
    };
    if !registry::pid_alive(e.pid) {
        // The daemon died (kill -9, OOM): nothing left to flush; remove the
        // orphaned device so no /dev/ublkbN stays behind.
        eprintln!(
            "warning: the daemon of {} (pid {}) is not running; writes it had not flushed are lost. Use 'spritedisk recover {}' instead to resume the device.",
            e.device, e.pid, e.device
        );
        if let Err(err) = remove_device(e.dev_id) {
            eprintln!("warning: deleting {}: {err}", e.device);
        }
        registry::remove(e.dev_id);
        println!("detached {} from {}", e.url, e.device);
        return Ok(0);
    }
    if let Some(slot) = e.pool_slot {
        return crate::pool::detach(&e, slot).await;
    }
    // SAFETY: plain signal to the daemon's pid.
    unsafe { libc::kill(e.pid as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while registry::pid_alive(e.pid) {
        if t0.elapsed() > DETACH_WAIT_MAX {
            bail!(
                "the daemon (pid {}) is still flushing after {DETACH_WAIT_MAX:?}; see {}",
                e.pid,
                e.cache_dir.join(DAEMON_LOG).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its exit status is not ours to read; the log says whether the final flush worked.
    let log = std::fs::read_to_string(e.cache_dir.join(DAEMON_LOG)).unwrap_or_default();
    if log
        .lines()
        .rev()
        .take(5)
        .any(|l| l.contains("final flush failed"))
    {
        bail!(
            "{} was detached but its final flush failed; see {}",
            e.device,
            e.cache_dir.join(DAEMON_LOG).display()
        );
    }
    if Path::new(&e.device).exists() {
        bail!("{} still exists after its daemon exited", e.device);
    }
    println!("detached {} from {}", e.url, e.device);
    Ok(0)
}

pub fn list(json: bool) -> Result<i32> {
    let entries = registry::all();
    if json {
        let v: Vec<_> = entries
            .iter()
            .map(
                |e| serde_json::json!({ "entry": e, "daemon_running": registry::pid_alive(e.pid) }),
            )
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("{:<14} {:>8} {:<9} URL", "DEVICE", "PID", "STATE");
    for e in entries {
        let state = if registry::pid_alive(e.pid) {
            "running"
        } else {
            "orphaned"
        };
        println!("{:<14} {:>8} {:<9} {}", e.device, e.pid, state, e.url);
    }
    Ok(0)
}

pub fn recover(device: &str) -> Result<i32> {
    if !driver_loaded() {
        bail!(DRIVER_MISSING);
    }
    let Some(e) = registry::find(device) else {
        bail!("{device} is not a device spritedisk attached here (see 'spritedisk list')");
    };
    if registry::pid_alive(e.pid) {
        bail!(
            "the daemon of {} (pid {}) is running: nothing to recover",
            e.device,
            e.pid
        );
    }
    let args = AttachArgs {
        url: e.url.clone(),
        nbd: None,
        nbd_tcp: None,
        foreground: false,
        queues: Some(e.queues),
        queue_depth: e.queue_depth,
        recover_dev: Some(e.dev_id),
        cache_dir: Some(e.cache_dir.clone()),
        durability: e.durability,
        ..crate::cli::AttachArgs::defaults(&e.url)
    };
    start_daemon(&args)
}
