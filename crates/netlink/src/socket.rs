//! A `NETLINK_ROUTE` socket: sends one request at a time and reads its
//! answer (an acknowledgement, an error, or a multi-part dump).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDR_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_CREATE: u16 = 0x400;

/// A netlink request that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[source] io::Error),
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: malformed netlink answer")]
    Malformed { what: String },
    #[error("{0}")]
    NotFound(String),
}

impl NetlinkError {
    /// The errno the kernel answered, if it did.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One message of an answer: its type and its payload after the header.
#[derive(Debug)]
pub struct Message {
    pub kind: u16,
    pub payload: Vec<u8>,
}

/// An open `NETLINK_ROUTE` socket in the calling thread's network
/// namespace (the namespace is fixed when the socket is created).
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    /// Opens a socket.
    pub fn new() -> Result<Self, NetlinkError> {
        // SAFETY: socket() takes no pointers; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Io(io::Error::last_os_error()));
        }
        // SAFETY: fd is a new descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends a request of `kind` with `payload` (family header and
    /// attributes) and waits for its acknowledgement.
    pub fn request(
        &mut self,
        kind: u16,
        flags: u16,
        payload: &[u8],
        what: &dyn Fn() -> String,
    ) -> Result<(), NetlinkError> {
        self.send(kind, flags | NLM_F_REQUEST | NLM_F_ACK, payload)?;
        self.receive(what).map(|_| ())
    }

    /// Sends a dump request and collects every message of the answer.
    pub fn dump(
        &mut self,
        kind: u16,
        payload: &[u8],
        what: &dyn Fn() -> String,
    ) -> Result<Vec<Message>, NetlinkError> {
        self.send(kind, NLM_F_REQUEST | NLM_F_DUMP, payload)?;
        self.receive(what)
    }

    fn send(&mut self, kind: u16, flags: u16, payload: &[u8]) -> Result<(), NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let len = NLMSG_HDR_LEN + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        let mut addr: libc::sockaddr_nl = {
            // SAFETY: sockaddr_nl is plain data; all zeroes is valid.
            unsafe { std::mem::zeroed() }
        };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: msg and addr are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(NetlinkError::Io(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Reads messages of the current sequence until an ACK, an error or
    /// the end of a dump.
    fn receive(&mut self, what: &dyn Fn() -> String) -> Result<Vec<Message>, NetlinkError> {
        let mut out = Vec::new();
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Io(e));
            }
            let mut rest = &self.buf[..n as usize];
            while rest.len() >= NLMSG_HDR_LEN {
                let malformed = || NetlinkError::Malformed { what: what() };
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if len < NLMSG_HDR_LEN || len > rest.len() {
                    return Err(malformed());
                }
                let payload = &rest[NLMSG_HDR_LEN..len];
                rest = rest.get(crate::attr::align(len)..).unwrap_or(&[]);
                if seq != self.seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or_else(malformed)?;
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(NetlinkError::Kernel {
                            what: what(),
                            source: io::Error::from_raw_os_error(-errno),
                        });
                    }
                    _ => out.push(Message {
                        kind,
                        payload: payload.to_vec(),
                    }),
                }
            }
        }
    }
}
