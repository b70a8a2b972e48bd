//! VM templates: snapshot a paused VM into a directory, restore new VMs
//! from it.
//!
//! A template directory holds three files:
//!
//! - `memory.bin`: guest RAM, byte for byte (holes where the guest never
//!   wrote). A restore maps it `MAP_PRIVATE`: every VM restored from the
//!   template shares the pages it only reads through the page cache, and
//!   gets its own copy of a page when it writes one.
//! - `state.json`: vCPUs (registers, FPU, MSRs, LAPIC, events), the VM
//!   (PIC, IOAPIC, PIT, kvmclock), devices (serial, CMOS, each virtio-mmio
//!   transport and its queues) and the shape the VM was booted with.
//! - `header.json`: magic, format version, VMM version, the identity and
//!   sha256 of the kernel and initrd, the size of `memory.bin`, the
//!   sha256 of `state.json` and the checksum of `memory.bin` (sha256 over
//!   its non-zero pages and their offsets: only the data is read, about
//!   25 MiB of a fresh 256 MiB guest). Written last: a template without it
//!   is incomplete. All are checked before a restore.
//!
//! Files: `format` (the header and the checks), `state` (what is saved),
//! `vcpu` and `vm` (KVM state in and out), `memory` (RAM in and out).
//! Device state is saved by the devices (`MmioTransport::snapshot`, the
//! serial port, the CMOS).

pub mod format;
pub mod memory;
pub mod state;
pub mod take;
pub mod vcpu;
pub mod vm;

pub use format::{FileId, Header, TemplateError, FORMAT_VERSION, MAGIC};
pub use state::{
    BootShape, DeviceState, DevicesState, MmioState, QueueSnapshot, SnapshotState, VmState,
};
pub use take::Snapshotter;
pub use vcpu::VcpuState;

/// File names inside a template directory.
pub const HEADER_FILE: &str = "header.json";
pub const STATE_FILE: &str = "state.json";
pub const MEMORY_FILE: &str = "memory.bin";
