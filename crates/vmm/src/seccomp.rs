//! The VMM's seccomp filter: an allow-list of the system calls nacre-vmm
//! makes (KVM ioctls, memory, epoll, sockets of the vsock and API
//! devices, the virtio-fs passthrough file system, snapshots), installed
//! on every thread before the guest runs. Anything else (`execve`,
//! `ptrace`, `mount`, `bpf`, module loading, ...) kills the process in
//! `enforce` mode, or is logged by the kernel (`audit: type=1326`) in
//! `log` mode, which is how the list is checked against a test run.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What the filter does with a system call that is not on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Kill the VMM (the kernel logs the call).
    #[default]
    Enforce,
    /// Allow it, and have the kernel log it.
    Log,
    /// No filter.
    Off,
}

impl FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Self::Enforce),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "{other:?} is not a seccomp mode (enforce, log, off)"
            )),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enforce => "enforce",
            Self::Log => "log",
            Self::Off => "off",
        })
    }
}

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
}

/// The system calls nacre-vmm makes, by name (for reading) and number.
const ALLOWED: &[(&str, libc::c_long)] = &[
    // Memory and threads.
    ("brk", libc::SYS_brk),
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap),
    ("mprotect", libc::SYS_mprotect),
    ("madvise", libc::SYS_madvise),
    ("msync", libc::SYS_msync),
    ("memfd_create", libc::SYS_memfd_create),
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("rseq", libc::SYS_rseq),
    ("futex", libc::SYS_futex),
    ("sched_yield", libc::SYS_sched_yield),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("getrandom", libc::SYS_getrandom),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("gettid", libc::SYS_gettid),
    ("getpid", libc::SYS_getpid),
    ("getppid", libc::SYS_getppid),
    ("prctl", libc::SYS_prctl),
    ("prlimit64", libc::SYS_prlimit64),
    // Signals and time.
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
    ("tgkill", libc::SYS_tgkill),
    ("kill", libc::SYS_kill),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("nanosleep", libc::SYS_nanosleep),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    // Descriptors, events, KVM.
    ("ioctl", libc::SYS_ioctl),
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("preadv", libc::SYS_preadv),
    ("pwritev", libc::SYS_pwritev),
    ("preadv2", libc::SYS_preadv2),
    ("pwritev2", libc::SYS_pwritev2),
    ("close", libc::SYS_close),
    ("dup", libc::SYS_dup),
    ("dup3", libc::SYS_dup3),
    ("fcntl", libc::SYS_fcntl),
    ("pipe2", libc::SYS_pipe2),
    ("eventfd2", libc::SYS_eventfd2),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("lseek", libc::SYS_lseek),
    // Sockets: the vsock and API Unix sockets.
    ("socket", libc::SYS_socket),
    ("socketpair", libc::SYS_socketpair),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("accept4", libc::SYS_accept4),
    ("connect", libc::SYS_connect),
    ("shutdown", libc::SYS_shutdown),
    ("sendmsg", libc::SYS_sendmsg),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendto", libc::SYS_sendto),
    ("recvfrom", libc::SYS_recvfrom),
    ("getsockopt", libc::SYS_getsockopt),
    ("setsockopt", libc::SYS_setsockopt),
    ("getsockname", libc::SYS_getsockname),
    ("getpeername", libc::SYS_getpeername),
    // Files: the image, logs, snapshots and the virtio-fs passthrough.
    ("openat", libc::SYS_openat),
    ("open", libc::SYS_open),
    ("statx", libc::SYS_statx),
    ("newfstatat", libc::SYS_newfstatat),
    ("fstat", libc::SYS_fstat),
    ("stat", libc::SYS_stat),
    ("lstat", libc::SYS_lstat),
    ("fstatfs", libc::SYS_fstatfs),
    ("statfs", libc::SYS_statfs),
    ("getdents64", libc::SYS_getdents64),
    ("readlinkat", libc::SYS_readlinkat),
    ("readlink", libc::SYS_readlink),
    ("mkdirat", libc::SYS_mkdirat),
    ("mkdir", libc::SYS_mkdir),
    ("mknodat", libc::SYS_mknodat),
    ("unlinkat", libc::SYS_unlinkat),
    ("unlink", libc::SYS_unlink),
    ("rmdir", libc::SYS_rmdir),
    ("renameat", libc::SYS_renameat),
    ("renameat2", libc::SYS_renameat2),
    ("rename", libc::SYS_rename),
    ("linkat", libc::SYS_linkat),
    ("symlinkat", libc::SYS_symlinkat),
    ("fchmod", libc::SYS_fchmod),
    ("fchmodat", libc::SYS_fchmodat),
    ("fchown", libc::SYS_fchown),
    ("fchownat", libc::SYS_fchownat),
    ("utimensat", libc::SYS_utimensat),
    ("ftruncate", libc::SYS_ftruncate),
    ("fallocate", libc::SYS_fallocate),
    ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync),
    ("sync_file_range", libc::SYS_sync_file_range),
    ("copy_file_range", libc::SYS_copy_file_range),
    ("sendfile", libc::SYS_sendfile),
    ("fadvise64", libc::SYS_fadvise64),
    ("flock", libc::SYS_flock),
    ("getxattr", libc::SYS_getxattr),
    ("lgetxattr", libc::SYS_lgetxattr),
    ("fgetxattr", libc::SYS_fgetxattr),
    ("setxattr", libc::SYS_setxattr),
    ("lsetxattr", libc::SYS_lsetxattr),
    ("fsetxattr", libc::SYS_fsetxattr),
    ("listxattr", libc::SYS_listxattr),
    ("llistxattr", libc::SYS_llistxattr),
    ("flistxattr", libc::SYS_flistxattr),
    ("removexattr", libc::SYS_removexattr),
    ("lremovexattr", libc::SYS_lremovexattr),
    ("fremovexattr", libc::SYS_fremovexattr),
    ("fchdir", libc::SYS_fchdir),
    ("getcwd", libc::SYS_getcwd),
    ("umask", libc::SYS_umask),
    // No name_to_handle_at/open_by_handle_at: inode_file_handles is off
    // (fs/device.rs), and open_by_handle_at is the classic escape route.
    // virtio-fs acts as the guest's caller (fsuid/fsgid, capabilities).
    ("getuid", libc::SYS_getuid),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getegid", libc::SYS_getegid),
    ("setfsuid", libc::SYS_setfsuid),
    ("setfsgid", libc::SYS_setfsgid),
    ("setresuid", libc::SYS_setresuid),
    ("setresgid", libc::SYS_setresgid),
    ("capget", libc::SYS_capget),
    ("capset", libc::SYS_capset),
    ("uname", libc::SYS_uname),
];

/// The filter for `mode` (None for [`SeccompMode::Off`]).
pub fn filter(mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::Enforce => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    // The virtio-fs thread takes a root, cwd and umask of its own
    // (`unshare(CLONE_FS)`); no namespace may be unshared. The flags are
    // an int: only the low 32 bits of the register are defined.
    let clone_fs = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        u64::try_from(libc::CLONE_FS).unwrap_or(u64::MAX),
    )?;
    rules.insert(libc::SYS_unshare, vec![SeccompRule::new(vec![clone_fs])?]);
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)?;
    Ok(Some(filter.try_into()?))
}

/// Installs the filter for `mode` on every thread of the process (and so
/// on every thread started later).
pub fn install(mode: SeccompMode) -> Result<(), SeccompError> {
    if let Some(program) = filter(mode)? {
        seccompiler::apply_filter_all_threads(&program)?;
        tracing::debug!(%mode, calls = ALLOWED.len(), "seccomp filter installed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_name_themselves() {
        for mode in [SeccompMode::Enforce, SeccompMode::Log, SeccompMode::Off] {
            assert_eq!(mode.to_string().parse::<SeccompMode>(), Ok(mode));
        }
        let err = "strict".parse::<SeccompMode>().unwrap_err();
        assert!(err.contains("strict") && err.contains("enforce"), "{err}");
    }

    #[test]
    fn the_list_has_no_duplicates_and_no_escape_hatches() {
        // unshare is allowed for CLONE_FS alone, outside the list.
        let mut numbers: Vec<_> = ALLOWED.iter().map(|(_, nr)| *nr).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), ALLOWED.len());
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_bpf,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_kexec_load,
            libc::SYS_setns,
            libc::SYS_unshare,
            libc::SYS_process_vm_writev,
        ] {
            assert!(!numbers.contains(&forbidden), "{forbidden} is allowed");
        }
    }

    /// Forks a child that installs `mode`'s filter and makes system call
    /// `nr` with `arg`; returns how the child ended: (killed, signal or
    /// exit status).
    fn in_filtered_child(mode: SeccompMode, nr: libc::c_long, arg: libc::c_long) -> (bool, i32) {
        let program = filter(mode).unwrap().unwrap();
        // SAFETY: the child only makes system calls (no allocation, no
        // locks) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: system calls with valid (or deliberately bad but
            // harmless) arguments; _exit never returns.
            unsafe {
                if seccompiler::apply_filter(&program).is_err() {
                    libc::_exit(2);
                }
                libc::syscall(libc::SYS_getppid);
                libc::syscall(nr, arg, 0, 0);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child into a local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFSIGNALED(status) {
            (true, libc::WTERMSIG(status))
        } else {
            (false, libc::WEXITSTATUS(status))
        }
    }

    /// Whether `unshare(flags)` kills a child under the enforcing filter.
    fn child_unshares(flags: libc::c_int) -> bool {
        in_filtered_child(SeccompMode::Enforce, libc::SYS_unshare, flags.into())
            == (true, libc::SIGSYS)
    }

    #[test]
    fn unshare_is_allowed_for_clone_fs_only() {
        assert!(!child_unshares(libc::CLONE_FS));
        assert!(child_unshares(libc::CLONE_NEWNS));
        assert!(child_unshares(libc::CLONE_FS | libc::CLONE_NEWNET));
    }

    #[test]
    fn enforce_kills_a_call_off_the_list_and_log_lets_it_through() {
        assert_eq!(
            in_filtered_child(SeccompMode::Enforce, libc::SYS_bpf, -1),
            (true, libc::SIGSYS)
        );
        assert_eq!(
            in_filtered_child(SeccompMode::Log, libc::SYS_bpf, -1),
            (false, 0)
        );
    }

    #[test]
    fn filters_build_for_enforce_and_log() {
        assert!(filter(SeccompMode::Enforce).unwrap().is_some());
        assert!(filter(SeccompMode::Log).unwrap().is_some());
        assert!(filter(SeccompMode::Off).unwrap().is_none());
    }
}
