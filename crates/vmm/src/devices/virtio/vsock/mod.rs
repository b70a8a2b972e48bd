//! virtio-vsock served in user space as "hybrid vsock": the host side of
//! every guest socket is a Unix socket.
//!
//! - Host → guest: a host client connects to the Unix socket at
//!   `uds_path` and writes `CONNECT <port>\n`; once the guest accepted on
//!   vsock port `<port>` it reads `OK <host port>\n`, then the stream.
//! - Guest → host: a guest connection to CID 2 port `P` is connected to the
//!   Unix listener at `<uds_path>_<P>`, which the host side owns; if none
//!   listens there the guest gets a reset.
//!
//! Only stream sockets are served. Everything the guest puts in the queues
//! is untrusted: malformed packets are dropped, connections that break the
//! protocol are reset, and the device never blocks on a host socket.
//!
//! Files: `packet` (the header and descriptor chains), `credit` (flow
//! control), `handshake` (the `CONNECT` line), `connection` (one stream's
//! state machine), `muxer` (the Unix sockets), `worker` (the device thread),
//! `device` (the [`VirtioDevice`](super::VirtioDevice) itself).

mod connection;
mod credit;
mod device;
mod handshake;
mod muxer;
mod packet;
mod worker;

/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod tests;

pub use device::{Vsock, VsockError, QUEUE_SIZE, VSOCK_DEVICE_TYPE};
pub use muxer::listener_path;
