//! virtio-vsock served in user space as "hybrid vsock": the host side of
//! every guest socket is a Unix socket.
//!
//! Placeholder: the device is being written; see `Vsock::new` for the
//! constructor the VMM calls.

use std::path::PathBuf;

/// Errors creating the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("binding hybrid vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    #[allow(dead_code)]
    guest_cid: u64,
    #[allow(dead_code)]
    uds_path: PathBuf,
}

impl Vsock {
    /// Creates the device for guest CID `guest_cid`; host clients connect to
    /// the Unix socket at `uds_path` (bound here) and write `CONNECT <port>\n`.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, VsockError> {
        Ok(Self {
            guest_cid,
            uds_path,
        })
    }
}
