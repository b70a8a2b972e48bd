//! nacre-vmm: the virtual machine monitor of nacre.
//!
//! One process runs one VM. The library boots a Linux guest on KVM, serves
//! its devices in user space (8250 serial, i8042 reset, CMOS clock,
//! virtio-mmio vsock) and answers a control socket. It never touches
//! container state: that is the runtime's job. [`jail::enter`] confines the
//! process (namespaces, a pivot_root into the VM's files only, dropped
//! credentials) and [`seccomp`] gives each thread kind its own filter.
//!
//! Entry point: [`run`] with a [`VmConfig`]; it returns the [`ExitEvent`]
//! that stopped the VM, and [`error::exit_code_for`] /
//! [`VmmError::exit_code`] give the process exit code (see [`error`] for
//! the table).

pub mod api;
pub mod arch;
pub mod cleanup;
pub mod cli;
pub mod cmdline;
pub mod config;
pub mod devices;
pub mod error;
pub mod events;
pub mod jail;
pub mod logging;
pub mod memory;
pub mod owner;
pub mod profile;
pub mod restore;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod unix_socket;
pub mod vcpu;
pub mod vm;
mod vmm;

pub use config::{VmConfig, VsockConfig};
pub use error::{exit_code, exit_code_for, VmmError};
pub use events::ExitEvent;
pub use restore::{restore, RestoreConfig};
pub use vmm::run;
