//! The handle of a device worker thread: a kill eventfd the thread polls,
//! and the thread to join. Shared by every virtio device that runs a
//! worker; stopping is idempotent and also happens on drop.

use std::thread::JoinHandle;

use tracing::error;
use vmm_sys_util::eventfd::EventFd;

/// A running device worker thread.
#[derive(Debug)]
pub struct WorkerHandle {
    device: &'static str,
    kill: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Wraps `thread`, which stops once `kill` becomes readable. `device`
    /// names the device in log messages.
    pub fn new(device: &'static str, kill: EventFd, thread: JoinHandle<()>) -> Self {
        Self {
            device,
            kill,
            thread: Some(thread),
        }
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if let Err(e) = self.kill.write(1) {
            error!("{}: signalling the worker to stop: {e}", self.device);
        }
        if thread.join().is_err() {
            error!("{}: the worker thread panicked", self.device);
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
