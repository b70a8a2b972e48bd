//! Thread creation under per-thread filters: the launcher.
//!
//! A seccomp filter is inherited by the threads its thread creates, and
//! stacked filters all have to allow a call. So a vCPU (which activates
//! devices) or the API thread (which serves connections) must not create
//! threads itself: [`spawn`] sends the job to the launcher, a thread
//! started before the main thread's filter whose own filter is the union
//! of all kinds' plus thread creation. Each new thread then installs its
//! kind's filter before running anything else.

use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use super::rule::{allow, with, Arg, Rule, THREAD_CLONE_FLAGS};
use super::ThreadKind;

/// What the launcher does beyond the union of every kind's list.
pub const LAUNCHER: &[Rule] = &[
    // Threads, with glibc's exact pthread_create flags.
    with(
        "clone",
        libc::SYS_clone,
        Arg::OneOf(0, &[THREAD_CLONE_FLAGS]),
    ),
    // Answered ENOSYS by the launcher's second filter.
    allow("clone3", libc::SYS_clone3),
    // A new thread's start (glibc), before its own filter.
    allow("set_robust_list", libc::SYS_set_robust_list),
    allow("rseq", libc::SYS_rseq),
    // std names the new thread (PR_SET_NAME); seccompiler sets
    // no-new-privs before installing the thread's filter.
    with(
        "prctl",
        libc::SYS_prctl,
        Arg::OneOf(
            0,
            &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
        ),
    ),
    // The new thread installs its filter: without TSYNC (flags 0).
    with("seccomp", libc::SYS_seccomp, Arg::OneOf(1, &[0])),
    // std reads the new thread's stack bounds.
    allow("sched_getaffinity", libc::SYS_sched_getaffinity),
];

type Job = Box<dyn FnOnce() + Send>;

static LAUNCHER_TX: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

/// Starts the launcher thread (once).
pub(super) fn start_launcher() -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("launcher".into())
        .spawn(move || {
            // Threads inherit the launcher's signal mask: SIGTERM/SIGINT
            // go to the signal thread only (see crate::signals).
            if let Err(e) = crate::signals::block_termination_signals() {
                tracing::warn!("launcher: blocking signals: {e}");
            }
            if let Err(e) = super::apply(ThreadKind::Launcher) {
                fail(ThreadKind::Launcher, &e);
            }
            for job in rx {
                job();
            }
        })?;
    let _ = LAUNCHER_TX.set(Mutex::new(tx));
    Ok(())
}

fn fail(kind: ThreadKind, e: &super::SeccompError) -> ! {
    tracing::error!("{kind:?} thread: {e}; stopping the VMM");
    std::process::exit(crate::exit_code::FAILURE);
}

/// Starts a thread named `name` of kind `kind` running `f` after
/// installing its filter. Through the launcher once the filters are on;
/// directly otherwise.
pub fn spawn<F, T>(kind: ThreadKind, name: String, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let body = move || {
        if let Err(e) = super::apply(kind) {
            fail(kind, &e);
        }
        f()
    };
    let builder = std::thread::Builder::new().name(name);
    let Some(launcher) = LAUNCHER_TX.get() else {
        return builder.spawn(body);
    };
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = reply_tx.send(builder.spawn(body));
    });
    launcher
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| io::Error::other("the launcher thread is gone"))?;
    reply_rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("the launcher thread is gone")))
}
