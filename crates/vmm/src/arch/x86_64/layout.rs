//! The guest physical address map and the e820 table derived from it.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BIOS data area (RAM, untouched)
//! 0x0000_0500  GDT, then IDT
//! 0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  initial stack (grows down)
//! 0x0000_9000  PML4, PDPT, PD (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (last KiB of base memory, reserved in e820)
//! 0x000a_0000  VGA/BIOS hole (reserved)
//! 0x0010_0000  RAM continues; the kernel loads at its ELF address (16 MiB)
//!              the initrd sits at the top of low RAM
//! 0xc000_0000  32-bit hole, up to 4 GiB:
//! 0xd000_0000    virtio-mmio devices, 4 KiB each (reserved in e820)
//! 0xfec0_0000    IOAPIC
//! 0xfee0_0000    local APICs
//! 0x1_0000_0000  RAM beyond 3 GiB, if any
//! ```

use vm_memory::GuestAddress;

/// Where the GDT lives.
pub const GDT_START: u64 = 0x500;
/// Where the (empty) IDT lives.
pub const IDT_START: u64 = 0x520;
/// The zero page handed to the kernel in RSI.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The PML4 of the boot page tables; the PDPT and PD follow it.
pub const PML4_START: u64 = 0x9000;
/// The page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// The page directory (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// The maximum kernel command line length, NUL included (x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The MP table: the last KiB of base memory, one of the places Linux scans.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of base memory (start of the VGA/BIOS hole).
pub const EBDA_END: u64 = 0xa0000;
/// Start of high memory (1 MiB): the kernel may not load below it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit hole: RAM below it, devices in it.
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit address space; RAM beyond the gap resumes here.
pub const FIRST_ADDR_PAST_32BITS: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// Number of virtio-mmio device slots.
pub const MMIO_DEVICE_SLOTS: u64 = 16;
/// The first IRQ given to virtio-mmio devices (IRQ 4 is the UART).
pub const FIRST_VIRTIO_IRQ: u32 = 5;
/// Number of IOAPIC pins (GSIs) KVM's in-kernel IOAPIC has.
pub const IOAPIC_PINS: u32 = 24;
/// The IOAPIC's MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs' MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;

// The device window sits in the 32-bit gap, below the IOAPIC.
const _: () = assert!(MMIO_DEVICES_START >= MEM_32BIT_GAP_START);
const _: () = assert!(MMIO_DEVICES_START + MMIO_DEVICE_SLOTS * MMIO_DEVICE_SIZE <= IOAPIC_START);

/// The e820 types Linux knows that we use.
pub const E820_RAM: u32 = 1;
/// Reserved memory in e820.
pub const E820_RESERVED: u32 = 2;

/// One RAM region of the guest: guest address and size in bytes.
pub type RamRegion = (GuestAddress, u64);

/// The RAM regions of a guest of `mem_size` bytes: below the 32-bit gap,
/// then above 4 GiB for what does not fit.
pub fn ram_regions(mem_size: u64) -> Vec<RamRegion> {
    if mem_size <= MEM_32BIT_GAP_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), MEM_32BIT_GAP_START),
            (
                GuestAddress(FIRST_ADDR_PAST_32BITS),
                mem_size - MEM_32BIT_GAP_START,
            ),
        ]
    }
}

/// The guest physical address of DAX window `index` (virtio-fs shared
/// memory) of `size` bytes each, in a VM of `mem_size` bytes of RAM:
/// above RAM and above 4 GiB, 1 GiB-aligned, one after another. Not in
/// the e820 map: the guest's driver claims it as device memory.
pub fn dax_window_addr(mem_size: u64, index: u64, size: u64) -> u64 {
    const GIB: u64 = 1 << 30;
    let ram_end = ram_regions(mem_size)
        .last()
        .map_or(0, |(addr, len)| addr.0 + len)
        .max(FIRST_ADDR_PAST_32BITS);
    ram_end.div_ceil(GIB) * GIB + index * size
}

/// The end (exclusive) of RAM below the 32-bit gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MEM_32BIT_GAP_START)
}

/// One e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map for a guest of `mem_size` bytes with `mmio_slots` virtio
/// device windows.
pub fn e820_map(mem_size: u64, mmio_slots: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: MPTABLE_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: MPTABLE_START,
            size: HIMEM_START - MPTABLE_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = low_ram_end(mem_size);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mmio_slots > 0 {
        map.push(E820Entry {
            addr: MMIO_DEVICES_START,
            size: mmio_slots * MMIO_DEVICE_SIZE,
            kind: E820_RESERVED,
        });
    }
    if mem_size > MEM_32BIT_GAP_START {
        map.push(E820Entry {
            addr: FIRST_ADDR_PAST_32BITS,
            size: mem_size - MEM_32BIT_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

/// The base address of virtio-mmio slot `index`.
pub fn mmio_slot_addr(index: u64) -> u64 {
    MMIO_DEVICES_START + index * MMIO_DEVICE_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn dax_windows_sit_above_ram_and_apart() {
        let w = 64 << 20;
        assert_eq!(dax_window_addr(512 << 20, 0, w), 1 << 32);
        assert_eq!(dax_window_addr(512 << 20, 1, w), (1 << 32) + w);
        // 4 GiB of RAM: 1 GiB of it above 4 GiB, the window after it.
        assert_eq!(dax_window_addr(4 << 30, 0, w), 5 << 30);
        assert_eq!(dax_window_addr((4 << 30) + 1, 0, w), 6 << 30);
    }

    #[test]
    fn small_guest_has_one_region() {
        assert_eq!(ram_regions(256 * MIB), vec![(GuestAddress(0), 256 * MIB)]);
        assert_eq!(low_ram_end(256 * MIB), 256 * MIB);
    }

    #[test]
    fn big_guest_is_split_around_the_gap() {
        let regions = ram_regions(4096 * MIB);
        assert_eq!(regions[0], (GuestAddress(0), 3072 * MIB));
        assert_eq!(
            regions[1],
            (GuestAddress(FIRST_ADDR_PAST_32BITS), 1024 * MIB)
        );
        let total: u64 = regions.iter().map(|r| r.1).sum();
        assert_eq!(total, 4096 * MIB);
    }

    #[test]
    fn e820_covers_ram_and_reserves_holes() {
        let map = e820_map(256 * MIB, 1);
        assert_eq!(map.len(), 4);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // Everything but the reserved 0x9fc00..1MiB window.
        assert_eq!(ram, 256 * MIB - (HIMEM_START - MPTABLE_START));
        assert!(map.contains(&E820Entry {
            addr: MMIO_DEVICES_START,
            size: MMIO_DEVICE_SIZE,
            kind: E820_RESERVED
        }));
        // Sorted and non-overlapping.
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr);
        }
    }

    #[test]
    fn e820_big_guest_has_high_ram() {
        let map = e820_map(4096 * MIB, 0);
        let last = map.last().copied();
        assert_eq!(
            last,
            Some(E820Entry {
                addr: FIRST_ADDR_PAST_32BITS,
                size: 1024 * MIB,
                kind: E820_RAM
            })
        );
    }

    #[test]
    fn mmio_window_fits_in_the_gap() {
        assert!(mmio_slot_addr(MMIO_DEVICE_SLOTS) <= IOAPIC_START);
    }
}
