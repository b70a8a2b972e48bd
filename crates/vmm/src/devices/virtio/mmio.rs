//! The virtio-mmio transport (virtio 1.x, register layout version 2).
//!
//! The transport owns the registers: it negotiates features, collects the
//! queue configuration the driver writes, and on DRIVER_OK hands the device
//! its ready queues with their notification eventfds. QueueNotify writes
//! normally never reach it: KVM ioeventfds (one per queue, matched on the
//! queue index) signal the device directly; a write that does arrive here
//! is forwarded to the same eventfd. Interrupts go through an irqfd; the
//! guest reads and acknowledges them in InterruptStatus/InterruptACK.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{ActiveQueue, GuestMemory, Interrupt, VirtioDevice};
use crate::devices::BusDevice;

const MMIO_MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
/// The vendor ID we report: "NACR" in ASCII.
const VENDOR_ID: u32 = 0x5243_414e;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// The QueueNotify register's offset, where the ioeventfds sit.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_SHM_BASE_LOW: u64 = 0x0b8;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// One virtio device behind the mmio registers.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    interrupt_status: Arc<AtomicU32>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_select: u32,
    shm_select: u32,
    status: u32,
    activated: bool,
    broken: bool,
}

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("creating a queue eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("queue {index}: invalid maximum size {max}")]
    QueueSize { index: usize, max: u16 },
}

impl MmioTransport {
    /// Wraps `device`; `irq_evt` is the eventfd registered as the irqfd of
    /// the device's GSI.
    pub fn new(
        mem: GuestMemory,
        device: Box<dyn VirtioDevice>,
        irq_evt: EventFd,
    ) -> Result<Self, MmioError> {
        let interrupt_status = Arc::new(AtomicU32::new(0));
        let interrupt =
            Arc::new(Interrupt::new(interrupt_status.clone(), irq_evt).counted(device.counters()));
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for (index, &max) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(max).map_err(|_| MmioError::QueueSize { index, max })?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt,
            interrupt_status,
            queues,
            queue_evts,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_select: 0,
            shm_select: 0,
            status: 0,
            activated: false,
            broken: false,
        })
    }

    /// The virtio device ID of the device behind the transport.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The counters of the device behind the transport, if it counts.
    pub fn counters(&self) -> Option<Arc<super::counters::DeviceCounters>> {
        self.device.counters()
    }

    /// The notification eventfds, by queue index: register each as a KVM
    /// ioeventfd on `base + REG_QUEUE_NOTIFY` matching its index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device status the driver last wrote (plus NEEDS_RESET).
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may only change before the device runs.
    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if self.activated {
            tracing::debug!("virtio-mmio: queue write after DRIVER_OK ignored");
            return;
        }
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn device_features_word(&self) -> u32 {
        let features = self.device.avail_features();
        match self.device_features_sel {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        }
    }

    fn ack_features_word(&mut self, value: u32) {
        if self.status & STATUS_FEATURES_OK != 0 || self.activated {
            tracing::debug!("virtio-mmio: features written after FEATURES_OK ignored");
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            _ => return,
        };
        let mask = 0xffff_ffffu64 << shift;
        let offered = self.device.avail_features();
        let word = (u64::from(value) << shift) & offered;
        self.acked_features = (self.acked_features & !mask) | word;
    }

    fn reset(&mut self) {
        if self.activated && !self.device.reset() {
            tracing::warn!(
                device = self.device.device_type(),
                "virtio device cannot be reset; marking it broken"
            );
            self.broken = true;
        }
        self.activated = false;
        self.status = if self.broken { STATUS_NEEDS_RESET } else { 0 };
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
        for q in &mut self.queues {
            q.reset();
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        let added = value & !self.status;
        if added & STATUS_FEATURES_OK != 0 {
            if self.acked_features & VIRTIO_F_VERSION_1 == 0 || self.broken {
                // Refuse: the driver sees FEATURES_OK did not stick.
                value &= !STATUS_FEATURES_OK;
            } else {
                self.device.set_acked_features(self.acked_features);
            }
        }
        if added & STATUS_DRIVER_OK != 0 && value & STATUS_FEATURES_OK != 0 && !self.activated {
            if let Err(e) = self.activate() {
                if super::guest_errors::ACTIVATION_FAILURES.record() {
                    tracing::error!(device = self.device.device_type(), "virtio activate: {e}");
                }
                value |= STATUS_NEEDS_RESET;
                let _ = self.interrupt.signal_config_change();
            }
        }
        self.status = value | (self.status & STATUS_NEEDS_RESET);
    }

    fn activate(&mut self) -> Result<(), String> {
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut active = Vec::new();
        for (index, queue) in self.queues.iter_mut().enumerate() {
            if !queue.ready() {
                continue;
            }
            if !queue.is_valid(&self.mem) {
                return Err(format!("queue {index} is not valid in guest memory"));
            }
            queue.set_event_idx(event_idx);
            let notify = self.queue_evts[index]
                .try_clone()
                .map_err(|e| format!("cloning queue {index} eventfd: {e}"))?;
            // The device takes the queue; the transport keeps a copy of its
            // configuration so the registers still read back.
            let copy = copy_queue(queue);
            active.push(ActiveQueue {
                queue: std::mem::replace(queue, copy),
                notify,
            });
        }
        self.device
            .activate(self.mem.clone(), self.interrupt.clone(), active)
            .map_err(|e| e.to_string())?;
        self.activated = true;
        Ok(())
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => self.device_features_word(),
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            REG_STATUS => self.status,
            // The selected shared memory region; a length of all ones
            // says there is none.
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => {
                let region = self.device.shared_memory(self.shm_select);
                let value = match (offset, region) {
                    (REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH, None) => u64::MAX,
                    (REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH, Some((_, len))) => len,
                    (_, Some((base, _))) => base,
                    (_, None) => 0,
                };
                let high = matches!(offset, REG_SHM_LEN_HIGH | REG_SHM_BASE_HIGH);
                (if high { value >> 32 } else { value }) as u32
            }
            REG_CONFIG_GENERATION => 0,
            _ => {
                tracing::debug!("virtio-mmio: read of register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES => self.ack_features_word(value),
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_QUEUE_SEL => self.queue_select = value,
            REG_SHM_SEL => self.shm_select = value,
            REG_QUEUE_NUM => self.with_queue(|q| q.set_size(value as u16)),
            REG_QUEUE_READY => self.with_queue(|q| q.set_ready(value == 1)),
            REG_QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            REG_QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(value))),
            REG_QUEUE_DRIVER_LOW => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            REG_QUEUE_DRIVER_HIGH => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            REG_QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(value), None)),
            REG_QUEUE_DEVICE_HIGH => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            REG_QUEUE_NOTIFY => {
                // Only reached when no ioeventfd caught the write.
                if let Some(evt) = self.queue_evts.get(value as usize) {
                    if let Err(e) = evt.write(1) {
                        tracing::warn!("virtio-mmio: queue {value} notify: {e}");
                    }
                }
            }
            REG_INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!value, Ordering::SeqCst);
            }
            REG_STATUS => self.set_status(value),
            _ => tracing::debug!("virtio-mmio: write of register {offset:#x}"),
        }
    }
}

/// A new queue with the same configuration as `q`.
fn copy_queue(q: &Queue) -> Queue {
    let mut copy = Queue::new(q.max_size()).unwrap_or_default();
    copy.set_size(q.size());
    copy.set_desc_table_address(
        Some(q.desc_table() as u32),
        Some((q.desc_table() >> 32) as u32),
    );
    copy.set_avail_ring_address(
        Some(q.avail_ring() as u32),
        Some((q.avail_ring() >> 32) as u32),
    );
    copy.set_used_ring_address(
        Some(q.used_ring() as u32),
        Some((q.used_ring() >> 32) as u32),
    );
    copy.set_event_idx(q.event_idx_enabled());
    copy.set_ready(q.ready());
    copy
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            tracing::debug!("virtio-mmio: bad register read {offset:#x}/{}", data.len());
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::debug!("virtio-mmio: bad register write {offset:#x}/{}", data.len());
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[path = "mmio_snapshot.rs"]
mod snapshot;

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
