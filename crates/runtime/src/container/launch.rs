//! Starting a detached helper (the monitor) and learning whether it set
//! the container up: the helper reports `ok` or an error line over a pipe
//! whose write end it inherits (`--sync-fd N`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use super::ContainerError;

/// The helper's end of the sync pipe.
#[derive(Debug)]
pub struct Reporter {
    pipe: Option<File>,
}

impl Reporter {
    /// Takes ownership of the inherited descriptor `fd` (from `--sync-fd`).
    ///
    /// # Safety
    /// `fd` must be an open descriptor that nothing else in this process
    /// owns.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Self {
        // SAFETY: the caller guarantees `fd` is open and unowned.
        let file = unsafe { File::from_raw_fd(fd) };
        // SAFETY: FD_CLOEXEC on our own descriptor, so that the VMM and
        // other children do not keep the pipe open.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        Self { pipe: Some(file) }
    }

    /// A reporter that reports nowhere (the helper runs in the foreground).
    pub fn none() -> Self {
        Self { pipe: None }
    }

    /// Reports success and closes the pipe.
    pub fn ok(&mut self) {
        self.send("ok\n");
    }

    /// Reports `message` as the failure and closes the pipe.
    pub fn fail(&mut self, message: &str) {
        self.send(&format!("err {message}"));
    }

    fn send(&mut self, text: &str) {
        if let Some(mut pipe) = self.pipe.take() {
            if let Err(e) = pipe.write_all(text.as_bytes()) {
                tracing::warn!("reporting to the parent: {e}");
            }
        }
    }
}

/// Starts `cmd` (with `--sync-fd N` appended) in its own session, its
/// stdio inherited, and waits for its report. On a failure report or an
/// exit without report, the helper has been reaped and the error is
/// returned; on success the helper runs on, detached.
pub fn launch_detached(mut cmd: Command) -> Result<Child, ContainerError> {
    let (read_end, write_end) = pipe()?;
    let write_raw = write_end.as_raw_fd();
    cmd.arg("--sync-fd").arg(write_raw.to_string());
    // SAFETY: the closure runs between fork and exec and only calls the
    // async-signal-safe setsid(2) and fcntl(2).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(write_raw, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ContainerError::Monitor(format!("starting the monitor: {e}")))?;
    drop(write_end);
    let mut report = String::new();
    let read = File::from(read_end).read_to_string(&mut report);
    match (read, report.as_str()) {
        (Ok(_), "ok\n") => Ok(child),
        (Ok(_), text) => {
            let _ = child.kill();
            let status = child.wait().ok();
            Err(ContainerError::Monitor(match text.strip_prefix("err ") {
                Some(msg) => msg.to_string(),
                None => format!("the monitor exited ({status:?}) without reporting"),
            }))
        }
        (Err(e), _) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(ContainerError::Monitor(format!(
                "reading the monitor's report: {e}"
            )))
        }
    }
}

/// A pipe, both ends close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(ContainerError::Io {
            what: "creating a pipe",
            path: "pipe2".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: both descriptors were just created and are owned by nobody.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        // bash: the sync fd may be above 9 when other tests hold
        // descriptors, and dash's redirections take one digit only.
        let mut c = Command::new("bash");
        // The fd number comes last ($2 after `--sync-fd`).
        c.arg("-c").arg(script).arg("sh");
        c
    }

    #[test]
    fn ok_report_leaves_child_running() {
        let mut child = launch_detached(sh("echo ok >&$2; exec sleep 0.2")).unwrap();
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn error_report_is_returned() {
        let err = launch_detached(sh(
            "printf 'err boom: it broke' >&$2; eval \"exec $2>&-\"; sleep 10",
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(err, "boom: it broke");
    }

    #[test]
    fn silent_exit_is_an_error() {
        let err = launch_detached(sh("exit 3")).unwrap_err().to_string();
        assert!(err.contains("without reporting"), "{err}");
    }
}
