//! The Intel MultiProcessor Specification (v1.4) table: how a guest without
//! ACPI learns its CPUs, its IOAPIC and how ISA IRQs reach the IOAPIC.
//!
//! Laid out as: floating pointer structure (16 bytes), configuration table
//! header (44 bytes), then entries: one processor entry per vCPU, the ISA
//! bus, the IOAPIC, one I/O interrupt entry per IOAPIC pin, and the two
//! local interrupt entries (ExtINT on LINT0, NMI on LINT1).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_END, IOAPIC_PINS, IOAPIC_START};

const MPC_SPEC_REV: u8 = 4;
const FLOATING_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
// Family 6, with FPU and APIC in the feature flags: Linux only looks at the
// flags of processor entries to count and identify CPUs.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 9) | 1;
const BUS_ID_ISA: u8 = 0;

/// The most vCPUs whose MP table fits in the last KiB of base memory.
pub const MAX_VCPUS: u8 = 32;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit in the MP table (at most {MAX_VCPUS})")]
    TooManyCpus(u8),
    #[error("writing the MP table to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// The size of the whole MP table for `num_cpus` vCPUs.
pub fn table_size(num_cpus: u8) -> usize {
    FLOATING_SIZE
        + HEADER_SIZE
        + PROCESSOR_SIZE * usize::from(num_cpus)
        + SMALL_ENTRY_SIZE * (2 + IOAPIC_PINS as usize + 2)
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

fn push_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn push_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Builds the MP table for `num_cpus` vCPUs as it will sit at `base`.
pub fn build(base: u64, num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus; // APIC IDs 0..num_cpus-1 are the CPUs'.

    // Entries first, so the header can carry their count and checksum.
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(cpu);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 });
        push_u32(&mut entries, CPU_SIGNATURE);
        push_u32(&mut entries, CPU_FEATURES);
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.push(ENTRY_BUS);
    entries.push(BUS_ID_ISA);
    entries.extend_from_slice(b"ISA   ");
    count += 1;

    entries.push(ENTRY_IOAPIC);
    entries.push(ioapic_id);
    entries.push(IOAPIC_VERSION);
    entries.push(IOAPIC_ENABLED);
    push_u32(&mut entries, IOAPIC_START as u32);
    count += 1;

    for pin in 0..IOAPIC_PINS as u8 {
        entries.push(ENTRY_IO_INTERRUPT);
        entries.push(INT_TYPE_INT);
        push_u16(&mut entries, 0); // polarity and trigger conform to the bus
        entries.push(BUS_ID_ISA);
        entries.push(pin);
        entries.push(ioapic_id);
        entries.push(pin);
        count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries.push(ENTRY_LOCAL_INTERRUPT);
        entries.push(kind);
        push_u16(&mut entries, 0);
        entries.push(BUS_ID_ISA);
        entries.push(0);
        entries.push(0xff); // every local APIC
        entries.push(lint);
        count += 1;
    }

    let header_addr = base + FLOATING_SIZE as u64;
    let mut header = Vec::with_capacity(HEADER_SIZE);
    header.extend_from_slice(b"PCMP");
    push_u16(&mut header, (HEADER_SIZE + entries.len()) as u16);
    header.push(MPC_SPEC_REV);
    header.push(0); // checksum, below
    header.extend_from_slice(b"NACRE   ");
    header.extend_from_slice(b"NACRE-VMM   ");
    push_u32(&mut header, 0); // OEM table pointer
    push_u16(&mut header, 0); // OEM table size
    push_u16(&mut header, count);
    push_u32(&mut header, APIC_START as u32);
    push_u16(&mut header, 0); // extended table length
    header.push(0); // extended table checksum
    header.push(0); // reserved
    let mut sum_input = header.clone();
    sum_input.extend_from_slice(&entries);
    header[7] = checksum(&sum_input);

    let mut floating = Vec::with_capacity(FLOATING_SIZE);
    floating.extend_from_slice(b"_MP_");
    push_u32(&mut floating, header_addr as u32);
    floating.push(1); // length in 16-byte paragraphs
    floating.push(MPC_SPEC_REV);
    floating.push(0); // checksum, below
    floating.extend_from_slice(&[0; 5]); // feature bytes: table present
    floating[10] = checksum(&floating);

    let mut table = floating;
    table.extend_from_slice(&header);
    table.extend_from_slice(&entries);
    Ok(table)
}

/// Writes the MP table for `num_cpus` vCPUs at `base`.
pub fn write(mem: &GuestMemoryMmap, base: u64, num_cpus: u8) -> Result<(), MptableError> {
    let table = build(base, num_cpus)?;
    debug_assert!(base + table.len() as u64 <= EBDA_END);
    mem.write_slice(&table, GuestAddress(base))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::layout::MPTABLE_START;
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_are_zero() {
        for cpus in [1u8, 2, 4, MAX_VCPUS] {
            let t = build(MPTABLE_START, cpus).unwrap_or_default();
            assert_eq!(t.len(), table_size(cpus));
            assert_eq!(sum(&t[..FLOATING_SIZE]), 0, "floating pointer");
            assert_eq!(sum(&t[FLOATING_SIZE..]), 0, "configuration table");
        }
    }

    #[test]
    fn header_is_consistent() {
        let t = build(MPTABLE_START, 2).unwrap_or_default();
        assert_eq!(&t[0..4], b"_MP_");
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        assert_eq!(u64::from(ptr), MPTABLE_START + FLOATING_SIZE as u64);
        let h = &t[FLOATING_SIZE..];
        assert_eq!(&h[0..4], b"PCMP");
        let len = u16::from_le_bytes([h[4], h[5]]);
        assert_eq!(usize::from(len), t.len() - FLOATING_SIZE);
        let count = u16::from_le_bytes([h[34], h[35]]);
        assert_eq!(usize::from(count), 2 + 1 + 1 + IOAPIC_PINS as usize + 2);
        // The first CPU is the bootstrap processor, the second is not.
        assert_eq!(h[HEADER_SIZE + 3], CPU_ENABLED | CPU_BOOTSTRAP);
        assert_eq!(h[HEADER_SIZE + PROCESSOR_SIZE + 1], 1);
        assert_eq!(h[HEADER_SIZE + PROCESSOR_SIZE + 3], CPU_ENABLED);
    }

    #[test]
    fn largest_table_fits_below_ebda_end() {
        assert!(MPTABLE_START + table_size(MAX_VCPUS) as u64 <= EBDA_END);
    }

    #[test]
    fn zero_or_too_many_cpus_rejected() {
        assert!(build(MPTABLE_START, 0).is_err());
        assert!(build(MPTABLE_START, MAX_VCPUS + 1).is_err());
    }
}
