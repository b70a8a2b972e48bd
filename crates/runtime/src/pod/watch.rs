//! One watcher per pod: process exits and the VMM's death arrive as
//! [`PodEvent`]s, sent to the frontend's sink by threads that block (on an
//! agent `WaitProcess`, on the VMM's pidfd), never by polling.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{AgentClient, AgentClientError};

use super::{Pod, VM_LOST_STATUS};

/// What happened in a pod.
#[derive(Debug)]
pub enum PodEvent {
    /// Process `exec_id` of container `cid` (the init when empty) ended:
    /// its exit status, or why waiting for it failed (usually: the VM went
    /// away; [`Pod::exit_of`] turns that into a status).
    Exited {
        cid: String,
        exec_id: String,
        exit: Result<i32, AgentClientError>,
    },
    /// The VMM exited (an orderly shutdown too): [`Pod::poll_exit`] reaps
    /// it and releases what the pod holds. Sent once.
    VmExited,
}

/// Where a pod's events go: called on the watcher's threads.
pub type EventSink = Arc<dyn Fn(PodEvent) + Send + Sync>;

/// A pod's watcher (see the module documentation): waits for the
/// processes it is given and, from its creation, for the VMM.
#[derive(Clone)]
pub struct Watcher {
    agent: Arc<dyn AgentClient>,
    sink: EventSink,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    /// Sends [`PodEvent::Exited`] once process `exec_id` of container
    /// `cid` ends.
    pub fn process(&self, cid: &str, exec_id: &str) {
        let (agent, sink) = (Arc::clone(&self.agent), Arc::clone(&self.sink));
        let (cid, exec_id) = (cid.to_string(), exec_id.to_string());
        let spawned = std::thread::Builder::new()
            .name("pod-wait".into())
            .spawn(move || {
                let exit = agent.wait_process(&cid, &exec_id).map(|e| e.status);
                sink(PodEvent::Exited { cid, exec_id, exit });
            });
        if let Err(e) = spawned {
            tracing::error!("starting a process waiter thread: {e}");
        }
    }
}

impl Pod {
    /// Starts watching the VMM: [`PodEvent::VmExited`] goes to `sink`
    /// when it exits (at once if it already has). The returned watcher
    /// waits for processes on the same sink.
    pub fn watch(&self, sink: EventSink) -> std::io::Result<Watcher> {
        let fd = {
            let guard = self.vm.lock().unwrap_or_else(|e| e.into_inner());
            // Under the lock: the VMM cannot be reaped (and its pid
            // reused) while its exit descriptor is opened.
            match guard.as_ref() {
                Some(vm) => Some(vm.exit_fd()?),
                None => None,
            }
        };
        let watcher = Watcher {
            agent: self.agent(),
            sink: Arc::clone(&sink),
        };
        match fd {
            Some(fd) => {
                std::thread::Builder::new()
                    .name("pod-vm-watch".into())
                    .spawn(move || {
                        // Readable or not pollable: the watch ends either way.
                        let _ = wait_readable(&fd);
                        sink(PodEvent::VmExited);
                    })?;
            }
            None => sink(PodEvent::VmExited),
        }
        Ok(watcher)
    }

    /// The status of a process from its [`PodEvent::Exited`]: its own, or
    /// when waiting failed, what the VM's exit gives (waiting up to
    /// `grace` for the VMM to exit), else [`VM_LOST_STATUS`]. Blocking.
    pub fn exit_of(&self, cid: &str, exit: &Result<i32, AgentClientError>, grace: Duration) -> i32 {
        match exit {
            Ok(status) => *status,
            Err(e) => {
                if let Some(status) = self.wait_exit(grace) {
                    tracing::warn!(cid, "the VMM exited under container {cid}");
                    return status;
                }
                tracing::error!(cid, "WaitProcess for container {cid}: {e}");
                VM_LOST_STATUS
            }
        }
    }
}

/// Blocks until `fd` is readable (true) or polling it fails for good
/// (false); interrupted polls are retried.
pub(crate) fn wait_readable(fd: &OwnedFd) -> bool {
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r > 0 {
            return true;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}
