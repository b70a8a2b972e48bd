//! The virtio device boundary.
//!
//! A [`VirtioDevice`] knows its own type, features, configuration space and
//! queues' processing. It knows nothing of the transport: the virtio-mmio
//! transport owns the registers, negotiates features and hands the device
//! its ready queues on [`VirtioDevice::activate`]. Devices do their work on
//! threads of their own, woken by the queue notification eventfds (KVM
//! ioeventfds), and raise interrupts through [`Interrupt`]. Each device
//! counts the guest's use of it in its [`counters::DeviceCounters`].

pub mod counters;
pub mod fs;
pub mod guest_errors;
pub mod mmio;
pub mod net;
pub mod vsock;
pub mod worker;

pub use mmio::MmioTransport;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Bit in the virtio-mmio InterruptStatus register: a used buffer was added.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// Bit in the virtio-mmio InterruptStatus register: configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// Guest memory as every device sees it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// The interrupt line of one virtio device: a status word the transport
/// exposes to the guest, and an eventfd bound to the device's GSI (irqfd).
#[derive(Debug)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irq_evt: EventFd,
    /// Where the interrupts raised are counted (the device's counters).
    counters: Option<Arc<counters::DeviceCounters>>,
}

impl Interrupt {
    /// Creates an interrupt from the transport's status word and an eventfd
    /// registered as a KVM irqfd.
    pub fn new(status: Arc<AtomicU32>, irq_evt: EventFd) -> Self {
        Self {
            status,
            irq_evt,
            counters: None,
        }
    }

    /// The same, counting each interrupt raised in `counters`.
    pub fn counted(mut self, counters: Option<Arc<counters::DeviceCounters>>) -> Self {
        self.counters = counters;
        self
    }

    /// Tells the guest that used buffers were added to a queue.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.signal(VIRTIO_MMIO_INT_VRING)
    }

    /// Tells the guest that the configuration space changed.
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.signal(VIRTIO_MMIO_INT_CONFIG)
    }

    fn signal(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Some(c) = &self.counters {
            c.interrupt();
        }
        self.irq_evt.write(1)
    }
}

/// A queue made ready by the driver, with the eventfd the guest's
/// QueueNotify writes for it land on.
#[derive(Debug)]
pub struct ActiveQueue {
    pub queue: Queue,
    pub notify: EventFd,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, the driver made {got} ready")]
    QueueCount { expected: usize, got: usize },
    #[error("device worker: {0}")]
    Worker(#[source] std::io::Error),
    #[error("{0}")]
    Device(String),
}

/// Copies `config[offset..]` into `data`, with zeros past the end of
/// `config`: a read of a device's configuration space.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| config.get(at).copied())
            .unwrap_or(0);
    }
}

/// One virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (e.g. 19 for vsock).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver (VIRTIO_F_VERSION_1 included).
    fn avail_features(&self) -> u64;
    /// Records the features the driver accepted.
    fn set_acked_features(&mut self, acked: u64);
    /// Reads the device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space at `offset`.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The device's counters (shared with its workers), if it counts.
    fn counters(&self) -> Option<Arc<counters::DeviceCounters>> {
        None
    }
    /// Shared memory region `id` (virtio 1.2, 2.10): its guest physical
    /// address and length, if the device has one.
    fn shared_memory(&self, _id: u32) -> Option<(u64, u64)> {
        None
    }
    /// Starts the device once the driver set DRIVER_OK.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;
    /// Stops the device's workers after a driver reset. Returns false when
    /// the device cannot be reset (the transport then marks it failed).
    fn reset(&mut self) -> bool {
        false
    }
    /// Says how to recreate this device in a VM restored from a snapshot,
    /// or why it cannot be saved. No side effects: every device is asked
    /// before any is stopped. Devices without snapshot support refuse.
    fn snapshot_state(&self) -> Result<crate::snapshot::DeviceState, String> {
        Err(format!(
            "virtio device type {} does not support snapshots",
            self.device_type()
        ))
    }
    /// Stops the device's workers so its queues hold still while they are
    /// saved. Every chain a worker took must have been returned to the
    /// used ring by then (the transport saves `next_avail = next_used`).
    fn quiesce(&mut self) {}
    /// Called on a device of a restored VM before its transport activates
    /// it again with the saved queues.
    fn prepare_restore(&mut self) {}
}
