//! Host ends of a process's input.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// The host side of a process's input: copies it with `write` (which
/// returns the bytes taken, or None when the process takes no more) until
/// it ends; returns the bytes copied. The relay closes the process's
/// stdin afterwards.
pub trait InputEnd: Send + 'static {
    fn copy(self: Box<Self>, write: &mut dyn FnMut(&[u8]) -> Option<usize>) -> usize;
}

/// A descriptor read with blocking reads until EOF: the CLI's own stdin
/// or a pty (never made non-blocking: the descriptor is shared with the
/// caller's terminal).
#[derive(Debug)]
pub struct ReaderInput(pub File);

impl InputEnd for ReaderInput {
    fn copy(mut self: Box<Self>, write: &mut dyn FnMut(&[u8]) -> Option<usize>) -> usize {
        let mut buf = vec![0u8; 32 * 1024];
        let mut total = 0;
        loop {
            let n = match self.0.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("reading host stdin: {e}");
                    return total;
                }
            };
            match write_all(write, &buf[..n]) {
                Some(w) => total += w,
                None => return total,
            }
        }
    }
}

/// containerd's stdin FIFO: opened in the copy thread (the open blocks
/// until containerd's side is there) and read until every writer closed
/// it, or until `wake` closes (`CloseIO`: a client that keeps its end
/// open, as CRI does, ends the input so) and the FIFO is drained.
#[derive(Debug)]
pub struct FifoInput {
    pub path: PathBuf,
    /// The read end of a pipe whose write end is dropped on `CloseIO`.
    pub wake: OwnedFd,
}

impl InputEnd for FifoInput {
    fn copy(self: Box<Self>, write: &mut dyn FnMut(&[u8]) -> Option<usize>) -> usize {
        match File::open(&self.path) {
            Ok(f) => copy_fifo(f, &self.wake, write),
            Err(e) => {
                tracing::warn!("opening stdin {}: {e}", self.path.display());
                0
            }
        }
    }
}

/// Writes all of `data` with `write`; None once the process takes no
/// more, else the bytes taken.
fn write_all(write: &mut dyn FnMut(&[u8]) -> Option<usize>, mut data: &[u8]) -> Option<usize> {
    let mut total = 0;
    while !data.is_empty() {
        let w = write(data)?;
        total += w;
        data = &data[w.min(data.len())..];
    }
    Some(total)
}

/// What the stdin FIFO had for the copy.
enum Input {
    Data(usize),
    /// Every writer closed it.
    Eof,
    /// Nothing right now.
    Empty,
}

fn read_input(fifo: &mut File, buf: &mut [u8]) -> Input {
    loop {
        return match fifo.read(buf) {
            Ok(0) => Input::Eof,
            Ok(n) => Input::Data(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Input::Empty,
            Err(e) => {
                tracing::debug!("reading stdin: {e}");
                Input::Eof
            }
        };
    }
}

/// Copies the FIFO with `write` until its end, or until `wake` closes and
/// the FIFO is drained. Returns the bytes copied.
pub(super) fn copy_fifo(
    mut fifo: File,
    wake: &OwnedFd,
    write: &mut dyn FnMut(&[u8]) -> Option<usize>,
) -> usize {
    let fd = fifo.as_raw_fd();
    // SAFETY: fcntl on a descriptor `fifo` owns; no memory is touched.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        tracing::warn!("stdin FIFO: {}", std::io::Error::last_os_error());
        return 0;
    }
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut closing = false;
    loop {
        if !closing {
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfds for the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if ready < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::warn!("waiting for stdin: {e}");
                return total;
            }
            // Data first: CloseIO ends the input after what was written.
            if fds[0].revents == 0 {
                closing = fds[1].revents != 0;
                if !closing {
                    continue;
                }
            }
        }
        let n = match read_input(&mut fifo, &mut buf) {
            Input::Data(n) => n,
            Input::Eof => return total,
            Input::Empty if closing => return total,
            Input::Empty => continue,
        };
        match write_all(write, &buf[..n]) {
            Some(w) => total += w,
            None => return total,
        }
    }
}
