//! The warm pool: standby ublk devices whose daemons are up before any
//! volume is attached, so that `attach --pool` only opens the volume
//! (docs/design/0008-warm-pool.md). `pool start`, `pool status`, `pool
//! stop`, `attach --pool` and the detach of a pool device are here; the
//! manager that keeps the pool full is `manager.rs`, a standby daemon
//! `standby.rs`, and where they are written down `records.rs`.

pub mod manager;
pub mod records;
pub mod standby;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use spritedisk_ublk::{driver_loaded, UblkOptions, DRIVER_MISSING};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::cli::AttachArgs;
use crate::registry::{self, Entry};
use records::SlotState;

/// Most standby devices a pool keeps (each is a daemon and a ublk device).
pub const POOL_SIZE_MAX: u64 = 64;
/// How long `pool start` waits for its standbys to be ready.
const START_WAIT_MAX: Duration = Duration::from_secs(120);
/// How long `pool stop` waits for the manager to retire its standbys.
const STOP_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long a bind (opening the volume) or an unbind (its final flush) may take.
const REQUEST_WAIT_MAX: Duration = Duration::from_secs(300);

#[derive(clap::Args, Debug, Clone)]
pub struct PoolArgs {
    /// Standby devices to keep ready.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=POOL_SIZE_MAX))]
    pub size: u64,
    /// Where the standbys keep their local state (one slot-K directory
    /// each, emptied between volumes) and logs.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// A store (file:///dir or s3://bucket/prefix) the standbys connect to
    /// ahead of any attach; volumes under the same endpoint reuse the connection.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Each standby's read cache (a sparse file).
    #[arg(long, default_value = "4G", value_parser = crate::size::parse_size)]
    pub cache_size: u64,
    /// Hardware queues of each device (default: the number of CPUs).
    #[arg(long)]
    pub queues: Option<u16>,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 64)]
    pub queue_depth: u16,
}

impl PoolArgs {
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| crate::cli::cache_base().join("pool"))
    }

    pub fn queues(&self) -> u16 {
        self.queues.unwrap_or_else(|| UblkOptions::default().queues)
    }
}

/// `pool start`: starts the manager in its own session and returns once
/// `size` standbys are ready.
pub fn start(a: &PoolArgs) -> Result<i32> {
    if !driver_loaded() {
        bail!(DRIVER_MISSING);
    }
    if let Some(p) = records::running_pool() {
        bail!(
            "a pool is already running (pid {}, {} standby devices); 'spritedisk pool stop' first",
            p.pid,
            p.size
        );
    }
    if let Some(url) = &a.store {
        spritedisk_store::StoreUrl::parse(url)?;
    }
    let cache_dir = a.cache_dir();
    // The slots' cache directories live in it (docs/design/0017).
    spritedisk_volume::ensure_private_dir(&cache_dir)?;
    let log_path = cache_dir.join("pool.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["pool", "run", "--size", &a.size.to_string()])
        .arg("--cache-dir")
        .arg(&cache_dir)
        .args(["--cache-size", &a.cache_size.to_string()])
        .args(["--queues", &a.queues().to_string()])
        .args(["--queue-depth", &a.queue_depth.to_string()]);
    if let Some(s) = &a.store {
        cmd.args(["--store", s]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    crate::daemon::in_new_session(&mut cmd);
    let mut child = cmd.spawn().context("starting the pool's manager")?;
    let t0 = Instant::now();
    let mut shown = 0;
    loop {
        let ready: Vec<_> = records::slots()
            .into_iter()
            .filter(|r| r.state == SlotState::Ready)
            .collect();
        for r in ready.iter().skip(shown) {
            eprintln!(
                "standby {}/{} ready: {}",
                shown + 1,
                a.size,
                r.device.as_deref().unwrap_or("?")
            );
            shown += 1;
        }
        if ready.len() as u64 >= a.size {
            println!(
                "pool of {} standby devices ready in {} ms (manager pid {}; log {})",
                a.size,
                t0.elapsed().as_millis(),
                child.id(),
                log_path.display()
            );
            return Ok(0);
        }
        if let Some(status) = child.try_wait()? {
            crate::daemon::print_log_tail(&log_path, 5);
            bail!(
                "the pool's manager exited ({status}); its log: {}",
                log_path.display()
            );
        }
        if t0.elapsed() > START_WAIT_MAX {
            bail!(
                "{} of {} standby devices came up within {START_WAIT_MAX:?}; the pool keeps trying (see {} and the slot-K.log files next to it)",
                ready.len(),
                a.size,
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `pool stop`: the manager retires the standbys; devices serving volumes
/// stay until they are detached.
pub async fn stop() -> Result<i32> {
    let Some(p) = records::running_pool() else {
        bail!("no pool is running here");
    };
    // SAFETY: a plain signal to the manager's pid.
    unsafe { libc::kill(p.pid as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while registry::pid_alive(p.pid) {
        if t0.elapsed() > STOP_WAIT_MAX {
            bail!(
                "the pool's manager (pid {}) is still stopping after {STOP_WAIT_MAX:?}",
                p.pid
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let serving = records::slots()
        .into_iter()
        .filter(|r| r.state == SlotState::Bound)
        .count();
    println!("pool stopped; {serving} of its devices still serve volumes (detach them as usual)");
    Ok(0)
}

pub fn status(json_out: bool) -> Result<i32> {
    let pool = records::running_pool();
    let slots: Vec<_> = records::slots()
        .into_iter()
        .filter(|r| registry::pid_alive(r.pid))
        .collect();
    let ready = slots.iter().filter(|r| r.state == SlotState::Ready).count();
    let now = records::now_unix_ms();
    if json_out {
        let v = json!({
            "running": pool.is_some(),
            "pool": pool,
            "ready": ready,
            "devices": slots,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    match &pool {
        Some(p) => println!(
            "pool: running (manager pid {}), size {}, {ready} ready, cache {}{}",
            p.pid,
            p.size,
            p.cache_dir.display(),
            p.store
                .as_ref()
                .map(|s| format!(", connected to {s}"))
                .unwrap_or_default()
        ),
        None => println!("pool: not running"),
    }
    println!(
        "{:<14} {:>8} {:<10} {:>9} {:>6} URL",
        "DEVICE", "PID", "STATE", "FOR", "BINDS"
    );
    for r in slots {
        println!(
            "{:<14} {:>8} {:<10} {:>8}s {:>6} {}",
            r.device.as_deref().unwrap_or("-"),
            r.pid,
            r.state.name(),
            now.saturating_sub(r.since_unix_ms) / 1000,
            r.binds,
            r.url.as_deref().unwrap_or("")
        );
    }
    Ok(0)
}

/// One request to standby `slot`, its answer: Ok(value), or Err((kind, message)).
pub async fn request(
    slot: u64,
    req: &Value,
) -> Result<std::result::Result<Value, (String, String)>> {
    let mut conn = UnixStream::connect(records::socket_path(slot))
        .await
        .with_context(|| format!("connecting to standby {slot}"))?;
    conn.write_all(format!("{req}\n").as_bytes()).await?;
    let mut line = String::new();
    tokio::time::timeout(REQUEST_WAIT_MAX, BufReader::new(conn).read_line(&mut line))
        .await
        .context("the standby did not answer")??;
    let v: Value =
        serde_json::from_str(&line).with_context(|| format!("the standby answered {line:?}"))?;
    if let Some(ok) = v.get("ok") {
        return Ok(Ok(ok.clone()));
    }
    Ok(Err((
        v["kind"].as_str().unwrap_or("failed").to_string(),
        v["error"].as_str().unwrap_or("no reason given").to_string(),
    )))
}

/// `attach URL --pool`: binds the volume to a ready standby (the lowest
/// device number first); waits up to `--pool-wait` for one when none is
/// ready, and attaches cold, saying why, when there is no pool, no standby
/// came, or the volume's size is not the pool's.
pub async fn attach(mut args: AttachArgs) -> Result<i32> {
    if !driver_loaded() {
        bail!(DRIVER_MISSING);
    }
    let t0 = Instant::now();
    let cold = |mut args: AttachArgs, why: String| async move {
        eprintln!("{why}: attaching cold");
        args.pool = false;
        crate::ublk::attach(args).await
    };
    if records::running_pool().is_none() {
        return cold(
            args,
            "no pool is running here ('spritedisk pool start')".into(),
        )
        .await;
    }
    args.pool = false;
    let req = json!({ "op": "bind", "args": serde_json::to_value(&args)? });
    let wait = Duration::from_secs_f64(args.pool_wait.max(0.0));
    let mut said_waiting = false;
    loop {
        let ready: Vec<_> = records::slots()
            .into_iter()
            .filter(|r| r.state == SlotState::Ready && registry::pid_alive(r.pid))
            .collect();
        for r in ready {
            match request(r.slot, &req).await {
                Ok(Ok(v)) => {
                    let device = v["device"].as_str().unwrap_or("?");
                    println!("{device}");
                    let _ = std::io::stdout().flush();
                    eprintln!(
                        "attached {} at {device} from the pool in {} ms (volume opened in {} ms)",
                        args.url,
                        t0.elapsed().as_millis(),
                        v["open_ms"]
                    );
                    return Ok(0);
                }
                Ok(Err((kind, _))) if kind == "busy" => continue,
                Ok(Err((kind, msg))) if kind == "size" => return cold(args, msg).await,
                Ok(Err((_, msg))) => bail!("{msg}"),
                // It went away between the listing and the request.
                Err(_) => continue,
            }
        }
        if t0.elapsed() >= wait {
            let why = format!(
                "no standby device of the pool was ready within {:.1} s",
                wait.as_secs_f64()
            );
            return cold(args, why).await;
        }
        if !said_waiting {
            eprintln!(
                "waiting for a standby device of the pool (up to {:.1} s)",
                wait.as_secs_f64()
            );
            said_waiting = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `detach` of a device a pool daemon serves: the volume is flushed and
/// closed, and the device goes back to the pool.
pub async fn detach(e: &Entry, slot: u64) -> Result<i32> {
    match request(slot, &json!({ "op": "unbind" })).await? {
        Ok(v) if v["pool_stopped"].as_bool() == Some(true) => {
            println!(
                "detached {} from {} (the pool is stopped: the device is removed)",
                e.url, e.device
            );
            Ok(0)
        }
        Ok(v) => {
            println!(
                "detached {} from {} (back in the pool after {} ms)",
                e.url, e.device, v["ms"]
            );
            Ok(0)
        }
        Err((_, msg)) => bail!("{msg}"),
    }
}
