//! A standby daemon of the warm pool (`spritedisk pool standby`, started by
//! the pool's manager). It adds its ublk device and sets up its queues with
//! no volume behind it, connects to the pool's store, and waits on its
//! socket. `attach --pool` sends it a volume to bind: it opens the volume
//! (lease, metadata) and puts it behind the live device, which is the
//! whole attach. `detach` sends `unbind`: it flushes and closes the volume,
//! empties its cache directory and its device's page cache and partitions,
//! and waits for the next volume (docs/design/0008-warm-pool.md).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use spritedisk_ublk::bdev::{BdevError, Claim};
use spritedisk_ublk::{kill_device, BindError, Rebindable, UblkOptions};
use spritedisk_volume::{reset_cache_dir, Volume, DEFAULT_SIZE_BYTES};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

use super::records::{self, SlotRecord, SlotState};
use crate::cli::AttachArgs;
use crate::registry::{self, Entry};

/// How long a bind or unbind waits for a transient opener of the device
/// (udev's probe after a partition re-read) to go away.
const CLAIM_WAIT_MAX: Duration = Duration::from_secs(3);
/// How often a standby looks whether its manager is still there.
const MANAGER_CHECK_PERIOD: Duration = Duration::from_millis(500);
/// A ready standby with a store makes a request this often, so the
/// connection it keeps open for the next volume does not go idle and close.
const KEEP_WARM_PERIOD: Duration = Duration::from_secs(20);
/// Longest a request on the standby's socket may take to arrive.
const REQUEST_READ_MAX: Duration = Duration::from_secs(5);

pub struct StandbyArgs {
    pub slot: u64,
    /// The slot's local state goes in `pool_cache_dir/slot-K`.
    pub pool_cache_dir: PathBuf,
    pub store: Option<String>,
    pub cache_bytes: u64,
    pub queues: u16,
    pub queue_depth: u16,
    /// When the manager is gone, a standby with no volume leaves too.
    pub manager_pid: u32,
}

/// The volume a standby serves, and what serves it besides the device.
struct Bound {
    volume: Volume,
    url: String,
    _stats: crate::inspect::StatsPublisher,
    _control: crate::control::ControlServer,
}

struct Standby {
    rec: SlotRecord,
    engine: Arc<Rebindable<Volume>>,
    cache_dir: PathBuf,
    cache_bytes: u64,
    uopts: UblkOptions,
    bound: Option<Bound>,
    store: Option<String>,
    manager_pid: u32,
    /// A volume was not closed cleanly: its write log in the slot is the
    /// only copy of its unflushed writes, and the slot stays when we leave.
    keep_cache_dir: bool,
    /// The slot could not be emptied: this standby cannot serve again.
    leave_now: bool,
}

/// The exit status of a standby that left keeping its slot (a failed final
/// flush), so the manager does not count it as a failed start.
pub const EXIT_KEPT_SLOT: i32 = 3;

/// One request read from the socket, and where its answer goes.
struct Request {
    req: Value,
    line: String,
    reply: tokio::net::unix::OwnedWriteHalf,
}

/// Why a request was refused; `attach --pool` tries another standby after
/// `Busy`, attaches cold after `Size`, and reports `Failed`.
enum Refusal {
    Busy(String),
    Size(String),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Refusal {
    fn from(e: anyhow::Error) -> Self {
        Refusal::Failed(e)
    }
}

pub async fn run(a: StandbyArgs) -> Result<i32> {
    // First: a `pool stop` while the device is being added must end in a
    // clean exit that deletes it, not the default action of the signal.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cache_dir = a.pool_cache_dir.join(format!("slot-{}", a.slot));
    let mut rec = SlotRecord {
        slot: a.slot,
        pid: std::process::id(),
        state: SlotState::Starting,
        dev_id: None,
        device: None,
        url: None,
        cache_dir: cache_dir.clone(),
        since_unix_ms: records::now_unix_ms(),
        binds: 0,
    };
    records::write_slot(&rec)?;
    reset_cache_dir(&cache_dir, a.cache_bytes)
        .with_context(|| format!("preparing {}", cache_dir.display()))?;
    // One S3 client for every volume this daemon will serve.
    spritedisk_store::share_s3_client();
    if let Some(url) = &a.store {
        if let Err(e) = spritedisk_store::warm_up(url).await {
            tracing::warn!(url, error = %e, "cannot reach the pool's store yet; volumes will connect when bound");
        }
    }

    let engine = Arc::new(Rebindable::<Volume>::new(DEFAULT_SIZE_BYTES));
    let uopts = UblkOptions {
        queues: a.queues,
        depth: a.queue_depth,
        ..UblkOptions::default()
    };
    let (live_tx, live_rx) = tokio::sync::oneshot::channel();
    let rt = tokio::runtime::Handle::current();
    let (e2, o2) = (engine.clone(), uopts.clone());
    let mut serving = tokio::task::spawn_blocking(move || {
        spritedisk_ublk::serve(e2, rt, &o2, move |id, path| {
            let _ = live_tx.send((id, path));
        })
    });
    let (dev_id, device) = tokio::select! {
        live = live_rx => live.context("the standby device never came up")?,
        res = &mut serving => {
            records::remove_slot(a.slot);
            return Err(match res {
                Ok(Err(e)) => anyhow::Error::from(e),
                Ok(Ok(_)) => anyhow!("the standby device stopped before it came up"),
                Err(e) => anyhow::Error::from(e),
            });
        }
    };
    rec.dev_id = Some(dev_id);
    rec.device = Some(device.clone());
    let listener = match spritedisk_nbd::local_socket::bind_private(&records::socket_path(a.slot)) {
        Ok(l) => l,
        Err(e) => {
            let _ = kill_device(dev_id);
            let _ = serving.await;
            records::remove_slot(a.slot);
            return Err(e).with_context(|| {
                format!("listening on {}", records::socket_path(a.slot).display())
            });
        }
    };
    let busy = Arc::new(AtomicBool::new(false));
    let (tx, mut requests) = tokio::sync::mpsc::channel(1);
    let _acceptor = AbortOnDrop(tokio::spawn(accept_requests(listener, busy.clone(), tx)));
    let mut s = Standby {
        rec,
        engine,
        cache_dir,
        cache_bytes: a.cache_bytes,
        uopts,
        bound: None,
        store: a.store.clone(),
        manager_pid: a.manager_pid,
        keep_cache_dir: false,
        leave_now: false,
    };
    s.set_state(SlotState::Ready, None);
    tracing::info!(device, slot = a.slot, "standby device ready");

    let mut tick = tokio::time::interval(MANAGER_CHECK_PERIOD);
    let mut last_warm = Instant::now();
    let mut stopped_outside = false;
    loop {
        tokio::select! {
            Some(r) = requests.recv() => {
                let leave = s.answer(r).await;
                busy.store(false, Ordering::SeqCst);
                if leave {
                    break;
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = &mut serving => {
                stopped_outside = true;
                break;
            }
            _ = tick.tick() => {
                if s.bound.is_none() && !registry::pid_alive(a.manager_pid) {
                    tracing::info!("the pool's manager is gone: leaving");
                    break;
                }
                if s.bound.is_none() && last_warm.elapsed() > KEEP_WARM_PERIOD {
                    last_warm = Instant::now();
                    // In a task: a store that stalls must not stall requests.
                    if let Some(url) = s.store.clone() {
                        tokio::spawn(async move { spritedisk_store::warm_up(&url).await });
                    }
                }
            }
        }
    }

    // Leaving: the device stops first (as a cold daemon's does), so that a
    // filesystem still mounted on it sees errors, never the zeros of an
    // unbound device; then a bound volume is flushed and closed.
    if !stopped_outside {
        if let Err(e) = kill_device(dev_id) {
            tracing::warn!(error = %e, "stopping the standby device");
        }
        let _ = serving.await;
    }
    if s.bound.is_some() {
        s.set_state(SlotState::Returning, None);
        if let Err(e) = s.close_volume().await {
            tracing::error!(error = %e, "final flush failed: writes since the last successful FLUSH are lost");
        }
    }
    let code = if s.keep_cache_dir { EXIT_KEPT_SLOT } else { 0 };
    records::remove_slot(a.slot);
    if !s.keep_cache_dir {
        let _ = std::fs::remove_dir_all(&s.cache_dir);
    }
    tracing::info!(device, "standby left the pool");
    Ok(code)
}

impl Standby {
    fn device(&self) -> &str {
        self.rec.device.as_deref().unwrap_or("?")
    }

    fn set_state(&mut self, state: SlotState, url: Option<String>) {
        self.rec.state = state;
        self.rec.url = url;
        self.rec.since_unix_ms = records::now_unix_ms();
        if let Err(e) = records::write_slot(&self.rec) {
            tracing::warn!(error = %e, "recording the standby's state");
        }
    }

    /// Answers one request; true when the standby should leave.
    async fn answer(&mut self, r: Request) -> bool {
        let Request {
            req,
            line,
            reply: mut wr,
        } = r;
        let (reply, leave) = match req["op"].as_str() {
            Some("bind") => match serde_json::from_value::<AttachArgs>(req["args"].clone()) {
                Ok(args) => (self.bind(args).await, false),
                Err(e) => (
                    Err(Refusal::Failed(anyhow!("bad bind request: {e}"))),
                    false,
                ),
            },
            Some("unbind") => match self.unbind().await {
                // With the pool stopped, the device is not kept.
                Ok(mut v) if !registry::pid_alive(self.manager_pid) => {
                    v["pool_stopped"] = json!(true);
                    (Ok(v), true)
                }
                other => (other, false),
            },
            Some("retire") if self.rec.state == SlotState::Ready => (Ok(json!(null)), true),
            Some("retire") => (Err(Refusal::Busy("serving a volume".into())), false),
            _ => (
                Err(Refusal::Failed(anyhow!("unknown request {line:?}"))),
                false,
            ),
        };
        // A volume that could not be closed leaves its write log in the
        // slot: this standby retires and keeps it.
        let leave = leave || self.keep_cache_dir || self.leave_now;
        let out = match reply {
            Ok(v) => json!({ "ok": v }),
            Err(Refusal::Busy(m)) => json!({ "error": m, "kind": "busy" }),
            Err(Refusal::Size(m)) => json!({ "error": m, "kind": "size" }),
            Err(Refusal::Failed(e)) => json!({ "error": crate::error_chain(&e), "kind": "failed" }),
        };
        let _ = wr.write_all(format!("{out}\n").as_bytes()).await;
        leave
    }

    async fn bind(&mut self, args: AttachArgs) -> Result<Value, Refusal> {
        if self.rec.state != SlotState::Ready {
            return Err(Refusal::Busy(format!(
                "{} is {}",
                self.device(),
                self.rec.state.name()
            )));
        }
        let t0 = Instant::now();
        let url = args.url.clone();
        self.set_state(SlotState::Binding, Some(url.clone()));
        let res = self.bind_volume(&args).await;
        match res {
            Ok(open_ms) => {
                self.rec.binds += 1;
                self.set_state(SlotState::Bound, Some(url.clone()));
                let ms = t0.elapsed().as_millis() as u64;
                tracing::info!(url, device = self.device(), open_ms, ms, "volume bound");
                Ok(json!({ "device": self.device(), "open_ms": open_ms, "bind_ms": ms }))
            }
            Err(e) => {
                // Nothing of the volume stays: its metadata is wiped again
                // (unless its close failed, and the slot is all there is).
                if !self.keep_cache_dir {
                    if let Err(w) = reset_cache_dir(&self.cache_dir, self.cache_bytes) {
                        tracing::error!(error = %w, "emptying the slot after a failed bind: leaving");
                        self.leave_now = true;
                    }
                }
                if !self.keep_cache_dir && !self.leave_now {
                    self.set_state(SlotState::Ready, None);
                }
                Err(e)
            }
        }
    }

    /// Opens the volume and puts it behind the device; the open's time in ms.
    async fn bind_volume(&mut self, args: &AttachArgs) -> Result<u64, Refusal> {
        let device = self.device().to_string();
        // Nobody may hold the device while it changes volumes; pages read
        // from it while it stood by (zeros) must not be served later.
        let claim = claim(&device).await?;
        claim
            .flush_page_cache()
            .map_err(|e| Refusal::Failed(e.into()))?;
        let mut opts = args.engine_options()?;
        opts.cache_bytes = self.cache_bytes;
        let t0 = Instant::now();
        let volume = Volume::open(args.open_store()?, &args.url, Some(&self.cache_dir), opts)
            .await
            .map_err(|e| Refusal::Failed(e.into()))?;
        let open_ms = t0.elapsed().as_millis() as u64;
        match self.engine.bind(Arc::new(volume.clone())) {
            Ok(()) => {}
            Err(BindError::SizeMismatch {
                device_bytes,
                volume_bytes,
            }) => {
                self.keep_cache_dir |= volume.close().await.is_err();
                return Err(Refusal::Size(format!(
                    "{} is {} and pool devices are {} (ublk fixes a device's size when it is added)",
                    args.url,
                    crate::size::human(volume_bytes),
                    crate::size::human(device_bytes)
                )));
            }
            Err(BindError::AlreadyBound) => {
                self.keep_cache_dir |= volume.close().await.is_err();
                return Err(Refusal::Busy(format!("{device} is serving a volume")));
            }
        }
        // Bound: the rest must not fail half-way, or the volume would stay
        // behind the device with nobody able to detach it.
        let finish = (|| -> Result<Bound> {
            // Zeros that a reader (udev's probe) cached during the open.
            claim.flush_page_cache()?;
            if let Err(e) = claim.reread_partitions() {
                tracing::warn!(error = %e, "partitions of the new volume were not read");
            }
            registry::write(&Entry {
                dev_id: self.rec.dev_id.unwrap_or_default(),
                device: device.clone(),
                url: args.url.clone(),
                pid: std::process::id(),
                cache_dir: self.cache_dir.clone(),
                queues: self.uopts.queues,
                queue_depth: self.uopts.depth,
                since_unix: records::now_unix_ms() / 1000,
                pool_slot: Some(self.rec.slot),
                durability: args.durability,
            })?;
            Ok(Bound {
                _control: crate::control::serve(volume.clone(), &self.cache_dir)?,
                _stats: crate::inspect::publish_stats(volume.clone(), self.cache_dir.clone()),
                url: args.url.clone(),
                volume: volume.clone(),
            })
        })();
        drop(claim);
        match finish {
            Ok(bound) => {
                self.bound = Some(bound);
                Ok(open_ms)
            }
            Err(e) => {
                self.engine.unbind().await;
                registry::remove(self.rec.dev_id.unwrap_or_default());
                self.keep_cache_dir |= volume.close().await.is_err();
                Err(Refusal::Failed(e))
            }
        }
    }

    /// Gives the volume back (flushed, lease released) and makes the device
    /// a clean standby again.
    async fn unbind(&mut self) -> Result<Value, Refusal> {
        let Some(url) = self.bound.as_ref().map(|b| b.url.clone()) else {
            return Err(Refusal::Busy(format!("{} serves no volume", self.device())));
        };
        let device = self.device().to_string();
        let claim = claim(&device).await?;
        // Dirty pages of the device belong to this volume: written to it
        // now, and the cached ones dropped.
        claim
            .flush_page_cache()
            .map_err(|e| Refusal::Failed(e.into()))?;
        self.set_state(SlotState::Returning, Some(url.clone()));
        let t0 = Instant::now();
        self.close_volume().await.map_err(|e| {
            Refusal::Failed(anyhow!(
                "{url}: the final flush failed ({e}); its write log stays in {} (attach {url} --cache-dir {} to replay it); the standby leaves the pool",
                self.cache_dir.display(),
                self.cache_dir.display()
            ))
        })?;
        if let Err(e) = reset_cache_dir(&self.cache_dir, self.cache_bytes) {
            self.leave_now = true;
            return Err(Refusal::Failed(anyhow!(
                "{url} is detached, but emptying {} failed ({e}): the standby leaves the pool",
                self.cache_dir.display()
            )));
        }
        // The previous volume's partitions go (the device reads as zeros now).
        if let Err(e) = claim.reread_partitions() {
            tracing::warn!(error = %e, "partitions of the previous volume may remain");
        }
        claim
            .flush_page_cache()
            .map_err(|e| Refusal::Failed(e.into()))?;
        drop(claim);
        self.set_state(SlotState::Ready, None);
        let ms = t0.elapsed().as_millis() as u64;
        tracing::info!(
            url,
            device,
            ms,
            "volume detached; the device is back in the pool"
        );
        Ok(json!({ "url": url, "device": device, "ms": ms }))
    }

    /// Takes the volume off the device and closes it (final flush, lease
    /// released); when that fails, the slot is kept for its write log.
    async fn close_volume(&mut self) -> Result<(), spritedisk_volume::VolumeError> {
        let bound = self.bound.take().expect("a bound volume");
        let dev_id = self.rec.dev_id.unwrap_or_default();
        let Bound { volume, .. } = bound;
        self.engine.unbind().await;
        let res = volume.close().await;
        registry::remove(dev_id);
        self.keep_cache_dir |= res.is_err();
        res
    }
}

/// Claims `device`, waiting out openers that go away by themselves.
async fn claim(device: &str) -> Result<Claim, Refusal> {
    let t0 = Instant::now();
    loop {
        match Claim::take(device) {
            Ok(c) => return Ok(c),
            Err(BdevError::Busy { .. }) if t0.elapsed() < CLAIM_WAIT_MAX => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e @ BdevError::Busy { .. }) => return Err(Refusal::Busy(e.to_string())),
            Err(e) => return Err(Refusal::Failed(e.into())),
        }
    }
}

/// Accepts connections and reads one request from each. While a request is
/// being served, others are answered "busy" at once, so that one long bind
/// (a volume whose lease must be waited out) never holds up another
/// client, which moves on to the next standby.
async fn accept_requests(
    listener: UnixListener,
    busy: Arc<AtomicBool>,
    tx: tokio::sync::mpsc::Sender<Request>,
) {
    while let Ok((conn, _)) = listener.accept().await {
        if let Err(why) = spritedisk_nbd::local_socket::check_peer(&conn) {
            tracing::warn!("standby socket: {why}");
            continue;
        }
        let (busy, tx) = (busy.clone(), tx.clone());
        tokio::spawn(async move {
            let (rd, mut reply) = conn.into_split();
            let mut line = String::new();
            let mut rd = BufReader::new(rd.take(crate::control::REQUEST_LINE_BYTES_MAX));
            let read = tokio::time::timeout(REQUEST_READ_MAX, rd.read_line(&mut line)).await;
            if !matches!(read, Ok(Ok(n)) if n > 0) {
                return;
            }
            if busy.swap(true, Ordering::SeqCst) {
                let out =
                    json!({ "error": "the standby is serving another request", "kind": "busy" });
                let _ = reply.write_all(format!("{out}\n").as_bytes()).await;
                return;
            }
            let req = serde_json::from_str(&line).unwrap_or(Value::Null);
            if tx.send(Request { req, line, reply }).await.is_err() {
                busy.store(false, Ordering::SeqCst);
            }
        });
    }
}

/// Aborts a task when dropped (the acceptor, when the standby leaves).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
