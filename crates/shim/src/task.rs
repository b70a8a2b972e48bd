//! The shim's bookkeeping of containers and their processes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim::protos::api::Status;
use tokio::sync::watch;

use crate::stdio::{IoHandle, StdioPaths};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

/// One process: a container's init (exec id "") or an exec.
#[derive(Debug)]
pub struct Process {
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
    /// The OCI process JSON of an exec not started yet.
    pub pending_spec: Option<Vec<u8>>,
    pub exit: watch::Sender<Option<Exit>>,
    pub io: Option<Arc<IoHandle>>,
    /// The process exited in the guest; its exit is recorded (and
    /// published) once its output is drained. From here on a kill is
    /// answered NotFound and a delete waits for the record.
    pub finished: bool,
}

impl Process {
    pub fn new(stdio: StdioPaths) -> Self {
        Self {
            pid: 0,
            status: Status::CREATED,
            stdio,
            pending_spec: None,
            exit: watch::channel(None).0,
            io: None,
            finished: false,
        }
    }

    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Whether a signal can no longer reach it: exited (recorded or
    /// not yet) or an exec never started.
    pub fn finished_or_unstarted(&self) -> bool {
        self.finished || self.exited().is_some() || self.pending_spec.is_some()
    }
}

/// One container of the sandbox.
#[derive(Debug)]
pub struct Container {
    pub bundle: PathBuf,
    /// `<bundle>/rootfs` when the shim mounted containerd's rootfs there.
    pub mounted_rootfs: Option<PathBuf>,
    /// `<sandbox>/shared/<cid>`.
    pub share: PathBuf,
    /// Its init's pid in the guest (never reported to containerd).
    pub guest_pid: u32,
    pub processes: HashMap<String, Process>,
    /// The guest cgroup's OOM kill count last seen (memory.events
    /// `oom_kill`); a TaskOOM event goes out when it grows.
    pub oom_kills: u64,
}

impl Container {
    pub fn init(&self) -> Option<&Process> {
        self.processes.get("")
    }
}
