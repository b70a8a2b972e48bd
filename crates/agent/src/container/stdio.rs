//! A process's stdio as the agent holds it: output buffered by a reader
//! thread per stream (so output is kept when the host reads late), and the
//! write end of stdin.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Output kept per stream before the reader stops reading (the process
/// then blocks on its full pipe until the host reads).
pub const BUFFER_LIMIT: usize = 4 << 20;

/// The most one read returns when the caller gives no maximum.
pub const DEFAULT_READ: usize = 64 << 10;

/// The most one read returns at all: a ttRPC message is at most 4 MiB.
pub const MAX_READ: usize = 1 << 20;

#[derive(Debug, Default)]
struct State {
    data: VecDeque<u8>,
    eof: bool,
}

/// Output of one stream, filled by a reader thread.
#[derive(Debug, Default)]
pub struct Output {
    state: Mutex<State>,
    changed: Condvar,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An output that is already at its end (no such stream).
    #[must_use]
    pub fn closed() -> Arc<Output> {
        let out = Arc::new(Output::default());
        out.finish();
        out
    }

    /// Reads `source` until EOF (or EIO, a closed terminal) into a new
    /// buffer, on a thread of the agent's pool.
    pub fn spawn_reader(source: OwnedFd) -> io::Result<Arc<Output>> {
        let out = Arc::new(Output::default());
        let sink = Arc::clone(&out);
        crate::pool::spawn(move || sink.fill(File::from(source)))?;
        Ok(out)
    }

    fn fill(&self, mut source: File) {
        // A pipe's default capacity: one read takes what a full pipe holds.
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.push(buf.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EIO: the terminal's last slave closed.
                Err(e) => {
                    if e.raw_os_error() != Some(libc::EIO) {
                        tracing::debug!("reading process output: {e}");
                    }
                    break;
                }
            }
        }
        self.finish();
    }

    /// Appends `data`, waiting while the buffer is over its limit.
    pub fn push(&self, data: &[u8]) {
        let mut state = self.lock();
        while state.data.len() >= BUFFER_LIMIT {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.data.extend(data);
        drop(state);
        self.changed.notify_all();
    }

    /// Marks the end of the stream.
    pub fn finish(&self) {
        self.lock().eof = true;
        self.changed.notify_all();
    }

    /// Blocks until data or the end is there; returns at most `max` bytes
    /// (0: [`DEFAULT_READ`]; never more than [`MAX_READ`]). Empty means
    /// the end.
    pub fn read(&self, max: usize) -> Vec<u8> {
        let max = if max == 0 {
            DEFAULT_READ
        } else {
            max.min(MAX_READ)
        };
        let mut state = self.lock();
        while state.data.is_empty() && !state.eof {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let n = state.data.len().min(max);
        let out: Vec<u8> = state.data.drain(..n).collect();
        drop(state);
        self.changed.notify_all();
        out
    }
}

/// The agent's end of a process's stdin.
#[derive(Debug, Default)]
pub struct Stdin {
    file: Mutex<Option<File>>,
}

impl Stdin {
    /// Stdin through `fd` (a pipe's write end or a terminal master).
    #[must_use]
    pub fn new(fd: Option<OwnedFd>) -> Stdin {
        Stdin {
            file: Mutex::new(fd.map(File::from)),
        }
    }

    /// Writes all of `data`. `Ok(0)` if stdin is closed; a process that
    /// closed its end counts as closed too.
    pub fn write(&self, data: &[u8]) -> io::Result<usize> {
        // The lock is held for the whole write: writes do not interleave.
        let mut guard = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(file) = guard.as_mut() else {
            return Ok(0);
        };
        match file.write_all(data) {
            Ok(()) => Ok(data.len()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Closes stdin (for a terminal: sends EOF, ^D, and keeps it open).
    pub fn close(&self, terminal: bool) -> io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if terminal {
            if let Some(file) = guard.as_mut() {
                file.write_all(&[4])?;
            }
            return Ok(());
        }
        *guard = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;

    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array we own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned here.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn buffers_output_until_read_then_eof() {
        let (r, w) = pipe();
        let out = Output::spawn_reader(r).unwrap();
        let stdin = Stdin::new(Some(w));
        assert_eq!(stdin.write(b"hello ").unwrap(), 6);
        assert_eq!(stdin.write(b"world").unwrap(), 5);
        stdin.close(false).unwrap();
        assert_eq!(stdin.write(b"late").unwrap(), 0);
        let mut all = Vec::new();
        loop {
            let chunk = out.read(4);
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= 4);
            all.extend(chunk);
        }
        assert_eq!(all, b"hello world");
        assert!(out.read(0).is_empty(), "EOF stays EOF");
        assert!(Output::closed().read(10).is_empty());
    }
}
