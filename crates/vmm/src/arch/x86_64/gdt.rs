//! GDT entries for entering the kernel in 64-bit mode, and their
//! `kvm_segment` twins for KVM_SET_SREGS.

use kvm_bindings::kvm_segment;

/// Encodes one GDT descriptor from its flags (the high nibble of byte 6 and
/// the access byte, as `0xF0AA` minus the limit bits), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    // Bits 48..52 are limit[16..20].
    (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32
}

fn bit(entry: u64, n: u32) -> u8 {
    ((entry >> n) & 1) as u8
}

/// The `kvm_segment` a selector of `index` loading `entry` produces.
pub fn segment_from_entry(entry: u64, index: u8) -> kvm_segment {
    let granularity = bit(entry, 55);
    let raw_limit = limit(entry);
    kvm_segment {
        base: base(entry),
        limit: if granularity == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(entry, 47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: granularity,
        avl: bit(entry, 52),
        unusable: if bit(entry, 47) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// GDT index of the code segment.
pub const CODE_INDEX: u8 = 1;
/// GDT index of the data segment.
pub const DATA_INDEX: u8 = 2;
/// GDT index of the TSS.
pub const TSS_INDEX: u8 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit() {
        let seg = segment_from_entry(BOOT_GDT[1], CODE_INDEX);
        assert_eq!(seg.selector, 0x8);
        assert_eq!(seg.l, 1);
        assert_eq!(seg.db, 0);
        assert_eq!(seg.present, 1);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.base, 0);
    }

    #[test]
    fn entry_round_trips_base_and_limit() {
        let e = gdt_entry(0x808b, 0x1234_5678, 0xabcde);
        assert_eq!(base(e), 0x1234_5678);
        assert_eq!(limit(e), 0xabcde);
    }

    #[test]
    fn data_segment_is_writable() {
        let seg = segment_from_entry(BOOT_GDT[2], DATA_INDEX);
        assert_eq!(seg.selector, 0x10);
        assert_eq!(seg.type_, 0x3);
        assert_eq!(seg.db, 1);
    }
}
