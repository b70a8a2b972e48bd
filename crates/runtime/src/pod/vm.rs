//! The pod's VM behind a trait: the real one is a [`Sandbox`] (a
//! `nacre-vmm` process); [`FakeVm`] stands in for it in unit tests.

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
    /// The VMM's exit status once it has exited.
    fn try_wait(&mut self) -> Result<Option<ExitStatus>, VmError>;
    /// [`PodVm::try_wait`], waiting up to `timeout`.
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, VmError>;
    /// Powers the guest off through its agent, killing the VMM after
    /// `timeout`.
    fn shutdown(self: Box<Self>, timeout: Duration) -> Result<(), SandboxError>;
}

impl PodVm for Sandbox {
    fn pid(&self) -> u32 {
        self.vm().pid()
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
}

/// A VM for unit tests: it "runs" until [`FakeVm::die`] (or a shutdown).
#[derive(Debug, Clone, Default)]
pub struct FakeVm {
    state: Arc<(Mutex<FakeVmState>, Condvar)>,
}

#[derive(Debug, Default)]
struct FakeVmState {
    exit: Option<ExitStatus>,
    shutdowns: u32,
    kills: u32,
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
        }
    }
}
