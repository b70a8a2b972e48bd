//! virtio-net served in user space on a tap descriptor (no vhost).
//!
//! One receive/transmit queue pair. Frames cross the tap with the 12-byte
//! `virtio_net_hdr_v1` in front (the tap is opened with `IFF_VNET_HDR` and
//! its header size set to 12), so guest frames go to the tap unchanged and
//! tap frames land in guest buffers unchanged, `num_buffers` set to 1. No
//! offload is offered to the guest nor enabled on the tap: every frame is
//! a plain, fully checksummed Ethernet frame.
//!
//! The tap usually comes from the runtime, which opens it inside the pod's
//! network namespace and lets the VMM inherit the descriptor
//! (`--net fd=N,mac=...`): the VMM never enters a network namespace.
//!
//! Files: `config` (the `--net` syntax, MAC, configuration space), `tap`
//! (opening and checking the tap), `frame` (moving one frame between a
//! descriptor chain and the tap), `worker` (the device thread), `device`
//! (the [`VirtioDevice`](super::VirtioDevice)).

mod config;
mod device;
mod frame;
mod tap;
mod worker;

/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;

pub use config::{
    validate_all, validate_tap_name, MacAddr, NetBackend, NetConfig, NetConfigError, CONFIG_LEN,
    MAX_MTU, MIN_MTU,
};
pub use device::{VirtioNet, NET_DEVICE_TYPE, QUEUE_SIZE};
pub use frame::VNET_HDR_LEN;
pub use tap::{Tap, TapError};
