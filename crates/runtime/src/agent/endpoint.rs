//! Where the agent is reached, and the hybrid vsock handshake.
//!
//! The VMM's vsock device is "hybrid": the host side of guest vsock is a
//! Unix socket. A host client connects to it, writes `CONNECT <port>\n`, and
//! once the guest accepted, the VMM answers `OK <host port>\n`; the socket
//! then carries the stream. When nothing listens on the guest port, the VMM
//! closes the socket without an answer.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::error::AgentClientError;

/// Longest reply line accepted, newline included.
const MAX_REPLY: usize = 64;

/// Where the agent listens, as seen from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A guest vsock port behind the VMM's hybrid vsock Unix socket.
    HybridVsock {
        /// The VMM's vsock Unix socket (`nacre-vmm --vsock-uds`).
        path: PathBuf,
        /// The guest port (the agent's is
        /// [`nacre_protocol::AGENT_VSOCK_PORT`]).
        port: u32,
    },
    /// A Unix socket the agent listens on itself (`--listen unix://PATH`),
    /// for tests on the host.
    Unix(PathBuf),
}

impl Endpoint {
    /// The agent's port behind the VMM's vsock socket at `path`.
    pub fn agent_vsock(path: impl Into<PathBuf>) -> Endpoint {
        Endpoint::HybridVsock {
            path: path.into(),
            port: nacre_protocol::AGENT_VSOCK_PORT,
        }
    }

    /// An agent listening on the Unix socket at `path` itself (host tests).
    pub fn unix(path: impl Into<PathBuf>) -> Endpoint {
        Endpoint::Unix(path.into())
    }

    /// Makes one connection attempt; `timeout` bounds the handshake.
    pub(crate) fn connect_once(&self, timeout: Duration) -> Result<UnixStream, AgentClientError> {
        match self {
            Endpoint::Unix(path) => {
                UnixStream::connect(path).map_err(|source| AgentClientError::Connect {
                    path: path.display().to_string(),
                    source,
                })
            }
            Endpoint::HybridVsock { path, port } => {
                let display = || path.display().to_string();
                let mut stream =
                    UnixStream::connect(path).map_err(|source| AgentClientError::Connect {
                        path: display(),
                        source,
                    })?;
                hybrid_vsock_handshake(&mut stream, *port, timeout).map_err(|source| {
                    AgentClientError::Handshake {
                        path: display(),
                        port: *port,
                        source,
                    }
                })?;
                Ok(stream)
            }
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::HybridVsock { path, port } => {
                write!(f, "vsock port {port} via {}", path.display())
            }
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Why the hybrid vsock handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Writing the request or reading the reply failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The VMM closed the socket without replying: nothing listens on the
    /// guest port yet.
    #[error("closed without a reply (nothing listening on the guest port?)")]
    Closed,
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    TimedOut(Duration),
    /// The reply is not `OK <port>`.
    #[error("unexpected reply {0:?}")]
    BadReply(String),
}

impl HandshakeError {
    /// Whether trying again may succeed: the guest may still be booting
    /// (the VMM gives up on a guest that does not answer a connection
    /// request, and an emulated guest can be slow to answer).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            HandshakeError::Closed | HandshakeError::TimedOut(_) => true,
            HandshakeError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            HandshakeError::BadReply(_) => false,
        }
    }
}

/// Speaks the client side of the handshake on a connected stream: writes
/// `CONNECT <port>\n` and reads the `OK <host port>\n` reply one byte at a
/// time, so that no byte of the stream that follows is consumed. Returns the
/// host port of the reply. The stream's read timeout is cleared afterwards.
pub fn hybrid_vsock_handshake(
    stream: &mut UnixStream,
    port: u32,
    timeout: Duration,
) -> Result<u32, HandshakeError> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let line = read_line(stream, timeout)?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    parse_ok(&line).ok_or(HandshakeError::BadReply(line))
}

fn read_line(stream: &mut UnixStream, timeout: Duration) -> Result<String, HandshakeError> {
    let mut line = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(HandshakeError::Closed),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                line.push(byte[0]);
                if line.len() >= MAX_REPLY {
                    return Err(HandshakeError::BadReply(lossy(&line)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HandshakeError::TimedOut(timeout));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(HandshakeError::Closed);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(lossy(&line))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses `OK <port>` (a trailing `\r` is tolerated).
fn parse_ok(line: &str) -> Option<u32> {
    line.trim_end_matches('\r')
        .strip_prefix("OK ")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;
    use std::thread;

    use super::*;

    const T: Duration = Duration::from_secs(5);

    /// A fake VMM: accepts one client, checks its CONNECT line, and writes
    /// `reply` (nothing and closes, if `None`).
    fn fake_vmm(reply: Option<&'static [u8]>) -> (tempdir::Dir, thread::JoinHandle<String>) {
        let dir = tempdir::Dir::new();
        let listener = UnixListener::bind(dir.path().join("vsock.sock")).unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut stream = reader.into_inner();
            if let Some(reply) = reply {
                stream.write_all(reply).unwrap();
                // Echo one stream byte back after the reply.
                let mut b = [0u8; 1];
                stream.read_exact(&mut b).unwrap();
                stream.write_all(&b).unwrap();
            }
            line
        });
        (dir, handle)
    }

    fn endpoint(dir: &tempdir::Dir) -> Endpoint {
        Endpoint::HybridVsock {
            path: dir.path().join("vsock.sock"),
            port: 1024,
        }
    }

    #[test]
    fn handshake_keeps_following_bytes() {
        // The VMM's first stream bytes come in the same write as the reply.
        let (dir, vmm) = fake_vmm(Some(b"OK 1073741824\nX"));
        let mut stream = endpoint(&dir).connect_once(T).unwrap();
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"X", "byte after the OK line is left for ttrpc");
        stream.write_all(b"Y").unwrap();
        stream.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"Y");
        assert_eq!(vmm.join().unwrap(), "CONNECT 1024\n");
    }

    #[test]
    fn handshake_returns_host_port() {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"OK 77\r\n").unwrap();
            buf
        });
        let mut stream = UnixStream::connect(&path).unwrap();
        assert_eq!(hybrid_vsock_handshake(&mut stream, 1024, T).unwrap(), 77);
        assert_eq!(&server.join().unwrap(), b"CONNECT 1024\n");
    }

    #[test]
    fn closed_without_reply_is_retryable() {
        let (dir, vmm) = fake_vmm(None);
        let err = endpoint(&dir).connect_once(T).unwrap_err();
        assert!(
            matches!(
                err,
                AgentClientError::Handshake {
                    port: 1024,
                    source: HandshakeError::Closed,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.is_retryable());
        assert!(err.to_string().contains("vsock.sock"), "{err}");
        vmm.join().unwrap();
    }

    #[test]
    fn bad_reply_is_fatal() {
        let (dir, _vmm) = fake_vmm(Some(b"NOPE\n"));
        let err = endpoint(&dir).connect_once(T).unwrap_err();
        assert!(
            matches!(&err, AgentClientError::Handshake { source: HandshakeError::BadReply(r), .. } if r == "NOPE"),
            "{err}"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn silent_vmm_times_out() {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let mut stream = UnixStream::connect(&path).unwrap();
        let err = hybrid_vsock_handshake(&mut stream, 1, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, HandshakeError::TimedOut(_)), "{err}");
        drop(listener);
    }

    #[test]
    fn missing_socket_is_retryable() {
        let err = Endpoint::unix("/nonexistent/nacre/agent.sock")
            .connect_once(T)
            .unwrap_err();
        assert!(err.is_retryable());
        assert!(err.to_string().contains("/nonexistent/nacre/agent.sock"));
    }

    #[test]
    fn parses_ok_lines() {
        assert_eq!(parse_ok("OK 5"), Some(5));
        assert_eq!(parse_ok("OK 5\r"), Some(5));
        assert_eq!(parse_ok("OK"), None);
        assert_eq!(parse_ok("ok 5"), None);
        assert_eq!(parse_ok("OK x"), None);
    }

    /// A throwaway directory (no tempfile dependency).
    mod tempdir {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new() -> Dir {
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "nacre-agent-client-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }

            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
