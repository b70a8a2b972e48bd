//! The initial register state of the vCPUs for the 64-bit Linux boot
//! protocol: long mode with paging on an identity map of the first GiB,
//! flat segments from our own GDT, RSI pointing at the zero page.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{segment_from_entry, BOOT_GDT, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

// Local APIC register offsets and LVT delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors setting up the vCPU registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing boot structures to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("building the MSR list: {0}")]
    Msrs(String),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// Writes the GDT, IDT and identity-mapped page tables the boot vCPU needs.
/// Done once per VM, before any vCPU runs.
pub fn write_boot_structures(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + (i as u64) * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))?;
    // PML4[0] -> PDPT, PDPT[0] -> PD, PD maps the first GiB in 2 MiB pages.
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))?;
    for i in 0..512u64 {
        // Present, writable, page size (2 MiB).
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))?;
    }
    Ok(())
}

/// The special registers of the boot vCPU: long mode, paging, flat segments.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_entry(BOOT_GDT[usize::from(CODE_INDEX)], CODE_INDEX);
    let data = segment_from_entry(BOOT_GDT[usize::from(DATA_INDEX)], DATA_INDEX);
    let tss = segment_from_entry(BOOT_GDT[usize::from(TSS_INDEX)], TSS_INDEX);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// The general registers of the boot vCPU.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// The MSRs every vCPU starts with.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
    ]
}

/// Sets the boot CPU's registers so it enters the kernel at `entry` in
/// 64-bit mode. Application processors are left in their reset state: the
/// kernel wakes them with INIT/SIPI through the in-kernel local APIC.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&boot_sregs(sregs))
        .map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(kvm("KVM_SET_REGS"))?;
    Ok(())
}

/// Sets what every vCPU needs: FPU control words, MSRs, LINT0/LINT1.
pub fn setup_common(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;

    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|e| RegsError::Msrs(format!("{e:?}")))?;
    let written = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if written != entries.len() {
        // Not fatal: some hosts refuse some of these; the kernel sets its own.
        tracing::debug!(
            written,
            wanted = entries.len(),
            "KVM_SET_MSRS set fewer MSRs"
        );
    }

    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    Ok(())
}

/// Sets the delivery mode (bits 8..11) of the LVT register at `offset`.
fn set_lvt_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sregs_enter_long_mode() {
        let s = boot_sregs(kvm_sregs::default());
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cs.l, 1);
    }

    #[test]
    fn regs_point_at_zero_page() {
        let r = boot_regs(0x100_0000);
        assert_eq!(r.rip, 0x100_0000);
        assert_eq!(r.rsi, ZERO_PAGE_START);
    }

    #[test]
    fn lvt_mode_is_set() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0 + 1] = 0x17; // some other bits set
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x17);
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_NMI);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x14);
    }

    #[test]
    fn page_tables_identity_map() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]);
        let Ok(mem) = mem else {
            panic!("guest memory");
        };
        assert!(write_boot_structures(&mem).is_ok());
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 8)).unwrap_or(0);
        assert_eq!(pde, (1 << 21) | 0x83);
    }
}
