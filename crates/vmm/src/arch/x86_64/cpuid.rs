//! CPUID for the vCPUs: what KVM supports on this host, with each vCPU's
//! APIC ID and the hypervisor bit filled in.
//!
//! On PVM hosts the guest kernel sees the host's CPUID in kernel mode
//! whatever is set here (see HOST.md); the kernel command line switches off
//! what the emulator cannot execute. User mode does see these values.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Adjusts the supported CPUID `entries` for vCPU `cpu_id` of `num_cpus`.
pub fn fixup(entries: &mut [kvm_cpuid_entry2], cpu_id: u8, num_cpus: u8) {
    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC ID, EBX[23:16] logical processors,
                // EBX[15:8] CLFLUSH line size in 8-byte units.
                entry.ebx =
                    (u32::from(cpu_id) << 24) | (u32::from(num_cpus) << 16) | (entry.ebx & 0xffff);
                entry.ecx |= ECX_HYPERVISOR;
                if num_cpus > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26] cores per package - 1, EAX[25:14] threads
                // sharing the cache - 1: one core per vCPU, nothing shared.
                entry.eax = (entry.eax & 0x3fff) | (u32::from(num_cpus.saturating_sub(1)) << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => {
                entry.edx = u32::from(cpu_id);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xdead_0800,
            edx: 0,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_hypervisor_bit() {
        let mut e = vec![entry(1, 0), entry(0xb, 0), entry(0xb, 1)];
        fixup(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!(e[2].edx, 3);
    }
}
