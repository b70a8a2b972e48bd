//! Emulated devices and the buses the vCPUs reach them through.

pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
