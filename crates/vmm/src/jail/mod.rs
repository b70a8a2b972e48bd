//! The jail: what `nacre-vmm --jail DIR` does to itself before it reads
//! anything the guest controls.
//!
//! [`enter`] runs in the (still single-threaded) main thread and:
//! 1. opens `/dev/kvm` (kept for [`crate::vm::open_kvm`]), so the jail
//!    needs no device node for it and an unprivileged VMM needs no access
//!    to the node;
//! 2. unshares the mount, IPC and UTS namespaces, and the network
//!    namespace unless a tap is opened by name (`--net tap=NAME`);
//!    inherited tap descriptors (`--net fd=N`) keep working, descriptors
//!    survive namespace changes;
//! 3. makes `/` a recursive slave (nothing mounted here goes back to the
//!    host; mounts the host adds under a served share still come in),
//!    mounts a small tmpfs on `DIR`, bind-mounts into it, at the same
//!    absolute paths, only what [`JailSpec::binds`] lists, remounts the
//!    tmpfs read-only, `pivot_root`s into it and detaches the old root;
//! 4. sets rlimits, `PR_SET_NO_NEW_PRIVS`, `PR_SET_DUMPABLE 0`, and drops
//!    credentials ([`creds`]): with a virtio-fs share it stays uid 0 with
//!    only the six file capabilities the passthrough needs; without, it
//!    becomes [`JailSpec::uid`]/[`JailSpec::gid`] with no capability.
//!
//! There is no pid namespace: one needs a fork (the namespace's first
//! process is its init), so the runtime would watch a parent that
//! forwards signals and exit codes while the VM runs in a child, and its
//! pid-file and kill guard would name the wrong process. Instead the jail
//! mounts no `/proc` (only the VMM's own `/proc/self/fd`, which the
//! virtio-fs passthrough needs), and seccomp pins `tgkill` to the VMM's
//! own pid and forbids `kill`, `ptrace` and `process_vm_*`.

mod creds;
mod mounts;

use std::path::{Path, PathBuf};

pub use creds::{DEFAULT_GID, DEFAULT_UID, SHARE_CAPS};

/// How a path is made reachable inside the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindKind {
    /// A directory the VMM writes (sockets, logs, snapshots).
    ReadWrite,
    /// A file or directory the VMM only reads (kernel, initrd, template).
    ReadOnly,
    /// A virtio-fs share: read-write, with the mounts below it.
    Share,
    /// A device node (`/dev/net/tun`).
    Device,
}

/// One path of the host visible in the jail, at the same absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub path: PathBuf,
    pub kind: BindKind,
}

/// What the jail holds and which credentials the VMM keeps.
#[derive(Debug, Clone)]
pub struct JailSpec {
    /// The jail's root: a directory (created if missing) where the tmpfs
    /// is mounted, in the VMM's own mount namespace only.
    pub dir: PathBuf,
    /// Absolute paths to bind in.
    pub binds: Vec<Bind>,
    /// Whether a virtio-fs share is served (root with the file
    /// capabilities, `/proc/self/fd`, a high RLIMIT_NOFILE).
    pub share: bool,
    /// Whether a tap is opened by name (`--net tap=NAME`): keeps the
    /// network namespace, binds `/dev/net/tun`, keeps CAP_NET_ADMIN.
    pub tap_by_name: bool,
    /// The unprivileged uid/gid when no share is served.
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

impl JailSpec {
    /// A spec with no binds, for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            binds: Vec::new(),
            share: false,
            tap_by_name: false,
            uid: DEFAULT_UID,
            gid: DEFAULT_GID,
        }
    }

    /// Adds `path` (made absolute against the current directory).
    pub fn bind(&mut self, path: &Path, kind: BindKind) -> Result<(), JailError> {
        let path = std::path::absolute(path).map_err(|source| JailError::Path {
            path: path.to_path_buf(),
            source,
        })?;
        if !self.binds.iter().any(|b| b.path == path && b.kind == kind) {
            self.binds.push(Bind { path, kind });
        }
        Ok(())
    }

    /// Whether the VMM ends up with uid 0 (a share is served).
    pub fn stays_root(&self) -> bool {
        self.share
    }
}

/// Why the jail could not be set up (exit code [`crate::exit_code::JAIL`]).
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: {path}: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: the jail directory must be an absolute path, not {0}")]
    Relative(PathBuf),
    #[error("jail: {what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: mounting {path} at {target}: {source}")]
    Mount {
        path: PathBuf,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: must run single-threaded (unshare(CLONE_NEWNS) needs it); {0} threads")]
    Threads(usize),
}

pub(crate) fn sys(what: &'static str) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| JailError::Sys { what, source }
}

/// Returns `Err(last OS error)` when `rc` is negative.
pub(crate) fn check(rc: libc::c_int, what: &'static str) -> Result<(), JailError> {
    if rc < 0 {
        return Err(sys(what)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Puts the calling process into the jail `spec` describes (see the
/// module docs). Call it from the main thread before any other thread
/// exists; afterwards only the bound paths, `/dev/kvm` (already open) and
/// inherited descriptors are reachable.
pub fn enter(spec: &JailSpec) -> Result<(), JailError> {
    if !spec.dir.is_absolute() {
        return Err(JailError::Relative(spec.dir.clone()));
    }
    let threads = thread_count();
    if threads > 1 {
        return Err(JailError::Threads(threads));
    }
    // Answers that need the host's /proc and /sys, cached for later.
    crate::cmdline::host_is_pvm();
    crate::config::host_memory_bytes();
    if let Err(e) = crate::vm::preopen_kvm() {
        // Reported as /dev/kvm unavailable (exit 69) when the VM starts.
        tracing::warn!("jail: opening /dev/kvm: {e}");
    }
    mounts::enter_namespaces(spec)?;
    mounts::build_root(spec)?;
    creds::drop_privileges(spec)?;
    tracing::info!(
        root = %spec.dir.display(),
        uid = if spec.stays_root() { 0 } else { spec.uid },
        share = spec.share,
        binds = spec.binds.len(),
        "jailed"
    );
    Ok(())
}

/// The number of threads of this process (1 when /proc is unreadable:
/// then unshare reports the problem itself).
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count)
}

#[cfg(test)]
mod tests;
