//! The guest kernel command line: a fixed base, host quirks, the virtio-mmio
//! device declarations, then the user's extra arguments (last, so they can
//! override).

use std::path::Path;

/// What every guest gets. `percpu_alloc=page`: percpu chunks of the
/// first chunk's size instead of 2 MiB atoms, whose 512 block descriptors
/// the allocator rescans on mounts, cgroups and namespaces
/// (guest/kernel/README.md).
pub const BASE: &str =
    "console=ttyS0 reboot=k panic=-1 nokaslr pty.legacy_count=0 quiet percpu_alloc=page";

/// What PVM hosts with emulated guest kernel mode need (see HOST.md): the
/// emulator cannot execute XSAVE, CMPXCHG16B, CLAC/STAC or POPCNT in kernel
/// mode, and mitigations only slow an emulated kernel down further.
///
/// `clocksource=kvm-clock`: PVM cannot offset the guest's TSC (a write of
/// IA32_TSC reads back as the host's TSC), so in a VM restored from a
/// template the TSC jumps ahead by the time since the snapshot. A guest
/// timing itself with the TSC then spends minutes of emulated kernel time
/// catching up; kvmclock is restored exactly (KVM_SET_CLOCK) and goes on
/// from where it stopped.
///
/// `tsc_deadline_timer` cleared: a periodic tick on a one-shot clock event
/// device (the LAPIC in TSC-deadline mode) is emulated by a loop that runs
/// every missed tick with interrupts off; a guest starved of CPU (several
/// VMs on a loaded host) fell behind and never caught up (restored VMs
/// stopped answering). The guest kernel now also runs without an idle
/// tick (NO_HZ_IDLE), whose tick timer skips missed periods.
///
/// The rest only saves boot time there (guest/kernel/README.md has the
/// profile): without ERMS/FSRM the kernel copies and clears memory with
/// `rep movsq`/`rep stosq`, which the emulator runs eight times faster
/// than byte-wise `rep movsb`/`stosb`; `nacre_keep_image` (our kernel
/// patch 0007) keeps the kernel image's init memory instead of changing
/// its page attributes one 4 KiB page at a time.
pub const PVM_QUIRKS: &str = "mitigations=off noxsave \
     clearcpuid=cx16,smap,smep,popcnt,tsc_deadline_timer,erms,fsrm clocksource=kvm-clock \
     nacre_keep_image";

/// Where the PVM module shows itself.
pub const PVM_MODULE_PATH: &str = "/sys/module/kvm_pvm";

/// Whether this host runs guests on the PVM module.
/// Asked once (the jail hides /sys; [`crate::jail::enter`] asks first).
pub fn host_is_pvm() -> bool {
    static PVM: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PVM.get_or_init(|| Path::new(PVM_MODULE_PATH).exists())
}

/// One virtio-mmio device as the kernel's `virtio_mmio.device=` wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceDecl {
    pub addr: u64,
    pub size: u64,
    pub irq: u32,
}

impl std::fmt::Display for MmioDeviceDecl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.size % 1024 == 0 {
            write!(
                f,
                "virtio_mmio.device={}K@{:#x}:{}",
                self.size / 1024,
                self.addr,
                self.irq
            )
        } else {
            write!(
                f,
                "virtio_mmio.device={}@{:#x}:{}",
                self.size, self.addr, self.irq
            )
        }
    }
}

/// Builds the full command line.
pub fn build(pvm_quirks: bool, devices: &[MmioDeviceDecl], extra: &str) -> String {
    let mut parts = vec![BASE.to_string()];
    if pvm_quirks {
        parts.push(PVM_QUIRKS.to_string());
    }
    parts.extend(devices.iter().map(ToString::to_string));
    let extra = extra.trim();
    if !extra.is_empty() {
        parts.push(extra.to_string());
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_only() {
        assert_eq!(build(false, &[], "  "), BASE);
    }

    #[test]
    fn everything_in_order() {
        let dev = MmioDeviceDecl {
            addr: 0xd000_0000,
            size: 0x1000,
            irq: 5,
        };
        let line = build(true, &[dev], "init=/init foo=bar");
        assert_eq!(
            line,
            format!("{BASE} {PVM_QUIRKS} virtio_mmio.device=4K@0xd0000000:5 init=/init foo=bar")
        );
    }

    #[test]
    fn odd_sizes_in_bytes() {
        let dev = MmioDeviceDecl {
            addr: 0x1000,
            size: 0x200,
            irq: 6,
        };
        assert_eq!(dev.to_string(), "virtio_mmio.device=512@0x1000:6");
    }
}
