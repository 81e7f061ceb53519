//! The engine's I/O interface as frontends see it: one request in, one reply out.
//!
//! Frontends (NBD, ublk) are thin adapters that decode their wire format into
//! an [`IoRequest`], call [`BlockIo::handle_io`] and encode the reply; they map
//! [`crate::VolumeError::errno`] onto their own error field.

use bytes::Bytes;

use crate::VolumeError;

/// One block-device request. Offsets and lengths are in bytes and must be
/// multiples of the volume's block size (4096).
#[derive(Debug, Clone)]
pub enum IoRequest {
    Read {
        offset: u64,
        len: u32,
    },
    /// `fua`: the write is durable when the reply is sent (as if followed by a FLUSH).
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    Flush,
    /// Unmaps the range: it reads as zeros, and stops counting as stored.
    Discard {
        offset: u64,
        len: u64,
        fua: bool,
    },
    /// Same effect on the map as a discard: zeros are never stored.
    WriteZeroes {
        offset: u64,
        len: u64,
        fua: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoReply {
    Data(Bytes),
    Done,
}

/// What a frontend needs from a block device. [`crate::Volume`] implements it;
/// frontend tests may use a plain in-memory implementation.
#[async_trait::async_trait]
pub trait BlockIo: Send + Sync + 'static {
    /// Size of the device in bytes.
    fn size_bytes(&self) -> u64;
    /// Logical block size in bytes; every offset and length is a multiple of it.
    fn block_size(&self) -> u32;
    async fn handle_io(&self, req: IoRequest) -> Result<IoReply, VolumeError>;

    /// Serves a read of `out.len()` bytes at `offset` straight into `out`
    /// if it can without waiting (from memory or the local cache): Some
    /// with its result. None: it must wait for the store; run it through
    /// [`BlockIo::handle_io`] instead (`out` then holds nothing to rely
    /// on). Frontends call it first, on their own thread and inside the
    /// engine's runtime context (`Handle::enter`), so a warm read costs no
    /// hop to another thread and no copy (docs/design/0011).
    fn read_now(&self, _offset: u64, _out: &mut [u8]) -> Option<Result<(), VolumeError>> {
        None
    }
}
