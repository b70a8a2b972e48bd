//! A container of a pod as the frontends drive it once it is created:
//! each operation is one agent call on that container. The CLI's
//! short-lived commands attach one to the agent connection they open; the
//! monitor and the shim get theirs from [`Pod::container`].

use std::sync::Arc;

use crate::agent::{
    AgentClient, AgentClientError, ContainerState, ContainerStats, ProcessExit, ProcessInfo,
};

use super::Pod;

/// Container `cid` of a pod (see the module documentation). Errors are
/// the agent's, its cause from the guest included.
#[derive(Clone)]
pub struct ContainerHandle {
    agent: Arc<dyn AgentClient>,
    cid: String,
}

impl std::fmt::Debug for ContainerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerHandle")
            .field("cid", &self.cid)
            .finish_non_exhaustive()
    }
}

impl Pod {
    /// Container `cid` of this pod.
    pub fn container(&self, cid: &str) -> ContainerHandle {
        ContainerHandle::attach(self.agent(), cid)
    }
}

impl ContainerHandle {
    /// Container `cid` of the pod whose agent `agent` is.
    pub fn attach(agent: Arc<dyn AgentClient>, cid: &str) -> Self {
        Self {
            agent,
            cid: cid.to_string(),
        }
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.cid
    }

    /// Lets the init process execve.
    pub fn start(&self) -> Result<(), AgentClientError> {
        let _span = tracing::info_span!("agent.StartContainer").entered();
        self.agent.start_container(&self.cid)
    }

    /// Starts the OCI `process` object `process_json` as `exec_id`;
    /// returns its guest pid.
    pub fn exec(&self, exec_id: &str, process_json: &[u8]) -> Result<u32, AgentClientError> {
        let _span = tracing::info_span!("agent.ExecProcess").entered();
        self.agent.exec_process(&self.cid, exec_id, process_json)
    }

    /// Blocks until process `exec_id` (the init when empty) exits.
    pub fn wait(&self, exec_id: &str) -> Result<ProcessExit, AgentClientError> {
        self.agent.wait_process(&self.cid, exec_id)
    }

    /// Sends `signal` to process `exec_id`, or with `all` to every process
    /// of the container.
    pub fn signal(&self, exec_id: &str, signal: u32, all: bool) -> Result<(), AgentClientError> {
        self.agent.signal_process(&self.cid, exec_id, signal, all)
    }

    /// Sets the window size of process `exec_id`'s terminal.
    pub fn resize(&self, exec_id: &str, rows: u32, cols: u32) -> Result<(), AgentClientError> {
        self.agent.resize_tty(&self.cid, exec_id, rows, cols)
    }

    /// Process `exec_id` reads EOF on stdin.
    pub fn close_stdin(&self, exec_id: &str) -> Result<(), AgentClientError> {
        self.agent.close_stdin(&self.cid, exec_id)
    }

    /// Resource usage of the container's cgroup in the guest.
    pub fn stats(&self) -> Result<ContainerStats, AgentClientError> {
        self.agent.stats_container(&self.cid)
    }

    /// The container's status and init pid in the guest.
    pub fn state(&self) -> Result<ContainerState, AgentClientError> {
        self.agent.state_container(&self.cid)
    }

    /// Guest pids of the container's processes.
    pub fn pids(&self) -> Result<Vec<u32>, AgentClientError> {
        self.agent.list_processes(&self.cid)
    }

    /// The container's processes as `ps -ef` shows them.
    pub fn processes(&self) -> Result<Vec<ProcessInfo>, AgentClientError> {
        self.agent.process_table(&self.cid)
    }

    /// Freezes the container.
    pub fn pause(&self) -> Result<(), AgentClientError> {
        self.agent.pause_container(&self.cid)
    }

    /// Thaws the container.
    pub fn resume(&self) -> Result<(), AgentClientError> {
        self.agent.resume_container(&self.cid)
    }

    /// Applies an OCI `linux.resources` object.
    pub fn update(&self, resources_json: &[u8]) -> Result<(), AgentClientError> {
        self.agent.update_container(&self.cid, resources_json)
    }

    /// Kills what is left of the container and removes it from the guest.
    pub fn remove(&self) -> Result<(), AgentClientError> {
        let _span = tracing::info_span!("agent.RemoveContainer").entered();
        self.agent.remove_container(&self.cid)
    }
}
