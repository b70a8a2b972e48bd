//! Sandbox metrics in Prometheus' text format, as `kata-monitor` gives
//! them for Kata: each containerd shim reports its sandbox (containers,
//! their states and the guest's cgroup figures) as a [`SandboxReport`] on
//! `<sandbox dir>/metrics.sock`; the node's `nacre-metrics` collects every
//! report, adds what the host measures of each VMM itself
//! ([`ProcessUsage`]: RSS, PSS, CPU split into vCPU and other threads)
//! and renders one exposition ([`render`]).
//!
//! The VMM's own counters (errors the guest caused in its devices, each
//! device's requests, packets, bytes, notifications and interrupts) come
//! through the shim from the VMM's `status` ([`VmmCounters`], bounded:
//! the VMM may be the guest's).
//!
//! Figures the guest reports (memory use, CPU, pids, OOM kills of a
//! container) are the guest's word, as containerd's stats are: bounded
//! numbers, never labels. Labels come from the host (sandbox and
//! container ids, namespace) and are escaped.

mod proc;
mod render;
mod report;
mod vmm;

pub use proc::ProcessUsage;
pub use render::{render, NodeFacts};
pub use report::{ContainerReport, GuestStats, SandboxReport, METRICS_SOCKET, REPORT_MAX};
pub use vmm::{VmmCounters, DEVICES_MAX, GUEST_ERROR_KINDS_MAX, GUEST_ERROR_KIND_LEN_MAX};
