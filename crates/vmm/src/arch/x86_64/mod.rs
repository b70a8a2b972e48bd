//! x86_64 guest setup: the physical memory layout, the boot state of the
//! vCPUs (64-bit Linux boot protocol), the MP table and CPUID.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
