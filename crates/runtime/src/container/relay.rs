//! The CLI's stdio ends: this process's own descriptors, or a pty slave
//! whose master went to the console socket, relayed by the one relay
//! ([`crate::stdio`]).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::AgentClient;
use crate::stdio::{self, Ends, OutputEnd, ReaderInput};

use super::console::{is_tty, make_raw, restore};

/// Where a process's stdio goes on the host.
#[derive(Debug)]
pub enum HostIo {
    /// This process's own descriptors 0, 1 and 2.
    Inherited,
    /// A pty slave (its master went to the console socket).
    Pty(File),
}

/// A running relay; [`Relay::finish`] waits for the output to drain.
#[derive(Debug)]
pub struct Relay {
    relay: Option<stdio::Relay>,
    saved_termios: Option<(RawFd, libc::termios)>,
}

fn dup_file(fd: RawFd) -> Option<File> {
    // SAFETY: dup of a descriptor number; the result is checked.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: `new` is a fresh descriptor owned by nobody else.
    (new >= 0).then(|| unsafe { File::from_raw_fd(new) })
}

fn output(file: Option<File>) -> Option<OutputEnd> {
    file.map(|f| Box::new(move || Box::new(f) as Box<dyn std::io::Write + Send>) as OutputEnd)
}

/// Starts relaying the process `exec_id` of `container_id`. With
/// `terminal`, stderr is not read (the guest's terminal carries all
/// output) and window sizes are forwarded.
pub fn start_relay(
    agent: Arc<dyn AgentClient>,
    container_id: &str,
    exec_id: &str,
    io: HostIo,
    terminal: bool,
) -> Relay {
    let (input, out, err, window, saved_termios) = match io {
        HostIo::Inherited => {
            let tty = terminal && is_tty(0);
            let saved = if tty {
                make_raw(0).ok().map(|t| (0, t))
            } else {
                None
            };
            (
                dup_file(0),
                dup_file(1),
                dup_file(2),
                tty.then_some(0),
                saved,
            )
        }
        HostIo::Pty(slave) => {
            let fd = slave.as_raw_fd();
            let out = slave.try_clone().ok();
            let err = slave.try_clone().ok();
            let tty = dup_file(fd);
            let window = tty.as_ref().map(AsRawFd::as_raw_fd);
            // The dup lives as long as the process: leak it deliberately so
            // the window-size thread's descriptor stays valid.
            std::mem::forget(tty);
            (Some(slave), out, err, window, None)
        }
    };
    let ends = Ends {
        stdin: input.map(|f| Box::new(ReaderInput(f)) as _),
        stdout: output(out),
        stderr: if terminal { None } else { output(err) },
        window,
    };
    let relay = match stdio::start(&agent, container_id, exec_id, ends) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(container_id, exec_id, "starting the stdio relay: {e}");
            None
        }
    };
    Relay {
        relay,
        saved_termios,
    }
}

impl Relay {
    /// Waits up to `timeout` for the output streams to end, then stops the
    /// window-size watcher and restores the host terminal.
    pub fn finish(self, timeout: Duration) {
        if let Some(relay) = &self.relay {
            relay.wait_outputs(timeout);
            relay.stop();
        }
        if let Some((fd, saved)) = self.saved_termios {
            restore(fd, &saved);
        }
    }
}
