//! End-to-end tests of the NBD server against an in-memory device, using the
//! crate's own test client over in-process pipes and real sockets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use spritedisk_nbd::client::{NbdClient, Negotiation};
use spritedisk_nbd::proto::*;
use spritedisk_nbd::{NbdError, NbdServer};
use spritedisk_volume::{BlockIo, IoReply, IoRequest, VolumeError};
use tokio::io::DuplexStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

const BLOCK_BYTES: u32 = 4096;
const DISK_BYTES: u64 = 1024 * 1024;
const EXPORT: &str = "vol";
/// Reads at this offset wait for `MemDisk::release` when gating is on.
const GATED_OFFSET: u64 = 8 * BLOCK_BYTES as u64;

/// In-memory device that validates requests like the real engine.
struct MemDisk {
    data: Mutex<Vec<u8>>,
    flushes: AtomicU64,
    fua_ops: AtomicU64,
    fail_reads: AtomicBool,
    gate_reads: bool,
    release: Semaphore,
}

impl MemDisk {
    fn new() -> Arc<Self> {
        Self::build(false)
    }

    fn gated() -> Arc<Self> {
        Self::build(true)
    }

    fn build(gate_reads: bool) -> Arc<Self> {
        Arc::new(MemDisk {
            data: Mutex::new(vec![0u8; DISK_BYTES as usize]),
            flushes: AtomicU64::new(0),
            fua_ops: AtomicU64::new(0),
            fail_reads: AtomicBool::new(false),
            gate_reads,
            release: Semaphore::new(0),
        })
    }

    fn check(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>, VolumeError> {
        let bs = u64::from(BLOCK_BYTES);
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(VolumeError::Unaligned {
                offset,
                len,
                block_size: BLOCK_BYTES,
            });
        }
        match offset.checked_add(len) {
            Some(end) if end <= DISK_BYTES => Ok(offset as usize..end as usize),
            _ => Err(VolumeError::OutOfRange {
                offset,
                len,
                size: DISK_BYTES,
            }),
        }
    }

    fn zero(&self, offset: u64, len: u64, fua: bool) -> Result<IoReply, VolumeError> {
        let r = self.check(offset, len)?;
        self.data.lock().unwrap()[r].fill(0);
        if fua {
            self.fua_ops.fetch_add(1, Ordering::SeqCst);
        }
        Ok(IoReply::Done)
    }
}

#[async_trait::async_trait]
impl BlockIo for MemDisk {
    fn size_bytes(&self) -> u64 {
        DISK_BYTES
    }

    fn block_size(&self) -> u32 {
        BLOCK_BYTES
    }

    async fn handle_io(&self, req: IoRequest) -> Result<IoReply, VolumeError> {
        match req {
            IoRequest::Read { offset, len } => {
                if len > REQUEST_LEN_MAX_BYTES {
                    return Err(VolumeError::TooLarge {
                        len: len.into(),
                        max: REQUEST_LEN_MAX_BYTES.into(),
                    });
                }
                let r = self.check(offset, len.into())?;
                if self.gate_reads && offset == GATED_OFFSET {
                    self.release.acquire().await.unwrap().forget();
                }
                if self.fail_reads.load(Ordering::SeqCst) {
                    return Err(VolumeError::Stopped("test".into()));
                }
                Ok(IoReply::Data(Bytes::copy_from_slice(
                    &self.data.lock().unwrap()[r],
                )))
            }
            IoRequest::Write { offset, data, fua } => {
                let r = self.check(offset, data.len() as u64)?;
                self.data.lock().unwrap()[r].copy_from_slice(&data);
                if fua {
                    self.fua_ops.fetch_add(1, Ordering::SeqCst);
                }
                Ok(IoReply::Done)
            }
            IoRequest::Flush => {
                self.flushes.fetch_add(1, Ordering::SeqCst);
                Ok(IoReply::Done)
            }
            IoRequest::Discard { offset, len, fua } => self.zero(offset, len, fua),
            IoRequest::WriteZeroes { offset, len, fua } => self.zero(offset, len, fua),
        }
    }
}

/// Starts `serve_conn` on one end of an in-process pipe; returns the other.
fn start(disk: Arc<MemDisk>) -> (DuplexStream, JoinHandle<Result<(), NbdError>>) {
    let (client, server_end) = tokio::io::duplex(1 << 20);
    let server = Arc::new(NbdServer::new(disk, EXPORT.to_string()));
    (client, tokio::spawn(server.serve_conn(server_end)))
}

async fn connect(disk: Arc<MemDisk>) -> (NbdClient, JoinHandle<Result<(), NbdError>>) {
    let (s, h) = start(disk);
    (NbdClient::connect(s, EXPORT).await.unwrap(), h)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn finished(h: JoinHandle<Result<(), NbdError>>) -> Result<(), NbdError> {
    tokio::time::timeout(Duration::from_secs(5), h)
        .await
        .expect("server finishes")
        .unwrap()
}

#[tokio::test]
async fn go_reports_size_flags_and_block_sizes() {
    let (c, h) = connect(MemDisk::new()).await;
    let info = c.export_info().clone();
    assert_eq!(info.size_bytes, DISK_BYTES);
    assert_eq!(info.transmission_flags, TRANSMISSION_FLAGS);
    assert_eq!(info.transmission_flags & FLAG_CAN_MULTI_CONN, 0);
    assert_eq!(info.transmission_flags & FLAG_READ_ONLY, 0);
    assert_eq!(info.block_size_min, Some(4096));
    assert_eq!(info.block_size_preferred, Some(4096));
    assert_eq!(info.block_size_max, Some(32 * 1024 * 1024));
    assert_eq!(info.name.as_deref(), Some(EXPORT));
    assert_eq!(c.block_size(), 4096);
    c.disconnect().await;
    finished(h).await.unwrap();
}

#[tokio::test]
async fn empty_name_selects_the_default_export() {
    let (s, h) = start(MemDisk::new());
    let mut c = Negotiation::start(s).await.unwrap().go("").await.unwrap();
    assert_eq!(c.size_bytes(), DISK_BYTES);
    c.write(0, &pattern(4096, 1), false).await.unwrap();
    c.disconnect().await;
    finished(h).await.unwrap();
}

#[tokio::test]
async fn export_name_handshake_with_and_without_zeroes() {
    // With NO_ZEROES (what Negotiation::start negotiates).
    let disk = MemDisk::new();
    let (s, h) = start(disk.clone());
    let mut n = Negotiation::start(s).await.unwrap();
    assert_eq!(n.handshake_flags(), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    assert_eq!(n.list().await.unwrap(), vec![EXPORT.to_string()]);
    let mut c = n.export_name(EXPORT).await.unwrap();
    assert_eq!(c.size_bytes(), DISK_BYTES);
    assert_eq!(c.export_info().transmission_flags, TRANSMISSION_FLAGS);
    c.write(4096, &pattern(4096, 2), false).await.unwrap();
    assert_eq!(c.read(4096, 4096).await.unwrap(), pattern(4096, 2));
    c.disconnect().await;
    finished(h).await.unwrap();

    // Without NO_ZEROES: the 124 reserved bytes must be sent, or the first
    // reply would be misparsed.
    let (s, h) = start(disk);
    let n = Negotiation::start_raw(s, FLAG_C_FIXED_NEWSTYLE)
        .await
        .unwrap();
    let mut c = n.export_name(EXPORT).await.unwrap();
    assert_eq!(c.read(4096, 4096).await.unwrap(), pattern(4096, 2));
    c.disconnect().await;
    finished(h).await.unwrap();
}

#[tokio::test]
async fn export_name_for_unknown_export_closes() {
    let (s, h) = start(MemDisk::new());
    let mut n = Negotiation::start(s).await.unwrap();
    n.send_option_raw(OPT_EXPORT_NAME, 5, b"other")
        .await
        .unwrap();
    assert!(matches!(finished(h).await, Err(NbdError::UnknownExport(name)) if name == "other"));
}

#[tokio::test]
async fn info_then_go_on_one_connection() {
    let (s, h) = start(MemDisk::new());
    let mut n = Negotiation::start(s).await.unwrap();
    let info = n.info(EXPORT).await.unwrap();
    assert_eq!(info.size_bytes, DISK_BYTES);
    assert_eq!(
        (
            info.block_size_min,
            info.block_size_preferred,
            info.block_size_max
        ),
        (Some(4096), Some(4096), Some(REQUEST_LEN_MAX_BYTES))
    );
    let mut c = n.go(EXPORT).await.unwrap();
    c.flush().await.unwrap();
    c.disconnect().await;
    finished(h).await.unwrap();
}

#[tokio::test]
async fn unsupported_and_invalid_options_keep_negotiating() {
    let (s, h) = start(MemDisk::new());
    let mut n = Negotiation::start(s).await.unwrap();
    for opt in [
        OPT_STRUCTURED_REPLY,
        OPT_STARTTLS,
        OPT_LIST_META_CONTEXT,
        OPT_SET_META_CONTEXT,
        4242,
    ] {
        let replies = n.option(opt, &[]).await.unwrap();
        assert_eq!(replies.len(), 1, "option {opt}");
        assert_eq!(replies[0].reply_type, REP_ERR_UNSUP, "option {opt}");
    }
    // Unknown export name, malformed info payload, LIST with data.
    let unknown = InfoRequest {
        name: b"nope".to_vec(),
        info_types: vec![],
    }
    .encode();
    assert_eq!(
        n.option(OPT_INFO, &unknown).await.unwrap()[0].reply_type,
        REP_ERR_UNKNOWN
    );
    assert_eq!(
        n.option(OPT_GO, &unknown).await.unwrap()[0].reply_type,
        REP_ERR_UNKNOWN
    );
    assert_eq!(
        n.option(OPT_GO, &[0, 0, 0, 9]).await.unwrap()[0].reply_type,
        REP_ERR_INVALID
    );
    assert_eq!(
        n.option(OPT_LIST, b"x").await.unwrap()[0].reply_type,
        REP_ERR_INVALID
    );
    // Over the option size bound: payload is skipped, ERR_TOO_BIG, still in sync.
    let big = vec![0u8; OPTION_DATA_LEN_MAX_BYTES as usize + 1];
    assert_eq!(
        n.option(OPT_INFO, &big).await.unwrap()[0].reply_type,
        REP_ERR_TOO_BIG
    );

    let mut c = n.go(EXPORT).await.unwrap();
    c.write(0, &pattern(8192, 3), false).await.unwrap();
    assert_eq!(c.read(0, 8192).await.unwrap(), pattern(8192, 3));
    c.disconnect().await;
    finished(h).await.unwrap();
}

#[tokio::test]
async fn unknown_client_flags_close_the_connection() {
    let (s, h) = start(MemDisk::new());
    let _n = Negotiation::start_raw(s, FLAG_C_FIXED_NEWSTYLE | 0x80)
        .await
        .unwrap();
    assert!(matches!(
        finished(h).await,
        Err(NbdError::UnknownClientFlags(0x81))
    ));
}

#[tokio::test]
async fn abort_acks_and_closes() {
    let (s, h) = start(MemDisk::new());
    Negotiation::start(s).await.unwrap().abort().await.unwrap();
    finished(h).await.unwrap();
}

#[tokio::test]
async fn write_read_roundtrip_and_fua() {
    let disk = MemDisk::new();
    let (mut c, h) = connect(disk.clone()).await;
    let a = pattern(3 * 4096, 7);
    c.write(4096, &a, false).await.unwrap();
    assert_eq!(disk.fua_ops.load(Ordering::SeqCst), 0);
    let b = pattern(4096, 9);
    c.write(DISK_BYTES - 4096, &b, true).await.unwrap();
    assert_eq!(disk.fua_ops.load(Ordering::SeqCst), 1);
    assert_eq!(c.read(4096, 3 * 4096).await.unwrap(), a);
    assert_eq!(c.read(DISK_BYTES - 4096, 4096).await.unwrap(), b);
    assert_eq!(c.read(0, 4096).await.unwrap(), vec![0u8; 4096]);
    c.disconnect().await;
    finished(h).await.unwrap();
}

#[tokio::test]
async fn trim_and_write_zeroes_read_back_zero() {
    let disk = MemDisk::new();
    let (mut c, h) = connect(disk.clone()).await;
    c.write(0, &pattern(16 * 4096, 5), false).await.unwrap();
    c.trim(4096, 2 * 4096).await.unwrap();
    c.write_zeroes(8 * 4096, 4 * 4096).await.unwrap();
    let got = c.read(0, 16 * 4096).await.unwrap();
    let mut want = pattern(16 * 4096, 5);
    want[4096..3 * 4096].fill(0);
    want[8 * 4096..12 * 4096].fill(0);
    assert_eq!(got, want);
    // FUA and NO_HOLE are accepted on write-zeroes, FUA on trim.
    assert_eq!(
        c.raw_request(
            CMD_WRITE_ZEROES,
            CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            0,
            4096,
            &[]
        )
        .await,
        0
    );
    assert_eq!(
        c.raw_request(CMD_TRIM, CMD_FLAG_FUA, 4096, 4096, &[]).await,
        0
    );
    assert_eq!(disk.fua_ops.load(Ordering::SeqCst), 2);
    c.disconnect().await;
    finished(h).await.unwrap();
}

#[tokio::test]
async fn flush_reaches_the_engine() {
    let disk = MemDisk::new();
    let (mut c, h) = connect(disk.clone()).await;
    c.write(0, &pattern(4096, 1), false).await.unwrap();
    c.flush().await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 2);
    c.disconnect().await;
    finished(h).await.unwrap();
    // DISC does not flush: the engine does that on detach.
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unaligned_and_out_of_range_get_einval_and_the_connection_survives() {
    let (mut c, h) = connect(MemDisk::new()).await;
    assert_eq!(c.read(512, 4096).await, Err(EINVAL));
    assert_eq!(c.read(0, 1000).await, Err(EINVAL));
    // The unaligned payload must be consumed, or the next header is garbage.
    assert_eq!(c.write(0, &pattern(1000, 1), false).await, Err(EINVAL));
    assert_eq!(c.write(100, &pattern(4096, 1), false).await, Err(EINVAL));
    assert_eq!(c.trim(0, 100).await, Err(EINVAL));
    assert_eq!(c.write_zeroes(10, 4096).await, Err(EINVAL));

    assert_eq!(c.read(DISK_BYTES, 4096).await, Err(EINVAL));
    assert_eq!(c.read(DISK_BYTES - 4096, 8192).await, Err(EINVAL));
    assert_eq!(
        c.write(DISK_BYTES, &pattern(4096, 1), false).await,
        Err(EINVAL)
    );
    assert_eq!(c.trim(DISK_BYTES - 4096, 8192).await, Err(EINVAL));
    // offset + len wraps u64.
    assert_eq!(c.read(u64::MAX - 4095, 8192).await, Err(EINVAL));

    c.write(0, &pattern(4096, 4), false).await.unwrap();
    assert_eq!(c.read(0, 4096).await.unwrap(), pattern(4096, 4));
    c.disconnect().await;
    finished(h).await.unwrap();
}

#[tokio::test]
async fn oversized_requests_get_eoverflow_and_the_stream_stays_in_sync() {
    let (mut c, h) = connect(MemDisk::new()).await;
    let over = REQUEST_LEN_MAX_BYTES + 4096;
    assert_eq!(c.raw_request(CMD_READ, 0, 0, over, &[]).await, EOVERFLOW);
    let payload = vec![0xabu8; over as usize];
    assert_eq!(
        c.raw_request(CMD_WRITE, 0, 0, over, &payload).await,
        EOVERFLOW
    );
    c.write(0, &pattern(4096, 6), false).await.unwrap();
    assert_eq!(c.read(0, 4096).await.unwrap(), pattern(4096, 6));
    c.disconnect().await;
    finished(h).await.unwrap();
}

#[tokio::test]
async fn unknown_commands_and_flags_get_einval() {
    let (mut c, h) = connect(MemDisk::new()).await;
    assert_eq!(
        c.raw_request(CMD_BLOCK_STATUS, 0, 0, 4096, &[]).await,
        EINVAL
    );
    assert_eq!(c.raw_request(CMD_CACHE, 0, 0, 4096, &[]).await, EINVAL);
    assert_eq!(c.raw_request(99, 0, 0, 4096, &[]).await, EINVAL);
    assert_eq!(
        c.raw_request(CMD_READ, CMD_FLAG_DF, 0, 4096, &[]).await,
        EINVAL
    );
    // A write with a bad flag still has its payload consumed.
    assert_eq!(
        c.raw_request(CMD_WRITE, 1 << 7, 0, 4096, &pattern(4096, 1))
            .await,
        EINVAL
    );
    // FUA is valid on every command.
    assert_eq!(c.raw_request(CMD_READ, CMD_FLAG_FUA, 0, 4096, &[]).await, 0);
    assert_eq!(c.raw_request(CMD_FLUSH, CMD_FLAG_FUA, 0, 0, &[]).await, 0);
    assert_eq!(c.read(0, 4096).await.unwrap(), vec![0u8; 4096]);
    c.disconnect().await;
    finished(h).await.unwrap();
}

#[tokio::test]
async fn failed_read_sends_errno_without_data() {
    let disk = MemDisk::new();
    let (mut c, h) = connect(disk.clone()).await;
    disk.fail_reads.store(true, Ordering::SeqCst);
    assert_eq!(c.read(0, 4096).await, Err(ESHUTDOWN));
    disk.fail_reads.store(false, Ordering::SeqCst);
    // Had data followed the error, this reply would be misparsed.
    c.write(0, &pattern(4096, 8), false).await.unwrap();
    assert_eq!(c.read(0, 4096).await.unwrap(), pattern(4096, 8));
    c.disconnect().await;
    finished(h).await.unwrap();
}

#[tokio::test]
async fn bad_request_magic_closes_the_connection() {
    let (mut c, h) = connect(MemDisk::new()).await;
    let r = Request {
        flags: 0,
        cmd: CMD_READ,
        cookie: 1,
        offset: 0,
        len: 4096,
    };
    c.send_raw(&encode_request_with_magic(0x1234_5678, &r))
        .await
        .unwrap();
    assert!(c.closed_by_server().await);
    assert!(matches!(
        finished(h).await,
        Err(NbdError::BadRequestMagic(0x1234_5678))
    ));
}

#[tokio::test]
async fn reads_run_concurrently_with_later_requests() {
    let disk = MemDisk::gated();
    let (mut c, h) = connect(disk.clone()).await;
    let slow = c
        .submit(CMD_READ, 0, GATED_OFFSET, 4096, &[])
        .await
        .unwrap();
    let fast = c.submit(CMD_READ, 0, 0, 4096, &[]).await.unwrap();
    let write = c
        .submit(CMD_WRITE, 0, GATED_OFFSET, 4096, &pattern(4096, 2))
        .await
        .unwrap();
    let mut first = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(Duration::from_secs(5), c.next_reply())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.errno, 0);
        first.push(r.cookie);
    }
    first.sort();
    assert_eq!(first, vec![fast, write]);
    disk.release.add_permits(1);
    let r = c.next_reply().await.unwrap();
    assert_eq!(r.cookie, slow);
    assert_eq!(r.data.map(|d| d.len()), Some(4096));
    c.disconnect().await;
    finished(h).await.unwrap();
}

#[tokio::test]
async fn disconnect_waits_for_in_flight_replies() {
    let disk = MemDisk::gated();
    let (mut c, h) = connect(disk.clone()).await;
    c.write(GATED_OFFSET, &pattern(4096, 3), false)
        .await
        .unwrap();
    let slow = c
        .submit(CMD_READ, 0, GATED_OFFSET, 4096, &[])
        .await
        .unwrap();
    c.submit(CMD_DISC, 0, 0, 0, &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!h.is_finished());
    disk.release.add_permits(1);
    let r = c.next_reply().await.unwrap();
    assert_eq!((r.cookie, r.errno), (slow, 0));
    assert_eq!(r.data, Some(pattern(4096, 3)));
    assert!(c.closed_by_server().await);
    finished(h).await.unwrap();
}

#[tokio::test]
async fn serve_unix_replaces_stale_socket_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    // A stale socket file left by a dead server.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let disk = MemDisk::new();
    let server = Arc::new(NbdServer::new(disk.clone(), EXPORT.to_string()));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn({
        let path = path.clone();
        async move { server.serve_unix(&path, rx).await }
    });

    let mut c = connect_retrying(&path).await;
    c.write(0, &pattern(4096, 1), true).await.unwrap();
    let mut c2 = connect_retrying(&path).await;
    assert_eq!(c2.read(0, 4096).await.unwrap(), pattern(4096, 1));
    c2.disconnect().await;

    tx.send(true).unwrap();
    finished(serving).await.unwrap();
    assert!(!path.exists(), "socket file removed on shutdown");
    // Connections already accepted keep being served.
    assert_eq!(c.read(0, 4096).await.unwrap(), pattern(4096, 1));
    c.disconnect().await;
}

#[tokio::test]
async fn serve_unix_refuses_to_replace_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, b"keep me").unwrap();
    let server = Arc::new(NbdServer::new(MemDisk::new(), EXPORT.to_string()));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let err = server.serve_unix(&path, rx).await.unwrap_err();
    assert!(matches!(err, NbdError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[tokio::test]
async fn serve_tcp_roundtrip() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(NbdServer::new(MemDisk::new(), EXPORT.to_string()));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(server.serve_tcp_listener(listener, rx));
    let mut c = NbdClient::connect_tcp(addr, EXPORT).await.unwrap();
    c.write(8192, &pattern(8192, 4), false).await.unwrap();
    assert_eq!(c.read(8192, 8192).await.unwrap(), pattern(8192, 4));
    c.disconnect().await;
    tx.send(true).unwrap();
    finished(serving).await.unwrap();
}

async fn connect_retrying(path: &std::path::Path) -> NbdClient {
    for _ in 0..100 {
        if let Ok(c) = NbdClient::connect_unix(path, EXPORT).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not connect to {}", path.display());
}

/// Connects over TCP and reads the server's 18-byte greeting; None when the
/// server closes the connection instead.
async fn raw_greeted(addr: std::net::SocketAddr) -> (tokio::net::TcpStream, bool) {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 18];
    let greeted = s.read_exact(&mut greeting).await.is_ok();
    if greeted {
        assert_eq!(&greeting[..8], b"NBDMAGIC");
    }
    (s, greeted)
}

/// Waits (at most 30 s) for the server to close `s`.
async fn closed_by_server(mut s: tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(30), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// A client over TCP, retried for 2 s (a slot is freed once the server
/// sees its client leave); panics with `why`.
async fn connect_tcp_retrying(addr: std::net::SocketAddr, why: &str) -> NbdClient {
    for _ in 0..100 {
        if let Ok(client) = NbdClient::connect_tcp(addr, EXPORT).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not connect to {addr}: {why}");
}

async fn serve_limited(
    limits: spritedisk_nbd::Limits,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(NbdServer::with_limits(
        MemDisk::new(),
        EXPORT.to_string(),
        limits,
    ));
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(server.serve_tcp_listener(listener, rx));
    (addr, tx)
}

/// Review M9: a server serves at most its limit of connections; one more is
/// closed before the greeting, and a slot is free again once its client
/// leaves.
#[tokio::test]
async fn connections_beyond_the_limit_are_closed_before_the_greeting() {
    let limits = spritedisk_nbd::Limits {
        connections_max: 2,
        handshake_timeout: Duration::from_secs(600),
    };
    let (addr, _stop) = serve_limited(limits).await;
    let (first, greeted) = raw_greeted(addr).await;
    assert!(greeted);
    let (_second, greeted) = raw_greeted(addr).await;
    assert!(greeted);
    let (third, greeted) = raw_greeted(addr).await;
    assert!(!greeted, "a third connection was served with a limit of 2");
    assert!(closed_by_server(third).await);
    drop(first);
    // The first's slot comes back once the server sees it hang up.
    let mut c =
        connect_tcp_retrying(addr, "a slot freed by a client that left is served again").await;
    c.write(0, &pattern(4096, 9), true).await.unwrap();
    assert_eq!(c.read(0, 4096).await.unwrap(), pattern(4096, 9));
    c.disconnect().await;
}

/// Review M9: a client that connects and never finishes the handshake is
/// closed after the handshake timeout, and its slot serves the next client.
#[tokio::test]
async fn a_silent_client_is_closed_at_the_handshake_timeout() {
    let limits = spritedisk_nbd::Limits {
        connections_max: 1,
        handshake_timeout: Duration::from_millis(200),
    };
    let (addr, _stop) = serve_limited(limits).await;
    let (silent, greeted) = raw_greeted(addr).await;
    assert!(greeted);
    assert!(
        closed_by_server(silent).await,
        "a client silent after the greeting was not closed within 30 s (timeout 200 ms)"
    );
    let mut c = connect_tcp_retrying(addr, "the silent client's slot is free again").await;
    assert_eq!(c.read(0, 4096).await.unwrap(), vec![0u8; 4096]);
    c.disconnect().await;
}

/// Review M8: the NBD socket is made 0600.
#[tokio::test]
async fn the_unix_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    let server = Arc::new(NbdServer::new(MemDisk::new(), EXPORT.to_string()));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn({
        let path = path.clone();
        async move { server.serve_unix(&path, rx).await }
    });
    let c = connect_retrying(&path).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "nbd socket mode {mode:o}");
    c.disconnect().await;
}
