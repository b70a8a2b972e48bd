//! A scripted [`AgentClient`] for tests of code that talks to an agent.
//!
//! Containers are modelled in memory: create → "created", start →
//! "running", a signal that kills or a `wait_process` after
//! [`FakeAgent::exit_status`] → "stopped". Output is scripted per process
//! through [`FakeAgent::set_output`]; stdin written is recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use nacre_protocol::ttrpc::Code;

use super::{
    AgentClient, AgentClientError, ContainerState, ContainerStats, ContainerStatus, GuestDetails,
    HealthStatus, ProcessExit,
};

/// One process of a fake container.
#[derive(Debug, Default, Clone)]
pub struct FakeProcess {
    /// Its fake pid.
    pub pid: u32,
    /// Its exit status once it ended.
    pub exit: Option<i32>,
    /// Output still to be read on stdout.
    pub stdout: Vec<u8>,
    /// Output still to be read on stderr.
    pub stderr: Vec<u8>,
    /// Everything written to its stdin.
    pub stdin: Vec<u8>,
    /// Whether its stdin was closed.
    pub stdin_closed: bool,
    /// The last terminal size set (rows, cols).
    pub tty_size: Option<(u32, u32)>,
}

/// A fake container.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    /// The spec it was created with.
    pub spec: Vec<u8>,
    /// Its state.
    pub status: ContainerStatus,
    /// Its processes by exec id ("" is init).
    pub processes: HashMap<String, FakeProcess>,
    /// The last resources JSON given to update.
    pub resources: Option<Vec<u8>>,
    /// Its cgroup's OOM kill count (`memory.events` `oom_kill`).
    pub oom_kills: u64,
}

/// An in-memory agent: answers from its fields and records the calls.
#[derive(Debug)]
pub struct FakeAgent {
    /// What `guest_details` returns.
    pub details: GuestDetails,
    /// What `health` returns.
    pub health: HealthStatus,
    /// When set, every call fails with `Unsupported` naming this message
    /// (stands for a broken or old agent).
    pub fail_with: Option<String>,
    /// The status a process exits with when waited for without a signal.
    pub exit_status: i32,
    /// `wait_process` blocks until the process ends (a killing signal or
    /// [`FakeAgent::exit`]) or the agent is gone
    /// ([`FakeAgent::disconnect`]), as the real agent's does; else it
    /// returns at once with [`FakeAgent::exit_status`].
    pub block_waits: bool,
    disconnected: AtomicBool,
    changed: Condvar,
    calls: Mutex<Vec<&'static str>>,
    containers: Mutex<HashMap<String, FakeContainer>>,
    next_pid: Mutex<u32>,
}

impl Default for FakeAgent {
    fn default() -> Self {
        FakeAgent {
            details: GuestDetails {
                agent_version: "0.0.0-fake".into(),
                protocol_version: nacre_protocol::PROTOCOL_VERSION,
                kernel_release: "6.1.0-fake".into(),
                hostname: "fake".into(),
                cpus: 1,
                memory_total_bytes: 128 << 20,
                uptime: Duration::from_secs(1),
            },
            health: HealthStatus::Serving,
            fail_with: None,
            exit_status: 0,
            block_waits: false,
            disconnected: AtomicBool::new(false),
            changed: Condvar::new(),
            calls: Mutex::new(Vec::new()),
            containers: Mutex::new(HashMap::new()),
            next_pid: Mutex::new(100),
        }
    }
}

fn status(rpc: &'static str, code: Code, message: String) -> AgentClientError {
    AgentClientError::Status { rpc, code, message }
}

impl FakeAgent {
    /// A fake whose `wait_process` blocks as the real agent's does (see
    /// [`FakeAgent::block_waits`]).
    pub fn blocking() -> Self {
        Self {
            block_waits: true,
            ..Self::default()
        }
    }

    /// The RPCs called so far, in order (e.g. `"Agent.Shutdown"`).
    pub fn calls(&self) -> Vec<&'static str> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A snapshot of a fake container.
    pub fn container(&self, id: &str) -> Option<FakeContainer> {
        self.containers().get(id).cloned()
    }

    /// Scripts the output a process will show on stdout and stderr.
    pub fn set_output(&self, id: &str, exec_id: &str, stdout: &[u8], stderr: &[u8]) {
        if let Some(p) = self
            .containers()
            .get_mut(id)
            .and_then(|c| c.processes.get_mut(exec_id))
        {
            p.stdout = stdout.to_vec();
            p.stderr = stderr.to_vec();
        }
    }

    /// Ends process `exec_id` of `id` with `status` (a blocked
    /// `wait_process` returns it).
    pub fn exit(&self, id: &str, exec_id: &str, status: i32) {
        let mut containers = self.containers();
        if let Some(c) = containers.get_mut(id) {
            if let Some(p) = c.processes.get_mut(exec_id) {
                p.exit.get_or_insert(status);
            }
            if exec_id.is_empty() {
                c.status = ContainerStatus::Stopped;
            }
        }
        drop(containers);
        self.changed.notify_all();
    }

    /// The OOM killer of container `id`'s cgroup kills process
    /// `exec_id` (SIGKILL: status 137).
    pub fn oom_kill(&self, id: &str, exec_id: &str) {
        if let Some(c) = self.containers().get_mut(id) {
            c.oom_kills += 1;
        }
        self.exit(id, exec_id, 137);
    }

    /// The connection is gone (the VM died): every call fails from now
    /// on, blocked ones included.
    pub fn disconnect(&self) {
        self.disconnected.store(true, Ordering::SeqCst);
        let _guard = self.containers();
        self.changed.notify_all();
    }

    fn gone(rpc: &'static str) -> AgentClientError {
        AgentClientError::Transport {
            rpc,
            source: Box::new(nacre_protocol::ttrpc::Error::Others(
                "the connection to the agent closed".into(),
            )),
        }
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, FakeContainer>> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn pid(&self) -> u32 {
        let mut next = self.next_pid.lock().unwrap_or_else(PoisonError::into_inner);
        *next += 1;
        *next
    }

    fn call(&self, rpc: &'static str) -> Result<(), AgentClientError> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(rpc);
        if self.disconnected.load(Ordering::SeqCst) {
            return Err(Self::gone(rpc));
        }
        match &self.fail_with {
            Some(message) => Err(AgentClientError::Unsupported {
                rpc,
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records the call and runs `f` on the container `id`.
    fn with_container<T>(
        &self,
        rpc: &'static str,
        id: &str,
        f: impl FnOnce(&mut FakeContainer) -> Result<T, AgentClientError>,
    ) -> Result<T, AgentClientError> {
        self.call(rpc)?;
        let mut containers = self.containers();
        let container = containers
            .get_mut(id)
            .ok_or_else(|| status(rpc, Code::NOT_FOUND, format!("container {id}: not found")))?;
        f(container)
    }

    /// Records the call and runs `f` on the process `exec_id` of `id`.
    fn with_process<T>(
        &self,
        rpc: &'static str,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut FakeProcess) -> Result<T, AgentClientError>,
    ) -> Result<T, AgentClientError> {
        self.with_container(rpc, id, |c| {
            let process = c.processes.get_mut(exec_id).ok_or_else(|| {
                status(
                    rpc,
                    Code::NOT_FOUND,
                    format!("container {id}: no process {exec_id:?}"),
                )
            })?;
            f(process)
        })
    }
}

fn read_from(buf: &mut Vec<u8>, max_len: u32) -> Vec<u8> {
    let n = if max_len == 0 {
        buf.len()
    } else {
        buf.len().min(max_len as usize)
    };
    buf.drain(..n).collect()
}

impl AgentClient for FakeAgent {
    fn health(&self) -> Result<HealthStatus, AgentClientError> {
        self.call("Health.Check")?;
        Ok(self.health)
    }

    fn guest_details(&self) -> Result<GuestDetails, AgentClientError> {
        self.call("Agent.GetGuestDetails")?;
        Ok(self.details.clone())
    }

    fn set_time(&self, _time: SystemTime) -> Result<(), AgentClientError> {
        self.call("Agent.SetTime")
    }

    fn restored(&self, _identity: &super::RestoredIdentity) -> Result<(), AgentClientError> {
        self.call("Agent.Restored")
    }

    fn shutdown(&self) -> Result<(), AgentClientError> {
        self.call("Agent.Shutdown")
    }

    fn create_container(
        &self,
        container_id: &str,
        oci_spec_json: &[u8],
    ) -> Result<u32, AgentClientError> {
        const RPC: &str = "Agent.CreateContainer";
        self.call(RPC)?;
        if serde_json::from_slice::<serde_json::Value>(oci_spec_json).is_err() {
            return Err(status(
                RPC,
                Code::INVALID_ARGUMENT,
                format!("container {container_id}: malformed spec JSON"),
            ));
        }
        let pid = self.pid();
        let mut containers = self.containers();
        if containers.contains_key(container_id) {
            return Err(status(
                RPC,
                Code::ALREADY_EXISTS,
                format!("container {container_id}: already exists"),
            ));
        }
        let init = FakeProcess {
            pid,
            ..FakeProcess::default()
        };
        containers.insert(
            container_id.to_owned(),
            FakeContainer {
                spec: oci_spec_json.to_vec(),
                status: ContainerStatus::Created,
                processes: HashMap::from([(String::new(), init)]),
                resources: None,
                oom_kills: 0,
            },
        );
        Ok(pid)
    }

    fn start_container(&self, container_id: &str) -> Result<(), AgentClientError> {
        const RPC: &str = "Agent.StartContainer";
        self.with_container(RPC, container_id, |c| {
            if c.status != ContainerStatus::Created {
                return Err(status(
                    RPC,
                    Code::FAILED_PRECONDITION,
                    format!("container {container_id}: is {}, not created", c.status),
                ));
            }
            c.status = ContainerStatus::Running;
            Ok(())
        })
    }

    fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        _process_json: &[u8],
    ) -> Result<u32, AgentClientError> {
        const RPC: &str = "Agent.ExecProcess";
        let pid = self.pid();
        self.with_container(RPC, container_id, |c| {
            // As the agent (and runc): created or running.
            if !matches!(
                c.status,
                ContainerStatus::Running | ContainerStatus::Created
            ) {
                return Err(status(
                    RPC,
                    Code::FAILED_PRECONDITION,
                    format!("container {container_id}: is {}, not running", c.status),
                ));
            }
            if c.processes.contains_key(exec_id) {
                return Err(status(
                    RPC,
                    Code::ALREADY_EXISTS,
                    format!("container {container_id}: exec id {exec_id:?} exists"),
                ));
            }
            let process = FakeProcess {
                pid,
                ..FakeProcess::default()
            };
            c.processes.insert(exec_id.to_owned(), process);
            Ok(pid)
        })
    }

    fn wait_process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<ProcessExit, AgentClientError> {
        const RPC: &str = "Agent.WaitProcess";
        self.call(RPC)?;
        let mut containers = self.containers();
        loop {
            if self.disconnected.load(Ordering::SeqCst) {
                return Err(Self::gone(RPC));
            }
            let c = containers.get_mut(container_id).ok_or_else(|| {
                status(
                    RPC,
                    Code::NOT_FOUND,
                    format!("container {container_id}: not found"),
                )
            })?;
            let p = c.processes.get_mut(exec_id).ok_or_else(|| {
                status(
                    RPC,
                    Code::NOT_FOUND,
                    format!("container {container_id}: no process {exec_id:?}"),
                )
            })?;
            let exit = match p.exit {
                Some(exit) => exit,
                None if !self.block_waits => *p.exit.get_or_insert(self.exit_status),
                None => {
                    containers = self
                        .changed
                        .wait(containers)
                        .unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
            };
            if exec_id.is_empty() {
                c.status = ContainerStatus::Stopped;
            }
            return Ok(ProcessExit {
                status: exit,
                exited_at: SystemTime::now(),
            });
        }
    }

    fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentClientError> {
        const RPC: &str = "Agent.SignalProcess";
        if signal > 64 {
            self.call(RPC)?;
            return Err(status(
                RPC,
                Code::INVALID_ARGUMENT,
                format!("container {container_id}: bad signal {signal}"),
            ));
        }
        // SIGKILL and SIGTERM end a fake process; others are ignored.
        let kills = signal == 9 || signal == 15;
        let code = 128 + i32::try_from(signal).unwrap_or(0);
        self.with_container(RPC, container_id, |c| {
            if !all && !c.processes.contains_key(exec_id) {
                return Err(status(
                    RPC,
                    Code::NOT_FOUND,
                    format!("container {container_id}: no process {exec_id:?}"),
                ));
            }
            if kills {
                for (id, p) in &mut c.processes {
                    if all || id == exec_id {
                        p.exit.get_or_insert(code);
                    }
                }
                if all || exec_id.is_empty() {
                    c.status = ContainerStatus::Stopped;
                }
            }
            Ok(())
        })?;
        self.changed.notify_all();
        Ok(())
    }

    fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<usize, AgentClientError> {
        self.with_process("Agent.WriteStdin", container_id, exec_id, |p| {
            p.stdin.extend_from_slice(data);
            Ok(data.len())
        })
    }

    fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<(), AgentClientError> {
        self.with_process("Agent.CloseStdin", container_id, exec_id, |p| {
            p.stdin_closed = true;
            Ok(())
        })
    }

    fn read_stdout(
        &self,
        container_id: &str,
        exec_id: &str,
        max_len: u32,
    ) -> Result<Vec<u8>, AgentClientError> {
        self.with_process("Agent.ReadStdout", container_id, exec_id, |p| {
            Ok(read_from(&mut p.stdout, max_len))
        })
    }

    fn read_stderr(
        &self,
        container_id: &str,
        exec_id: &str,
        max_len: u32,
    ) -> Result<Vec<u8>, AgentClientError> {
        self.with_process("Agent.ReadStderr", container_id, exec_id, |p| {
            Ok(read_from(&mut p.stderr, max_len))
        })
    }

    fn resize_tty(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), AgentClientError> {
        self.with_process("Agent.ResizeTty", container_id, exec_id, |p| {
            p.tty_size = Some((rows, cols));
            Ok(())
        })
    }

    fn list_processes(&self, container_id: &str) -> Result<Vec<u32>, AgentClientError> {
        self.with_container("Agent.ListProcesses", container_id, |c| {
            let mut pids: Vec<u32> = c
                .processes
                .values()
                .filter(|p| p.exit.is_none())
                .map(|p| p.pid)
                .collect();
            pids.sort_unstable();
            Ok(pids)
        })
    }

    fn pause_container(&self, container_id: &str) -> Result<(), AgentClientError> {
        const RPC: &str = "Agent.PauseContainer";
        self.with_container(RPC, container_id, |c| {
            if c.status != ContainerStatus::Running {
                return Err(status(
                    RPC,
                    Code::FAILED_PRECONDITION,
                    format!("container {container_id}: is {}, not running", c.status),
                ));
            }
            c.status = ContainerStatus::Paused;
            Ok(())
        })
    }

    fn resume_container(&self, container_id: &str) -> Result<(), AgentClientError> {
        const RPC: &str = "Agent.ResumeContainer";
        self.with_container(RPC, container_id, |c| {
            if c.status != ContainerStatus::Paused {
                return Err(status(
                    RPC,
                    Code::FAILED_PRECONDITION,
                    format!("container {container_id}: is {}, not paused", c.status),
                ));
            }
            c.status = ContainerStatus::Running;
            Ok(())
        })
    }

    fn update_container(
        &self,
        container_id: &str,
        resources_json: &[u8],
    ) -> Result<(), AgentClientError> {
        self.with_container("Agent.UpdateContainer", container_id, |c| {
            c.resources = Some(resources_json.to_vec());
            Ok(())
        })
    }

    fn stats_container(&self, container_id: &str) -> Result<ContainerStats, AgentClientError> {
        self.with_container("Agent.StatsContainer", container_id, |c| {
            let running = c.processes.values().filter(|p| p.exit.is_none()).count();
            Ok(ContainerStats {
                memory_usage_bytes: 1 << 20,
                pids_current: running as u64,
                memory_oom_kill: c.oom_kills,
                ..ContainerStats::default()
            })
        })
    }

    fn state_container(&self, container_id: &str) -> Result<ContainerState, AgentClientError> {
        self.with_container("Agent.StateContainer", container_id, |c| {
            let init = c.processes.get("");
            Ok(ContainerState {
                status: c.status,
                pid: init.map_or(0, |p| p.pid),
                exit_status: init
                    .and_then(|p| p.exit)
                    .filter(|_| c.status == ContainerStatus::Stopped),
            })
        })
    }

    fn remove_container(&self, container_id: &str) -> Result<(), AgentClientError> {
        self.call("Agent.RemoveContainer")?;
        match self.containers().remove(container_id) {
            Some(_) => Ok(()),
            None => Err(status(
                "Agent.RemoveContainer",
                Code::NOT_FOUND,
                format!("container {container_id}: not found"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_a_container_lifecycle() {
        let agent = FakeAgent::default();
        let pid = agent.create_container("c1", b"{}").unwrap();
        assert_eq!(agent.state_container("c1").unwrap().pid, pid);
        let dup = agent.create_container("c1", b"{}").unwrap_err();
        assert!(matches!(
            dup,
            AgentClientError::Status {
                code: Code::ALREADY_EXISTS,
                ..
            }
        ));
        agent.start_container("c1").unwrap();
        assert!(agent.start_container("c1").is_err());
        agent.set_output("c1", "", b"hello\n", b"");
        assert_eq!(agent.read_stdout("c1", "", 0).unwrap(), b"hello\n");
        assert_eq!(agent.read_stdout("c1", "", 0).unwrap(), b"");
        agent.signal_process("c1", "", 9, false).unwrap();
        assert_eq!(agent.wait_process("c1", "").unwrap().status, 137);
        let state = agent.state_container("c1").unwrap();
        assert_eq!(state.status, ContainerStatus::Stopped);
        assert_eq!(state.exit_status, Some(137));
        agent.remove_container("c1").unwrap();
        assert!(matches!(
            agent.state_container("c1").unwrap_err(),
            AgentClientError::Status {
                code: Code::NOT_FOUND,
                ..
            }
        ));
    }
}
