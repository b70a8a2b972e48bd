//! Forwarding signals that a foreground `nacre run` receives to the
//! container, as runc does: the monitor runs in its own session, so a ^C
//! on the terminal reaches only `nacre run`.
//!
//! The handlers go in before the container is created: a signal that
//! comes while the VM boots is queued (the pipe holds it) and forwarded
//! once the container has started, so that ^C never leaves a created
//! container behind a dead `nacre run`.

use std::io::Read;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nacre_runtime::container::launch::pipe;
use nacre_runtime::container::{ops, ContainerPaths};

/// The write end of the self-pipe the handler writes signal numbers to.
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

/// The signals forwarded.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = u8::try_from(sig).unwrap_or(0);
        // SAFETY: write(2) is async-signal-safe; the buffer is a local.
        unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    }
}

/// Signals caught since [`SignalQueue::install`], not yet forwarded.
#[derive(Debug)]
pub struct SignalQueue {
    reader: std::fs::File,
}

impl SignalQueue {
    /// Installs the handlers: from now on the forwarded signals no longer
    /// end this process but wait in the queue. None if no pipe could be
    /// made (the signals then keep their default action).
    pub fn install() -> Option<SignalQueue> {
        let Ok((read_end, write_end)) = pipe() else {
            tracing::warn!("no pipe for signal forwarding");
            return None;
        };
        PIPE_WRITE.store(write_end.into_raw_fd(), Ordering::Relaxed);
        let handler = on_signal as extern "C" fn(libc::c_int);
        for sig in FORWARDED {
            // SAFETY: the handler only calls write(2) on a descriptor that
            // stays open for the life of the process (glibc's signal()
            // restarts interrupted system calls).
            unsafe { libc::signal(sig, handler as libc::sighandler_t) };
        }
        // SAFETY: `read_end` is an open descriptor we own; the File takes it.
        let reader = unsafe { std::fs::File::from_raw_fd(read_end.into_raw_fd()) };
        Some(SignalQueue { reader })
    }

    /// Starts a thread that sends the queued signals, then every later
    /// one, to the container's init process.
    pub fn forward_to(self, paths: ContainerPaths) {
        let mut reader = self.reader;
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while let Ok(1) = reader.read(&mut byte) {
                let sig = i32::from(byte[0]);
                tracing::debug!(sig, "forwarding a signal to the container");
                if let Err(e) = ops::kill(&paths, sig, false) {
                    tracing::warn!("forwarding signal {sig}: {e}");
                }
            }
        });
    }
}
