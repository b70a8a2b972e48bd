//! The VMM's lifeline to the process that started it.
//!
//! The runtime keeps the write end of a pipe and hands the read end to
//! `nacre-vmm --owner-fd N`. Nothing is ever written: when the owner
//! exits, however it dies (kill -9 included), the kernel closes its end
//! and the VMM sees end-of-file and stops the VM at once. So no VM
//! outlives the monitor or shim that owns it (`PR_SET_PDEATHSIG` would
//! be tied to the thread that spawned the VMM, which in a thread pool
//! may exit long before its process).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::thread::JoinHandle;

use crate::exit_code;

/// Takes ownership of descriptor `fd` (inherited from the owner) and
/// starts a thread that ends the process with
/// [`exit_code::OWNER_GONE`] once the owner's end is closed.
pub fn watch(fd: RawFd) -> io::Result<JoinHandle<()>> {
    // SAFETY: fcntl(F_GETFD) only checks the descriptor is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above), was inherited for
    // this purpose alone, and nothing else in the process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD with FD_CLOEXEC changes only the descriptor's flag.
    unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    crate::seccomp::spawn(
        crate::seccomp::ThreadKind::Owner,
        "owner-watch".into(),
        move || {
            wait_closed(&owned);
            tracing::warn!("the process that owns this VM is gone: stopping the VM");
            std::process::exit(exit_code::OWNER_GONE);
        },
    )
}

/// Blocks until the other end of the pipe `fd` is closed (or the
/// descriptor is unusable, which means the same: nobody owns the VM).
fn wait_closed(fd: &OwnedFd) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reads into a local buffer of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return,
            n if n > 0 => continue,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use std::time::{Duration, Instant};

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned here.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn returns_when_the_owner_end_closes() {
        let (read, write) = pipe();
        let t = std::thread::spawn(move || {
            wait_closed(&read);
            Instant::now()
        });
        std::thread::sleep(Duration::from_millis(50));
        let closed = Instant::now();
        drop(write);
        let seen = t.join().unwrap();
        assert!(seen >= closed);
    }

    #[test]
    fn a_closed_descriptor_is_refused() {
        let (read, write) = pipe();
        let fd = read.as_raw_fd();
        drop(read);
        drop(write);
        assert!(watch(fd).is_err());
    }
}
