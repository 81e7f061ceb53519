//! One hardware queue: a task per tag that fetches a request from the
//! kernel, runs it on the engine and commits the result.

use std::fs::File;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use io_uring::{opcode, types};
use libublk::helpers::IoBuf;
use libublk::io::{with_task_io_ring, with_task_io_ring_mut, UblkDev, UblkQueue};
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
    let exe = Rc::new(smol::LocalExecutor::new());
    let mut tasks = vec![];
    for tag in 0..dev.dev_info.queue_depth {
        let (q, engine, rt) = (q.clone(), engine.clone(), rt.clone());
        tasks.push(exe.spawn(async move {
            match tag_loop(&q, tag, engine, rt).await {
                Ok(()) | Err(UblkError::QueueIsDown) => {}
                Err(e) => tracing::error!(qid, tag, error = %e, "ublk tag task failed"),
            }
        }));
    }
    let exe2 = exe.clone();
    if let Err(e) = smol::block_on(exe.run(poll_ring(&exe2, &q, tasks))) {
        tracing::error!(qid, error = %e, "ublk queue loop failed");
    }
}

async fn tag_loop<D: BlockIo>(
    q: &UblkQueue<'_>,
    tag: u16,
    engine: Arc<D>,
    rt: tokio::runtime::Handle,
) -> Result<(), UblkError> {
    let mut buf = IoBuf::<u8>::new(q.dev.dev_info.max_io_buf_bytes as usize);
    q.submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    loop {
        let res = handle_one(q, tag, buf.as_mut_slice(), &engine, &rt).await;
        let r = SubmitNow::new(q.submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), res))
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
    rt: &tokio::runtime::Handle,
) -> i32 {
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
                    let res = on_runtime(rt, async move { e.handle_io(req).await }).await;
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
        Ok(Poll::Pending) => on_runtime(rt, run).await,
        Err(_) => None,
    };
    answer(op, offset, len, buf, res)
}

/// Runs `run` on the engine's runtime and waits here for its output; None
/// if it never answered (a panic).
async fn on_runtime<F>(rt: &tokio::runtime::Handle, run: F) -> Option<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = futures::channel::oneshot::channel();
    rt.spawn(async move {
        let _ = tx.send(run.await);
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

/// Submits the SQE a libublk future queued on its first poll right away,
/// unless the queue loop is running the tasks a ring completion woke (then
/// it submits them all at once next). A commit after a wake-up from an
/// engine thread has nothing else to enter the ring for it.
struct SubmitNow<F> {
    inner: Pin<Box<F>>,
    submitted: bool,
}

impl<F> SubmitNow<F> {
    fn new(inner: F) -> Self {
        SubmitNow {
            inner: Box::pin(inner),
            submitted: false,
        }
    }
}

thread_local! {
    /// Set while the queue loop runs the tasks its ring completions woke:
    /// the loop submits everything they queued in one `io_uring_enter`
    /// right after, so their commits need no submit of their own.
    static IN_RUN_OPS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl<F: Future> Future for SubmitNow<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let res = self.inner.as_mut().poll(cx);
        if !self.submitted {
            self.submitted = true;
            if !IN_RUN_OPS.get() {
                if let Err(e) = with_task_io_ring_mut(|r| r.submit()) {
                    tracing::error!(error = %e, "io_uring submit failed");
                }
            }
        }
        res
    }
}

/// Drives the queue's ring: smol's reactor waits for the ring fd to become
/// readable, so wake-ups from engine threads (which go through smol's
/// executor) and ring completions both get the thread moving.
async fn poll_ring<T>(
    exe: &smol::LocalExecutor<'_>,
    q: &UblkQueue<'_>,
    tasks: Vec<smol::Task<T>>,
) -> Result<(), UblkError> {
    const TIMEOUT_USER_DATA: u64 = UblkUringData::Target as u64 | UblkUringData::NonAsync as u64;
    let ring_fd = with_task_io_ring(|ring| ring.as_raw_fd());
    // SAFETY: the ring fd stays open for the queue's life; the File is turned
    // back into a raw fd below so that dropping it does not close the ring.
    let async_ring = smol::Async::new(unsafe { File::from_raw_fd(ring_fd) })
        .map_err(|_| UblkError::OtherError(-libc::EINVAL))?;
    let ts = types::Timespec::new().sec(QUEUE_IDLE_WAKE_SECS);
    let timeout = opcode::Timeout::new(&ts)
        .flags(types::TimeoutFlags::MULTISHOT)
        .build()
        .user_data(TIMEOUT_USER_DATA);
    q.ublk_submit_sqe_sync(timeout)?;

    let poll_uring = || async {
        with_task_io_ring_mut(|r| r.submit_and_wait(0))?;
        async_ring
            .readable()
            .await
            .map_err(|_| UblkError::OtherError(-libc::EIO))?;
        Ok(false)
    };
    let reap = |poll_timeout| {
        ublk_reap_io_events_with_update_queue(q, poll_timeout, Some(TIMEOUT_USER_DATA), |cqe| {
            // The idle timeout's CQE belongs to no future: handing it to
            // ublk_wake_task would complete whichever future holds slab key 0
            // (its user_data has no key bits) with a bogus result.
            if cqe.user_data() & UblkUringData::NonAsync as u64 == 0 {
                ublk_wake_task(cqe.user_data(), cqe);
            }
        })
    };
    // Commits queued here are batched: the loop's next step submits them
    // all at once (`poll_uring`, before it waits).
    let run_ops = || {
        IN_RUN_OPS.set(true);
        while exe.try_tick() {}
        IN_RUN_OPS.set(false);
    };
    let is_done = || tasks.iter().all(|t| t.is_finished());
    let res = libublk::run_uring_tasks(poll_uring, reap, run_ops, is_done).await;
    let _ = async_ring.into_inner().map(|f| f.into_raw_fd());
    res
}
