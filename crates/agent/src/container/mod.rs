//! Containers inside the guest: a small OCI engine.
//!
//! - [`spec`]: the subset of config.json read, and its validation;
//! - [`engine`]: ids, states, processes, stdio routing (no system calls:
//!   those are behind the [`engine::Launcher`] trait);
//! - [`launch`]: the real launcher (fork, namespaces, execve), with
//!   [`child`] running in the forked child and [`ffi`] the system calls;
//! - [`cgroup`], [`mounts`], [`caps`], [`stdio`]: the pieces;
//! - [`ephemeral`]: the pod's tmpfs volumes (memory emptyDirs, /dev/shm).
//!
//! Not implemented: user namespaces (refused), `linux.devices` (the
//! standard nodes are bind-mounted from the guest's /dev), the device
//! cgroup, AppArmor/SELinux, hooks, SCMP_ACT_NOTIFY in seccomp profiles.

pub mod caps;
pub mod cgroup;
pub mod child;
pub mod engine;
pub mod ephemeral;
pub mod error;
pub mod ffi;
pub mod launch;
pub mod mounts;
pub mod seccomp;
pub mod spec;
pub mod stdio;
pub mod syscalls;

pub use engine::Engine;
pub use error::{ContainerError, ErrorKind};
pub use launch::LinuxLauncher;

/// The engine the agent runs.
pub type AgentEngine = Engine<LinuxLauncher>;
