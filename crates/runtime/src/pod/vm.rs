//! The pod's VM behind a trait: the real one is a [`Sandbox`] (a
//! `nacre-vmm` process); [`FakeVm`] stands in for it in unit tests.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::sandbox::{Sandbox, SandboxError};
use crate::vm::VmError;

/// A running VM as a pod drives it. Dropping it kills the VM.
pub trait PodVm: Send + std::fmt::Debug {
    /// The VMM's pid.
    fn pid(&self) -> u32;
    /// A descriptor that becomes readable once the VMM has exited (a
    /// pidfd); opened while the VMM is not yet reaped.
    fn exit_fd(&self) -> std::io::Result<OwnedFd>;
    /// The VMM's exit status once it has exited.
    fn try_wait(&mut self) -> Result<Option<ExitStatus>, VmError>;
    /// [`PodVm::try_wait`], waiting up to `timeout`.
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, VmError>;
    /// Powers the guest off through its agent, killing the VMM after
    /// `timeout`.
    fn shutdown(self: Box<Self>, timeout: Duration) -> Result<(), SandboxError>;
    /// The VMM's own `status` (its guest error counters included), if it
    /// answers.
    fn vmm_status(&self) -> Option<nacre_vmm_api::Response> {
        None
    }
}

impl PodVm for Sandbox {
    fn pid(&self) -> u32 {
        self.vm().pid()
    }

    fn exit_fd(&self) -> std::io::Result<OwnedFd> {
        pidfd_open(self.vm().pid())
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, VmError> {
        self.vm_mut().try_wait()
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, VmError> {
        self.vm_mut().wait_timeout(timeout)
    }

    fn shutdown(self: Box<Self>, timeout: Duration) -> Result<(), SandboxError> {
        Sandbox::shutdown(*self, timeout).map(drop)
    }

    fn vmm_status(&self) -> Option<nacre_vmm_api::Response> {
        self.vm()
            .api(&nacre_vmm_api::Request::Status)
            .map_err(|e| tracing::debug!("VMM status: {e}"))
            .ok()
    }
}

/// A pidfd of process `pid` (readable once it exits).
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just returned by pidfd_open and is owned by no one
    // else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A VM for unit tests: it "runs" until [`FakeVm::die`] (or a shutdown).
#[derive(Debug, Clone)]
pub struct FakeVm {
    state: Arc<(Mutex<FakeVmState>, Condvar)>,
    /// Readable once the VM "exited" (an eventfd).
    exited: Arc<OwnedFd>,
}

impl Default for FakeVm {
    fn default() -> Self {
        // SAFETY: eventfd takes no pointers; it returns a new descriptor
        // or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
        Self {
            state: Arc::default(),
            // SAFETY: `fd` is a new descriptor owned by no one else.
            exited: Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
        }
    }
}

#[derive(Debug, Default)]
struct FakeVmState {
    exit: Option<ExitStatus>,
    shutdowns: u32,
    kills: u32,
    /// What its VMM's `status` answers beyond `ok`.
    status: nacre_vmm_api::Response,
}

impl FakeVm {
    /// A running fake VM.
    pub fn new() -> Self {
        Self::default()
    }

    /// The VMM dies of `signal` (as when killed on the host).
    pub fn die(&self, signal: i32) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap_or_else(|e| e.into_inner()).exit = Some(ExitStatus::from_raw(signal));
        cv.notify_all();
        self.signal_exit();
    }

    fn signal_exit(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one` to the eventfd.
        let _ = unsafe {
            libc::write(
                self.exited.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// What its VMM's `status` answers from now on (counters included).
    pub fn set_vmm_status(&self, status: nacre_vmm_api::Response) {
        self.state
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .status = status;
    }

    /// How often it was shut down through its agent, and killed.
    pub fn stops(&self) -> (u32, u32) {
        let s = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        (s.shutdowns, s.kills)
    }

    /// Whether it still runs.
    pub fn running(&self) -> bool {
        self.state
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .exit
            .is_none()
    }
}

impl PodVm for FakeVm {
    fn pid(&self) -> u32 {
        std::process::id()
    }

    fn exit_fd(&self) -> std::io::Result<OwnedFd> {
        self.exited.try_clone()
    }

    fn vmm_status(&self) -> Option<nacre_vmm_api::Response> {
        let s = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        Some(nacre_vmm_api::Response {
            ok: true,
            ..s.status.clone()
        })
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, VmError> {
        Ok(self.state.0.lock().unwrap_or_else(|e| e.into_inner()).exit)
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, VmError> {
        let (lock, cv) = &*self.state;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |s| s.exit.is_none())
            .unwrap_or_else(|e| e.into_inner());
        Ok(guard.exit)
    }

    fn shutdown(self: Box<Self>, _timeout: Duration) -> Result<(), SandboxError> {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        s.shutdowns += 1;
        s.exit.get_or_insert(ExitStatus::from_raw(0));
        cv.notify_all();
        drop(s);
        self.signal_exit();
        Ok(())
    }
}

impl Drop for FakeVm {
    fn drop(&mut self) {
        // Only the pod's own handle counts as the VMM.
        if Arc::strong_count(&self.state) == 1 {
            return;
        }
        let mut s = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.exit.is_none() {
            s.kills += 1;
            s.exit = Some(ExitStatus::from_raw(libc::SIGKILL));
            drop(s);
            self.signal_exit();
        }
    }
}
