//! Fuzz target bodies, shared by the cargo-fuzz binaries
//! (`fuzz/fuzz_targets/`, nightly) and the corpus replay test that runs on
//! stable in `make test` (`tests/tests/fuzz_corpora.rs`). Each must return
//! (never panic, never hang) whatever bytes it is given.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spritedisk_volume::{BlockIo, IoReply, IoRequest, VolumeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A segment object: rejected with a reason, or decoded into changes that
/// stay inside what the header describes.
pub fn segment(data: &[u8]) {
    const BS: u64 = 4096;
    if let Ok((h, changes)) = spritedisk_volume::segment::decode_full(data, BS) {
        assert_eq!(h.object_size(), data.len() as u64);
        for c in changes {
            assert!(c.blocks > 0);
            if let Some(p) = c.piece {
                let end = p.piece_off + p.piece_blocks as u64 * BS;
                assert!(p.piece_off >= h.data_offset && end <= h.object_size());
            }
        }
    }
}

/// An LTX file: rejected with a reason, or decoded into pages of its size.
pub fn ltx(data: &[u8]) {
    if let Ok(f) = spritedisk_meta::ltx::decode("fuzz.ltx", data) {
        for page in f.pages.values() {
            assert_eq!(page.len() as u32, f.header.page_size);
        }
    }
}

/// A plain in-memory disk behind the NBD server.
struct MemDisk(std::sync::Mutex<Vec<u8>>);

#[async_trait::async_trait]
impl BlockIo for MemDisk {
    fn size_bytes(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    fn block_size(&self) -> u32 {
        4096
    }
    async fn handle_io(&self, req: IoRequest) -> Result<IoReply, VolumeError> {
        let mut d = self.0.lock().unwrap();
        let size = d.len() as u64;
        let range = |offset: u64, len: u64| -> Result<std::ops::Range<usize>, VolumeError> {
            if offset.checked_add(len).is_none_or(|e| e > size) {
                return Err(VolumeError::OutOfRange { offset, len, size });
            }
            Ok(offset as usize..(offset + len) as usize)
        };
        Ok(match req {
            IoRequest::Read { offset, len } => {
                IoReply::Data(Bytes::copy_from_slice(&d[range(offset, len as u64)?]))
            }
            IoRequest::Write { offset, data, .. } => {
                let r = range(offset, data.len() as u64)?;
                d[r].copy_from_slice(&data);
                IoReply::Done
            }
            IoRequest::Flush => IoReply::Done,
            IoRequest::Discard { offset, len, .. } | IoRequest::WriteZeroes { offset, len, .. } => {
                let r = range(offset, len)?;
                d[r].fill(0);
                IoReply::Done
            }
        })
    }
}

/// A whole client session, handshake and transmission, as the bytes a
/// client sends: the server answers or hangs up, and never panics or hangs.
pub fn nbd_session(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let disk = Arc::new(MemDisk(std::sync::Mutex::new(vec![0; 1 << 20])));
        let server = Arc::new(spritedisk_nbd::NbdServer::new(disk, String::new()));
        let (client, conn) = tokio::io::duplex(64 << 10);
        let served = tokio::spawn(server.serve_conn(conn));
        let (mut rd, mut wr) = tokio::io::split(client);
        let input = data.to_vec();
        let send = async move {
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        };
        let drain = async move {
            let mut sink = vec![0u8; 64 << 10];
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let all = async {
            tokio::join!(send, drain);
            let _ = served.await;
        };
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("the NBD server hung on a finished client");
    });
}
