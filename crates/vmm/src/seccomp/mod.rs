//! The VMM's seccomp filters: one allow-list per thread kind
//! ([`ThreadKind`]), kept as reviewed data with one comment per rule
//! (`common.rs` for what every thread does, `setup.rs` for the main
//! thread, `kinds.rs` for vCPUs, the control socket and the small
//! helpers, `workers.rs` for the device workers), with argument checks:
//! `ioctl` only the requests a thread makes, `socket` only `AF_UNIX`,
//! `clone` only with the exact thread flags and only in the launcher,
//! `clone3` answered ENOSYS (glibc then uses `clone`), `openat` only with
//! the flags a thread needs, `tgkill` only within this process, `mmap`
//! and `mprotect` never executable.
//!
//! Each thread installs its own filter as it starts ([`apply`], no
//! TSYNC), the main thread before it reads anything the guest made
//! ([`install`]). A filter is inherited by the threads its thread
//! creates and stacks with theirs (both must allow a call), so threads
//! are not created by filtered threads: [`spawn`] hands the job to the
//! launcher, a thread that only creates threads and whose filter is the
//! union of every kind's (so each kind gets exactly its own list).
//!
//! A call off a thread's list kills the process in `enforce` mode, or is
//! logged by the kernel (`audit: type=1326`) in `log` mode, which is how
//! the lists are checked against a test run.

mod common;
pub mod ioctls;
mod kinds;
mod rule;
mod setup;
mod spawn;
mod workers;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

pub use rule::{Arg, Rule, THREAD_CLONE_FLAGS};
pub use spawn::spawn;

pub use nacre_vmm_api::SeccompMode;

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
    #[error("starting the launcher thread: {0}")]
    Launcher(#[source] std::io::Error),
}

/// The kinds of threads, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreadKind {
    /// The main thread: setup, then the wait for an exit event.
    Main,
    /// A vCPU (`vcpuN`).
    Vcpu,
    /// The control socket's accepting and connection threads.
    Api,
    /// The virtio-vsock worker.
    Vsock,
    /// A virtio-net worker.
    Net,
    /// A virtio-fs worker.
    Fs,
    /// The SIGTERM/SIGINT thread.
    Signals,
    /// The `--owner-fd` lifeline thread.
    Owner,
    /// The profiler's ticker (`NACRE_VMM_PROFILE`).
    Profile,
    /// The thread that creates every other thread.
    Launcher,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 10] = [
        Self::Main,
        Self::Vcpu,
        Self::Api,
        Self::Vsock,
        Self::Net,
        Self::Fs,
        Self::Signals,
        Self::Owner,
        Self::Profile,
        Self::Launcher,
    ];

    /// The lists that make up this kind's filter.
    pub fn lists(self) -> Vec<&'static [Rule]> {
        let own: Vec<&'static [Rule]> = match self {
            Self::Main => vec![setup::MAIN],
            Self::Vcpu => vec![kinds::VCPU],
            Self::Api => vec![kinds::API],
            Self::Vsock => workers::with_loop(workers::VSOCK).to_vec(),
            Self::Net => workers::with_loop(workers::NET).to_vec(),
            Self::Fs => workers::with_loop(workers::FS).to_vec(),
            Self::Signals => vec![kinds::SIGNALS],
            Self::Owner => vec![kinds::OWNER],
            Self::Profile => vec![kinds::PROFILE],
            Self::Launcher => {
                let mut all: Vec<&'static [Rule]> = Self::ALL
                    .iter()
                    .filter(|k| **k != Self::Launcher)
                    .flat_map(|k| k.lists())
                    .collect();
                all.push(spawn::LAUNCHER);
                return all;
            }
        };
        let mut lists = vec![common::COMMON];
        lists.extend(own);
        lists
    }
}

/// The filter programs of `kind` for `mode` (empty for
/// [`SeccompMode::Off`]), for process `pid` (`tgkill` is pinned to it).
/// The launcher gets a second program that answers `clone3` ENOSYS.
pub fn programs(
    kind: ThreadKind,
    mode: SeccompMode,
    pid: u32,
) -> Result<Vec<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(Vec::new()),
        SeccompMode::Enforce => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    let rules = rule::compile(&kind.lists(), pid)?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)?;
    let mut programs = vec![filter.try_into()?];
    if kind == ThreadKind::Launcher {
        // Both filters run; ERRNO beats ALLOW, so clone3 (allowed by the
        // first) fails with ENOSYS and glibc falls back to clone, whose
        // flags the first filter checks.
        let clone3: BTreeMap<i64, Vec<SeccompRule>> =
            [(libc::SYS_clone3, Vec::new())].into_iter().collect();
        let errno = u32::try_from(libc::ENOSYS).unwrap_or(38);
        let filter = SeccompFilter::new(
            clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(errno),
            TargetArch::x86_64,
        )?;
        programs.push(filter.try_into()?);
    }
    Ok(programs)
}

/// The compiled programs of every kind, once [`install`] ran.
static INSTALLED: OnceLock<BTreeMap<ThreadKind, Vec<BpfProgram>>> = OnceLock::new();

/// Installs `kind`'s filter on the calling thread (nothing before
/// [`install`] or with `--seccomp off`: library users and unit tests run
/// unfiltered).
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(programs) = INSTALLED.get().and_then(|all| all.get(&kind)) else {
        return Ok(());
    };
    for program in programs {
        seccompiler::apply_filter(program)?;
    }
    Ok(())
}

/// Whether [`install`] turned the filters on.
pub fn active() -> bool {
    INSTALLED.get().is_some_and(|all| !all.is_empty())
}

/// Compiles every kind's filter for `mode`, starts the launcher (with
/// its own filter) and installs the main thread's filter on the calling
/// thread. Every thread started afterwards through [`spawn`] installs its
/// kind's filter first.
pub fn install(mode: SeccompMode) -> Result<(), SeccompError> {
    if mode == SeccompMode::Off {
        return Ok(());
    }
    let pid = std::process::id();
    let mut all = BTreeMap::new();
    for kind in ThreadKind::ALL {
        all.insert(kind, programs(kind, mode, pid)?);
    }
    if INSTALLED.set(all).is_err() {
        return Ok(());
    }
    spawn::start_launcher().map_err(SeccompError::Launcher)?;
    apply(ThreadKind::Main)?;
    tracing::debug!(%mode, "seccomp filters installed");
    Ok(())
}

#[cfg(test)]
mod tests;
