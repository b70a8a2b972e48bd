//! What a template saves, as serde types. KVM structures are serialized
//! as their bytes (kvm-bindings' `serde` feature).

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};

use super::vcpu::VcpuState;

/// The shape the template's VM was booted with; a restore recreates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootShape {
    pub vcpus: u8,
    pub memory_mib: u64,
    /// The full kernel command line the guest booted with.
    pub cmdline: String,
}

/// The in-kernel irqchip, PIT and kvmclock.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: Option<kvm_pit_state2>,
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kvm_irqchip has no Debug (it holds a union).
        f.debug_struct("VmState")
            .field("pit", &self.pit)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// The 8250's registers (vm-superio's `SerialState`, which has no serde).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

/// One virtqueue's configuration and ring positions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

/// The device behind a virtio-mmio transport: what a restore needs to
/// recreate it (host-side paths come from the restore's own arguments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Hybrid vsock; every connection was dropped at snapshot time.
    Vsock { cid: u64 },
    /// virtio-fs before the guest mounted it (no FUSE session).
    Fs { tag: String },
    /// virtio-net: the MAC and MTU the guest driver read. A restore
    /// attaches the next `--net` (same MTU) in device order; the guest
    /// keeps this MAC until it is given another.
    Net { mac: String, mtu: Option<u16> },
}

/// One virtio-mmio transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    pub device_type: u32,
    pub device: DeviceState,
    pub status: u32,
    pub acked_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_select: u32,
    pub interrupt_status: u32,
    pub activated: bool,
    pub queues: Vec<QueueSnapshot>,
}

/// The legacy devices and the virtio transports, in slot order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    pub serial: SerialSnapshot,
    pub cmos_index: u8,
    pub virtio: Vec<MmioState>,
}

/// Everything in `state.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    pub shape: BootShape,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub devices: DevicesState,
}
