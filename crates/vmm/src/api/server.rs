//! The control socket's listener: one thread accepting, one thread per
//! connection reading request lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{handle_line, VmControl};

/// The longest request line accepted.
const MAX_LINE: u64 = 4096;

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
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                for stream in self.listener.incoming() {
                    match stream {
                        Ok(stream) => {
                            let ctl = ctl.clone();
                            let spawned = std::thread::Builder::new()
                                .name("api-conn".into())
                                .spawn(move || serve(stream, ctl.as_ref()));
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
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) => return,
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
            Some("{\"ok\":true,\"state\":\"running\",\"pid\":1,\"vcpus\":1,\"memory_mib\":64}")
        );
        assert!(lines.next().is_some_and(|l| l.starts_with("{\"ok\":false")));
        assert_eq!(lines.next().as_deref(), Some("{\"ok\":true}"));
        assert_eq!(lines.next(), None);
        assert!(fake.shutdown.load(Ordering::SeqCst));
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
