//! One hardware queue: a task per tag that fetches a request from the
//! kernel, runs it on the engine and commits the result.

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use io_uring::{opcode, types};
use libublk::helpers::IoBuf;
use libublk::io::{with_task_io_ring_mut, UblkDev, UblkQueue};
use libublk::uring_async::{ublk_reap_io_events_with_update_queue, ublk_wake_task};
use libublk::{BufDesc, UblkError, UblkUringData};
use spritedisk_volume::{BlockIo, IoReply, IoRequest};

/// The queue loop wakes at least this often to notice that it is shutting down.
const QUEUE_IDLE_WAKE_SECS: u64 = 20;

/// Runs queue `qid` until the device stops. Called on libublk's queue thread.
pub(crate) fn run_queue<D: BlockIo>(
    qid: u16,
    dev: &UblkDev,
    engine: Arc<D>,
    rt: tokio::runtime::Handle,
) {
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!(qid, error = %e, "ublk queue setup failed");
            return;
        }
    };
    let kick = match Kick::new() {
        Ok(k) => Arc::new(k),
        Err(e) => {
            tracing::error!(qid, error = %e, "ublk queue setup failed: eventfd");
            return;
        }
    };
    let exe = smol::LocalExecutor::new();
    let mut tasks = vec![];
    for tag in 0..dev.dev_info.queue_depth {
        let (q, engine, rt, kick) = (q.clone(), engine.clone(), rt.clone(), kick.clone());
        tasks.push(exe.spawn(async move {
            let on = Runtime { rt, kick };
            match tag_loop(&q, tag, engine, on).await {
                Ok(()) | Err(UblkError::QueueIsDown) => {}
                Err(e) => tracing::error!(qid, tag, error = %e, "ublk tag task failed"),
            }
        }));
    }
    if let Err(e) = drive_ring(&exe, &q, tasks, &kick) {
        tracing::error!(qid, error = %e, "ublk queue loop failed");
    }
}

/// The engine's runtime, as a queue thread's tasks reach it: what runs
/// there wakes the queue thread through `kick` when it is done.
struct Runtime {
    rt: tokio::runtime::Handle,
    kick: Arc<Kick>,
}

/// An eventfd the queue's ring reads: how work finished on the engine's
/// runtime wakes a queue thread that sleeps in `io_uring_enter`
/// (docs/design/0011: waking it through smol's reactor thread cost 10% of
/// the daemon's CPU under warm reads). Written by hand over `libc`: one
/// syscall each way, and the ring does the reading.
struct Kick {
    fd: std::os::fd::OwnedFd,
}

impl Kick {
    fn new() -> std::io::Result<Kick> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(Kick {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Wakes the queue thread (the counter only adds up: a kick is never
    /// lost, whether the ring's read is armed yet or not).
    fn kick(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our own eventfd.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if n != one.len() as isize {
            // Cannot happen short of a closed descriptor (a blocking
            // eventfd's counter would have to reach 2^64 - 1).
            tracing::warn!(error = %std::io::Error::last_os_error(), "ublk queue kick failed");
        }
    }
}

async fn tag_loop<D: BlockIo>(
    q: &UblkQueue<'_>,
    tag: u16,
    engine: Arc<D>,
    rt: Runtime,
) -> Result<(), UblkError> {
    let mut buf = IoBuf::<u8>::new(q.dev.dev_info.max_io_buf_bytes as usize);
    q.submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    loop {
        let res = handle_one(q, tag, buf.as_mut_slice(), &engine, &rt).await;
        // Queued here, submitted with every other commit of this wake-up
        // by the queue loop's next `io_uring_enter` (drive_ring).
        let r = q
            .submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), res)
            .await?;
        // Anything but OK means no new request is in this tag's descriptor:
        // serving it again would answer a request with stale data.
        if r != libublk::sys::UBLK_IO_RES_OK as i32 {
            tracing::error!(tag, r, "ublk COMMIT_AND_FETCH failed; this tag stops");
            return Err(UblkError::OtherError(r));
        }
    }
}

/// Decodes the kernel's descriptor for `tag`, runs it, and returns the
/// ublk result: bytes done, or a negative errno.
///
/// A request runs on this queue thread for as long as it needs no wait
/// (docs/design/0011): a read from memory or the cache lands straight in
/// the tag's buffer, and a write that fits the dirty-memory bound is
/// buffered here. Only a request that must wait (a GET, a FLUSH, a write
/// held back) is handed to the engine's runtime, and the tag's task is
/// woken when it is done. A read that `read_now` cannot serve goes to the
/// runtime at once. A write's inline poll may still wait for the state
/// lock through another request's write log append or seal (since 0012 a
/// seal holds it only to build the segment's index; measured worth it
/// before that already: 1.2–1.3× on the write and mixed jobs).
async fn handle_one<D: BlockIo>(
    q: &UblkQueue<'_>,
    tag: u16,
    buf: &mut [u8],
    engine: &Arc<D>,
    on: &Runtime,
) -> i32 {
    let rt = &on.rt;
    let iod = q.get_iod(tag);
    let op = iod.op_flags & 0xff;
    let fua = iod.op_flags & libublk::sys::UBLK_IO_F_FUA != 0;
    let offset = iod.start_sector << 9;
    let len = (iod.nr_sectors as u64) << 9;
    let req = match op {
        libublk::sys::UBLK_IO_OP_READ => {
            if len as usize > buf.len() {
                return -libc::EINVAL;
            }
            // A panic here must answer the request (EIO), as one on the
            // runtime does: a tag whose task dies is never committed.
            let now = catch_unwind(AssertUnwindSafe(|| {
                let _rt = rt.enter();
                engine.read_now(offset, &mut buf[..len as usize])
            }));
            match now {
                Ok(Some(Ok(()))) => return len as i32,
                Ok(Some(Err(e))) => return failed(op, offset, len, &e),
                // It must wait (a GET, or a lock read_now does not wait
                // for): straight to the runtime, never polled here, where
                // it could block the queue thread on that lock.
                Ok(None) => {
                    let e = engine.clone();
                    let req = IoRequest::Read {
                        offset,
                        len: len as u32,
                    };
                    let res = on_runtime(on, async move { e.handle_io(req).await }).await;
                    return answer(op, offset, len, buf, res);
                }
                Err(_) => return -libc::EIO,
            }
        }
        libublk::sys::UBLK_IO_OP_WRITE => {
            if len as usize > buf.len() {
                return -libc::EINVAL;
            }
            IoRequest::Write {
                offset,
                // The one copy of a written byte before the write buffer:
                // the tag's buffer is reused by the next request.
                data: Bytes::copy_from_slice(&buf[..len as usize]),
                fua,
            }
        }
        libublk::sys::UBLK_IO_OP_FLUSH => IoRequest::Flush,
        libublk::sys::UBLK_IO_OP_DISCARD => IoRequest::Discard { offset, len, fua },
        libublk::sys::UBLK_IO_OP_WRITE_ZEROES => IoRequest::WriteZeroes { offset, len, fua },
        _ => return -libc::EOPNOTSUPP,
    };
    let e = engine.clone();
    let mut run = Box::pin(async move { e.handle_io(req).await });
    // One poll here, inside the runtime's context. Pending: the future
    // goes to the runtime, whose first poll registers the waker that
    // counts (the no-op one of this poll is replaced).
    let first = catch_unwind(AssertUnwindSafe(|| {
        let _rt = rt.enter();
        let waker = futures::task::noop_waker();
        run.as_mut().poll(&mut Context::from_waker(&waker))
    }));
    let res = match first {
        Ok(Poll::Ready(r)) => Some(r),
        Ok(Poll::Pending) => on_runtime(on, run).await,
        Err(_) => None,
    };
    answer(op, offset, len, buf, res)
}

/// Runs `run` on the engine's runtime and waits here for its output; None
/// if it never answered (a panic).
async fn on_runtime<F>(on: &Runtime, run: F) -> Option<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = futures::channel::oneshot::channel();
    // Answers the tag's task, then wakes the queue thread, however the
    // work ends: a panic drops the sender (the tag answers EIO) before
    // the kick, so the queue thread finds the task ready.
    struct Answer<T> {
        tx: Option<futures::channel::oneshot::Sender<T>>,
        kick: Arc<Kick>,
    }
    impl<T> Drop for Answer<T> {
        fn drop(&mut self) {
            drop(self.tx.take());
            self.kick.kick();
        }
    }
    let mut answer = Answer {
        tx: Some(tx),
        kick: on.kick.clone(),
    };
    on.rt.spawn(async move {
        let out = run.await;
        if let Some(tx) = answer.tx.take() {
            let _ = tx.send(out);
        }
    });
    rx.await.ok()
}

/// The ublk result of an engine's answer: bytes done (read data copied
/// into the tag's buffer), or a negative errno; EIO when there was none.
fn answer(
    op: u32,
    offset: u64,
    len: u64,
    buf: &mut [u8],
    res: Option<Result<IoReply, spritedisk_volume::VolumeError>>,
) -> i32 {
    match res {
        Some(Ok(IoReply::Data(d))) if d.len() <= buf.len() => {
            buf[..d.len()].copy_from_slice(&d);
            d.len() as i32
        }
        Some(Ok(IoReply::Data(_))) | None => -libc::EIO,
        Some(Ok(IoReply::Done)) => len.min(i32::MAX as u64) as i32,
        Some(Err(e)) => failed(op, offset, len, &e),
    }
}

fn failed(op: u32, offset: u64, len: u64, e: &spritedisk_volume::VolumeError) -> i32 {
    tracing::warn!(op, offset, len, error = %e, "ublk request failed");
    -e.errno()
}

/// Drives the queue's ring on its thread: runs the tasks that are ready,
/// submits what they queued and sleeps in `io_uring_enter` until a
/// completion comes, from the kernel (a new request, a commit's answer)
/// or from the eventfd read that `Kick` completes (work done on the
/// engine's runtime). No other thread is involved: the kernel wakes this
/// one.
fn drive_ring<T>(
    exe: &smol::LocalExecutor<'_>,
    q: &UblkQueue<'_>,
    tasks: Vec<smol::Task<T>>,
    kick: &Kick,
) -> Result<(), UblkError> {
    const TIMEOUT_USER_DATA: u64 = UblkUringData::Target as u64 | UblkUringData::NonAsync as u64;
    const KICK_USER_DATA: u64 = TIMEOUT_USER_DATA | 1;
    let ts = types::Timespec::new().sec(QUEUE_IDLE_WAKE_SECS);
    let timeout = opcode::Timeout::new(&ts)
        .flags(types::TimeoutFlags::MULTISHOT)
        .build()
        .user_data(TIMEOUT_USER_DATA);
    q.ublk_submit_sqe_sync(timeout)?;
    // The read's 8 bytes must outlive any read still armed when this
    // returns (the ring is torn down after): leaked, 8 bytes per queue.
    let counter: &'static mut u64 = Box::leak(Box::new(0u64));
    let counter: *mut u8 = (counter as *mut u64).cast();
    let arm = || {
        let read = opcode::Read::new(types::Fd(kick.fd.as_raw_fd()), counter, 8)
            .build()
            .user_data(KICK_USER_DATA);
        q.ublk_submit_sqe_sync(read)
    };
    // Never returns while a tag is alive (the kernel holds its buffer):
    // a read that could not be armed is tried again after the next enter,
    // and meanwhile the idle timeout still wakes the loop.
    let mut armed = false;
    let mut kick_failed = false;
    // Tasks run only here, so every SQE they queue (commits, fetches) is
    // submitted by the next `io_uring_enter`, all of a wake-up's at once.
    let run_ops = || while exe.try_tick() {};
    let is_done = || tasks.iter().all(|t| t.is_finished());
    loop {
        if !armed {
            match arm() {
                Ok(()) => armed = true,
                Err(e) => tracing::error!(error = %e, "ublk queue: cannot arm the kick's read"),
            }
        }
        run_ops();
        if is_done() {
            return Ok(());
        }
        match with_task_io_ring_mut(|r| r.submit_and_wait(1)) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => tracing::error!(error = %e, "ublk queue: io_uring_enter failed"),
        }
        ublk_reap_io_events_with_update_queue(q, false, Some(TIMEOUT_USER_DATA), |cqe| {
            let data = cqe.user_data();
            if data == KICK_USER_DATA {
                armed = false;
                if cqe.result() < 0 && !std::mem::replace(&mut kick_failed, true) {
                    tracing::error!(
                        error = %std::io::Error::from_raw_os_error(-cqe.result()),
                        "ublk queue: the kick's read failed (logged once)"
                    );
                }
            } else if data & UblkUringData::NonAsync as u64 == 0 {
                // The idle timeout's CQE belongs to no future: handing it
                // to ublk_wake_task would complete whichever future holds
                // slab key 0 (its user_data has no key bits) with a bogus
                // result.
                ublk_wake_task(data, cqe);
            }
        })?;
    }
}
