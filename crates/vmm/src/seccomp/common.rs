//! The calls every thread kind makes: memory, locks, the thread's own
//! start and end, time, and log lines to stderr.

use super::rule::{allow, with, Arg, Rule};

/// PROT_EXEC: nothing in the VMM maps executable memory after start-up.
const PROT_EXEC: u64 = libc::PROT_EXEC as u64;

pub const COMMON: &[Rule] = &[
    // malloc (every thread allocates).
    allow("brk", libc::SYS_brk),
    // malloc arenas, std's thread stacks and guard pages, the signal
    // stack std maps per thread; never executable.
    with("mmap", libc::SYS_mmap, Arg::NoBits(2, PROT_EXEC)),
    allow("munmap", libc::SYS_munmap),
    // Vec growth of large buffers (realloc).
    allow("mremap", libc::SYS_mremap),
    // malloc and glibc's stack guard; never executable.
    with("mprotect", libc::SYS_mprotect, Arg::NoBits(2, PROT_EXEC)),
    // malloc trimming, glibc freeing a finished thread's stack.
    allow("madvise", libc::SYS_madvise),
    // Mutexes, condvars, channels, thread join.
    allow("futex", libc::SYS_futex),
    // std's spin loops (Once, channels).
    allow("sched_yield", libc::SYS_sched_yield),
    // A thread ending.
    allow("exit", libc::SYS_exit),
    // std::process::exit from any thread (signals, owner-watch, errors).
    allow("exit_group", libc::SYS_exit_group),
    // Returning from the vCPU kick handler (SIGRTMIN, any thread may
    // receive a signal directed at the process).
    allow("rt_sigreturn", libc::SYS_rt_sigreturn),
    // glibc masks signals around thread exit and in abort.
    allow("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    // std removes the thread's signal stack when the thread ends.
    allow("sigaltstack", libc::SYS_sigaltstack),
    // HashMap's RandomState seeds, per thread.
    allow("getrandom", libc::SYS_getrandom),
    // Instant::now / SystemTime::now when the vDSO falls back.
    allow("clock_gettime", libc::SYS_clock_gettime),
    // thread::sleep.
    allow("clock_nanosleep", libc::SYS_clock_nanosleep),
    allow("nanosleep", libc::SYS_nanosleep),
    // Log lines, thread ids in glibc.
    allow("gettid", libc::SYS_gettid),
    allow("getpid", libc::SYS_getpid),
    // Log lines to stderr; eventfd signals (interrupts, worker kills).
    allow("write", libc::SYS_write),
    // Dropping descriptors.
    allow("close", libc::SYS_close),
    // pthread_kill (vCPU kicks) and abort's raise: only to a thread of
    // this process; `kill` is on no list.
    with("tgkill", libc::SYS_tgkill, Arg::OwnPid),
    // The kernel restarting a call interrupted by a kick.
    allow("restart_syscall", libc::SYS_restart_syscall),
];
