//! Containers inside the guest: a small OCI engine.
//!
//! - [`spec`]: the subset of config.json read, and its validation;
//! - [`engine`]: ids, states, processes, stdio routing (no system calls:
//!   those are behind the [`engine::Launcher`] trait);
//! - [`launch`]: the real launcher (fork, namespaces, execve), with
//!   [`child`] running in the forked child and [`ffi`] the system calls;
//! - [`cgroup`], [`mounts`], [`caps`], [`stdio`]: the pieces;
//! - [`securejoin`]: mount destinations resolved inside the rootfs;
//! - [`devices`]: device control, a cgroup BPF program per container;
//! - [`ephemeral`]: the pod's tmpfs volumes (memory emptyDirs, /dev/shm).
//!
//! Not implemented: user namespaces (refused), creating the nodes of
//! `linux.devices` (only their device rules are honoured; the standard
//! nodes are bind-mounted from the guest's /dev), AppArmor/SELinux,
//! hooks, SCMP_ACT_NOTIFY in seccomp profiles.

pub mod caps;
pub mod cgroup;
pub mod child;
pub mod devices;
pub mod engine;
pub mod ephemeral;
pub mod error;
pub mod ffi;
pub mod home;
pub mod launch;
pub mod mounts;
pub mod seccomp;
pub mod securejoin;
pub mod spec;
pub mod stdio;
pub mod steps;
pub mod syscalls;
mod vfork;
mod warm;

pub use engine::Engine;
pub use error::{ContainerError, ErrorKind};
pub use launch::LinuxLauncher;

/// The engine the agent runs.
pub type AgentEngine = Engine<LinuxLauncher>;
