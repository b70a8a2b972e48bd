//! The ioctl request numbers the filters allow by name (x86_64 encoding:
//! direction << 30 | size << 16 | type << 8 | number).

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};

const KVMIO: u64 = 0xae;
const WRITE: u64 = 1;
const READ: u64 = 2;

const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}

pub const KVM_RUN: u64 = ioc(0, KVMIO, 0x80, 0);
pub const KVM_GET_REGS: u64 = ioc(READ, KVMIO, 0x81, size_of::<kvm_regs>());
pub const KVM_GET_SREGS: u64 = ioc(READ, KVMIO, 0x83, size_of::<kvm_sregs>());
pub const KVM_TRANSLATE: u64 = ioc(READ | WRITE, KVMIO, 0x85, size_of::<kvm_translation>());
pub const KVM_GET_MSRS: u64 = ioc(READ | WRITE, KVMIO, 0x88, size_of::<kvm_msrs>());
pub const KVM_GET_LAPIC: u64 = ioc(READ, KVMIO, 0x8e, size_of::<kvm_lapic_state>());
pub const KVM_GET_MP_STATE: u64 = ioc(READ, KVMIO, 0x98, size_of::<kvm_mp_state>());
pub const KVM_GET_VCPU_EVENTS: u64 = ioc(READ, KVMIO, 0x9f, size_of::<kvm_vcpu_events>());
pub const KVM_GET_DEBUGREGS: u64 = ioc(READ, KVMIO, 0xa1, size_of::<kvm_debugregs>());
pub const KVM_GET_XSAVE: u64 = ioc(READ, KVMIO, 0xa4, size_of::<kvm_xsave>());
/// KVM_GET_XSAVE2 (kvm-ioctls uses it when the XSAVE area is larger).
pub const KVM_GET_XSAVE2: u64 = ioc(READ, KVMIO, 0xcf, size_of::<kvm_xsave>());
pub const KVM_GET_XCRS: u64 = ioc(READ, KVMIO, 0xa6, size_of::<kvm_xcrs>());
pub const KVM_GET_IRQCHIP: u64 = ioc(READ | WRITE, KVMIO, 0x62, size_of::<kvm_irqchip>());
pub const KVM_GET_CLOCK: u64 = ioc(READ, KVMIO, 0x7c, size_of::<kvm_clock_data>());
pub const KVM_GET_PIT2: u64 = ioc(READ, KVMIO, 0x9f, size_of::<kvm_pit_state2>());

/// Tap requests (devices/virtio/net/tap.rs).
pub const TUNSETIFF: u64 = 0x4004_54ca;
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
pub const TUNGETIFF: u64 = 0x8004_54d2;
pub const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;

/// `set_nonblocking` of std's sockets.
pub const FIONBIO: u64 = libc::FIONBIO;
/// The terminal check of the log writer (isatty).
pub const TCGETS: u64 = libc::TCGETS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_kvm_ioctls() {
        // Values from <linux/kvm.h> on x86_64.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_GET_MSRS, 0xc008_ae88);
        assert_eq!(KVM_GET_IRQCHIP, 0xc208_ae62);
        assert_eq!(KVM_GET_XSAVE, 0x9000_aea4);
    }
}
