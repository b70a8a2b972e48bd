//! The vsock [`VirtioDevice`]: configuration space, feature bits, and the
//! worker's lifetime.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;

use super::super::counters::{DeviceCounters, DeviceKind};
use super::super::{ActivateError, ActiveQueue, GuestMemory, Interrupt, VirtioDevice};
use super::muxer::Muxer;
use super::worker::Worker;
use crate::devices::virtio::read_config_bytes;
use crate::devices::virtio::worker::WorkerHandle;

/// The virtio device ID of vsock.
pub const VSOCK_DEVICE_TYPE: u32 = 19;
/// Maximum size of each of the three queues (rx, tx, event).
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// Errors creating the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("binding hybrid vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing stale hybrid vsock socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hybrid vsock path {path} exists and is not a socket")]
    NotASocket { path: PathBuf },
}

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    acked_features: u64,
    worker: Option<WorkerHandle>,
    transport_reset: bool,
    counters: Arc<DeviceCounters>,
}

impl Vsock {
    /// Creates the device for guest CID `guest_cid`; host clients connect to
    /// the Unix socket at `uds_path` (bound here) and write `CONNECT <port>\n`.
    /// A stale socket file at `uds_path` is replaced; any other file is not.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, VsockError> {
        match std::fs::symlink_metadata(&uds_path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(&uds_path).map_err(|source| VsockError::RemoveStale {
                    path: uds_path.clone(),
                    source,
                })?;
            }
            Ok(_) => return Err(VsockError::NotASocket { path: uds_path }),
            Err(_) => {}
        }
        let listener = crate::unix_socket::bind_private(&uds_path)
            .and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .map_err(|source| VsockError::Bind {
                path: uds_path.clone(),
                source,
            })?;
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            acked_features: 0,
            worker: None,
            transport_reset: false,
            counters: Arc::new(DeviceCounters::new(DeviceKind::Vsock, "vsock")),
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Where host clients connect.
    pub fn uds_path(&self) -> &std::path::Path {
        &self.uds_path
    }

    /// Makes the next activation start with a TRANSPORT_RESET event, which
    /// tells the guest that every vsock connection it had is gone. For a
    /// device restored from a snapshot: the host side of the guest's
    /// connections did not survive.
    pub fn request_transport_reset(&mut self) {
        self.transport_reset = true;
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VSOCK_DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, acked: u64) {
        self.acked_features = acked & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(offset, len = data.len(), "vsock: ignoring a config write");
    }

    fn counters(&self) -> Option<Arc<DeviceCounters>> {
        Some(self.counters.clone())
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let queues: [ActiveQueue; 3] = queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { expected: 3, got })?;
        self.stop_worker();
        let listener = self.listener.try_clone().map_err(ActivateError::Worker)?;
        let muxer = Muxer::new(self.guest_cid, self.uds_path.clone(), listener)
            .map_err(ActivateError::Worker)?;
        let transport_reset = std::mem::take(&mut self.transport_reset);
        let worker = Worker::new(
            mem,
            interrupt,
            queues,
            muxer,
            transport_reset,
            self.counters.clone(),
        )
        .map_err(ActivateError::Worker)?;
        self.worker = Some(worker.spawn().map_err(ActivateError::Worker)?);
        debug!(guest_cid = self.guest_cid, "vsock: activated");
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.stop_worker();
        self.acked_features = 0;
        true
    }

    fn snapshot_state(&self) -> Result<crate::snapshot::DeviceState, String> {
        Ok(crate::snapshot::DeviceState::Vsock {
            cid: self.guest_cid,
        })
    }

    /// Every connection is dropped: the host side of each closes, and the
    /// restored guest learns it from a TRANSPORT_RESET event.
    fn quiesce(&mut self) {
        self.stop_worker();
    }

    fn prepare_restore(&mut self) {
        self.request_transport_reset();
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop_worker();
        if let Err(e) = std::fs::remove_file(&self.uds_path) {
            warn!("vsock: removing {}: {e}", self.uds_path.display());
        }
    }
}
