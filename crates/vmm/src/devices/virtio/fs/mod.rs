//! virtio-fs served by the VMM itself: a host directory reaches the guest
//! as a FUSE file system (`mount -t virtiofs TAG /mnt`), with no
//! virtiofsd process and no vhost-user socket.
//!
//! The FUSE side is fuse-backend-rs: its `PassthroughFs` over the shared
//! directory and its `Server` decoding the requests found in the queues.
//! Everything the guest sends is untrusted: lookups stay under the shared
//! directory, read-only bind mounts inside it stay read-only (the host
//! kernel enforces it), and a malformed request or descriptor chain is
//! answered with an error or dropped. See [`passthrough_config`] for the
//! options and why.
//!
//! Files: `config` (tag, `TAG=PATH`, configuration space), `guard`
//! (the `FileSystem` wrapper that refuses device nodes), `worker` (the
//! device thread), `counting` (what a served request adds to the device's
//! counters), `dax` (the window files are mapped in), `dax_scope` (which
//! files may be: a rootfs's), `device` (the
//! [`VirtioDevice`](super::VirtioDevice)).

mod config;
mod counting;
mod dax;
mod dax_scope;
mod device;
mod guard;
mod worker;

/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod tests;

pub use config::{
    validate_all, validate_tag, CacheMode, SharedDir, SharedDirError, CONFIG_LEN, TAG_LEN,
};
pub use dax::{DaxWindow, WINDOW_SIZE as DAX_WINDOW_SIZE};
pub use device::{
    passthrough_config, FsError, VirtioFs, FS_DEVICE_TYPE, NUM_REQUEST_QUEUES, QUEUE_SIZE,
};
