//! NBD wire constants and frame encoding/decoding (fixed newstyle, simple replies).
//!
//! Values follow <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>.
//! Every integer on the wire is big-endian.

/// `NBDMAGIC`, first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second greeting word, and the prefix of every option request.
pub const IHAVEOPT_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server, 16 bits).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
// Client flags (32 bits).
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
pub const CLIENT_FLAGS_KNOWN: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

// Transmission flags (16 bits).
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// What this server advertises. CAN_MULTI_CONN stays off: the engine gives
/// no cross-connection flush guarantee we have tested.
pub const TRANSMISSION_FLAGS: u16 =
    FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

// NBD_REP_INFO payload types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;

// Errno values NBD allows on the wire (Linux numbering).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Largest READ/WRITE we serve (and advertise as the maximum block size).
/// Bigger requests get EOVERFLOW; this also bounds the per-request buffer.
pub const REQUEST_LEN_MAX_BYTES: u32 = 32 * 1024 * 1024;
/// Preferred I/O size we advertise (the engine's block size).
pub const BLOCK_SIZE_PREFERRED_BYTES: u32 = 4096;
/// The spec caps strings (export names, messages) at 4096 bytes.
pub const STRING_LEN_MAX_BYTES: usize = 4096;
/// Largest option payload we buffer: a maximal name plus NBD_OPT_GO framing
/// (name length, info count, a generous number of info requests).
pub const OPTION_DATA_LEN_MAX_BYTES: u32 = 8192;

pub const GREETING_LEN_BYTES: usize = 18;
pub const OPTION_HEADER_LEN_BYTES: usize = 16;
pub const OPTION_REPLY_HEADER_LEN_BYTES: usize = 20;
pub const REQUEST_HEADER_LEN_BYTES: usize = 28;
pub const SIMPLE_REPLY_HEADER_LEN_BYTES: usize = 16;
/// Reserved zeros after an NBD_OPT_EXPORT_NAME reply unless NO_ZEROES.
pub const EXPORT_NAME_ZEROES_LEN_BYTES: usize = 124;

/// Maps an engine errno onto the set NBD allows; anything else becomes EIO.
pub fn nbd_errno(errno: i32) -> u32 {
    match u32::try_from(errno) {
        Ok(e @ (EPERM | EIO | ENOMEM | EINVAL | ENOSPC | EOVERFLOW | ENOTSUP | ESHUTDOWN)) => e,
        _ => EIO,
    }
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Server greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn encode_greeting(handshake_flags: u16) -> [u8; GREETING_LEN_BYTES] {
    let mut b = [0u8; GREETING_LEN_BYTES];
    b[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT_MAGIC.to_be_bytes());
    b[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub magic: u64,
    pub option: u32,
    pub len: u32,
}

impl OptionHeader {
    pub fn decode(b: &[u8; OPTION_HEADER_LEN_BYTES]) -> Self {
        OptionHeader {
            magic: be_u64(&b[0..]),
            option: be_u32(&b[8..]),
            len: be_u32(&b[12..]),
        }
    }

    pub fn encode(option: u32, len: u32) -> [u8; OPTION_HEADER_LEN_BYTES] {
        let mut b = [0u8; OPTION_HEADER_LEN_BYTES];
        b[0..8].copy_from_slice(&IHAVEOPT_MAGIC.to_be_bytes());
        b[8..12].copy_from_slice(&option.to_be_bytes());
        b[12..16].copy_from_slice(&len.to_be_bytes());
        b
    }
}

/// Appends one option reply (header + payload) to `out`.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, payload: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    let len = u32::try_from(payload.len()).expect("option reply payload fits in u32");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub magic: u64,
    pub option: u32,
    pub reply_type: u32,
    pub len: u32,
}

impl OptionReplyHeader {
    pub fn decode(b: &[u8; OPTION_REPLY_HEADER_LEN_BYTES]) -> Self {
        OptionReplyHeader {
            magic: be_u64(&b[0..]),
            option: be_u32(&b[8..]),
            reply_type: be_u32(&b[12..]),
            len: be_u32(&b[16..]),
        }
    }
}

/// NBD_INFO_EXPORT payload: type, size, transmission flags.
pub fn encode_info_export(size_bytes: u64, transmission_flags: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    b[2..10].copy_from_slice(&size_bytes.to_be_bytes());
    b[10..12].copy_from_slice(&transmission_flags.to_be_bytes());
    b
}

/// NBD_INFO_BLOCK_SIZE payload: type, minimum, preferred, maximum.
pub fn encode_info_block_size(min: u32, preferred: u32, max: u32) -> [u8; 14] {
    let mut b = [0u8; 14];
    b[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b[2..6].copy_from_slice(&min.to_be_bytes());
    b[6..10].copy_from_slice(&preferred.to_be_bytes());
    b[10..14].copy_from_slice(&max.to_be_bytes());
    b
}

/// Parsed NBD_OPT_INFO / NBD_OPT_GO payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: Vec<u8>,
    pub info_types: Vec<u16>,
}

impl InfoRequest {
    /// Layout: u32 name length, name, u16 count, count × u16. `None` if the
    /// lengths do not add up to exactly `data.len()`.
    pub fn decode(data: &[u8]) -> Option<Self> {
        let name_len = usize::try_from(be_u32(data.get(0..4)?)).ok()?;
        let name_end = 4usize.checked_add(name_len)?;
        let name = data.get(4..name_end)?.to_vec();
        let count = usize::from(be_u16(data.get(name_end..name_end + 2)?));
        let rest = data.get(name_end + 2..)?;
        if rest.len() != count * 2 {
            return None;
        }
        let info_types = rest.chunks_exact(2).map(be_u16).collect();
        Some(InfoRequest { name, info_types })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(6 + self.name.len() + 2 * self.info_types.len());
        b.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.name);
        b.extend_from_slice(&(self.info_types.len() as u16).to_be_bytes());
        for t in &self.info_types {
            b.extend_from_slice(&t.to_be_bytes());
        }
        b
    }
}

/// A transmission-phase request header (the WRITE payload follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub cmd: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl Request {
    /// `Err(magic)` when the magic is wrong: the stream is out of sync.
    pub fn decode(b: &[u8; REQUEST_HEADER_LEN_BYTES]) -> Result<Self, u32> {
        let magic = be_u32(&b[0..]);
        if magic != REQUEST_MAGIC {
            return Err(magic);
        }
        Ok(Request {
            flags: be_u16(&b[4..]),
            cmd: be_u16(&b[6..]),
            cookie: be_u64(&b[8..]),
            offset: be_u64(&b[16..]),
            len: be_u32(&b[24..]),
        })
    }

    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN_BYTES] {
        encode_request_with_magic(REQUEST_MAGIC, self)
    }
}

/// Like [`Request::encode`] with an arbitrary magic (for tests of bad input).
pub fn encode_request_with_magic(magic: u32, r: &Request) -> [u8; REQUEST_HEADER_LEN_BYTES] {
    let mut b = [0u8; REQUEST_HEADER_LEN_BYTES];
    b[0..4].copy_from_slice(&magic.to_be_bytes());
    b[4..6].copy_from_slice(&r.flags.to_be_bytes());
    b[6..8].copy_from_slice(&r.cmd.to_be_bytes());
    b[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    b[16..24].copy_from_slice(&r.offset.to_be_bytes());
    b[24..28].copy_from_slice(&r.len.to_be_bytes());
    b
}

pub fn encode_simple_reply(cookie: u64, errno: u32) -> [u8; SIMPLE_REPLY_HEADER_LEN_BYTES] {
    let mut b = [0u8; SIMPLE_REPLY_HEADER_LEN_BYTES];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&errno.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// (magic, errno, cookie) of a simple reply header.
pub fn decode_simple_reply(b: &[u8; SIMPLE_REPLY_HEADER_LEN_BYTES]) -> (u32, u32, u64) {
    (be_u32(&b[0..]), be_u32(&b[4..]), be_u64(&b[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip_and_bad_magic() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            cmd: CMD_WRITE,
            cookie: 7,
            offset: 4096,
            len: 8192,
        };
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        let bad = encode_request_with_magic(0xdead_beef, &r);
        assert_eq!(Request::decode(&bad), Err(0xdead_beef));
    }

    #[test]
    fn info_request_roundtrip_and_rejects_bad_lengths() {
        let r = InfoRequest {
            name: b"vol".to_vec(),
            info_types: vec![INFO_BLOCK_SIZE, INFO_NAME],
        };
        let enc = r.encode();
        assert_eq!(InfoRequest::decode(&enc), Some(r));
        // Truncated, trailing garbage, and a name length past the end.
        assert_eq!(InfoRequest::decode(&enc[..enc.len() - 1]), None);
        let mut longer = enc.clone();
        longer.push(0);
        assert_eq!(InfoRequest::decode(&longer), None);
        assert_eq!(InfoRequest::decode(&[0xff, 0xff, 0xff, 0xff, 0, 0]), None);
        assert_eq!(InfoRequest::decode(&[]), None);
    }

    #[test]
    fn errno_mapping_keeps_nbd_values_only() {
        assert_eq!(nbd_errno(22), EINVAL);
        assert_eq!(nbd_errno(108), ESHUTDOWN);
        assert_eq!(nbd_errno(2), EIO); // ENOENT is not an NBD error value
        assert_eq!(nbd_errno(-1), EIO);
    }

    #[test]
    fn greeting_layout() {
        let g = encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..18], &[0, 3]);
    }
}
