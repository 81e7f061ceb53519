//! The ublk frontend: serves a [`BlockIo`] device (the volume engine) as
//! `/dev/ublkbN` through libublk and io_uring. libublk types stay inside this
//! crate; the engine sees only [`spritedisk_volume::IoRequest`]s.
//!
//! Threads: libublk runs one thread per hardware queue, each with its own
//! io_uring and a single-threaded smol executor holding one task per tag.
//! A tag's task turns the kernel's I/O descriptor into an `IoRequest`, hands
//! it to the engine on the tokio runtime, and awaits the reply on a oneshot
//! channel (`queue.rs`). Device setup, recovery and teardown: `device.rs`.
//! A warm pool's device, whose volume is bound and unbound while it stays
//! up: `standby.rs`, and what is done to /dev/ublkbN around that: `bdev.rs`.

pub mod bdev;
mod device;
mod error;
mod queue;
mod standby;

pub use device::{driver_loaded, kill_device, remove_device, serve, UblkOptions, DRIVER_MISSING};
pub use error::UblkTargetError;
pub use spritedisk_volume::BlockIo;
pub use standby::{BindError, Rebindable};
