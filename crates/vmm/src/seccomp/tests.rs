#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;

#[test]
fn modes_parse_and_name_themselves() {
    for mode in [SeccompMode::Enforce, SeccompMode::Log, SeccompMode::Off] {
        assert_eq!(mode.to_string().parse::<SeccompMode>(), Ok(mode));
    }
    let err = "strict".parse::<SeccompMode>().unwrap_err().to_string();
    assert!(err.contains("strict") && err.contains("enforce"), "{err}");
}

/// Calls no kind may make unconditionally (the launcher's clone and
/// prctl and the fs worker's unshare are argument-checked).
const ESCAPES: &[libc::c_long] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_ptrace,
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_bpf,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_kexec_load,
    libc::SYS_setns,
    libc::SYS_process_vm_writev,
    libc::SYS_process_vm_readv,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_userfaultfd,
    libc::SYS_perf_event_open,
];

#[test]
fn no_list_has_an_escape_hatch_and_every_kind_builds() {
    for kind in ThreadKind::ALL {
        for rule in kind.lists().iter().flat_map(|l| l.iter()) {
            assert!(!ESCAPES.contains(&rule.nr), "{kind:?} allows {}", rule.name);
        }
        assert!(!programs(kind, SeccompMode::Enforce, 1).unwrap().is_empty());
        assert!(programs(kind, SeccompMode::Off, 1).unwrap().is_empty());
    }
}

#[test]
fn only_the_launcher_and_the_fs_worker_get_risky_calls() {
    let has = |kind: ThreadKind, nr| {
        kind.lists()
            .iter()
            .flat_map(|l| l.iter())
            .any(|r| r.nr == nr)
    };
    for kind in ThreadKind::ALL {
        let launcher = kind == ThreadKind::Launcher;
        let fs = matches!(kind, ThreadKind::Fs | ThreadKind::Launcher);
        assert_eq!(has(kind, libc::SYS_clone), launcher, "{kind:?} clone");
        assert_eq!(has(kind, libc::SYS_seccomp), launcher, "{kind:?} seccomp");
        assert_eq!(has(kind, libc::SYS_setresuid), fs, "{kind:?} setresuid");
        assert_eq!(has(kind, libc::SYS_unshare), fs, "{kind:?} unshare");
        assert_eq!(has(kind, libc::SYS_mknodat), fs, "{kind:?} mknodat");
    }
}

/// How a forked child ended: (killed by a signal, signal or exit code).
type Outcome = (bool, i32);

/// Forks a child that installs `kind`'s filter in `mode` and makes the
/// system call `nr(args)`; the child exits 0 if it returns, 1 with
/// `errno` in the exit code's high bits... kept simple: 0 for success,
/// 3 for an error return.
fn in_child(kind: ThreadKind, mode: SeccompMode, nr: libc::c_long, args: [u64; 4]) -> Outcome {
    // SAFETY: the child builds the filter (glibc's malloc is fork-safe),
    // makes system calls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let Ok(programs) = programs(kind, mode, std::process::id()) else {
            // SAFETY: _exit never returns.
            unsafe { libc::_exit(2) }
        };
        // SAFETY: system calls with valid (or deliberately bad but
        // harmless) arguments; _exit never returns.
        unsafe {
            for p in &programs {
                if seccompiler::apply_filter(p).is_err() {
                    libc::_exit(2);
                }
            }
            let rc = libc::syscall(nr, args[0], args[1], args[2], args[3]);
            libc::_exit(if rc < 0 { 3 } else { 0 });
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

const KILLED: Outcome = (true, libc::SIGSYS);

fn enforce(kind: ThreadKind, nr: libc::c_long, args: [u64; 4]) -> Outcome {
    in_child(kind, SeccompMode::Enforce, nr, args)
}

fn survives(outcome: Outcome) -> bool {
    !outcome.0
}

const BAD_FD: u64 = u64::MAX; // -1: an error return, not a kill

#[test]
fn every_kind_allows_its_calls_and_kills_a_forbidden_one() {
    for kind in ThreadKind::ALL {
        // Allowed everywhere: getpid; forbidden everywhere: bpf, kill.
        assert_eq!(
            enforce(kind, libc::SYS_getpid, [0; 4]),
            (false, 0),
            "{kind:?}"
        );
        assert_eq!(enforce(kind, libc::SYS_bpf, [0; 4]), KILLED, "{kind:?} bpf");
        assert_eq!(
            enforce(kind, libc::SYS_kill, [1, 0, 0, 0]),
            KILLED,
            "{kind:?} kill"
        );
        // tgkill only inside this process (the child's own pid is fine).
        assert_eq!(
            enforce(kind, libc::SYS_tgkill, [1, 1, 0, 0]),
            KILLED,
            "{kind:?} tgkill(1)"
        );
        // socket(AF_INET) and clone(CLONE_NEWUSER) nowhere.
        let inet = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0];
        assert_eq!(
            enforce(kind, libc::SYS_socket, inet),
            KILLED,
            "{kind:?} inet"
        );
        let newuser = [(libc::CLONE_NEWUSER | libc::SIGCHLD) as u64, 0, 0, 0];
        assert_eq!(
            enforce(kind, libc::SYS_clone, newuser),
            KILLED,
            "{kind:?} clone"
        );
        // Executable memory nowhere.
        let exec = [
            0,
            4096,
            (libc::PROT_READ | libc::PROT_EXEC) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
        ];
        assert_eq!(
            enforce(kind, libc::SYS_mmap, exec),
            KILLED,
            "{kind:?} mmap exec"
        );
    }
}

#[test]
fn ioctl_requests_are_pinned_per_kind() {
    use ioctls::*;
    let ioctl = |kind, request: u64| enforce(kind, libc::SYS_ioctl, [BAD_FD, request, 0, 0]);
    assert!(survives(ioctl(ThreadKind::Vcpu, KVM_RUN)));
    assert!(survives(ioctl(ThreadKind::Vcpu, KVM_GET_REGS)));
    assert_eq!(ioctl(ThreadKind::Vcpu, KVM_GET_IRQCHIP), KILLED);
    assert_eq!(ioctl(ThreadKind::Vcpu, TUNSETIFF), KILLED);
    assert_eq!(
        ioctl(ThreadKind::Vcpu, u64::from(libc::TIOCSTI as u32)),
        KILLED
    );
    assert!(survives(ioctl(ThreadKind::Api, KVM_GET_CLOCK)));
    assert_eq!(ioctl(ThreadKind::Api, KVM_RUN), KILLED);
    assert!(survives(ioctl(ThreadKind::Vsock, FIONBIO)));
    assert_eq!(ioctl(ThreadKind::Vsock, KVM_RUN), KILLED);
    for kind in [
        ThreadKind::Net,
        ThreadKind::Fs,
        ThreadKind::Signals,
        ThreadKind::Owner,
        ThreadKind::Profile,
    ] {
        assert_eq!(ioctl(kind, FIONBIO), KILLED, "{kind:?}");
    }
    assert!(survives(ioctl(ThreadKind::Main, KVM_RUN)));
    assert!(survives(ioctl(ThreadKind::Main, TUNGETIFF)));
    assert_eq!(
        ioctl(ThreadKind::Main, u64::from(libc::TIOCSTI as u32)),
        KILLED
    );
}

#[test]
fn sockets_are_unix_only() {
    let unix = [libc::AF_UNIX as u64, libc::SOCK_STREAM as u64, 0, 0];
    let netlink = [libc::AF_NETLINK as u64, libc::SOCK_RAW as u64, 0, 0];
    for kind in [ThreadKind::Main, ThreadKind::Vsock] {
        assert_eq!(
            enforce(kind, libc::SYS_socket, unix),
            (false, 0),
            "{kind:?}"
        );
        assert_eq!(enforce(kind, libc::SYS_socket, netlink), KILLED, "{kind:?}");
    }
    assert_eq!(enforce(ThreadKind::Vcpu, libc::SYS_socket, unix), KILLED);
    assert_eq!(enforce(ThreadKind::Api, libc::SYS_socket, unix), KILLED);
}

#[test]
fn clone_is_the_launchers_with_thread_flags_only_and_clone3_is_enosys() {
    // Thread flags with no stack would crash: check the flag test with
    // an invalid TLS instead, which fails with an error after the filter.
    let launcher = ThreadKind::Launcher;
    let newns = [(libc::CLONE_NEWNS | libc::SIGCHLD) as u64, 0, 0, 0];
    assert_eq!(enforce(launcher, libc::SYS_clone, newns), KILLED);
    let fork = [libc::SIGCHLD as u64, 0, 0, 0];
    assert_eq!(enforce(launcher, libc::SYS_clone, fork), KILLED);
    // clone3 fails with ENOSYS (exit 3: an error return), not a kill.
    assert_eq!(enforce(launcher, libc::SYS_clone3, [0; 4]), (false, 3));
    assert_eq!(enforce(ThreadKind::Vcpu, libc::SYS_clone3, [0; 4]), KILLED);
    assert_eq!(enforce(ThreadKind::Main, libc::SYS_clone, fork), KILLED);
}

#[test]
fn open_flags_are_narrowed() {
    let path = c"/nonexistent-nacre".as_ptr() as u64;
    let at = libc::AT_FDCWD as u64;
    let open =
        |kind, flags: libc::c_int| enforce(kind, libc::SYS_openat, [at, path, flags as u64, 0]);
    assert!(survives(open(
        ThreadKind::Main,
        libc::O_RDONLY | libc::O_CLOEXEC
    )));
    assert_eq!(open(ThreadKind::Main, libc::O_PATH), KILLED);
    assert!(survives(open(
        ThreadKind::Api,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL
    )));
    assert_eq!(
        open(ThreadKind::Api, libc::O_RDWR | libc::O_TMPFILE),
        KILLED
    );
    assert!(survives(open(ThreadKind::Fs, libc::O_PATH)));
    for kind in [
        ThreadKind::Vcpu,
        ThreadKind::Net,
        ThreadKind::Vsock,
        ThreadKind::Signals,
        ThreadKind::Owner,
    ] {
        assert_eq!(open(kind, libc::O_RDONLY), KILLED, "{kind:?}");
    }
}

#[test]
fn the_fs_worker_unshares_clone_fs_only() {
    let unshare =
        |flags: libc::c_int| enforce(ThreadKind::Fs, libc::SYS_unshare, [flags as u64, 0, 0, 0]);
    assert_eq!(unshare(libc::CLONE_FS), (false, 0));
    assert_eq!(unshare(libc::CLONE_NEWNS), KILLED);
    assert_eq!(unshare(libc::CLONE_FS | libc::CLONE_NEWUSER), KILLED);
}

#[test]
fn log_mode_lets_a_forbidden_call_through() {
    assert_eq!(
        in_child(
            ThreadKind::Vcpu,
            SeccompMode::Log,
            libc::SYS_bpf,
            [BAD_FD, 0, 0, 0]
        ),
        (false, 3)
    );
}

#[test]
fn the_launcher_starts_threads_under_their_own_filters() {
    // SAFETY: the child starts threads (glibc supports that after fork),
    // then leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = (|| {
            install(SeccompMode::Enforce).ok()?;
            // A vCPU-kind thread starts (clone3 ENOSYS, then clone with
            // the thread flags, in the launcher) and runs.
            let t = spawn(ThreadKind::Vcpu, "t".into(), std::process::id).ok()?;
            let ran = t.join().ok()?;
            // A thread that itself starts a thread goes through the
            // launcher too (a direct clone would kill the process).
            let nested = spawn(ThreadKind::Api, "outer".into(), || {
                spawn(ThreadKind::Owner, "inner".into(), || 7)
                    .ok()
                    .and_then(|h| h.join().ok())
            })
            .ok()?
            .join()
            .ok()??;
            Some(ran == std::process::id() && nested == 7)
        })();
        // SAFETY: _exit never returns.
        unsafe { libc::_exit(if code == Some(true) { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child into a local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status),
        "killed by {}",
        libc::WTERMSIG(status)
    );
    assert_eq!(libc::WEXITSTATUS(status), 0);
}
