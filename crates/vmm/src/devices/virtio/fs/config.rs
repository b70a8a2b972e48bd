//! What one virtio-fs device shares (the `--shared-dir` syntax is
//! [`nacre_vmm_api::share`]'s); the device's configuration space.

pub use nacre_vmm_api::share::{
    validate_all, validate_tag, CacheMode, SharedDir, SharedDirError, TAG_LEN,
};

/// The configuration space: tag, then `num_request_queues` (u32 LE).
pub const CONFIG_LEN: usize = TAG_LEN + 4;

/// The configuration space bytes for `tag` and `num_request_queues`.
pub fn config_space(tag: &str, num_request_queues: u32) -> [u8; CONFIG_LEN] {
    let mut space = [0u8; CONFIG_LEN];
    let bytes = tag.as_bytes();
    let n = bytes.len().min(TAG_LEN);
    space[..n].copy_from_slice(&bytes[..n]);
    space[TAG_LEN..].copy_from_slice(&num_request_queues.to_le_bytes());
    space
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_layout() {
        let space = config_space("nacre", 1);
        assert_eq!(space.len(), 40);
        assert_eq!(&space[..5], b"nacre");
        assert!(space[5..TAG_LEN].iter().all(|&b| b == 0));
        assert_eq!(&space[TAG_LEN..], &[1, 0, 0, 0]);
        let full = "y".repeat(TAG_LEN);
        let space = config_space(&full, 2);
        assert_eq!(&space[..TAG_LEN], full.as_bytes());
        assert_eq!(&space[TAG_LEN..], &[2, 0, 0, 0]);
    }
}
