//! A device whose engine can be swapped: what a warm-pool daemon serves.
//! The ublk device (queues, rings, buffers) is set up once with no volume
//! behind it; a volume is bound to it at attach and unbound at detach, and
//! the same device then waits for the next one (docs/design/0008).
//!
//! With nothing bound, reads return zeros (the kernel's partition scan and
//! udev's probe see an empty disk, never an error) and everything else
//! fails with ESHUTDOWN: no write can land anywhere.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use spritedisk_volume::{BlockIo, IoReply, IoRequest, VolumeError};

/// How often [`Rebindable::unbind`] looks whether the requests that were
/// running on the old engine have finished.
const DRAIN_POLL: Duration = Duration::from_millis(1);

pub struct Rebindable<D> {
    size_bytes: u64,
    bound: RwLock<Option<Arc<D>>>,
}

/// Why an engine cannot be bound.
#[derive(Debug, PartialEq, Eq)]
pub enum BindError {
    AlreadyBound,
    SizeMismatch {
        device_bytes: u64,
        volume_bytes: u64,
    },
}

impl<D: BlockIo> Rebindable<D> {
    /// An unbound device of `size_bytes` (fixed for its life: ublk sets a
    /// device's size when it is added).
    pub fn new(size_bytes: u64) -> Self {
        Rebindable {
            size_bytes,
            bound: RwLock::new(None),
        }
    }

    /// Puts `engine` behind the device; from the next request on, I/O goes to it.
    pub fn bind(&self, engine: Arc<D>) -> Result<(), BindError> {
        if engine.size_bytes() != self.size_bytes {
            return Err(BindError::SizeMismatch {
                device_bytes: self.size_bytes,
                volume_bytes: engine.size_bytes(),
            });
        }
        let mut b = self.bound.write().unwrap();
        if b.is_some() {
            return Err(BindError::AlreadyBound);
        }
        *b = Some(engine);
        Ok(())
    }

    /// Takes the engine out and returns it once no request that started
    /// before is still running on it; later requests see no engine.
    pub async fn unbind(&self) -> Option<Arc<D>> {
        let engine = self.bound.write().unwrap().take()?;
        // Each running request holds a clone (see `handle_io`).
        while Arc::strong_count(&engine) > 1 {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        Some(engine)
    }

    pub fn is_bound(&self) -> bool {
        self.bound.read().unwrap().is_some()
    }
}

#[async_trait::async_trait]
impl<D: BlockIo> BlockIo for Rebindable<D> {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn block_size(&self) -> u32 {
        spritedisk_volume::BLOCK_SIZE
    }

    async fn handle_io(&self, req: IoRequest) -> Result<IoReply, VolumeError> {
        let engine = self.bound.read().unwrap().clone();
        match (engine, req) {
            (Some(e), req) => e.handle_io(req).await,
            (None, IoRequest::Read { len, .. }) => {
                Ok(IoReply::Data(Bytes::from(vec![0u8; len as usize])))
            }
            (None, _) => Err(VolumeError::Stopped(
                "no volume is bound to this standby device".into(),
            )),
        }
    }

    fn read_now(&self, offset: u64, out: &mut [u8]) -> Option<Result<(), VolumeError>> {
        // The clone counts as a running request for `unbind`.
        let engine = self.bound.read().unwrap().clone();
        match engine {
            Some(e) => e.read_now(offset, out),
            None => {
                out.fill(0);
                Some(Ok(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A disk of one byte value that can hold a request until released.
    struct Fill {
        byte: u8,
        size: u64,
        hold: Arc<tokio::sync::Notify>,
        holding: AtomicBool,
    }

    #[async_trait::async_trait]
    impl BlockIo for Fill {
        fn size_bytes(&self) -> u64 {
            self.size
        }
        fn block_size(&self) -> u32 {
            4096
        }
        async fn handle_io(&self, req: IoRequest) -> Result<IoReply, VolumeError> {
            if self.holding.load(Ordering::SeqCst) {
                self.hold.notified().await;
            }
            match req {
                IoRequest::Read { len, .. } => {
                    Ok(IoReply::Data(Bytes::from(vec![self.byte; len as usize])))
                }
                _ => Ok(IoReply::Done),
            }
        }
    }

    fn fill(byte: u8, size: u64) -> Arc<Fill> {
        Arc::new(Fill {
            byte,
            size,
            hold: Arc::new(tokio::sync::Notify::new()),
            holding: AtomicBool::new(false),
        })
    }

    const GIB: u64 = 1 << 30;

    async fn read(d: &Rebindable<Fill>) -> Result<IoReply, VolumeError> {
        d.handle_io(IoRequest::Read {
            offset: 0,
            len: 4096,
        })
        .await
    }

    #[tokio::test]
    async fn unbound_reads_zeros_and_refuses_writes() {
        let d = Rebindable::<Fill>::new(GIB);
        assert_eq!(
            read(&d).await.unwrap(),
            IoReply::Data(Bytes::from(vec![0u8; 4096]))
        );
        let w = d
            .handle_io(IoRequest::Write {
                offset: 0,
                data: Bytes::from(vec![1u8; 4096]),
                fua: false,
            })
            .await;
        assert_eq!(
            w.unwrap_err().errno(),
            spritedisk_volume::libc_errno::ESHUTDOWN
        );
        assert!(d.handle_io(IoRequest::Flush).await.is_err());
    }

    #[tokio::test]
    async fn a_second_volume_sees_nothing_of_the_first() {
        let d = Rebindable::new(GIB);
        d.bind(fill(0xAA, GIB)).unwrap();
        assert_eq!(
            read(&d).await.unwrap(),
            IoReply::Data(Bytes::from(vec![0xAA; 4096]))
        );
        assert_eq!(d.bind(fill(0xCC, GIB)), Err(BindError::AlreadyBound));
        d.unbind().await.unwrap();
        assert_eq!(
            read(&d).await.unwrap(),
            IoReply::Data(Bytes::from(vec![0u8; 4096]))
        );
        d.bind(fill(0xBB, GIB)).unwrap();
        assert_eq!(
            read(&d).await.unwrap(),
            IoReply::Data(Bytes::from(vec![0xBB; 4096]))
        );
    }

    #[tokio::test]
    async fn a_volume_of_another_size_is_refused() {
        let d = Rebindable::new(GIB);
        assert_eq!(
            d.bind(fill(1, 2 * GIB)),
            Err(BindError::SizeMismatch {
                device_bytes: GIB,
                volume_bytes: 2 * GIB
            })
        );
        assert!(!d.is_bound());
    }

    #[tokio::test]
    async fn unbind_waits_for_running_requests() {
        let d = Arc::new(Rebindable::new(GIB));
        let engine = fill(0xAA, GIB);
        engine.holding.store(true, Ordering::SeqCst);
        d.bind(engine.clone()).unwrap();
        let d2 = d.clone();
        let running = tokio::spawn(async move { read(&d2).await });
        // The request has taken its clone of the engine; then only the
        // device and the request hold it.
        while Arc::strong_count(&engine) < 3 {
            tokio::task::yield_now().await;
        }
        let hold = engine.hold.clone();
        drop(engine);
        let d3 = d.clone();
        let unbinding = tokio::spawn(async move { d3.unbind().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !unbinding.is_finished(),
            "unbind returned while a request ran"
        );
        // A request that starts now sees no engine.
        assert_eq!(
            read(&d).await.unwrap(),
            IoReply::Data(Bytes::from(vec![0u8; 4096]))
        );
        hold.notify_one();
        assert_eq!(
            running.await.unwrap().unwrap(),
            IoReply::Data(Bytes::from(vec![0xAA; 4096]))
        );
        unbinding.await.unwrap().unwrap();
    }
}
