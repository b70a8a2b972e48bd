//! What a shim reports of its sandbox.

use serde::{Deserialize, Serialize};

use crate::agent::ContainerStats;

/// The shim's metrics socket, in its sandbox directory (0600 in a 0700
/// directory: root only).
pub const METRICS_SOCKET: &str = "metrics.sock";

/// The largest report a collector reads (a report is a few hundred bytes
/// per container).
pub const REPORT_MAX: u64 = 1 << 20;

/// One sandbox, as its shim knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxReport {
    /// The sandbox (pause) container's id.
    pub sandbox: String,
    /// The containerd namespace.
    pub namespace: String,
    /// The VMM's host pid (0 while no VM runs).
    pub vmm_pid: u32,
    /// The VM's size.
    pub vcpus: u8,
    pub memory_mib: u32,
    /// How the VM started: "cold" or "template".
    pub start_kind: String,
    /// Seconds from the VMM's start to its agent's first answer.
    pub start_seconds: f64,
    /// Seconds the first container's creation took in the guest.
    pub create_seconds: Option<f64>,
    /// Errors the guest caused in the VMM's virtio devices, by kind (the
    /// VMM's `status`); empty when the VMM did not answer.
    #[serde(default)]
    pub guest_errors: std::collections::BTreeMap<String, u64>,
    /// Each virtio device's counters (the VMM's `status`, bounded by
    /// [`super::VmmCounters`]); empty when the VMM did not answer.
    #[serde(default)]
    pub devices: Vec<nacre_vmm_api::DeviceCounters>,
    pub containers: Vec<ContainerReport>,
}

/// One container of a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerReport {
    pub id: String,
    /// "created", "running", "paused", "stopped" (containerd's names).
    pub state: String,
    /// The guest cgroup's figures (None when they could not be read, e.g.
    /// once the container stopped).
    pub stats: Option<GuestStats>,
}

/// A container's guest cgroup figures (the agent's `StatsContainer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    pub cpu_usage_usec: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub pids_current: u64,
    pub memory_oom_kill: u64,
}

impl From<&ContainerStats> for GuestStats {
    fn from(s: &ContainerStats) -> Self {
        Self {
            cpu_usage_usec: s.cpu_usage_usec,
            memory_usage_bytes: s.memory_usage_bytes,
            memory_limit_bytes: s.memory_limit_bytes,
            pids_current: s.pids_current,
            memory_oom_kill: s.memory_oom_kill,
        }
    }
}
