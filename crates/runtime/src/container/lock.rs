//! An exclusive `flock` on a container's state directory, so that
//! concurrent commands on one id take turns.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::ContainerError;

/// Holds the lock until dropped (closing the descriptor releases it).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Blocks until the lock on `dir` is ours. A missing directory is
    /// reported as `NotFound` of `id`.
    pub fn acquire(dir: &Path, id: &str) -> Result<Self, ContainerError> {
        let file = File::open(dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ContainerError::NotFound(id.to_string())
            } else {
                ContainerError::Io {
                    what: "opening",
                    path: dir.to_path_buf(),
                    source: e,
                }
            }
        })?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(ContainerError::Io {
                    what: "locking",
                    path: dir.to_path_buf(),
                    source: err,
                });
            }
        }
        Ok(Self { _file: file })
    }

    /// Like [`DirLock::acquire`] but gives up after `timeout`.
    pub fn acquire_timeout(
        dir: &Path,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<Self, ContainerError> {
        let file = File::open(dir).map_err(|_| ContainerError::NotFound(id.to_string()))?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Self { _file: file });
            }
            if std::time::Instant::now() >= deadline {
                return Err(ContainerError::Io {
                    what: "locking",
                    path: dir.to_path_buf(),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_dir_is_not_found() {
        let err = DirLock::acquire(Path::new("/nonexistent/nacre/x"), "x").unwrap_err();
        assert_eq!(err.to_string(), "container x does not exist");
    }

    #[test]
    fn second_lock_waits_for_the_first() {
        let dir = std::env::temp_dir();
        let first = DirLock::acquire(&dir, "t").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        let h = std::thread::spawn(move || {
            let _second = DirLock::acquire(&d, "t").unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        h.join().unwrap();
    }
}
