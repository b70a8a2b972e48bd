//! What the runtime keeps of a VMM's own counters (its `status`): the
//! errors the guest caused in its devices, and each device's requests,
//! packets, bytes, notifications and interrupts.
//!
//! The VMM may be the guest's, so its answer is input to bound: it is read
//! to [`crate::vm::API_REPLY_MAX`] bytes, and of what it says only fixed
//! names are kept (device kinds, FUSE groups and directions from
//! [`nacre_vmm_api::counters`]; guest error kinds as short `[a-z_]`
//! names), device names are cut and reduced to label-safe characters, and
//! the numbers of kinds and devices are capped. Nothing here can grow with
//! what the VMM writes, and no label value is the VMM's own text.

use std::collections::BTreeMap;

use nacre_vmm_api::counters::{DeviceCounters, DEVICE_KINDS, FS, FS_OPS, NAME_MAX};
use nacre_vmm_api::Response;
use serde::{Deserialize, Serialize};

/// Guest error kinds kept.
pub const GUEST_ERROR_KINDS_MAX: usize = 16;
/// The longest guest error kind kept.
pub const GUEST_ERROR_KIND_LEN_MAX: usize = 32;
/// Devices kept (a VM has a vsock, a share or a few, a NIC or a few).
pub const DEVICES_MAX: usize = 32;

/// A VMM's counters, bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmCounters {
    /// Errors the guest caused, by kind.
    pub guest_errors: BTreeMap<String, u64>,
    /// Each device's counters, in the VMM's order.
    pub devices: Vec<DeviceCounters>,
}

impl VmmCounters {
    /// What is kept of a `status` answer.
    pub fn from_status(status: Response) -> Self {
        Self {
            guest_errors: status.guest_errors.map(guest_errors).unwrap_or_default(),
            devices: status.devices.map(devices).unwrap_or_default(),
        }
    }
}

/// The guest error kinds that are short `[a-z_]` names, at most
/// [`GUEST_ERROR_KINDS_MAX`] of them.
pub fn guest_errors(counts: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    counts
        .into_iter()
        .filter(|(k, _)| {
            !k.is_empty()
                && k.len() <= GUEST_ERROR_KIND_LEN_MAX
                && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .take(GUEST_ERROR_KINDS_MAX)
        .collect()
}

/// The devices of a known kind, each once (the first of a kind and name),
/// at most [`DEVICES_MAX`], with only the counters their kind has.
pub fn devices(reported: Vec<DeviceCounters>) -> Vec<DeviceCounters> {
    let mut kept: Vec<DeviceCounters> = Vec::new();
    for d in reported {
        if kept.len() == DEVICES_MAX {
            break;
        }
        let Some(kind) = DEVICE_KINDS.iter().find(|k| **k == d.device) else {
            continue;
        };
        let name = label_safe(&d.name);
        if kept.iter().any(|k| k.device == *kind && k.name == name) {
            continue;
        }
        let is_fs = *kind == FS;
        let (requests, packets, bytes): (&[&str], &[&str], &[&str]) = if is_fs {
            (&FS_OPS, &[], &["read", "write"])
        } else {
            (&[], &["rx", "tx"], &["rx", "tx"])
        };
        kept.push(DeviceCounters {
            device: (*kind).to_owned(),
            name,
            notifications: d.notifications,
            interrupts: d.interrupts,
            requests: only(d.requests, requests),
            packets: only(d.packets, packets),
            bytes: only(d.bytes, bytes),
        });
    }
    kept
}

/// The entries of `counts` named in `names`.
fn only(counts: BTreeMap<String, u64>, names: &[&str]) -> BTreeMap<String, u64> {
    counts
        .into_iter()
        .filter(|(k, _)| names.contains(&k.as_str()))
        .collect()
}

/// `name` cut to [`NAME_MAX`] characters, each outside `[A-Za-z0-9._-]`
/// made `_` (share tags and interface names keep theirs); `_` if empty.
fn label_safe(name: &str) -> String {
    let safe: String = name
        .chars()
        .take(NAME_MAX)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() {
        "_".to_owned()
    } else {
        safe
    }
}

#[cfg(test)]
#[path = "vmm_tests.rs"]
mod tests;
