//! Plain Rust types of the container RPCs (`container.proto`), as the
//! [`AgentClient`](super::AgentClient) trait returns them.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

/// The exec id that names a container's init process in every call.
pub const INIT_EXEC_ID: &str = "";

/// How a process ended (`Agent.WaitProcess`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// The exit code, or 128 + the signal number when a signal killed it.
    pub status: i32,
    /// When the agent saw the exit (guest clock).
    pub exited_at: SystemTime,
}

/// One guest process of a container as `ps -ef` describes it
/// (`Agent.ListProcesses`). Fields an older agent does not fill are 0 or
/// empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Guest pid.
    pub pid: u32,
    /// Guest parent pid.
    pub ppid: u32,
    /// Effective uid.
    pub uid: u32,
    /// Start, milliseconds since the Unix epoch (guest clock).
    pub start_time_ms: u64,
    /// User + system CPU time, milliseconds.
    pub cpu_time_ms: u64,
    /// Milliseconds since it started.
    pub elapsed_ms: u64,
    /// Controlling terminal (`pts/0`), empty without one.
    pub tty: String,
    /// Command line, or `[comm]`.
    pub cmd: String,
}

/// Resource usage of a container's cgroup (`Agent.StatsContainer`).
/// Counters the guest kernel does not provide are 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStats {
    /// CPU time used, in microseconds.
    pub cpu_usage_usec: u64,
    /// CPU time in user mode, in microseconds.
    pub cpu_user_usec: u64,
    /// CPU time in kernel mode, in microseconds.
    pub cpu_system_usec: u64,
    /// Memory in use, in bytes.
    pub memory_usage_bytes: u64,
    /// The memory limit in bytes; `None` without a limit.
    pub memory_limit_bytes: Option<u64>,
    /// Processes (tasks) in the cgroup.
    pub pids_current: u64,
    /// The process limit; `None` without a limit.
    pub pids_limit: Option<u64>,
    /// Bytes read from block devices.
    pub io_read_bytes: u64,
    /// Bytes written to block devices.
    pub io_write_bytes: u64,
    /// OOM kills in the container's cgroup so far.
    pub memory_oom_kill: u64,
}

/// The lifecycle state of a container, as runc names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Set up; the init process waits before execve.
    Created,
    /// The init process runs.
    Running,
    /// The cgroup is frozen.
    Paused,
    /// The init process has exited.
    Stopped,
}

impl ContainerStatus {
    /// The name on the wire and in runc's `state` output.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Paused => "paused",
            ContainerStatus::Stopped => "stopped",
        }
    }
}

impl fmt::Display for ContainerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name this client does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown container status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for ContainerStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "created" => Ok(ContainerStatus::Created),
            "running" => Ok(ContainerStatus::Running),
            "paused" => Ok(ContainerStatus::Paused),
            "stopped" => Ok(ContainerStatus::Stopped),
            other => Err(UnknownStatus(other.to_owned())),
        }
    }
}

/// What `Agent.StateContainer` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerState {
    /// Where the container is in its lifecycle.
    pub status: ContainerStatus,
    /// Guest pid of the init process.
    pub pid: u32,
    /// The init process's exit status once stopped.
    pub exit_status: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for status in [
            ContainerStatus::Created,
            ContainerStatus::Running,
            ContainerStatus::Paused,
            ContainerStatus::Stopped,
        ] {
            assert_eq!(status.as_str().parse::<ContainerStatus>(), Ok(status));
        }
        assert_eq!(
            "exploded".parse::<ContainerStatus>(),
            Err(UnknownStatus("exploded".into()))
        );
    }
}
