//! The spritedisk volume engine: ties the metadata database, the cache and
//! the object store together behind one block-device interface.
//!
//! Write path: `engine.rs` (admit into the write buffer, `buffer.rs`) →
//! `upload.rs` (seal into a segment, `segment.rs`; PUT; apply to the map in
//! sequence order). Read path: `read.rs`. Attach and crash recovery:
//! `recovery.rs`. Offline checks: `verify.rs`.

pub mod blockcrc;
pub mod buffer;
mod chain;
mod checkpoint;
mod config;
mod custody;
mod engine;
mod error;
mod fetch;
pub mod fork;
mod gc;
mod io;
pub mod lease;
mod localdir;
mod memo;
mod prefetch;
mod read;
mod recovery;
mod remove;
pub mod replicate;
mod reserve;
mod retry;
mod rounds;
pub mod segment;
mod stats;
#[cfg(feature = "test-support")]
pub mod testing;
mod upload;
mod verify;
mod wlog;

pub use chain::{EPOCH_SEQ_RANGE, WINDOW as CHAIN_WINDOW};
pub use checkpoint::Deadline;
pub use config::{
    Durability, EngineOptions, VolumeConfig, BLOCK_SIZE, CONFIG_KEY, DEFAULT_SIZE_BYTES,
};
pub use engine::{reset_cache_dir, Volume, REQUEST_BYTES_MAX};
pub use error::{libc_errno, VolumeError};
pub use gc::{GcOptions, GcReport};
pub use io::{BlockIo, IoReply, IoRequest};
pub use localdir::ensure_private_dir;
pub use recovery::{create_volume, inspect_volume, Inspection, RollForward};
pub use remove::{remove_volume, RemoveReport};
pub use spritedisk_meta::CheckpointRow;
pub use stats::{VolumeStats, WritePathStats};
pub use verify::{verify_volume, VerifyReport};
