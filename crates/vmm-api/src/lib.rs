//! The contract between nacre's runtime and its VMM, `nacre-vmm`, defined
//! once and depended on by both sides:
//!
//! - [`VmmArgs`]: every command-line option, and the argv for it
//!   ([`VmmArgs::to_args`]); the VMM's parser produces the same type.
//! - [`Request`] / [`Response`]: the control socket's JSON lines; the
//!   device counters of its `status` ([`counters`]).
//! - [`exit_code`]: what the VMM's exit status means.
//! - [`Features`]: what a binary supports (`nacre-vmm --features`).
//!
//! It only describes and checks syntax: it never opens a file, a tap or a
//! socket, and knows nothing of KVM.

pub mod api;
pub mod args;
pub mod counters;
pub mod exit_code;
pub mod features;
pub mod net;
pub mod share;

pub use api::{Request, Response, State};
pub use args::{SeccompMode, VmmArgs};
pub use counters::DeviceCounters;
pub use features::Features;
pub use net::{MacAddr, NetArg, NetArgError, NetBackend};
pub use share::{CacheMode, SharedDir, SharedDirError, SharedDirValue};
