//! The transmission phase: the request loop and the single reply writer.
//!
//! Writes, trims and write-zeroes run inline in the reader loop, in arrival
//! order: the next request is not read until the engine has answered, which
//! gives natural backpressure and keeps write ordering trivial. Reads and
//! flushes are spawned so they overlap each other and the writes; at most
//! [`INFLIGHT_REQUESTS_MAX`] run at once. Every reply goes through one writer
//! task fed by a channel, so reply frames never interleave.
//!
//! A spawned request's permits travel with its reply and are released only
//! once the reply is written, which bounds both the tasks and the queued
//! read data.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use spritedisk_volume::{BlockIo, IoReply, IoRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::handshake::discard;
use crate::proto::*;
use crate::NbdError;

/// Spawned requests (reads, flushes) in flight per connection.
pub const INFLIGHT_REQUESTS_MAX: usize = 64;
/// Read data in flight per connection (being read or queued for the socket);
/// without it 64 maximal reads could pin 2 GiB.
pub const INFLIGHT_READ_LEN_MAX_BYTES: usize = 256 * 1024 * 1024;
// A maximal read must fit the budget, or it would wait forever.
const _: () = assert!(REQUEST_LEN_MAX_BYTES as usize <= INFLIGHT_READ_LEN_MAX_BYTES);
/// Replies queued for the writer task.
const REPLY_QUEUE_LEN_MAX: usize = INFLIGHT_REQUESTS_MAX;
const READ_BUFFER_LEN_BYTES: usize = 256 * 1024;
const WRITE_BUFFER_LEN_BYTES: usize = 64 * 1024;

struct Reply {
    cookie: u64,
    errno: u32,
    /// Only for a successful READ.
    data: Option<Bytes>,
    /// Released once the reply is on the socket (see module docs).
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Reply {
    fn new(cookie: u64, errno: u32) -> Self {
        Reply {
            cookie,
            errno,
            data: None,
            _permits: Vec::new(),
        }
    }
}

/// Serves requests until NBD_CMD_DISC, the client hanging up, or a protocol
/// error. On DISC or hang-up, waits for in-flight requests and their replies
/// before returning; on a protocol error, drops the connection at once.
pub(crate) async fn serve<D, S>(dev: Arc<D>, stream: S) -> Result<(), NbdError>
where
    D: BlockIo,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(READ_BUFFER_LEN_BYTES, rd);
    let (tx, rx) = mpsc::channel(REPLY_QUEUE_LEN_MAX);
    let writer = tokio::spawn(write_replies(rx, wr));
    let conn = Conn {
        dev,
        tx,
        inflight: Arc::new(Semaphore::new(INFLIGHT_REQUESTS_MAX)),
        read_budget: Arc::new(Semaphore::new(INFLIGHT_READ_LEN_MAX_BYTES)),
    };
    let result = conn.request_loop(&mut rd).await;
    drop(conn); // closes our end of the reply channel

    match result {
        Ok(()) => {
            // Spawned requests hold the other senders, so the writer ends
            // once every in-flight reply has been written.
            match writer.await {
                Ok(r) => r.map_err(NbdError::from),
                Err(e) => Err(std::io::Error::other(e).into()),
            }
        }
        Err(NbdError::WriterGone) => match writer.await {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(NbdError::WriterGone),
        },
        Err(e) => {
            // Spawned engine calls are left to finish (they may not be safe
            // to cancel); their replies go nowhere.
            writer.abort();
            Err(e)
        }
    }
}

/// The reply to a read: its data, or an errno.
fn read_reply(
    req: &Request,
    r: Result<IoReply, spritedisk_volume::VolumeError>,
    permits: Vec<OwnedSemaphorePermit>,
) -> Reply {
    let (errno, data) = match r {
        Ok(IoReply::Data(d)) if d.len() == req.len as usize => (0, Some(d)),
        Ok(other) => {
            // Sending the wrong byte count would desync the client.
            warn!(?req, "engine answered a read with the wrong amount of data");
            drop(other);
            (EIO, None)
        }
        Err(e) => {
            debug!(error = %e, "nbd read failed");
            (nbd_errno(e.errno()), None)
        }
    };
    Reply {
        cookie: req.cookie,
        errno,
        data,
        _permits: permits,
    }
}

struct Conn<D> {
    dev: Arc<D>,
    tx: mpsc::Sender<Reply>,
    inflight: Arc<Semaphore>,
    read_budget: Arc<Semaphore>,
}

impl<D: BlockIo> Conn<D> {
    async fn request_loop<R: AsyncRead + Unpin>(&self, rd: &mut R) -> Result<(), NbdError> {
        loop {
            let Some(hdr) = read_header(rd).await? else {
                debug!("nbd client hung up");
                return Ok(());
            };
            let req = Request::decode(&hdr).map_err(NbdError::BadRequestMagic)?;
            match req.cmd {
                CMD_READ => self.read(req).await?,
                CMD_WRITE => self.write(rd, req).await?,
                CMD_DISC => {
                    debug!("nbd client disconnected");
                    return Ok(());
                }
                CMD_FLUSH => self.flush(req).await?,
                CMD_TRIM => {
                    let io = IoRequest::Discard {
                        offset: req.offset,
                        len: u64::from(req.len),
                        fua: req.flags & CMD_FLAG_FUA != 0,
                    };
                    self.inline(req, CMD_FLAG_FUA, io).await?;
                }
                CMD_WRITE_ZEROES => {
                    // NO_HOLE is accepted and ignored: zeros read back as
                    // zeros whether or not they are stored.
                    let io = IoRequest::WriteZeroes {
                        offset: req.offset,
                        len: u64::from(req.len),
                        fua: req.flags & CMD_FLAG_FUA != 0,
                    };
                    self.inline(req, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE, io)
                        .await?;
                }
                other => {
                    debug!(cmd = other, "unsupported nbd command");
                    self.send(Reply::new(req.cookie, EINVAL)).await?;
                }
            }
        }
    }

    async fn send(&self, reply: Reply) -> Result<(), NbdError> {
        self.tx.send(reply).await.map_err(|_| NbdError::WriterGone)
    }

    /// Runs `io` before reading the next request. FUA is valid on every
    /// command (the spec says so); other flags are EINVAL.
    async fn inline(
        &self,
        req: Request,
        allowed_flags: u16,
        io: IoRequest,
    ) -> Result<(), NbdError> {
        let errno = if req.flags & !allowed_flags != 0 {
            EINVAL
        } else {
            match self.dev.handle_io(io).await {
                Ok(_) => 0,
                Err(e) => {
                    debug!(cmd = req.cmd, error = %e, "nbd request failed");
                    nbd_errno(e.errno())
                }
            }
        };
        self.send(Reply::new(req.cookie, errno)).await
    }

    async fn write<R: AsyncRead + Unpin>(&self, rd: &mut R, req: Request) -> Result<(), NbdError> {
        if req.len > REQUEST_LEN_MAX_BYTES {
            // Too big to buffer; skipping the payload keeps the stream in sync.
            discard(rd, u64::from(req.len)).await?;
            return self.send(Reply::new(req.cookie, EOVERFLOW)).await;
        }
        let mut data = vec![0u8; req.len as usize];
        rd.read_exact(&mut data).await?;
        let io = IoRequest::Write {
            offset: req.offset,
            data: Bytes::from(data),
            fua: req.flags & CMD_FLAG_FUA != 0,
        };
        self.inline(req, CMD_FLAG_FUA, io).await
    }

    async fn read(&self, req: Request) -> Result<(), NbdError> {
        if req.flags & !CMD_FLAG_FUA != 0 {
            return self.send(Reply::new(req.cookie, EINVAL)).await;
        }
        if req.len > REQUEST_LEN_MAX_BYTES {
            return self.send(Reply::new(req.cookie, EOVERFLOW)).await;
        }
        // Waiting here stops us reading more requests: backpressure.
        let permits = vec![
            self.inflight
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed"),
            self.read_budget
                .clone()
                .acquire_many_owned(req.len)
                .await
                .expect("semaphore never closed"),
        ];
        // Served here when it needs no wait (memory, the cache): the same
        // path as ublk's (docs/design/0011).
        let mut data = vec![0u8; req.len as usize];
        if let Some(r) = self.dev.read_now(req.offset, &mut data) {
            let r = r.map(|()| IoReply::Data(Bytes::from(data)));
            return self.send(read_reply(&req, r, permits)).await;
        }
        drop(data);
        let dev = self.dev.clone();
        let tx = self.tx.clone();
        let mut answer = Box::pin(async move {
            let io = IoRequest::Read {
                offset: req.offset,
                len: req.len,
            };
            let r = dev.handle_io(io).await;
            let _ = tx.send(read_reply(&req, r, permits)).await;
        });
        // A read that turns out not to wait after all (its data became
        // cached meanwhile) completes on its first poll: answer it here
        // rather than pay a task spawn and a wake-up on another thread.
        // Only reads that must wait (a GET) get a task of their own; the
        // spawned task polls again and so registers its own waker.
        if std::future::poll_fn(|cx| std::task::Poll::Ready(answer.as_mut().poll(cx)))
            .await
            .is_pending()
        {
            tokio::spawn(answer);
        }
        Ok(())
    }

    /// Spawned: the engine's flush covers every write already answered,
    /// and writes are answered before the next request is read.
    async fn flush(&self, req: Request) -> Result<(), NbdError> {
        if req.flags & !CMD_FLAG_FUA != 0 {
            return self.send(Reply::new(req.cookie, EINVAL)).await;
        }
        let permit = self
            .inflight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let dev = self.dev.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let errno = match dev.handle_io(IoRequest::Flush).await {
                Ok(_) => 0,
                Err(e) => {
                    warn!(error = %e, "nbd flush failed");
                    nbd_errno(e.errno())
                }
            };
            let mut reply = Reply::new(req.cookie, errno);
            reply._permits.push(permit);
            let _ = tx.send(reply).await;
        });
        Ok(())
    }
}

/// `None` on a clean hang-up at a request boundary.
async fn read_header<R: AsyncRead + Unpin>(
    rd: &mut R,
) -> std::io::Result<Option<[u8; REQUEST_HEADER_LEN_BYTES]>> {
    let mut hdr = [0u8; REQUEST_HEADER_LEN_BYTES];
    let mut filled = 0;
    while filled < hdr.len() {
        let n = rd.read(&mut hdr[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(Some(hdr))
}

async fn write_replies<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<Reply>,
    wr: W,
) -> std::io::Result<()> {
    let mut wr = BufWriter::with_capacity(WRITE_BUFFER_LEN_BYTES, wr);
    while let Some(reply) = rx.recv().await {
        wr.write_all(&encode_simple_reply(reply.cookie, reply.errno))
            .await?;
        if let Some(data) = &reply.data {
            wr.write_all(data).await?;
        }
        drop(reply);
        // Flush only when nothing else is queued: batches small replies
        // under load, adds no latency when idle.
        if rx.is_empty() {
            wr.flush().await?;
        }
    }
    wr.flush().await?;
    // Every reply is out; a peer that already hung up is not an error.
    let _ = wr.shutdown().await;
    Ok(())
}
