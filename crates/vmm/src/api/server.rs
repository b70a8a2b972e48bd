//! The control socket's listener: one thread accepting, one thread per
//! connection reading request lines. Bounded: at most [`MAX_CONNECTIONS`]
//! at a time (more are answered with an error and closed), request lines
//! of at most [`MAX_LINE`] bytes, and a connection idle for
//! [`IDLE_TIMEOUT`] is closed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{handle_line, Response, VmControl};

/// The longest request line accepted.
pub const MAX_LINE: u64 = 4096;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 4;
/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection slot, given back when the connection's thread ends.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Option<Self> {
        active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_CONNECTIONS).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(active.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Errors starting the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("api socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("api socket {0}: another process is listening there")]
    InUse(PathBuf),
    #[error("api socket {0}: exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("api socket thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A bound control socket.
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ApiServer {
    /// Binds `path`, replacing a stale socket nobody listens on.
    pub fn bind(path: &Path) -> Result<Self, ApiServerError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ApiServerError::NotASocket(path.to_path_buf()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ApiServerError::InUse(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener =
            crate::unix_socket::bind_private(path).map_err(|source| ApiServerError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests on a thread of its own until the process exits.
    pub fn spawn(self, ctl: Arc<dyn VmControl>) -> Result<(), ApiServerError> {
        crate::seccomp::spawn(crate::seccomp::ThreadKind::Api, "api".into(), move || {
            let active = Arc::new(AtomicUsize::new(0));
            let mut refused: u64 = 0;
            for stream in self.listener.incoming() {
                match stream {
                    Ok(mut stream) => {
                        let Some(slot) = Slot::take(&active) else {
                            refused += 1;
                            if refused.is_power_of_two() {
                                tracing::warn!(refused, "api: too many connections");
                            }
                            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                            let busy = Response::error("too many connections");
                            let _ = stream.write_all(busy.to_line().as_bytes());
                            continue;
                        };
                        let ctl = ctl.clone();
                        let spawned = crate::seccomp::spawn(
                            crate::seccomp::ThreadKind::Api,
                            "api-conn".into(),
                            move || {
                                let _slot = slot;
                                serve(stream, ctl.as_ref());
                            },
                        );
                        if let Err(e) = spawned {
                            tracing::warn!("api connection thread: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("api accept: {e}"),
                }
            }
        })
        .map_err(ApiServerError::Thread)?;
        Ok(())
    }
}

/// Serves one connection until it closes.
pub fn serve(stream: UnixStream, ctl: &dyn VmControl) {
    if stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err() {
        return;
    }
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) => return,
            Ok(n) if n as u64 >= MAX_LINE && !line.ends_with('\n') => {
                let long = Response::error(format!("request longer than {MAX_LINE} bytes"));
                let _ = writer.write_all(long.to_line().as_bytes());
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("api read: {e}");
                return;
            }
        }
        if line.trim().is_empty() {
            continue;
        }
        let (response, shutdown) = handle_line(&line, ctl);
        if let Err(e) = writer
            .write_all(response.to_line().as_bytes())
            .and_then(|()| writer.flush())
        {
            tracing::debug!("api write: {e}");
        }
        if shutdown {
            ctl.shutdown();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{State, VmStatus};
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    struct Fake {
        shutdown: AtomicBool,
    }

    impl VmControl for Fake {
        fn status(&self) -> VmStatus {
            VmStatus {
                state: State::Running,
                pid: 1,
                vcpus: 1,
                memory_mib: 64,
            }
        }
        fn pause(&self) -> Result<(), String> {
            Ok(())
        }
        fn resume(&self) -> Result<(), String> {
            Ok(())
        }
        fn shutdown(&self) {
            self.shutdown.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn socket_round_trip() {
        let dir = std::env::temp_dir().join(format!("nacre-api-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("api.sock");
        let Ok(server) = ApiServer::bind(&path) else {
            panic!("bind");
        };
        // A second bind while the first listens is refused...
        assert!(matches!(
            ApiServer::bind(&path),
            Err(ApiServerError::InUse(_))
        ));
        let fake = Arc::new(Fake::default());
        assert!(server.spawn(fake.clone()).is_ok());
        let Ok(mut client) = UnixStream::connect(&path) else {
            panic!("connect");
        };
        let _ =
            client.write_all(b"{\"op\":\"status\"}\n\n{\"op\":\"nope\"}\n{\"op\":\"shutdown\"}\n");
        let mut lines = BufReader::new(client).lines().map_while(Result::ok);
        assert_eq!(
            lines.next().as_deref(),
            Some(
                "{\"ok\":true,\"state\":\"running\",\"pid\":1,\"vcpus\":1,\"memory_mib\":64,\
                 \"guest_errors\":{\"activation_refused\":0,\"fs_dropped_request\":0,\
                 \"used_ring_failure\":0,\"vsock_credit_violation\":0},\"devices\":[]}"
            )
        );
        assert!(lines.next().is_some_and(|l| l.starts_with("{\"ok\":false")));
        assert_eq!(lines.next().as_deref(), Some("{\"ok\":true}"));
        assert_eq!(lines.next(), None);
        assert!(fake.shutdown.load(Ordering::SeqCst));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn start(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("nacre-api-{name}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("api.sock");
        let server = ApiServer::bind(&path).unwrap();
        server.spawn(Arc::new(Fake::default())).unwrap();
        (dir, path)
    }

    fn status(client: &UnixStream) -> Option<String> {
        let mut c = client;
        c.write_all(b"{\"op\":\"status\"}\n").ok()?;
        BufReader::new(client).lines().next()?.ok()
    }

    #[test]
    fn connections_are_bounded() {
        let (dir, path) = start("bounded");
        let held: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        for c in &held {
            assert!(status(c).is_some_and(|l| l.starts_with("{\"ok\":true")));
        }
        // One more is told so and closed, without a thread of its own.
        let extra = UnixStream::connect(&path).unwrap();
        let mut lines = BufReader::new(&extra).lines();
        let line = lines.next().unwrap().unwrap();
        assert!(line.contains("too many connections"), "{line}");
        assert!(lines.next().is_none());
        // A closed connection frees its slot.
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let c = UnixStream::connect(&path).unwrap();
            if status(&c).is_some_and(|l| l.starts_with("{\"ok\":true")) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no slot freed");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn long_requests_are_refused() {
        let (dir, path) = start("long");
        let mut c = UnixStream::connect(&path).unwrap();
        // 1 MiB without a newline: one error, then the connection closes.
        let _ = c.write_all(&vec![b'x'; 1 << 20]);
        let mut lines = BufReader::new(&c).lines();
        let line = lines.next().unwrap().unwrap();
        assert!(line.contains("request longer than 4096 bytes"), "{line}");
        assert!(lines.next().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_to_replace_a_regular_file() {
        let path = std::env::temp_dir().join(format!("nacre-api-file-{}", std::process::id()));
        let _ = std::fs::write(&path, b"x");
        assert!(matches!(
            ApiServer::bind(&path),
            Err(ApiServerError::NotASocket(_))
        ));
        let _ = std::fs::remove_file(&path);
    }
}
