//! The VM-wide KVM state: the in-kernel PIC pair and IOAPIC, the PIT and
//! kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;

use super::state::VmState;

/// Errors reading or writing the VM state.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct VmStateError {
    pub what: &'static str,
    #[source]
    pub source: kvm_ioctls::Error,
}

fn err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { what, source }
}

fn get_chip(vm: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, VmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(err(what))?;
    Ok(chip)
}

/// Reads the VM state; the vCPUs must be stopped.
pub fn save(vm: &VmFd) -> Result<VmState, VmStateError> {
    // The PIT is optional (see `crate::vm::create_vm`).
    let pit = match vm.get_pit2() {
        Ok(pit) => Some(pit),
        Err(e) => {
            tracing::debug!("KVM_GET_PIT2: {e}; no PIT saved");
            None
        }
    };
    Ok(VmState {
        pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?,
        pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?,
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
        pit,
        clock: vm.get_clock().map_err(err("KVM_GET_CLOCK"))?,
    })
}

/// Loads `state` into a new VM that has its irqchip (and PIT, if the
/// state has one) but no vCPU yet.
pub fn restore(vm: &VmFd, state: &VmState) -> Result<(), VmStateError> {
    vm.set_irqchip(&state.pic_master)
        .map_err(err("KVM_SET_IRQCHIP (PIC master)"))?;
    vm.set_irqchip(&state.pic_slave)
        .map_err(err("KVM_SET_IRQCHIP (PIC slave)"))?;
    vm.set_irqchip(&state.ioapic)
        .map_err(err("KVM_SET_IRQCHIP (IOAPIC)"))?;
    if let Some(pit) = &state.pit {
        vm.set_pit2(pit).map_err(err("KVM_SET_PIT2"))?;
    }
    Ok(())
}

/// Sets kvmclock to its saved value. After the vCPUs' MSRs (their TSC
/// writes make KVM recompute the master clock).
pub fn restore_clock(vm: &VmFd, state: &VmState) -> Result<(), VmStateError> {
    // The guest's clock goes on from where it stopped: no KVM_CLOCK_REALTIME
    // adjustment (the agent is told the wall-clock time after a restore).
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(err("KVM_SET_CLOCK"))?;
    Ok(())
}
