//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz). Not an API:
//! hidden from the docs, no stability promise. They run the device's
//! queue processing without its worker thread and seccomp filter, so a
//! fuzzer can drive it synchronously, one input at a time.

use std::fs::File;
use std::sync::Arc;

use super::super::counters::{DeviceCounters, DeviceKind};
use super::super::{ActiveQueue, GuestMemory, Interrupt};
use super::worker::Worker;

pub use super::frame::{read_tx, write_rx, FrameError, MAX_FRAME_LEN};

/// The device's queue processing without its thread.
pub struct QueueDriver {
    worker: Worker,
}

impl QueueDriver {
    /// Builds the worker over the receive and transmit queues (in that
    /// order) and `tap`: a non-blocking descriptor carrying one frame per
    /// read or write (a datagram socket will do), or none (detached).
    pub fn new(
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: [ActiveQueue; 2],
        tap: Option<Arc<File>>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            worker: Worker::new(
                mem,
                interrupt,
                queues,
                tap,
                Arc::new(DeviceCounters::new(DeviceKind::Net, "fuzz")),
            )?,
        })
    }

    /// Moves frames both ways until neither can go on (what the worker
    /// does on each wake-up).
    pub fn process(&mut self) {
        self.worker.process();
    }
}
