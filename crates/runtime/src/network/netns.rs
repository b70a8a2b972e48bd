//! Running code inside a network namespace: a dedicated thread enters it
//! with setns(2) and ends afterwards, so no other thread of the runtime
//! ever changes namespace. Sockets and tap devices the closure opens, and
//! processes it spawns, belong to that namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Why the namespace could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {path}: {source}")]
    Enter {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("network namespace thread: {0}")]
    Thread(#[source] io::Error),
    #[error("the network namespace thread panicked")]
    Panicked,
}

impl NetnsError {
    /// Whether the namespace file does not exist (any more).
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Runs `f` in a new thread that first enters the network namespace at
/// `path` (e.g. `/var/run/netns/NAME` or `/proc/PID/ns/net`).
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let shown = path.display().to_string();
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: shown.clone(),
        source,
    })?;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(scope, move || {
                // SAFETY: setns takes a descriptor and a flag; it changes
                // only this thread's network namespace, and this thread
                // ends when `f` returns.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(NetnsError::Enter {
                        path: shown,
                        source: io::Error::last_os_error(),
                    });
                }
                Ok(f())
            })
            .map_err(NetnsError::Thread)?;
        handle.join().map_err(|_| NetnsError::Panicked)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_named() {
        let err = run_in(Path::new("/nonexistent/netns"), || ()).unwrap_err();
        assert!(err.is_gone());
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
        let err = run_in(Path::new("/proc/self/status"), || ()).unwrap_err();
        assert!(matches!(err, NetnsError::Enter { .. }), "{err}");
    }
}
