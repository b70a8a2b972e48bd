//! The pieces of nacre's benchmarks: start a VM under some VMM, watch its
//! serial console for the agent's ready line, measure the host process.
//!
//! Timings are only ever reported, never asserted: tests check behaviour,
//! `make bench` measures.

pub mod boot;
pub mod container;
pub mod ctr_run;
pub mod harness;
pub mod memory;
pub mod phases;
pub mod pods;
pub mod pods_report;
pub mod procs;
pub mod qemu_restore;
pub mod report;
pub mod shim_phases;
pub mod stats;
pub mod template;
