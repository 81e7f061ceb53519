//! One writer per volume: a lease object taken and renewed with conditional
//! PUTs, whose epoch fences a writer that lost it. The protocol and why it
//! is enough: docs/design/0003-single-writer-lease-and-fencing.md.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spritedisk_store::{ObjectStore, StoreError};

use crate::retry::retry_read;
use crate::VolumeError;

pub const LEASE_KEY: &str = "lease.json";
/// The longest lease TTL a lease object may name (`--lease-ttl` is bounded
/// by it): a lease read from the store beyond it is refused as invalid,
/// rather than trusted to make an attach wait for decades (M3 of the review).
pub const LEASE_TTL_SECS_MAX: u64 = 3600;
/// Conditional-PUT races lost in a row before attach gives up.
const ACQUIRE_ATTEMPTS_MAX: u32 = 16;

/// Who holds a volume: enough for a person to find the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// When this holder took the lease (Unix seconds).
    pub since_unix: i64,
    /// Unique per attach: tells our own lease from an earlier one of the
    /// same process.
    pub attach_id: String,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): a pid means
    /// something only on the same boot of the same kernel. Empty in leases
    /// written before it was recorded.
    #[serde(default)]
    pub boot_id: String,
    /// The holder's PID namespace (the inode of `/proc/self/ns/pid`): a pid
    /// means something only in it (containers share a kernel and a hostname).
    #[serde(default)]
    pub pid_ns: u64,
    /// The holder process's start time (`/proc/PID/stat` field 22, clock
    /// ticks since boot): a reused pid is another process.
    #[serde(default)]
    pub start_ticks: u64,
}

impl Holder {
    pub fn this_process() -> Holder {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown-host".into());
        let pid = std::process::id();
        Holder {
            host,
            pid,
            since_unix: now_unix(),
            attach_id: uuid::Uuid::new_v4().to_string(),
            boot_id: boot_id(),
            pid_ns: pid_namespace(),
            start_ticks: own_start_ticks(pid),
        }
    }

    /// A holder whose process is certainly gone (kill -9, a crash): on this
    /// boot of this kernel, in our PID namespace, and no process with its
    /// pid and start time exists. Only then is there no need to wait for its
    /// lease to expire; anything less certain (a lease from before these
    /// fields, another namespace, a clone of this machine with the same
    /// hostname) counts as alive.
    fn died_here(&self, me: &Holder) -> bool {
        let same_place = !self.boot_id.is_empty()
            && self.boot_id == me.boot_id
            && self.pid_ns != 0
            && self.pid_ns == me.pid_ns
            && self.start_ticks != 0;
        // A pid that no process can have (kill would read it as a process
        // group) is a damaged lease: maybe alive.
        if !same_place || self.pid == 0 || self.pid > i32::MAX as u32 {
            return false;
        }
        // SAFETY: kill with signal 0 only checks that the process exists.
        let exists = unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if !exists {
            return true;
        }
        // There is a process with that pid: gone only if it is certainly
        // another one (another start time). An unreadable /proc/PID/stat
        // (hidepid) says nothing: alive.
        start_ticks(self.pid).is_some_and(|t| t != self.start_ticks)
    }
}

/// Our own start time, or 0 (which counts as "maybe alive" to everyone) when
/// /proc is not our PID namespace's (it names another process as us).
fn own_start_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    let ours = stat
        .split_whitespace()
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(pid);
    if ours {
        start_ticks(pid).unwrap_or(0)
    } else {
        0
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

/// The start time of process `pid` in our namespace (None: no such process).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (the command) is in parentheses and may hold spaces: count
    // from the last ')'. Field 22 is the 20th after it.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {}, pid {}, since {}",
            self.host,
            self.pid,
            rfc3339(self.since_unix)
        )
    }
}

/// The lease object's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseDoc {
    pub epoch: u64,
    pub holder: Holder,
    pub renewed_unix: i64,
    pub ttl_secs: u64,
    /// Set by a clean detach: the holder wrote its last byte.
    pub released: bool,
    /// How long after a lease check a holder from between 0007 and 0009's
    /// second step acknowledged FLUSHes without another: one who takes the
    /// lease over from such a holder waits this out. 0 from holders since
    /// (their FLUSH is protected by the chain), absent before 0007.
    #[serde(default)]
    pub ack_grace_ms: u64,
    /// Renewals so far: every renewal changes the object (and its etag),
    /// even two within one second, which a watcher counts on (`acquire`).
    #[serde(default)]
    pub renewals: u64,
}

impl LeaseDoc {
    fn expired(&self, now: i64) -> bool {
        now - self.renewed_unix > self.ttl_secs as i64
    }
    fn bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec_pretty(self).expect("lease serializes"))
    }
}

/// A lease this process holds.
#[derive(Debug, Clone)]
pub struct Held {
    pub doc: LeaseDoc,
    pub etag: String,
    /// The lease before we took it (None: the first attach ever).
    pub previous: Option<LeaseDoc>,
    /// The previous holder did not release the lease and may be alive: it
    /// may still acknowledge a FLUSH within its grace (`wait_out_previous`).
    pub previous_may_ack: bool,
    /// The previous lease was one the cache directory given to `acquire`
    /// held (`custody.rs`): its write journal continues the history.
    pub previous_ours: bool,
    /// Our epoch was raised above the history's (`raise_epoch`): the lease
    /// object had been deleted or rolled back, so nothing says whether its
    /// real previous holder is still writing.
    pub raised: bool,
}

impl Held {
    /// Whether the previous holder may still be writing: it did not release
    /// the lease, or the lease lost track of it (then it may have shipped
    /// metadata after this attach read the replica, which is read again once
    /// the fence landed, and its replica TXIDs must be left behind: 0009).
    pub fn took_over(&self) -> bool {
        self.raised || self.previous.as_ref().is_some_and(|p| !p.released)
    }
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub fn rfc3339(unix: i64) -> String {
    // Civil-from-days (H. Hinnant): a date without pulling in a time crate.
    let (days, secs) = (unix.div_euclid(86400), unix.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

pub(crate) async fn read(
    store: &Arc<dyn ObjectStore>,
) -> Result<Option<(LeaseDoc, String)>, VolumeError> {
    let Some(meta) = retry_read(LEASE_KEY, || store.head(LEASE_KEY)).await? else {
        return Ok(None);
    };
    let raw = match retry_read(LEASE_KEY, || store.get(LEASE_KEY)).await {
        Ok(raw) => raw,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let doc: LeaseDoc = serde_json::from_slice(&raw).map_err(|e| {
        VolumeError::BadConfig(format!(
            "{}/{LEASE_KEY} is not a lease ({e}); delete it if no daemon has the volume attached",
            store.describe()
        ))
    })?;
    if doc.ttl_secs > LEASE_TTL_SECS_MAX || doc.ack_grace_ms > doc.ttl_secs.saturating_mul(1000) {
        return Err(VolumeError::BadConfig(format!(
            "{}/{LEASE_KEY} names a TTL of {} s and an acknowledgement grace of {} ms: at most {LEASE_TTL_SECS_MAX} s and the TTL; it was not written by spritedisk",
            store.describe(),
            doc.ttl_secs,
            doc.ack_grace_ms
        )));
    }
    Ok(Some((doc, meta.etag)))
}

/// The lease as it is now, for `stats`.
pub async fn current(store: &Arc<dyn ObjectStore>) -> Result<Option<LeaseDoc>, VolumeError> {
    Ok(read(store).await?.map(|(doc, _)| doc))
}

/// Takes the lease: refused while another holder renews it, unless `force`.
/// With `custody` (the cache directory), a lease taken from one that
/// directory held is first recorded there as its own (`custody.rs`).
pub async fn acquire(
    store: &Arc<dyn ObjectStore>,
    url: &str,
    ttl: Duration,
    force: bool,
    custody: Option<&Path>,
) -> Result<Held, VolumeError> {
    let me = Holder::this_process();
    let mut backoff = Duration::from_millis(50);
    let mut previous: Option<LeaseDoc> = None;
    let mut previous_ours = false;
    // The lease (its etag) we watched for one TTL of our own clock.
    let mut watched: Option<String> = None;
    for _ in 0..ACQUIRE_ATTEMPTS_MAX {
        let now = now_unix();
        let mut doc = LeaseDoc {
            epoch: 1,
            holder: me.clone(),
            renewed_unix: now,
            ttl_secs: ttl.as_secs().max(1),
            released: false,
            // No grace of our own: a FLUSH is protected by the chain (0009).
            ack_grace_ms: 0,
            renewals: 0,
        };
        let res = match read(store).await? {
            // Our own earlier attempt landed though its reply was lost.
            Some((cur, etag)) if cur.holder == me && !cur.released => {
                let previous_may_ack = may_still_ack(previous.as_ref(), &me);
                return Ok(Held {
                    doc: cur,
                    etag,
                    previous,
                    previous_may_ack,
                    previous_ours,
                    raised: false,
                });
            }
            None => {
                // Nothing before us (an earlier look may have seen a lease).
                previous = None;
                previous_ours = false;
                store
                    .put_if_absent(LEASE_KEY, doc.bytes())
                    .await
                    .map(|etag| (etag, None))
            }
            Some((old, etag)) => {
                let leased = || VolumeError::Leased {
                    url: url.to_string(),
                    holder: old.holder.to_string(),
                    renewed_secs_ago: (now - old.renewed_unix).max(0) as u64,
                };
                // Silent: not renewed during a whole TTL we watched it.
                let silent = watched.as_deref() == Some(etag.as_str());
                if !old.released && !force && !silent && !old.holder.died_here(&me) {
                    if watched.is_some() || !old.expired(now) {
                        // Renewed while we watched, or fresh by the clocks.
                        return Err(leased());
                    }
                    // Expired by the clocks, but they are two machines'
                    // (M2 of the 5bc5be0 review): a holder renews every
                    // third of its TTL, so one whole TTL of our own clock
                    // without a renewal says it is gone.
                    let ttl = Duration::from_secs(old.ttl_secs);
                    tracing::warn!(
                        holder = %old.holder,
                        wait_s = old.ttl_secs,
                        "the lease looks expired by the clocks: watching it for one TTL before taking it"
                    );
                    watched = Some(etag);
                    tokio::time::sleep(ttl).await;
                    continue;
                }
                if !old.released {
                    tracing::warn!(
                        previous = %old.holder,
                        epoch = old.epoch + 1,
                        expired = old.expired(now),
                        died = old.holder.died_here(&me),
                        "taking the volume over from a holder that did not detach: it is fenced"
                    );
                }
                doc.epoch = old.epoch + 1;
                if !old.released {
                    // A holder from before 0009's second step may ack until its
                    // grace is over: one who takes over from us soon after must
                    // wait that long too.
                    doc.ack_grace_ms = doc.ack_grace_ms.max(old.ack_grace_ms);
                }
                previous = Some(old.clone());
                previous_ours = match custody {
                    Some(dir) => {
                        let dir = dir.to_path_buf();
                        let (epoch, id) = (old.epoch, old.holder.attach_id.clone());
                        let next = (doc.epoch, me.attach_id.clone());
                        spritedisk_store::blocking::unblock(move || {
                            if !crate::custody::holds(&dir, epoch, &id) {
                                return false;
                            }
                            // Ours before the lease write: whatever happens
                            // to this attach after it, the next one on this
                            // directory knows the lease it finds. A failure
                            // (a full disk) is not this attach's: it still
                            // continues the journal; only a next attach
                            // after a crash in the window may drop it.
                            let recorded = crate::custody::record_intent(
                                &dir,
                                (epoch, &id),
                                (next.0, &next.1),
                            );
                            if let Err(e) = recorded {
                                tracing::warn!(error = %e, "could not record the lease this attach takes as the cache directory's");
                            }
                            true
                        })
                        .await
                        .unwrap_or(false)
                    }
                    None => false,
                };
                store
                    .put_if_match(LEASE_KEY, doc.bytes(), &etag)
                    .await
                    .map(|etag| (etag, Some(old)))
            }
        };
        match res {
            Ok((etag, previous)) => {
                let previous_may_ack = may_still_ack(previous.as_ref(), &me);
                let previous_ours = previous.is_some() && previous_ours;
                return Ok(Held {
                    doc,
                    etag,
                    previous,
                    previous_may_ack,
                    previous_ours,
                    raised: false,
                });
            }
            // Lost a race with another attach: look again.
            Err(StoreError::PreconditionFailed(_)) | Err(StoreError::NotFound(_)) => continue,
            // Maybe landed, maybe not: the next look tells.
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "taking the lease failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(VolumeError::BadConfig(format!(
        "{url}: the lease kept changing under {ACQUIRE_ATTEMPTS_MAX} attempts to take it; is another attach looping?"
    )))
}

/// Whether the holder we took the lease from may still acknowledge FLUSHes:
/// it did not release the lease and is not known to be dead.
fn may_still_ack(previous: Option<&LeaseDoc>, me: &Holder) -> bool {
    previous.is_some_and(|p| !p.released && !p.holder.died_here(me))
}

/// Waits out the grace in which a previous holder that may be alive can
/// still acknowledge a FLUSH without asking the store (its last check began
/// before our lease landed, so its grace ends less than its `ack_grace_ms`
/// after now). After this, every segment it acknowledged is in the store,
/// and the listing that follows sees it. A tenth more covers clocks that
/// run at slightly different rates on the two machines.
pub async fn wait_out_previous(held: &Held) {
    let grace = Duration::from_millis(held.previous.as_ref().map_or(0, |p| p.ack_grace_ms));
    if held.previous_may_ack && !grace.is_zero() {
        let wait = grace + grace / 10;
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            "took over a live lease: waiting out the previous holder's acknowledgement grace"
        );
        tokio::time::sleep(wait).await;
    }
}

/// Nanoseconds of CLOCK_BOOTTIME: unlike the monotonic clock it keeps
/// counting while the machine is suspended, so a writer that slept through
/// its grace cannot mistake it for still open.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_BOOTTIME is available on Linux");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A held lease, renewed every third of its TTL from the moment it is
/// taken (A2 of the 5bc5be0 review: a long attach, a big replica to
/// restore, must not let it expire) until [`Keeper::stop`] or drop.
pub struct Keeper {
    pub held: Arc<tokio::sync::Mutex<Held>>,
    lost: tokio::sync::watch::Receiver<Option<String>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    pub fn start(store: Arc<dyn ObjectStore>, held: Held, ttl: Duration) -> Keeper {
        let held = Arc::new(tokio::sync::Mutex::new(held));
        let (lost_tx, lost) = tokio::sync::watch::channel(None);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let period = (ttl / 3).max(Duration::from_millis(100));
        let task = tokio::spawn(keep(store, held.clone(), period, stop.clone(), lost_tx));
        Keeper {
            held,
            lost,
            stop,
            task,
        }
    }

    /// Who took the lease, once a renewal found it taken.
    pub fn lost(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// What [`Keeper::wait`] waits on, apart from the keeper.
    pub fn watch_lost(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    /// Waits until a renewal finds the lease taken: who took it; None once
    /// the renewals ended without losing it (stopped).
    pub async fn wait(mut rx: tokio::sync::watch::Receiver<Option<String>>) -> Option<String> {
        match rx.wait_for(|l| l.is_some()).await {
            Ok(by) => by.clone(),
            Err(_) => None,
        }
    }

    /// No more renewals (the engine stopped; a crashed daemon renews nothing).
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep(
    store: Arc<dyn ObjectStore>,
    held: Arc<tokio::sync::Mutex<Held>>,
    period: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
    lost: tokio::sync::watch::Sender<Option<String>>,
) {
    loop {
        tokio::time::sleep(period).await;
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut h = held.lock().await;
        // Stopped while we waited for the lock (a detach releasing it).
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match renew(&store, &mut h).await {
            Ok(LeaseState::Ours) => {}
            Ok(LeaseState::Lost(by)) => {
                let _ = lost.send(Some(by));
                return;
            }
            Err(e) => tracing::warn!(error = %e, "renewing the lease failed; retrying"),
        }
    }
}

/// What a renewal or check found.
#[derive(Debug)]
pub enum LeaseState {
    Ours,
    /// Someone else holds it now (or it is gone): we are fenced.
    Lost(String),
}

/// Renews `held` in place (If-Match); `Lost` on 412 or 404 unless the lease
/// turns out to be ours after all (an earlier renewal landed unanswered).
pub async fn renew(
    store: &Arc<dyn ObjectStore>,
    held: &mut Held,
) -> Result<LeaseState, StoreError> {
    let mut doc = held.doc.clone();
    doc.renewed_unix = now_unix();
    doc.renewals += 1;
    match store.put_if_match(LEASE_KEY, doc.bytes(), &held.etag).await {
        Ok(etag) => {
            held.etag = etag;
            held.doc = doc;
            Ok(LeaseState::Ours)
        }
        Err(StoreError::PreconditionFailed(_)) | Err(StoreError::NotFound(_)) => {
            reconcile(store, held).await
        }
        Err(e) => Err(e),
    }
}

/// Whether the lease is still ours: the etag we hold, or content naming us.
pub async fn check(
    store: &Arc<dyn ObjectStore>,
    held: &mut Held,
) -> Result<LeaseState, StoreError> {
    match store.head(LEASE_KEY).await? {
        Some(m) if m.etag == held.etag => Ok(LeaseState::Ours),
        _ => reconcile(store, held).await,
    }
}

/// Reads the lease after a mismatch: ours if it still names our epoch and
/// us (adopting its etag), else lost, with who holds it now.
/// A transient error (after `read`'s own retries) is returned, not taken
/// for a lost lease: the renewal tries again (A2 of the 5bc5be0 review).
async fn reconcile(
    store: &Arc<dyn ObjectStore>,
    held: &mut Held,
) -> Result<LeaseState, StoreError> {
    Ok(match read(store).await {
        Ok(Some((doc, etag)))
            if doc.epoch == held.doc.epoch && doc.holder == held.doc.holder && !doc.released =>
        {
            held.etag = etag;
            held.doc = doc;
            LeaseState::Ours
        }
        Ok(Some((doc, _))) => {
            LeaseState::Lost(format!("epoch {} held by {}", doc.epoch, doc.holder))
        }
        Ok(None) => LeaseState::Lost("the lease object was deleted".into()),
        Err(VolumeError::Store(e)) if e.is_transient() => return Err(e),
        Err(e) => LeaseState::Lost(format!("the lease could not be read: {e}")),
    })
}

/// Raises the epoch of the lease we hold to `epoch` (If-Match): the lease
/// object was deleted or rolled back, and its epochs restarted below the
/// history's. A writer's epoch must exceed every epoch on the chain for its
/// fence to end the older writers' branches (docs/design/0009).
pub async fn raise_epoch(
    store: &Arc<dyn ObjectStore>,
    held: &mut Held,
    epoch: u64,
) -> Result<(), VolumeError> {
    let mut doc = held.doc.clone();
    doc.epoch = epoch;
    for _ in 0..ACQUIRE_ATTEMPTS_MAX {
        match store.put_if_match(LEASE_KEY, doc.bytes(), &held.etag).await {
            Ok(etag) => {
                held.etag = etag;
                held.doc = doc;
                held.raised = true;
                return Ok(());
            }
            Err(e) if e.is_transient() || matches!(e, StoreError::PreconditionFailed(_)) => {
                // Maybe it landed with its reply lost; maybe someone took it.
                match read(store).await? {
                    Some((cur, etag)) if cur.holder == doc.holder && !cur.released => {
                        held.etag = etag;
                        if cur.epoch == epoch {
                            held.doc = cur;
                            held.raised = true;
                            return Ok(());
                        }
                    }
                    Some((cur, _)) => {
                        return Err(VolumeError::Fenced(format!(
                            "epoch {} held by {}",
                            cur.epoch, cur.holder
                        )))
                    }
                    None => {
                        return Err(VolumeError::Fenced(
                            "the lease object was deleted during the attach".into(),
                        ))
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(VolumeError::BadConfig(format!(
        "the lease kept changing under {ACQUIRE_ATTEMPTS_MAX} attempts to raise its epoch; is another attach looping?"
    )))
}

/// Marks the lease released (clean detach), so the next attach needs no wait.
pub async fn release(store: &Arc<dyn ObjectStore>, held: &Held) -> Result<(), StoreError> {
    let mut doc = held.doc.clone();
    doc.released = true;
    doc.renewed_unix = now_unix();
    store
        .put_if_match(LEASE_KEY, doc.bytes(), &held.etag)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::Holder;

    #[test]
    fn a_holder_is_dead_only_when_certainly_gone_from_our_kernel_and_namespace() {
        let me = Holder::this_process();
        assert!(!me.boot_id.is_empty() && me.pid_ns != 0 && me.start_ticks != 0);
        // Ourselves: alive.
        assert!(!me.died_here(&me));
        // Our pid reused by another process (another start time): gone.
        let reused = Holder {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert!(reused.died_here(&me));
        // A pid no process has here: gone.
        let free = (300..4_000_000u32)
            .rev()
            .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .unwrap();
        let absent = Holder {
            pid: free,
            ..me.clone()
        };
        assert!(absent.died_here(&me));
        // A pid no process can have: a damaged lease, maybe alive.
        let bogus = Holder {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        assert!(!bogus.died_here(&me));
        // The same pid number in another PID namespace (a container with our
        // hostname), on another boot (a clone of this machine), or a lease
        // from before these fields: maybe alive (D5 of the 5bc5be0 review).
        for maybe_alive in [
            Holder {
                pid_ns: me.pid_ns + 1,
                ..absent.clone()
            },
            Holder {
                boot_id: "00000000-0000-4000-8000-000000000000".into(),
                ..absent.clone()
            },
            Holder {
                boot_id: String::new(),
                pid_ns: 0,
                start_ticks: 0,
                ..absent.clone()
            },
        ] {
            assert!(!maybe_alive.died_here(&me), "{maybe_alive:?}");
        }
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
