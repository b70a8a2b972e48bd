//! What one virtio-net device is given (the `--net` syntax is
//! [`nacre_vmm_api::net`]'s); the device's configuration space.

pub use nacre_vmm_api::net::{
    validate_all, validate_tap_name, MacAddr, NetArg as NetConfig, NetArgError as NetConfigError,
    NetBackend, MAX_MTU, MIN_MTU,
};

/// The configuration space: mac (6), status (u16), max_virtqueue_pairs
/// (u16), mtu (u16), little endian (virtio 1.2, 5.1.4).
pub const CONFIG_LEN: usize = 12;

/// The configuration space for `mac` and `mtu`: status 0 (the STATUS
/// feature is not offered), one queue pair.
pub fn config_space(mac: MacAddr, mtu: Option<u16>) -> [u8; CONFIG_LEN] {
    let mut space = [0u8; CONFIG_LEN];
    space[..6].copy_from_slice(&mac.0);
    space[8..10].copy_from_slice(&1u16.to_le_bytes());
    space[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
    space
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x02, 0, 0, 0xaa, 0xbb, 0x0c]);

    #[test]
    fn config_space_layout() {
        let space = config_space(MAC, Some(1450));
        assert_eq!(&space[..6], &MAC.0);
        assert_eq!(&space[6..8], &[0, 0]);
        assert_eq!(&space[8..10], &[1, 0]);
        assert_eq!(&space[10..12], &1450u16.to_le_bytes());
        assert_eq!(&config_space(MAC, None)[10..12], &[0, 0]);
    }
}
