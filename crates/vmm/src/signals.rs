//! SIGTERM and SIGINT become [`ExitEvent::Signal`]: they are blocked in
//! every thread (the mask is inherited, so this runs before any thread is
//! started) and one thread takes them with `sigwait`.

use std::io;

use crate::events::{self, ExitEvent, ExitSender};

const TERMINATION_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it fully.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in TERMINATION_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
    }
    set
}

/// Blocks SIGTERM and SIGINT in the calling thread (and every thread it
/// starts afterwards).
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is initialized; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Starts the thread that turns SIGTERM/SIGINT into exit events.
pub fn spawn_signal_thread(exit: ExitSender) -> io::Result<()> {
    let sender = exit.clone();
    events::spawn_guarded(
        crate::seccomp::ThreadKind::Signals,
        "signals".into(),
        sender,
        move || {
            let set = termination_set();
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialized and `sig` is a valid out pointer.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc == 0 {
                    tracing::info!(signal = sig, "termination signal received");
                    events::send(&exit, ExitEvent::Signal(sig));
                }
            }
        },
    )?;
    Ok(())
}
