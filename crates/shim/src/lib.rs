//! containerd shim v2 of nacre (`containerd-shim-nacre-v2`, runtime type
//! `io.containerd.nacre.v2`).
//!
//! One shim process and one VM per sandbox: containers that carry the CRI
//! sandbox annotation join their sandbox's shim and VM, a lone container
//! gets its own. The shim boots the VM on the first create, shares each
//! container's rootfs (containerd's mounts, mounted on `<bundle>/rootfs`)
//! and bind volumes with the guest over virtio-fs, and drives the
//! container through the guest agent. It holds no container state the
//! agent does not also hold, except the stdio wiring and exit statuses.

pub mod bootstrap;
pub use nacre_runtime::config;
pub mod error;
pub mod events;
pub mod layout;
pub mod metrics;
pub mod metrics_socket;
pub mod options;
pub mod podnet;
pub mod service;
pub mod stdio;
pub mod task;
pub mod trace;
pub mod vm;
