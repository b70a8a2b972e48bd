//! The one stdio relay between a container process in the guest and its
//! host ends, for both frontends.
//!
//! The relay owns the agent side: host input → `WriteStdin` (then
//! `CloseStdin` at its end; at once without input), `ReadStdout` /
//! `ReadStderr` → the host outputs until the agent reports the end of each
//! stream, and a terminal's window size → `ResizeTty`. The host ends are
//! pluggable: the CLI's are its own descriptors or a pty
//! (`container::relay`), containerd's are FIFOs, `file://` logs and
//! `binary://` loggers (the shim's `stdio`). The agent calls block, so
//! each stream has a plain thread.

mod input;

use std::io::Write;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::AgentClient;

pub use input::{FifoInput, InputEnd, ReaderInput};

/// Opens an output's host end, in its copy thread (a FIFO open blocks
/// until the reader is there).
pub type OutputEnd = Box<dyn FnOnce() -> Box<dyn Write + Send> + Send>;

/// The most one output read asks for: all the agent holds, up to its cap
/// (1 MiB). Fewer, larger reads move bulk output faster (each is a round
/// trip through the guest).
const READ_MAX: u32 = 1 << 20;

/// How often a terminal's window size is checked.
const RESIZE_POLL: Duration = Duration::from_millis(250);

/// The host ends of one process's stdio.
#[derive(Default)]
pub struct Ends {
    /// None: the process reads EOF at once (as from /dev/null).
    pub stdin: Option<Box<dyn InputEnd>>,
    pub stdout: Option<OutputEnd>,
    /// None with a terminal (its output is all on stdout).
    pub stderr: Option<OutputEnd>,
    /// A terminal whose window size the process's terminal follows.
    pub window: Option<RawFd>,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// A running relay: its output threads signal their end.
#[derive(Debug)]
pub struct Relay {
    outputs: Mutex<Vec<mpsc::Receiver<()>>>,
    stop: Arc<AtomicBool>,
}

/// Starts relaying process `exec_id` of container `cid` between the
/// agent and `ends`.
pub fn start(
    agent: &Arc<dyn AgentClient>,
    cid: &str,
    exec_id: &str,
    ends: Ends,
) -> std::io::Result<Relay> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut outputs = Vec::new();
    for (stream, end) in [(Stream::Stdout, ends.stdout), (Stream::Stderr, ends.stderr)] {
        let Some(open) = end else { continue };
        let (tx, rx) = mpsc::channel();
        outputs.push(rx);
        let (agent, cid, exec_id) = (Arc::clone(agent), cid.to_string(), exec_id.to_string());
        spawn("stdio-out", move || {
            pump_output(agent.as_ref(), &cid, &exec_id, stream, open());
            let _ = tx.send(());
        })?;
    }
    match ends.stdin {
        None => {
            if let Err(e) = agent.close_stdin(cid, exec_id) {
                tracing::debug!(cid, exec_id, "closing unused stdin: {e}");
            }
        }
        Some(input) => {
            let (agent, cid, exec_id) = (Arc::clone(agent), cid.to_string(), exec_id.to_string());
            spawn("stdio-in", move || {
                pump_input(agent.as_ref(), &cid, &exec_id, input)
            })?;
        }
    }
    if let Some(fd) = ends.window {
        let (agent, cid, exec_id) = (Arc::clone(agent), cid.to_string(), exec_id.to_string());
        let stop = Arc::clone(&stop);
        spawn("stdio-winsize", move || {
            follow_window(agent.as_ref(), &cid, &exec_id, fd, &stop)
        })?;
    }
    Ok(Relay {
        outputs: Mutex::new(outputs),
        stop,
    })
}

impl Relay {
    /// Waits up to `timeout` for the output streams to end (the process
    /// and anything that inherited its stdout exited), so that an exit
    /// report does not overtake the last output.
    pub fn wait_outputs(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let outputs = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
        for rx in outputs.iter() {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = rx.recv_timeout(left);
        }
    }

    /// Stops following the terminal's window size.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
}

fn pump_output(
    agent: &dyn AgentClient,
    cid: &str,
    exec_id: &str,
    stream: Stream,
    mut sink: Box<dyn Write + Send>,
) {
    loop {
        let chunk = match stream {
            Stream::Stdout => agent.read_stdout(cid, exec_id, READ_MAX),
            Stream::Stderr => agent.read_stderr(cid, exec_id, READ_MAX),
        };
        match chunk {
            Ok(data) if data.is_empty() => break,
            Ok(data) => {
                if let Err(e) = sink.write_all(&data).and_then(|()| sink.flush()) {
                    // The reader went away: keep draining so the process
                    // never blocks on a full pipe.
                    tracing::debug!(cid, exec_id, "output reader gone: {e}");
                    sink = Box::new(std::io::sink());
                }
            }
            Err(e) => {
                tracing::debug!(cid, exec_id, ?stream, "output stream ended: {e}");
                break;
            }
        }
    }
    let _ = sink.flush();
}

fn pump_input(agent: &dyn AgentClient, cid: &str, exec_id: &str, input: Box<dyn InputEnd>) {
    let mut write = |data: &[u8]| match agent.write_stdin(cid, exec_id, data) {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(e) => {
            // The process is gone (or closed its stdin).
            tracing::debug!(cid, exec_id, "writing stdin: {e}");
            None
        }
    };
    let total = input.copy(&mut write);
    tracing::debug!(cid, exec_id, total, "stdin ended");
    if let Err(e) = agent.close_stdin(cid, exec_id) {
        tracing::debug!(cid, exec_id, "closing stdin: {e}");
    }
}

fn follow_window(agent: &dyn AgentClient, cid: &str, exec_id: &str, fd: RawFd, stop: &AtomicBool) {
    let mut last = None;
    while !stop.load(Ordering::Relaxed) {
        let size = crate::container::console::window_size(fd);
        if size.is_some() && size != last {
            if let Some((rows, cols)) = size {
                match agent.resize_tty(cid, exec_id, rows.into(), cols.into()) {
                    Ok(()) => last = size,
                    Err(e) => tracing::debug!(cid, exec_id, "ResizeTty: {e}"),
                }
            }
        }
        std::thread::sleep(RESIZE_POLL);
    }
}

#[cfg(test)]
mod tests;
