//! The host's client of the guest agent (`nacre.agent.v1` over ttRPC).
//!
//! [`AgentClient`] is the interface callers use, so that they can be tested
//! with [`fake::FakeAgent`]. [`TtrpcAgentClient`] is the real one: it
//! reaches the agent through the VMM's hybrid vsock Unix socket
//! ([`Endpoint::HybridVsock`]) or, in host tests, straight through a Unix
//! socket the agent listens on ([`Endpoint::Unix`]).
//!
//! This module does not start VMs or agents; it only talks to one.

mod client;
mod container;
mod endpoint;
mod error;
pub mod fake;
mod network;

use std::time::{Duration, SystemTime};

pub use client::{ClientOptions, TtrpcAgentClient};
pub use container::{
    ContainerState, ContainerStats, ContainerStatus, ProcessExit, ProcessInfo, UnknownStatus,
    INIT_EXEC_ID,
};
pub use endpoint::{hybrid_vsock_handshake, Endpoint, HandshakeError};
pub use error::{check_json_size, guest_text, AgentClientError, GUEST_TEXT_MAX, MAX_JSON_BYTES};

/// Whether the agent serves requests (`Health.Check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// It serves.
    Serving,
    /// It answered but does not serve.
    NotServing,
    /// It answered with a status this host does not know.
    Unknown,
}

/// What `Agent.GetGuestDetails` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDetails {
    /// The agent's version (its crate version).
    pub agent_version: String,
    /// The `nacre.agent.v1` API version the agent implements.
    pub protocol_version: u32,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// The guest's host name.
    pub hostname: String,
    /// Online CPUs of the guest.
    pub cpus: u32,
    /// The guest's total memory in bytes (MemTotal).
    pub memory_total_bytes: u64,
    /// Time since the guest booted.
    pub uptime: Duration,
}

/// A connection to one guest agent.
///
/// Every call is bounded by the client's call timeout, except the calls
/// that block by design until a process acts: `wait_process`,
/// `read_stdout`, `read_stderr` and `write_stdin` have no deadline (they
/// end when the process exits, writes, reads, or the connection closes).
/// Errors name the RPC that failed; agent-side failures come back as
/// [`AgentClientError::Status`] with the codes listed in `container.proto`
/// (NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT, FAILED_PRECONDITION,
/// INTERNAL).
///
/// In every container call, `exec_id` [`INIT_EXEC_ID`] (`""`) names the
/// container's init process.
/// What the agent of a VM restored from a template is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredIdentity {
    /// New host name ("" keeps the template's).
    pub hostname: String,
    /// The sandbox's id (for the agent's logs).
    pub sandbox_id: String,
    /// Fresh random bytes for the guest's RNG (32 to 4096).
    pub entropy: Vec<u8>,
    /// The wall-clock time to set.
    pub time: SystemTime,
    /// virtio-fs tag to mount at the guest's shared directory.
    pub shared_tag: Option<String>,
}

impl RestoredIdentity {
    /// An identity with 64 bytes of entropy from the host's getrandom and
    /// the current time.
    pub fn new(hostname: &str, sandbox_id: &str) -> std::io::Result<Self> {
        let mut entropy = vec![0u8; 64];
        getrandom(&mut entropy)?;
        Ok(Self {
            hostname: hostname.to_owned(),
            sandbox_id: sandbox_id.to_owned(),
            entropy,
            time: SystemTime::now(),
            shared_tag: None,
        })
    }
}

/// Fills `buf` from the kernel's CSPRNG.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, writable for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

pub trait AgentClient: Send + Sync {
    /// `Health.Check`.
    fn health(&self) -> Result<HealthStatus, AgentClientError>;

    /// `Agent.GetGuestDetails`.
    fn guest_details(&self) -> Result<GuestDetails, AgentClientError>;

    /// `Agent.SetTime`: sets the guest's wall clock to `time`.
    fn set_time(&self, time: SystemTime) -> Result<(), AgentClientError>;

    /// `Agent.Restored`: gives the agent of a VM restored from a template
    /// its own identity (RNG entropy, clock, host name, share to mount).
    fn restored(&self, identity: &RestoredIdentity) -> Result<(), AgentClientError> {
        let _ = identity;
        Err(AgentClientError::Unsupported {
            rpc: "Agent.Restored",
            message: "not implemented by this client".into(),
        })
    }

    /// `Agent.GetTrace`: the spans the agent recorded of its own work
    /// (at most [`crate::trace::GUEST_SPANS_MAX`] are taken).
    fn trace(&self) -> Result<Vec<crate::trace::GuestSpan>, AgentClientError> {
        Err(AgentClientError::Unsupported {
            rpc: "Agent.GetTrace",
            message: "not implemented by this client".into(),
        })
    }

    /// `Agent.Shutdown`: the agent syncs and resets the VM (the VMM then
    /// exits 0). Returns once the agent acknowledged, or once the connection
    /// closed after the request was sent (the guest went down first).
    fn shutdown(&self) -> Result<(), AgentClientError>;

    /// `Agent.CreateContainer`: sets the container up from `oci_spec_json`
    /// (config.json whose `root.path` and bind sources are guest paths) and
    /// leaves its init process before execve. Returns the init's guest pid.
    fn create_container(
        &self,
        container_id: &str,
        oci_spec_json: &[u8],
    ) -> Result<u32, AgentClientError>;

    /// `Agent.StartContainer`: lets the init process execve.
    fn start_container(&self, container_id: &str) -> Result<(), AgentClientError>;

    /// `Agent.ExecProcess`: starts the OCI `process` object
    /// `process_json` in the running container. Returns its guest pid.
    fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: &[u8],
    ) -> Result<u32, AgentClientError>;

    /// `Agent.WaitProcess`: blocks (no deadline) until the process exits.
    fn wait_process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<ProcessExit, AgentClientError>;

    /// `Agent.SignalProcess`: sends `signal` to the process, or with `all`
    /// to every process of the container.
    fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentClientError>;

    /// `Agent.WriteStdin`: writes `data` to the process's stdin (no
    /// deadline: blocks while the pipe is full). Returns the bytes written.
    fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<usize, AgentClientError>;

    /// `Agent.CloseStdin`: the process reads EOF on stdin.
    fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<(), AgentClientError>;

    /// `Agent.ReadStdout`: blocks (no deadline) until output is available
    /// and returns at most `max_len` bytes (0: the agent's maximum). An
    /// empty result is the end of the stream. With a terminal all output
    /// comes here.
    fn read_stdout(
        &self,
        container_id: &str,
        exec_id: &str,
        max_len: u32,
    ) -> Result<Vec<u8>, AgentClientError>;

    /// `Agent.ReadStderr`: as [`AgentClient::read_stdout`], for stderr.
    fn read_stderr(
        &self,
        container_id: &str,
        exec_id: &str,
        max_len: u32,
    ) -> Result<Vec<u8>, AgentClientError>;

    /// `Agent.ResizeTty`: sets the window size of the process's terminal.
    fn resize_tty(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), AgentClientError>;

    /// `Agent.ListProcesses`: guest pids in the container's cgroup.
    fn list_processes(&self, container_id: &str) -> Result<Vec<u32>, AgentClientError>;

    /// `Agent.ListProcesses` with what `ps -ef` shows of each process;
    /// by default only the pids.
    fn process_table(&self, container_id: &str) -> Result<Vec<ProcessInfo>, AgentClientError> {
        Ok(self
            .list_processes(container_id)?
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                ..ProcessInfo::default()
            })
            .collect())
    }

    /// `Agent.PauseContainer`: freezes the container's cgroup.
    fn pause_container(&self, container_id: &str) -> Result<(), AgentClientError>;

    /// `Agent.ResumeContainer`: thaws the container's cgroup.
    fn resume_container(&self, container_id: &str) -> Result<(), AgentClientError>;

    /// `Agent.UpdateContainer`: applies an OCI `linux.resources` object.
    fn update_container(
        &self,
        container_id: &str,
        resources_json: &[u8],
    ) -> Result<(), AgentClientError>;

    /// `Agent.StatsContainer`: resource usage of the container's cgroup.
    fn stats_container(&self, container_id: &str) -> Result<ContainerStats, AgentClientError>;

    /// `Agent.StateContainer`: status and init pid.
    fn state_container(&self, container_id: &str) -> Result<ContainerState, AgentClientError>;

    /// `Agent.RemoveContainer`: kills what is left of the container and
    /// removes its cgroup and mounts.
    fn remove_container(&self, container_id: &str) -> Result<(), AgentClientError>;

    /// `Network.ConfigureNetwork`: the guest's interfaces (by MAC),
    /// addresses, MTU, routes, neighbours, resolv.conf, hosts and hostname.
    /// Returns the guest interface names. Clients without it report
    /// [`AgentClientError::Unsupported`].
    fn configure_network(
        &self,
        _network: &crate::network::GuestNetwork,
    ) -> Result<Vec<String>, AgentClientError> {
        Err(AgentClientError::Unsupported {
            rpc: "Network.ConfigureNetwork",
            message: "not implemented by this client".into(),
        })
    }
}
