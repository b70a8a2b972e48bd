//! Relaying one container process's stdio between host descriptors and
//! the agent: host input → `WriteStdin` (EOF → `CloseStdin`),
//! `ReadStdout`/`ReadStderr` → host output, and terminal window sizes →
//! `ResizeTty`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::agent::AgentClient;

use super::console::{is_tty, make_raw, restore, window_size};

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
    outputs: Vec<JoinHandle<()>>,
    done: Arc<AtomicBool>,
    saved_termios: Option<(RawFd, libc::termios)>,
}

fn dup_file(fd: RawFd) -> Option<File> {
    // SAFETY: dup of a descriptor number; the result is checked.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: `new` is a fresh descriptor owned by nobody else.
    (new >= 0).then(|| unsafe { File::from_raw_fd(new) })
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
    let done = Arc::new(AtomicBool::new(false));
    let (input, out, err, tty_fd, saved_termios) = match io {
        HostIo::Inherited => {
            let saved = if terminal && is_tty(0) {
                make_raw(0).ok().map(|t| (0, t))
            } else {
                None
            };
            let tty = (terminal && is_tty(0)).then_some(0);
            (dup_file(0), dup_file(1), dup_file(2), tty, saved)
        }
        HostIo::Pty(slave) => {
            let fd = slave.as_raw_fd();
            let out = slave.try_clone().ok();
            let err = slave.try_clone().ok();
            let tty = dup_file(fd);
            let tty_fd = tty.as_ref().map(AsRawFd::as_raw_fd);
            // The dup lives as long as the process: leak it deliberately so
            // the resize thread's descriptor stays valid.
            std::mem::forget(tty);
            (Some(slave), out, err, tty_fd, None)
        }
    };
    let id = container_id.to_string();
    let exec = exec_id.to_string();

    if let Some(mut input) = input {
        let (agent, id, exec) = (Arc::clone(&agent), id.clone(), exec.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Err(e) = agent.write_stdin(&id, &exec, &buf[..n]) {
                            tracing::debug!("WriteStdin: {e}");
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!("reading host stdin: {e}");
                        break;
                    }
                }
            }
            if let Err(e) = agent.close_stdin(&id, &exec) {
                tracing::debug!("CloseStdin: {e}");
            }
        });
    }

    let mut outputs = Vec::new();
    let streams: [(bool, Option<File>); 2] =
        [(true, out), (false, if terminal { None } else { err })];
    for (is_stdout, sink) in streams {
        let Some(mut sink) = sink else { continue };
        let (agent, id, exec) = (Arc::clone(&agent), id.clone(), exec.clone());
        outputs.push(std::thread::spawn(move || loop {
            let read = if is_stdout {
                agent.read_stdout(&id, &exec, 0)
            } else {
                agent.read_stderr(&id, &exec, 0)
            };
            match read {
                Ok(data) if data.is_empty() => break,
                Ok(data) => {
                    if sink.write_all(&data).and_then(|()| sink.flush()).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(is_stdout, "reading the process output: {e}");
                    break;
                }
            }
        }));
    }

    if let Some(fd) = tty_fd {
        let (agent, done) = (Arc::clone(&agent), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut last = None;
            while !done.load(Ordering::Relaxed) {
                let size = window_size(fd);
                if size.is_some() && size != last {
                    if let Some((rows, cols)) = size {
                        match agent.resize_tty(&id, &exec, rows.into(), cols.into()) {
                            Ok(()) => last = size,
                            Err(e) => tracing::debug!("ResizeTty: {e}"),
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
    }

    Relay {
        outputs,
        done,
        saved_termios,
    }
}

impl Relay {
    /// Waits up to `timeout` for the output streams to end, then stops the
    /// window-size watcher and restores the host terminal.
    pub fn finish(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for h in self.outputs {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        self.done.store(true, Ordering::Relaxed);
        if let Some((fd, saved)) = self.saved_termios {
            restore(fd, &saved);
        }
    }
}
