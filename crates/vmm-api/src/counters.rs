//! What the VMM counts of each virtio device: the `status` answer's
//! `devices`, one [`DeviceCounters`] per device.
//!
//! The names a counter may carry are fixed here, once for both sides: the
//! VMM only emits them, and the runtime keeps nothing else from an answer
//! (the VMM may be the guest's). Directions are the guest's: `rx` is what
//! the guest received, `tx` what it sent; virtio-fs counts `read` (file
//! data to the guest, FUSE READ replies) and `write` (FUSE WRITE payloads).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A virtio-fs device (one per share tag).
pub const FS: &str = "fs";
/// A virtio-net device (one per interface).
pub const NET: &str = "net";
/// The virtio-vsock device.
pub const VSOCK: &str = "vsock";
/// Every device kind.
pub const DEVICE_KINDS: [&str; 3] = [FS, NET, VSOCK];

/// The groups FUSE requests are counted in (`requests` of a virtio-fs
/// device): `lookup` (LOOKUP, FORGET, BATCH_FORGET), `stat` (GETATTR,
/// STATFS, ACCESS, READLINK, GETXATTR, LISTXATTR, LSEEK), `open` (OPEN,
/// OPENDIR, CREATE, FLUSH, RELEASE, RELEASEDIR), `read`, `write`,
/// `readdir` (READDIR, READDIRPLUS), `modify` (SETATTR, MKNOD, MKDIR,
/// SYMLINK, LINK, UNLINK, RMDIR, RENAME, RENAME2, SETXATTR, REMOVEXATTR,
/// FALLOCATE), `sync` (FSYNC, FSYNCDIR), `map` (SETUPMAPPING and
/// REMOVEMAPPING of the DAX window), `other` (INIT and the rest).
pub const FS_OPS: [&str; 10] = [
    "lookup", "stat", "open", "read", "write", "readdir", "modify", "sync", "map", "other",
];

/// The directions of `packets` (`rx`, `tx`) and `bytes` (those, and
/// virtio-fs's `read`, `write`).
pub const DIRECTIONS: [&str; 4] = ["rx", "tx", "read", "write"];

/// The longest device name the VMM reports (a share tag's limit,
/// [`crate::share::TAG_LEN`]; interface names are shorter).
pub const NAME_MAX: usize = crate::share::TAG_LEN;

/// One device's counters since the VMM started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounters {
    /// One of [`DEVICE_KINDS`].
    pub device: String,
    /// The share tag (fs), the host interface (net), `vsock`.
    pub name: String,
    /// Queue notifications from the guest (its kicks).
    #[serde(default)]
    pub notifications: u64,
    /// Interrupts raised to the guest.
    #[serde(default)]
    pub interrupts: u64,
    /// virtio-fs: FUSE requests served, by [`FS_OPS`] group.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, u64>,
    /// net: frames, vsock: packets, by direction (`rx`, `tx`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub packets: BTreeMap<String, u64>,
    /// Payload bytes by direction (see [`DIRECTIONS`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bytes: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_missing_fields() {
        let c = DeviceCounters {
            device: FS.into(),
            name: "nacre".into(),
            notifications: 3,
            interrupts: 2,
            requests: [("read".to_owned(), 1)].into(),
            packets: BTreeMap::new(),
            bytes: [("read".to_owned(), 4096)].into(),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("packets"), "{json}");
        assert_eq!(serde_json::from_str::<DeviceCounters>(&json).unwrap(), c);
        let bare: DeviceCounters =
            serde_json::from_str(r#"{"device":"vsock","name":"vsock"}"#).unwrap();
        assert_eq!(bare.notifications, 0);
        assert!(bare.bytes.is_empty());
    }

    #[test]
    fn names_are_label_safe() {
        for name in DEVICE_KINDS.iter().chain(&FS_OPS).chain(&DIRECTIONS) {
            assert!(name.bytes().all(|b| b.is_ascii_lowercase()), "{name}");
        }
    }
}
