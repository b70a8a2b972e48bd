//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz). Not an API:
//! hidden from the docs, no stability promise. They serve a queue with
//! the device's FUSE server (the `NoDeviceNodes` filter over
//! `PassthroughFs`) without its worker thread and seccomp filter.

use std::path::Path;

use virtio_queue::Queue;

use super::super::counters::{DeviceCounters, DeviceKind};
use super::super::GuestMemory;
use super::dax::{DaxWindow, WindowMapper};
use super::device::passthrough_config;
use super::worker::{new_server, serve_queue, FuseServer};
use super::CacheMode;

/// The device's FUSE server over one shared directory.
pub struct Server {
    server: FuseServer,
    counters: DeviceCounters,
    mapper: WindowMapper,
}

impl Server {
    /// The server the device would run for `root` (an existing directory).
    /// Like the device's worker thread, the calling thread gets its own
    /// umask and working directory first (`unshare(CLONE_FS)`).
    pub fn new(root: &Path) -> std::io::Result<Self> {
        Ok(Self {
            server: new_server(passthrough_config(root, CacheMode::Never))?,
            counters: DeviceCounters::new(DeviceKind::Fs, "fuzz"),
            // A small window: SETUPMAPPING and REMOVEMAPPING are served
            // as the device serves them.
            mapper: WindowMapper(std::sync::Arc::new(DaxWindow::new(1 << 32, 16 << 12)?)),
        })
    }

    /// Serves every available chain of `queue`; returns how many were used.
    pub fn serve_queue(&mut self, queue: &mut Queue, mem: &GuestMemory) -> usize {
        serve_queue(
            queue,
            mem,
            &self.server,
            &self.counters,
            Some(&mut self.mapper),
        )
    }
}
