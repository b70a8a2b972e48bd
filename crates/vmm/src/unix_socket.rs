//! Unix listening sockets only their owner (root) may connect to.
//!
//! `bind(2)` creates the socket file with `0777 & ~umask`, and connecting
//! needs write permission on it. Rather than setting a umask around the
//! bind (the umask is process-wide, and other threads create files
//! meanwhile), the socket is bound, its file chmodded to 0600, and only
//! then does it listen: until `listen(2)`, a connect gets
//! `ECONNREFUSED`, so the file's brief wider mode grants nothing.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Mode of every listening socket of the VMM.
pub const SOCKET_MODE: u32 = 0o600;

/// The address of `path` and its length, or `InvalidInput` when it does
/// not fit `sun_path` or holds a NUL byte.
fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, usize)> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain integers; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok((
        addr,
        std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1,
    ))
}

/// A new stream socket with `flags` (`SOCK_CLOEXEC` always).
fn stream_socket(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor socket(2) just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Connects to the listener at `path` without ever blocking: a Unix
/// stream `connect(2)` on a non-blocking socket completes at once or
/// fails, `EAGAIN` when the listener's backlog is full (where a blocking
/// connect would wait for the listener, as long as it likes). The
/// returned stream is non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let (addr, len) = sockaddr(path)?;
    let sock = stream_socket(libc::SOCK_NONBLOCK)?;
    // SAFETY: a valid socket and an initialized sockaddr_un of at least
    // `len` bytes.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            libc::socklen_t::try_from(len).unwrap_or(0),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(sock))
}

/// Binds a stream socket at `path` (which must not exist), makes it 0600
/// whatever the umask, then listens.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let bytes = path.as_os_str().as_bytes();
    let (addr, len) = sockaddr(path)?;
    let sock = stream_socket(0)?;
    // SAFETY: a valid socket and an initialized sockaddr_un of at least
    // `len` bytes.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            libc::socklen_t::try_from(len).unwrap_or(0),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // fchmodat, not chmod: the seccomp allow-list has the former (the
    // virtio-fs passthrough needs it) and not the latter.
    let c_path = CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path that outlives the call.
    let restrict =
        if unsafe { libc::fchmodat(libc::AT_FDCWD, c_path.as_ptr(), SOCKET_MODE, 0) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        };
    let listened = restrict.and_then(|()| {
        // SAFETY: a valid, bound socket.
        if unsafe { libc::listen(sock.as_raw_fd(), libc::SOMAXCONN) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    });
    if let Err(e) = listened {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from(sock))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// M1(c): under umask 000 the socket is still 0600 and it works.
    #[test]
    fn sockets_are_0600_whatever_the_umask() {
        let dir = std::env::temp_dir().join(format!("nacre-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let _ = std::fs::remove_file(&path);
        // SAFETY: umask has no preconditions.
        let old = unsafe { libc::umask(0) };
        let listener = bind_private(&path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = listener.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        listener.accept().unwrap();
        assert!(bind_private(&path).is_err(), "an existing file stays");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
