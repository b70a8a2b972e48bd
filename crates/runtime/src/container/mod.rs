//! Containers on the host side: one sandbox VM per container, as the
//! runc-compatible CLI runs them.
//!
//! `create` checks the bundle, makes `<root>/<id>/` and its shared
//! directory (the rootfs and bind sources bind-mounted in, see [`share`]),
//! then starts a detached monitor ([`monitor`]) that boots the VM, has the
//! agent create the container and stays as the container's host process.
//! The other operations ([`ops`]) read `state.json` under a lock and talk
//! to the agent through the VMM's vsock socket. The guest never sees a host
//! path outside the shared directory ([`spec`]).

pub mod console;
pub mod control;
mod error;
pub mod exec;
pub mod launch;
pub mod lock;
pub mod monitor;
pub mod mounts;
pub mod ops;
pub mod paths;
pub mod pod_ns;
pub mod process;
pub mod relay;
pub mod share;
pub mod signal;
pub mod spec;
pub mod state;
pub mod volumes;

pub use error::ContainerError;
pub use paths::{ContainerPaths, DEFAULT_ROOT};
pub use signal::parse_signal;
pub use state::{RuncState, State, Status};
