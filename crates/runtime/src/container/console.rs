//! Terminals on the host: a pty pair whose master goes to the caller's
//! console socket (as runc does: one `SCM_RIGHTS` message naming the pty),
//! raw mode for the side nacre relays, and window sizes.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::ContainerError;

/// A pty pair: `master` for the caller, `slave` for nacre's relay.
#[derive(Debug)]
pub struct Pty {
    pub master: OwnedFd,
    pub slave: File,
}

fn os_err(what: &'static str, path: &Path) -> ContainerError {
    ContainerError::Io {
        what,
        path: path.to_path_buf(),
        source: std::io::Error::last_os_error(),
    }
}

/// Opens a pty pair and puts the slave in raw mode (the guest's terminal
/// does the echoing and line editing).
pub fn open_pty() -> Result<Pty, ContainerError> {
    let mut master: RawFd = -1;
    let mut slave: RawFd = -1;
    // SAFETY: openpty writes two descriptors; null name, termios and winsize
    // pointers are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(os_err("opening", Path::new("/dev/ptmx")));
    }
    // SAFETY: both descriptors were just opened and are ours alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), File::from_raw_fd(slave)) };
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: setting FD_CLOEXEC on our own descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    make_raw(slave.as_raw_fd())?;
    Ok(Pty { master, slave })
}

/// Puts the terminal `fd` in raw mode; returns the previous settings.
pub fn make_raw(fd: RawFd) -> Result<libc::termios, ContainerError> {
    // SAFETY: termios is plain data; all-zero is a valid value to fill.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr fills `t`, which lives across the call.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(os_err("tcgetattr", Path::new("terminal")));
    }
    let old = t;
    // SAFETY: cfmakeraw only edits the struct we pass.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: tcsetattr reads `t`, which lives across the call.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(os_err("tcsetattr", Path::new("terminal")));
    }
    Ok(old)
}

/// Restores settings saved by [`make_raw`].
pub fn restore(fd: RawFd, saved: &libc::termios) {
    // SAFETY: tcsetattr reads `saved`, which lives across the call.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, saved) };
}

/// Whether `fd` is a terminal.
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The window size of terminal `fd` as (rows, cols), if it has one.
pub fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; zero is valid.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills `ws`, which lives across the call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Connects to the console socket at `path` and sends `fd` in one
/// `SCM_RIGHTS` message whose payload is `name` (runc sends the pty's path).
pub fn send_console(path: &Path, name: &str, fd: RawFd) -> Result<(), ContainerError> {
    let stream = UnixStream::connect(path).map_err(ContainerError::io("connecting to", path))?;
    send_fd(&stream, name.as_bytes(), fd).map_err(ContainerError::io("sending the pty to", path))
}

fn send_fd(stream: &UnixStream, payload: &[u8], fd: RawFd) -> std::io::Result<()> {
    let iov = [IoSlice::new(if payload.is_empty() {
        b"/"
    } else {
        payload
    })];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; zero is a valid starting value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `control` has room for one cmsg header and one descriptor
    // (CMSG_SPACE above), so CMSG_FIRSTHDR is non-null and CMSG_DATA points
    // inside it; the iovec and control buffers outlive sendmsg.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        if libc::sendmsg(stream.as_raw_fd(), &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one descriptor sent with `SCM_RIGHTS` (the console-socket
/// receiver's side; for tests and tools).
pub fn recv_fd(stream: &UnixStream) -> std::io::Result<(String, OwnedFd)> {
    let mut buf = [0u8; 4096];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; zero is a valid starting value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the buffers described by `msg` outlive the call.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: recvmsg filled `control` and set msg_controllen; the header
    // and data pointers stay within it when the header is non-null and of
    // the expected type.
    let fd = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no descriptor in the message",
            ));
        }
        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>())
    };
    let len = usize::try_from(n).unwrap_or(0).min(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).into_owned();
    // SAFETY: the kernel installed this descriptor in our table for us.
    Ok((name, unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn pty_master_travels_over_a_socket() {
        let pty = open_pty().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        send_fd(&a, b"/dev/pts/x", pty.master.as_raw_fd()).unwrap();
        let (name, master) = recv_fd(&b).unwrap();
        assert_eq!(name, "/dev/pts/x");
        let mut master = File::from(master);
        master.write_all(b"hi").unwrap();
        let mut slave = pty.slave;
        let mut buf = [0u8; 2];
        slave.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        assert!(is_tty(slave.as_raw_fd()));
    }
}
