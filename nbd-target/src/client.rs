//! A minimal NBD client for tests: fixed newstyle, simple replies.
//!
//! [`Negotiation`] exposes option haggling step by step; [`NbdClient`] is the
//! transmission phase. The convenience calls ([`NbdClient::read`] etc.) send
//! one request, wait for its reply and return `Err(errno)` on an NBD error
//! reply. Because this is test code, they panic if the connection itself
//! fails (server gone, malformed reply); use [`NbdClient::submit`] and
//! [`NbdClient::next_reply`] to pipeline requests or to handle I/O errors.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::*;

/// Largest option reply we accept from a server.
const OPTION_REPLY_LEN_MAX_BYTES: u32 = 64 * 1024;
/// How long [`NbdClient::closed_by_server`] waits for the server to hang up.
const CLOSE_WAIT_TIMEOUT_MS: u64 = 5000;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

fn protocol_error(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// One option reply: type and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    pub reply_type: u32,
    pub data: Vec<u8>,
}

/// What the server told us about the export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportInfo {
    pub size_bytes: u64,
    pub transmission_flags: u16,
    pub block_size_min: Option<u32>,
    pub block_size_preferred: Option<u32>,
    pub block_size_max: Option<u32>,
    pub name: Option<String>,
}

/// Option haggling, after the greeting has been exchanged.
pub struct Negotiation {
    stream: Box<dyn Stream>,
    handshake_flags: u16,
    no_zeroes: bool,
}

impl Negotiation {
    /// Reads the greeting and answers with FIXED_NEWSTYLE (and NO_ZEROES if offered).
    pub async fn start<S>(stream: S) -> io::Result<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut stream: Box<dyn Stream> = Box::new(stream);
        let mut g = [0u8; GREETING_LEN_BYTES];
        stream.read_exact(&mut g).await?;
        if g[0..8] != NBD_MAGIC.to_be_bytes() || g[8..16] != IHAVEOPT_MAGIC.to_be_bytes() {
            return Err(protocol_error("not a newstyle NBD server"));
        }
        let handshake_flags = u16::from_be_bytes([g[16], g[17]]);
        if handshake_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(protocol_error("server does not do fixed newstyle"));
        }
        let no_zeroes = handshake_flags & FLAG_NO_ZEROES != 0;
        let mut client_flags = FLAG_C_FIXED_NEWSTYLE;
        if no_zeroes {
            client_flags |= FLAG_C_NO_ZEROES;
        }
        Self::start_with_flags(stream, handshake_flags, client_flags).await
    }

    /// Reads the greeting and sends `client_flags` verbatim (for testing
    /// how the server treats unknown flags).
    pub async fn start_raw<S>(stream: S, client_flags: u32) -> io::Result<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut stream: Box<dyn Stream> = Box::new(stream);
        let mut g = [0u8; GREETING_LEN_BYTES];
        stream.read_exact(&mut g).await?;
        let handshake_flags = u16::from_be_bytes([g[16], g[17]]);
        Self::start_with_flags(stream, handshake_flags, client_flags).await
    }

    async fn start_with_flags(
        mut stream: Box<dyn Stream>,
        handshake_flags: u16,
        client_flags: u32,
    ) -> io::Result<Self> {
        stream.write_all(&client_flags.to_be_bytes()).await?;
        stream.flush().await?;
        Ok(Negotiation {
            stream,
            handshake_flags,
            no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
        })
    }

    pub fn handshake_flags(&self) -> u16 {
        self.handshake_flags
    }

    /// Sends one option and collects replies up to the final one (ACK or an error).
    pub async fn option(&mut self, option: u32, data: &[u8]) -> io::Result<Vec<OptionReply>> {
        self.send_option(option, data).await?;
        let mut replies = Vec::new();
        loop {
            let reply = self.read_option_reply(option).await?;
            let last = reply.reply_type == REP_ACK || reply.reply_type & REP_FLAG_ERROR != 0;
            replies.push(reply);
            if last {
                return Ok(replies);
            }
        }
    }

    /// Sends an option header claiming `len` bytes followed by `data` as is.
    pub async fn send_option_raw(&mut self, option: u32, len: u32, data: &[u8]) -> io::Result<()> {
        self.stream
            .write_all(&OptionHeader::encode(option, len))
            .await?;
        self.stream.write_all(data).await?;
        self.stream.flush().await
    }

    async fn send_option(&mut self, option: u32, data: &[u8]) -> io::Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| protocol_error("option too long"))?;
        self.send_option_raw(option, len, data).await
    }

    /// Reads one option reply to `option`.
    pub async fn read_option_reply(&mut self, option: u32) -> io::Result<OptionReply> {
        let mut h = [0u8; OPTION_REPLY_HEADER_LEN_BYTES];
        self.stream.read_exact(&mut h).await?;
        let h = OptionReplyHeader::decode(&h);
        if h.magic != OPTION_REPLY_MAGIC {
            return Err(protocol_error(format!(
                "bad option reply magic {:#x}",
                h.magic
            )));
        }
        if h.option != option {
            return Err(protocol_error(format!(
                "reply to option {} while asking {option}",
                h.option
            )));
        }
        if h.len > OPTION_REPLY_LEN_MAX_BYTES {
            return Err(protocol_error(format!("option reply of {} bytes", h.len)));
        }
        let mut data = vec![0u8; h.len as usize];
        self.stream.read_exact(&mut data).await?;
        Ok(OptionReply {
            reply_type: h.reply_type,
            data,
        })
    }

    /// NBD_OPT_LIST: the export names.
    pub async fn list(&mut self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for r in self.option(OPT_LIST, &[]).await? {
            match r.reply_type {
                REP_SERVER => {
                    let len = r
                        .data
                        .get(0..4)
                        .map(|b| u32::from_be_bytes(b.try_into().unwrap()));
                    let name = len
                        .and_then(|l| r.data.get(4..4 + l as usize))
                        .ok_or_else(|| protocol_error("malformed NBD_REP_SERVER"))?;
                    names.push(String::from_utf8_lossy(name).into_owned());
                }
                REP_ACK => {}
                other => return Err(protocol_error(format!("NBD_OPT_LIST failed: {other:#x}"))),
            }
        }
        Ok(names)
    }

    /// NBD_OPT_INFO for `name`, asking for the block size and name.
    pub async fn info(&mut self, name: &str) -> io::Result<ExportInfo> {
        self.info_or_go(OPT_INFO, name).await
    }

    /// NBD_OPT_GO for `name`: enters transmission.
    pub async fn go(mut self, name: &str) -> io::Result<NbdClient> {
        let info = self.info_or_go(OPT_GO, name).await?;
        Ok(NbdClient::new(self.stream, info))
    }

    /// NBD_OPT_EXPORT_NAME: enters transmission the old way (no block sizes).
    pub async fn export_name(mut self, name: &str) -> io::Result<NbdClient> {
        self.send_option(OPT_EXPORT_NAME, name.as_bytes()).await?;
        let mut b = [0u8; 10];
        self.stream.read_exact(&mut b).await?;
        if !self.no_zeroes {
            let mut zeroes = [0u8; EXPORT_NAME_ZEROES_LEN_BYTES];
            self.stream.read_exact(&mut zeroes).await?;
        }
        let info = ExportInfo {
            size_bytes: u64::from_be_bytes(b[0..8].try_into().unwrap()),
            transmission_flags: u16::from_be_bytes([b[8], b[9]]),
            ..ExportInfo::default()
        };
        Ok(NbdClient::new(self.stream, info))
    }

    /// NBD_OPT_ABORT; the server may or may not ACK before closing.
    pub async fn abort(mut self) -> io::Result<()> {
        self.send_option(OPT_ABORT, &[]).await?;
        match self.read_option_reply(OPT_ABORT).await {
            Ok(r) if r.reply_type == REP_ACK => Ok(()),
            Ok(r) => Err(protocol_error(format!(
                "NBD_OPT_ABORT answered {:#x}",
                r.reply_type
            ))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn info_or_go(&mut self, option: u32, name: &str) -> io::Result<ExportInfo> {
        let req = InfoRequest {
            name: name.as_bytes().to_vec(),
            info_types: vec![INFO_BLOCK_SIZE, INFO_NAME],
        };
        let mut info = ExportInfo::default();
        let mut saw_export = false;
        for r in self.option(option, &req.encode()).await? {
            match r.reply_type {
                REP_INFO => saw_export |= parse_info(&r.data, &mut info)?,
                REP_ACK => {}
                other => {
                    return Err(io::Error::other(format!(
                        "option {option} for export {name:?} failed with reply {other:#x}: {}",
                        String::from_utf8_lossy(&r.data)
                    )))
                }
            }
        }
        if !saw_export {
            return Err(protocol_error("no NBD_INFO_EXPORT before NBD_REP_ACK"));
        }
        Ok(info)
    }
}

/// Applies one NBD_REP_INFO payload; true if it was NBD_INFO_EXPORT.
fn parse_info(d: &[u8], info: &mut ExportInfo) -> io::Result<bool> {
    let malformed = || protocol_error("malformed NBD_REP_INFO");
    let u32_at = |i: usize| {
        d.get(i..i + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    };
    let kind = d
        .get(0..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(malformed)?;
    match kind {
        INFO_EXPORT => {
            if d.len() != 12 {
                return Err(malformed());
            }
            info.size_bytes = u64::from_be_bytes(d[2..10].try_into().unwrap());
            info.transmission_flags = u16::from_be_bytes([d[10], d[11]]);
            return Ok(true);
        }
        INFO_BLOCK_SIZE => {
            if d.len() != 14 {
                return Err(malformed());
            }
            info.block_size_min = u32_at(2);
            info.block_size_preferred = u32_at(6);
            info.block_size_max = u32_at(10);
        }
        INFO_NAME => info.name = Some(String::from_utf8_lossy(&d[2..]).into_owned()),
        _ => {} // clients ignore info types they do not know
    }
    Ok(false)
}

/// A reply in the transmission phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReply {
    pub cookie: u64,
    pub errno: u32,
    /// Data of a successful READ.
    pub data: Option<Vec<u8>>,
}

/// The transmission phase of a connection.
pub struct NbdClient {
    stream: Box<dyn Stream>,
    info: ExportInfo,
    next_cookie: u64,
    /// cookie → (command, length), to know how much data a reply carries.
    pending: HashMap<u64, (u16, u32)>,
}

fn connection_failed(e: io::Error) -> ! {
    panic!("NBD test client: connection failed: {e}")
}

impl NbdClient {
    fn new(stream: Box<dyn Stream>, info: ExportInfo) -> Self {
        NbdClient {
            stream,
            info,
            next_cookie: 1,
            pending: HashMap::new(),
        }
    }

    /// Connects to a Unix socket and enters transmission with NBD_OPT_GO.
    pub async fn connect_unix(path: impl AsRef<Path>, export_name: &str) -> io::Result<Self> {
        let s = tokio::net::UnixStream::connect(path).await?;
        Self::connect(s, export_name).await
    }

    /// Connects over TCP and enters transmission with NBD_OPT_GO.
    pub async fn connect_tcp(addr: SocketAddr, export_name: &str) -> io::Result<Self> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Self::connect(s, export_name).await
    }

    /// Handshakes (NBD_OPT_GO) on an already-open stream.
    pub async fn connect<S>(stream: S, export_name: &str) -> io::Result<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Negotiation::start(stream).await?.go(export_name).await
    }

    pub fn export_info(&self) -> &ExportInfo {
        &self.info
    }

    pub fn size_bytes(&self) -> u64 {
        self.info.size_bytes
    }

    /// The advertised minimum block size (the spec default, 1, if none was sent).
    pub fn block_size(&self) -> u32 {
        self.info.block_size_min.unwrap_or(1)
    }

    /// The advertised maximum request size, if any.
    pub fn max_request_bytes(&self) -> Option<u32> {
        self.info.block_size_max
    }

    pub async fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        let r = self.call(CMD_READ, 0, offset, len, &[]).await;
        match r.errno {
            0 => Ok(r.data.unwrap_or_default()),
            e => Err(e),
        }
    }

    pub async fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), u32> {
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        let len = u32::try_from(data.len()).expect("write under 4 GiB");
        self.status(CMD_WRITE, flags, offset, len, data).await
    }

    pub async fn flush(&mut self) -> Result<(), u32> {
        self.status(CMD_FLUSH, 0, 0, 0, &[]).await
    }

    pub async fn trim(&mut self, offset: u64, len: u32) -> Result<(), u32> {
        self.status(CMD_TRIM, 0, offset, len, &[]).await
    }

    pub async fn write_zeroes(&mut self, offset: u64, len: u32) -> Result<(), u32> {
        self.status(CMD_WRITE_ZEROES, 0, offset, len, &[]).await
    }

    /// Sends NBD_CMD_DISC and waits for the server to close. Errors are
    /// ignored: the point is to be gone.
    pub async fn disconnect(mut self) {
        let _ = self.submit(CMD_DISC, 0, 0, 0, &[]).await;
        let _ = self.closed_by_server().await;
    }

    /// Sends any request (the payload is sent as given, whatever `len`
    /// says) and returns the reply's errno; READ data is read and dropped.
    pub async fn raw_request(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> u32 {
        self.call(cmd, flags, offset, len, payload).await.errno
    }

    /// Sends a request without waiting; returns its cookie. No reply is
    /// expected for NBD_CMD_DISC.
    pub async fn submit(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> io::Result<u64> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let req = Request {
            flags,
            cmd,
            cookie,
            offset,
            len,
        };
        self.stream.write_all(&req.encode()).await?;
        self.stream.write_all(payload).await?;
        self.stream.flush().await?;
        if cmd != CMD_DISC {
            self.pending.insert(cookie, (cmd, len));
        }
        Ok(cookie)
    }

    /// Reads the next reply, whichever request it answers.
    pub async fn next_reply(&mut self) -> io::Result<ClientReply> {
        let mut h = [0u8; SIMPLE_REPLY_HEADER_LEN_BYTES];
        self.stream.read_exact(&mut h).await?;
        let (magic, errno, cookie) = decode_simple_reply(&h);
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(protocol_error(format!("bad reply magic {magic:#x}")));
        }
        let (cmd, len) = self
            .pending
            .remove(&cookie)
            .ok_or_else(|| protocol_error(format!("reply for unknown cookie {cookie}")))?;
        let data = if cmd == CMD_READ && errno == 0 {
            let mut d = vec![0u8; len as usize];
            self.stream.read_exact(&mut d).await?;
            Some(d)
        } else {
            None
        };
        Ok(ClientReply {
            cookie,
            errno,
            data,
        })
    }

    /// Writes bytes straight to the socket (e.g. a request with a bad magic).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// True if the server closes the connection (EOF or reset) within a few
    /// seconds; any bytes it sends meanwhile are dropped.
    pub async fn closed_by_server(&mut self) -> bool {
        let drain = async {
            let mut buf = [0u8; 4096];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_millis(CLOSE_WAIT_TIMEOUT_MS), drain)
            .await
            .is_ok()
    }

    async fn status(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<(), u32> {
        match self.call(cmd, flags, offset, len, payload).await.errno {
            0 => Ok(()),
            e => Err(e),
        }
    }

    async fn call(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> ClientReply {
        let cookie = self
            .submit(cmd, flags, offset, len, payload)
            .await
            .unwrap_or_else(|e| connection_failed(e));
        let reply = self
            .next_reply()
            .await
            .unwrap_or_else(|e| connection_failed(e));
        assert_eq!(
            reply.cookie, cookie,
            "NBD test client: reply to another request (use next_reply to pipeline)"
        );
        reply
    }
}
