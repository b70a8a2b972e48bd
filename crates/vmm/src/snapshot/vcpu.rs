//! One vCPU's KVM state: saved on the vCPU's own thread while it is
//! parked, restored before it first runs.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Most MSRs read or written per ioctl.
const MSR_CHUNK: usize = 64;

/// Errors reading or writing a vCPU's state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vCPU {id}: {what}: {source}")]
    Kvm {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: KVM_SET_MSRS took {set} of {total} MSRs (first refused: {first:#x})")]
    MsrsRefused {
        id: u8,
        set: usize,
        total: usize,
        first: u32,
    },
    #[error("vCPU {id}: building an MSR list: {reason}")]
    MsrList { id: u8, reason: String },
}

/// Everything KVM holds for one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: Option<kvm_xcrs>,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
}

fn msrs_of(id: u8, entries: &[kvm_msr_entry]) -> Result<Msrs, VcpuStateError> {
    Msrs::from_entries(entries).map_err(|e| VcpuStateError::MsrList {
        id,
        reason: format!("{e:?}"),
    })
}

/// Reads every MSR in `index` that KVM lets us read; the ones it refuses
/// (KVM stops at the first) are skipped and logged.
fn read_msrs(id: u8, fd: &VcpuFd, index: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(index.len());
    let mut pending: &[u32] = index;
    while !pending.is_empty() {
        let take = pending.len().min(MSR_CHUNK);
        let entries: Vec<kvm_msr_entry> = pending[..take]
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = msrs_of(id, &entries)?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(|source| VcpuStateError::Kvm {
                id,
                what: "KVM_GET_MSRS",
                source,
            })?;
        out.extend_from_slice(&msrs.as_slice()[..read.min(take)]);
        if read < take {
            tracing::debug!(vcpu = id, msr = pending[read], "MSR not readable; skipped");
            pending = &pending[read + 1..];
        } else {
            pending = &pending[take..];
        }
    }
    Ok(out)
}

fn write_msrs(id: u8, fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), VcpuStateError> {
    for chunk in entries.chunks(MSR_CHUNK) {
        let msrs = msrs_of(id, chunk)?;
        let set = fd.set_msrs(&msrs).map_err(|source| VcpuStateError::Kvm {
            id,
            what: "KVM_SET_MSRS",
            source,
        })?;
        if set < chunk.len() {
            return Err(VcpuStateError::MsrsRefused {
                id,
                set,
                total: chunk.len(),
                first: chunk[set].index,
            });
        }
    }
    Ok(())
}

impl VcpuState {
    /// Reads the state of the stopped vCPU `fd`. Its last I/O exit must
    /// have been completed (a KVM_RUN with immediate_exit set) first.
    pub fn save(id: u8, fd: &VcpuFd, msr_index: &[u32]) -> Result<Self, VcpuStateError> {
        let err = |what| move |source| VcpuStateError::Kvm { id, what, source };
        // KVM_GET_MP_STATE first: it settles pending APIC events.
        let mp_state = fd.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(err("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
        let xsave = fd.get_xsave().map_err(err("KVM_GET_XSAVE"))?;
        let xcrs = match fd.get_xcrs() {
            Ok(x) => Some(x),
            Err(e) => {
                tracing::debug!(vcpu = id, "KVM_GET_XCRS: {e}; not saved");
                None
            }
        };
        let debug_regs = fd.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?;
        let lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        let msrs = read_msrs(id, fd, msr_index)?;
        let events = fd.get_vcpu_events().map_err(err("KVM_GET_VCPU_EVENTS"))?;
        Ok(Self {
            id,
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            events,
        })
    }

    /// Loads this state into a new vCPU whose CPUID is already set.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        let id = self.id;
        let err = |what| move |source| VcpuStateError::Kvm { id, what, source };
        fd.set_mp_state(self.mp_state)
            .map_err(err("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs).map_err(err("KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs).map_err(err("KVM_SET_SREGS"))?;
        // SAFETY: `self.xsave` is a complete kvm_xsave read back by
        // KVM_GET_XSAVE (the legacy 4 KiB layout, no trailing FAM), which is
        // exactly what KVM_SET_XSAVE reads.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(err("KVM_SET_XSAVE"))?;
        if let Some(xcrs) = &self.xcrs {
            fd.set_xcrs(xcrs).map_err(err("KVM_SET_XCRS"))?;
        }
        fd.set_debug_regs(&self.debug_regs)
            .map_err(err("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic).map_err(err("KVM_SET_LAPIC"))?;
        write_msrs(id, fd, &self.msrs)?;
        fd.set_vcpu_events(&self.events)
            .map_err(err("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}
