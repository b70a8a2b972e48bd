//! Host side of nacre: locating the guest image, running a `nacre-vmm`
//! process per sandbox, and talking to the guest agent.
//!
//! This crate never enters a VM itself: everything that runs in the guest is
//! the agent's, everything about vCPUs and devices is the VMM's.

pub mod agent;
pub mod config;
pub mod container;
pub mod debug_console;
pub mod host;
pub mod host_cgroup;
pub mod image;
pub mod metrics;
pub mod network;
pub mod pod;
pub mod sandbox;
pub mod stdio;
pub mod template;
pub mod testing;
pub mod trace;
pub mod vm;
