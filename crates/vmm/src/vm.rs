//! The KVM VM: `/dev/kvm`, the VM file descriptor, the in-kernel irqchip
//! (PIC + IOAPIC + local APICs) and PIT, and guest RAM registration.

use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, kvm_userspace_memory_region, KVM_CAP_HALT_POLL,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemory, GuestMemoryRegion, MemoryRegionAddress};

use crate::memory::GuestRam;

/// Where KVM puts the TSS it needs (three pages just below the BIOS area).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm is not usable: {0}")]
    KvmUnavailable(#[source] kvm_ioctls::Error),
    #[error("/dev/kvm lacks a required capability: {0}")]
    MissingCap(&'static str),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest RAM region {0} has no host mapping")]
    RegionMapping(usize),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// `/dev/kvm`, opened by [`preopen_kvm`] before the jail hid it.
static PREOPENED: std::sync::Mutex<Option<std::os::fd::OwnedFd>> = std::sync::Mutex::new(None);

/// Opens `/dev/kvm` now, for the next [`open_kvm`] (the jail calls this
/// before it pivots and drops privileges, so the jail needs no node and
/// an unprivileged VMM no access to it).
pub fn preopen_kvm() -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")?;
    *PREOPENED.lock().unwrap_or_else(|p| p.into_inner()) = Some(file.into());
    Ok(())
}

/// Opens `/dev/kvm` (or takes the descriptor [`preopen_kvm`] opened).
pub fn open_kvm() -> Result<Kvm, VmError> {
    let preopened = PREOPENED.lock().unwrap_or_else(|p| p.into_inner()).take();
    let kvm = match preopened {
        Some(fd) => {
            use std::os::fd::{FromRawFd, IntoRawFd};
            // SAFETY: the descriptor is an open /dev/kvm that this
            // function owns; Kvm takes it over.
            unsafe { Kvm::from_raw_fd(fd.into_raw_fd()) }
        }
        None => Kvm::new().map_err(VmError::KvmUnavailable)?,
    };
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Creates the VM with its irqchip and PIT, and maps `ram` into it.
pub fn create_vm(kvm: &Kvm, ram: &GuestRam) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    if kvm.check_extension(Cap::Pit2) {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        if let Err(e) = vm.create_pit2(pit) {
            // Linux calibrates against kvmclock or the TSC without it.
            tracing::warn!("KVM_CREATE_PIT2 failed, going on without a PIT: {e}");
        }
    } else {
        tracing::info!("no in-kernel PIT on this host");
    }
    disable_halt_polling(&vm);
    for (slot, region) in ram.mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| VmError::RegionMapping(slot))?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping behind `host` is owned by `ram.mem`, which the
        // caller keeps alive for as long as the VM exists (the Vmm holds both
        // until the process exits); the region does not overlap another slot.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(vm)
}

/// Maps `window` (a virtio-fs DAX window) into the VM as memory slot
/// `slot`, at its guest address.
pub fn map_window(
    vm: &VmFd,
    slot: u32,
    window: &crate::devices::virtio::fs::DaxWindow,
) -> Result<(), VmError> {
    let region = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: window.guest_addr(),
        memory_size: window.size(),
        userspace_addr: window.host_addr(),
    };
    // SAFETY: the reservation behind the window lives as long as its
    // device, which the VMM keeps until the process exits; the guest
    // range lies above RAM (layout::dax_window_addr) and apart from the
    // other windows. What is mapped in it changes only by MAP_FIXED over
    // the reservation, which KVM follows through its MMU notifier.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (DAX window)"))
}

/// Turns off KVM's halt polling for this VM: an idle vCPU sleeps at once
/// instead of spinning up to `halt_poll_ns` (200 us by default) on the host.
/// On a small host running many VMs (and, under PVM, slow emulated guest
/// kernels) those cycles are better spent on vCPUs that have work; the extra
/// wake-up latency of an idle vCPU is a few microseconds.
fn disable_halt_polling(vm: &VmFd) {
    if vm.check_extension_raw(libc::c_ulong::from(KVM_CAP_HALT_POLL)) <= 0 {
        return;
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_HALT_POLL,
        ..Default::default()
    };
    cap.args[0] = 0;
    if let Err(e) = vm.enable_cap(&cap) {
        tracing::debug!("KVM_CAP_HALT_POLL: {e}");
    }
}
