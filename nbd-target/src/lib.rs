//! NBD server frontend for the spritedisk volume engine.
//!
//! Written by hand rather than on a crate: no maintained async Rust NBD
//! server crate fits what we need, which is fixed newstyle negotiation with
//! NBD_OPT_GO/NBD_OPT_INFO block-size advertisement (the engine rejects I/O
//! below 4096 bytes, so clients must be told), running on tokio, generic over
//! our [`BlockIo`] engine trait. The subset we speak (simple replies, six
//! commands) is small enough to own.
//!
//! - [`proto`]: wire constants and frame encoding.
//! - `handshake`: option haggling.
//! - `transmission`: the request loop and reply writer.
//! - `server`: [`NbdServer`] and its Unix/TCP listeners, with their
//!   [`Limits`] (connections, handshake time).
//! - [`local_socket`]: Unix sockets for the daemon's user and root only.
//! - [`client`]: a minimal client for tests (here and end-to-end).

pub mod client;
mod error;
mod handshake;
pub mod local_socket;
pub mod proto;
mod server;
mod transmission;

pub use error::NbdError;
pub use server::{Limits, NbdServer, CONNECTIONS_MAX_DEFAULT, HANDSHAKE_TIMEOUT_DEFAULT};
pub use spritedisk_volume::BlockIo;
pub use transmission::{INFLIGHT_READ_LEN_MAX_BYTES, INFLIGHT_REQUESTS_MAX};
