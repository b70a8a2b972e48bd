//! [`TtrpcAgentClient`]: the real [`AgentClient`] over ttRPC.

use std::os::fd::IntoRawFd;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nacre_protocol::agent::{
    GetGuestDetailsRequest, GetTraceRequest, RestoredRequest, SetTimeRequest, ShutdownRequest,
};
use nacre_protocol::agent_ttrpc::AgentClient as AgentStub;
use nacre_protocol::health::check_response::ServingStatus;
use nacre_protocol::health::CheckRequest;
use nacre_protocol::health_ttrpc::HealthClient as HealthStub;
use nacre_protocol::network_ttrpc::NetworkClient as NetworkStub;
use nacre_protocol::ttrpc::{self, context};

use super::container::{ContainerState, ContainerStats, ContainerStatus, ProcessExit, ProcessInfo};
use super::endpoint::Endpoint;
use super::error::{check_json_size, AgentClientError};
use super::{AgentClient, GuestDetails, HealthStatus, RestoredIdentity};

use nacre_protocol::container as pb;

/// Timeouts of a [`TtrpcAgentClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long [`TtrpcAgentClient::connect`] keeps trying: the VMM's socket
    /// or the agent's listener may not exist yet.
    pub connect_timeout: Duration,
    /// Pause between connection attempts.
    pub retry_interval: Duration,
    /// Bound of each RPC (and of one vsock handshake).
    pub call_timeout: Duration,
}

impl Default for ClientOptions {
    /// Generous defaults for hosts without hardware virtualization, where
    /// a guest takes tens of seconds to boot.
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(120),
            retry_interval: Duration::from_millis(200),
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// A ttRPC connection to one agent.
#[derive(Clone)]
pub struct TtrpcAgentClient {
    endpoint: Endpoint,
    options: ClientOptions,
    health: HealthStub,
    agent: AgentStub,
    network: NetworkStub,
}

impl std::fmt::Debug for TtrpcAgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtrpcAgentClient")
            .field("endpoint", &self.endpoint)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl TtrpcAgentClient {
    /// Connects to the agent at `endpoint`, retrying transient failures
    /// (socket missing, nothing listening yet) until
    /// `options.connect_timeout` has passed.
    pub fn connect(endpoint: Endpoint, options: ClientOptions) -> Result<Self, AgentClientError> {
        let start = Instant::now();
        let deadline = start + options.connect_timeout;
        let mut attempts = 0u32;
        let stream = loop {
            attempts += 1;
            let handshake_timeout = options
                .call_timeout
                .min(deadline.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(1));
            match endpoint.connect_once(handshake_timeout) {
                Ok(stream) => break stream,
                Err(e)
                    if e.is_retryable() && Instant::now() + options.retry_interval < deadline =>
                {
                    tracing::trace!(attempts, "agent not reachable yet: {e}");
                    thread::sleep(options.retry_interval);
                }
                Err(e) if e.is_retryable() => {
                    return Err(AgentClientError::Unreachable {
                        endpoint: endpoint.to_string(),
                        waited: start.elapsed(),
                        attempts,
                        last: Box::new(e),
                    });
                }
                Err(e) => return Err(e),
            }
        };
        tracing::debug!(%endpoint, attempts, elapsed = ?start.elapsed(), "connected to the agent");
        // The ttrpc client owns the descriptor from here on.
        let client =
            ttrpc::Client::new(stream.into_raw_fd()).map_err(|source| AgentClientError::Setup {
                endpoint: endpoint.to_string(),
                source: Box::new(source),
            })?;
        Ok(TtrpcAgentClient {
            endpoint,
            options,
            health: HealthStub::new(client.clone()),
            network: NetworkStub::new(client.clone()),
            agent: AgentStub::new(client),
        })
    }

    /// A client on the same connection whose calls are bounded by
    /// `call_timeout` instead.
    #[must_use]
    pub fn with_call_timeout(&self, call_timeout: Duration) -> Self {
        let mut client = self.clone();
        client.options.call_timeout = call_timeout;
        client
    }

    /// The endpoint this client is connected to.
    #[must_use]
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn ctx(&self) -> context::Context {
        context::with_duration(self.options.call_timeout)
    }

    /// The context of the calls that block until a process acts (wait,
    /// read, write): no deadline (`timeout_nano` 0 makes the sync ttrpc
    /// client wait for the answer without a timer). They end with the
    /// process or the connection.
    fn blocking_ctx() -> context::Context {
        context::with_timeout(0)
    }

    fn map(&self, rpc: &'static str) -> impl FnOnce(ttrpc::Error) -> AgentClientError {
        let timeout = self.options.call_timeout;
        move |e| AgentClientError::from_rpc(rpc, timeout, e)
    }
}

impl AgentClient for TtrpcAgentClient {
    fn configure_network(
        &self,
        network: &crate::network::GuestNetwork,
    ) -> Result<Vec<String>, AgentClientError> {
        let resp = self
            .network
            .configure_network(self.ctx(), &super::network::to_request(network))
            .map_err(self.map("Network.ConfigureNetwork"))?;
        Ok(resp.interface_names)
    }

    fn health(&self) -> Result<HealthStatus, AgentClientError> {
        let resp = self
            .health
            .check(self.ctx(), &CheckRequest::new())
            .map_err(self.map("Health.Check"))?;
        Ok(match resp.status.enum_value() {
            Ok(ServingStatus::SERVING) => HealthStatus::Serving,
            Ok(ServingStatus::NOT_SERVING) => HealthStatus::NotServing,
            Ok(ServingStatus::UNKNOWN) | Err(_) => HealthStatus::Unknown,
        })
    }

    fn guest_details(&self) -> Result<GuestDetails, AgentClientError> {
        let resp = self
            .agent
            .get_guest_details(self.ctx(), &GetGuestDetailsRequest::new())
            .map_err(self.map("Agent.GetGuestDetails"))?;
        Ok(GuestDetails {
            agent_version: resp.agent_version,
            protocol_version: resp.protocol_version,
            kernel_release: resp.kernel_release,
            hostname: resp.hostname,
            cpus: resp.cpus,
            memory_total_bytes: resp.memory_total_bytes,
            uptime: Duration::from_millis(resp.uptime_ms),
        })
    }

    fn trace(&self) -> Result<Vec<crate::trace::GuestSpan>, AgentClientError> {
        let resp = self
            .agent
            .get_trace(self.ctx(), &GetTraceRequest::new())
            .map_err(self.map("Agent.GetTrace"))?;
        Ok(resp
            .spans
            .iter()
            .take(crate::trace::GUEST_SPANS_MAX)
            .map(|s| crate::trace::GuestSpan {
                name: super::guest_text(&s.name),
                start_us: s.start_us,
                duration_us: s.duration_us,
                thread: s.thread,
            })
            .collect())
    }

    fn set_time(&self, time: SystemTime) -> Result<(), AgentClientError> {
        let mut req = SetTimeRequest::new();
        // Times before 1970 are not worth a code path: clamp to the epoch.
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        req.unix_seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
        req.nanos = since_epoch.subsec_nanos();
        self.agent
            .set_time(self.ctx(), &req)
            .map_err(self.map("Agent.SetTime"))?;
        Ok(())
    }

    fn restored(&self, identity: &RestoredIdentity) -> Result<(), AgentClientError> {
        let mut req = RestoredRequest::new();
        req.hostname = identity.hostname.clone();
        req.sandbox_id = identity.sandbox_id.clone();
        req.entropy = identity.entropy.clone();
        let since_epoch = identity.time.duration_since(UNIX_EPOCH).unwrap_or_default();
        req.unix_seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
        req.nanos = since_epoch.subsec_nanos();
        req.shared_tag = identity.shared_tag.clone().unwrap_or_default();
        self.agent
            .restored(self.ctx(), &req)
            .map_err(self.map("Agent.Restored"))?;
        Ok(())
    }

    fn shutdown(&self) -> Result<(), AgentClientError> {
        match self.agent.shutdown(self.ctx(), &ShutdownRequest::new()) {
            Ok(_) => Ok(()),
            // The request went out and the guest reset before the answer
            // reached us: that is the outcome asked for.
            Err(ttrpc::Error::Socket(reason)) => {
                tracing::debug!("connection closed during Shutdown: {reason}");
                Ok(())
            }
            Err(e) => Err(self.map("Agent.Shutdown")(e)),
        }
    }

    fn create_container(
        &self,
        container_id: &str,
        oci_spec_json: &[u8],
    ) -> Result<u32, AgentClientError> {
        check_json_size("Agent.CreateContainer", "spec", oci_spec_json.len())?;
        let req = container_req(|r: &mut pb::CreateContainerRequest| {
            r.container_id = container_id.to_owned();
            r.oci_spec_json = oci_spec_json.to_vec();
        });
        let resp = self
            .agent
            .create_container(self.ctx(), &req)
            .map_err(self.map("Agent.CreateContainer"))?;
        Ok(resp.pid)
    }

    fn start_container(&self, container_id: &str) -> Result<(), AgentClientError> {
        let req = container_req(|r: &mut pb::StartContainerRequest| {
            r.container_id = container_id.to_owned();
        });
        self.agent
            .start_container(self.ctx(), &req)
            .map_err(self.map("Agent.StartContainer"))?;
        Ok(())
    }

    fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: &[u8],
    ) -> Result<u32, AgentClientError> {
        check_json_size("Agent.ExecProcess", "process", process_json.len())?;
        let req = container_req(|r: &mut pb::ExecProcessRequest| {
            r.container_id = container_id.to_owned();
            r.exec_id = exec_id.to_owned();
            r.process_json = process_json.to_vec();
        });
        let resp = self
            .agent
            .exec_process(self.ctx(), &req)
            .map_err(self.map("Agent.ExecProcess"))?;
        Ok(resp.pid)
    }

    fn wait_process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<ProcessExit, AgentClientError> {
        let req = container_req(|r: &mut pb::WaitProcessRequest| {
            r.container_id = container_id.to_owned();
            r.exec_id = exec_id.to_owned();
        });
        let resp = self
            .agent
            .wait_process(Self::blocking_ctx(), &req)
            .map_err(self.map("Agent.WaitProcess"))?;
        Ok(ProcessExit {
            status: resp.exit_status,
            exited_at: UNIX_EPOCH + Duration::from_millis(resp.exited_at_unix_ms),
        })
    }

    fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentClientError> {
        let req = container_req(|r: &mut pb::SignalProcessRequest| {
            r.container_id = container_id.to_owned();
            r.exec_id = exec_id.to_owned();
            r.signal = signal;
            r.all = all;
        });
        self.agent
            .signal_process(self.ctx(), &req)
            .map_err(self.map("Agent.SignalProcess"))?;
        Ok(())
    }

    fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<usize, AgentClientError> {
        let req = container_req(|r: &mut pb::WriteStdinRequest| {
            r.container_id = container_id.to_owned();
            r.exec_id = exec_id.to_owned();
            r.data = data.to_vec();
        });
        let resp = self
            .agent
            .write_stdin(Self::blocking_ctx(), &req)
            .map_err(self.map("Agent.WriteStdin"))?;
        Ok(resp.written as usize)
    }

    fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<(), AgentClientError> {
        let req = container_req(|r: &mut pb::CloseStdinRequest| {
            r.container_id = container_id.to_owned();
            r.exec_id = exec_id.to_owned();
        });
        self.agent
            .close_stdin(self.ctx(), &req)
            .map_err(self.map("Agent.CloseStdin"))?;
        Ok(())
    }

    fn read_stdout(
        &self,
        container_id: &str,
        exec_id: &str,
        max_len: u32,
    ) -> Result<Vec<u8>, AgentClientError> {
        let req = container_req(|r: &mut pb::ReadStdoutRequest| {
            r.container_id = container_id.to_owned();
            r.exec_id = exec_id.to_owned();
            r.max_len = max_len;
        });
        let resp = self
            .agent
            .read_stdout(Self::blocking_ctx(), &req)
            .map_err(self.map("Agent.ReadStdout"))?;
        Ok(resp.data)
    }

    fn read_stderr(
        &self,
        container_id: &str,
        exec_id: &str,
        max_len: u32,
    ) -> Result<Vec<u8>, AgentClientError> {
        let req = container_req(|r: &mut pb::ReadStderrRequest| {
            r.container_id = container_id.to_owned();
            r.exec_id = exec_id.to_owned();
            r.max_len = max_len;
        });
        let resp = self
            .agent
            .read_stderr(Self::blocking_ctx(), &req)
            .map_err(self.map("Agent.ReadStderr"))?;
        Ok(resp.data)
    }

    fn resize_tty(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), AgentClientError> {
        let req = container_req(|r: &mut pb::ResizeTtyRequest| {
            r.container_id = container_id.to_owned();
            r.exec_id = exec_id.to_owned();
            r.rows = rows;
            r.cols = cols;
        });
        self.agent
            .resize_tty(self.ctx(), &req)
            .map_err(self.map("Agent.ResizeTty"))?;
        Ok(())
    }

    fn list_processes(&self, container_id: &str) -> Result<Vec<u32>, AgentClientError> {
        let req = container_req(|r: &mut pb::ListProcessesRequest| {
            r.container_id = container_id.to_owned();
        });
        let resp = self
            .agent
            .list_processes(self.ctx(), &req)
            .map_err(self.map("Agent.ListProcesses"))?;
        Ok(resp.pids)
    }

    fn process_table(&self, container_id: &str) -> Result<Vec<ProcessInfo>, AgentClientError> {
        let req = container_req(|r: &mut pb::ListProcessesRequest| {
            r.container_id = container_id.to_owned();
        });
        let resp = self
            .agent
            .list_processes(self.ctx(), &req)
            .map_err(self.map("Agent.ListProcesses"))?;
        if resp.processes.is_empty() {
            // An agent from before the table: the pids alone.
            return Ok(resp
                .pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..ProcessInfo::default()
                })
                .collect());
        }
        Ok(resp
            .processes
            .into_iter()
            .map(|p| ProcessInfo {
                pid: p.pid,
                ppid: p.ppid,
                uid: p.uid,
                start_time_ms: p.start_time_ms,
                cpu_time_ms: p.cpu_time_ms,
                elapsed_ms: p.elapsed_ms,
                tty: p.tty,
                cmd: p.cmd,
            })
            .collect())
    }

    fn pause_container(&self, container_id: &str) -> Result<(), AgentClientError> {
        let req = container_req(|r: &mut pb::PauseContainerRequest| {
            r.container_id = container_id.to_owned();
        });
        self.agent
            .pause_container(self.ctx(), &req)
            .map_err(self.map("Agent.PauseContainer"))?;
        Ok(())
    }

    fn resume_container(&self, container_id: &str) -> Result<(), AgentClientError> {
        let req = container_req(|r: &mut pb::ResumeContainerRequest| {
            r.container_id = container_id.to_owned();
        });
        self.agent
            .resume_container(self.ctx(), &req)
            .map_err(self.map("Agent.ResumeContainer"))?;
        Ok(())
    }

    fn update_container(
        &self,
        container_id: &str,
        resources_json: &[u8],
    ) -> Result<(), AgentClientError> {
        let req = container_req(|r: &mut pb::UpdateContainerRequest| {
            r.container_id = container_id.to_owned();
            r.resources_json = resources_json.to_vec();
        });
        self.agent
            .update_container(self.ctx(), &req)
            .map_err(self.map("Agent.UpdateContainer"))?;
        Ok(())
    }

    fn stats_container(&self, container_id: &str) -> Result<ContainerStats, AgentClientError> {
        let req = container_req(|r: &mut pb::StatsContainerRequest| {
            r.container_id = container_id.to_owned();
        });
        let resp = self
            .agent
            .stats_container(self.ctx(), &req)
            .map_err(self.map("Agent.StatsContainer"))?;
        Ok(stats_from(&resp))
    }

    fn state_container(&self, container_id: &str) -> Result<ContainerState, AgentClientError> {
        let req = container_req(|r: &mut pb::StateContainerRequest| {
            r.container_id = container_id.to_owned();
        });
        let resp = self
            .agent
            .state_container(self.ctx(), &req)
            .map_err(self.map("Agent.StateContainer"))?;
        state_from("Agent.StateContainer", &resp)
    }

    fn remove_container(&self, container_id: &str) -> Result<(), AgentClientError> {
        let req = container_req(|r: &mut pb::RemoveContainerRequest| {
            r.container_id = container_id.to_owned();
        });
        self.agent
            .remove_container(self.ctx(), &req)
            .map_err(self.map("Agent.RemoveContainer"))?;
        Ok(())
    }
}

fn container_req<T: Default>(set: impl FnOnce(&mut T)) -> T {
    let mut req = T::default();
    set(&mut req);
    req
}

fn stats_from(resp: &pb::StatsContainerResponse) -> ContainerStats {
    let limit = |v: u64| (v != 0).then_some(v);
    ContainerStats {
        cpu_usage_usec: resp.cpu_usage_usec,
        cpu_user_usec: resp.cpu_user_usec,
        cpu_system_usec: resp.cpu_system_usec,
        memory_usage_bytes: resp.memory_usage_bytes,
        memory_limit_bytes: limit(resp.memory_limit_bytes),
        pids_current: resp.pids_current,
        pids_limit: limit(resp.pids_limit),
        io_read_bytes: resp.io_read_bytes,
        io_write_bytes: resp.io_write_bytes,
        memory_oom_kill: resp.memory_oom_kill,
    }
}

fn state_from(
    rpc: &'static str,
    resp: &pb::StateContainerResponse,
) -> Result<ContainerState, AgentClientError> {
    let status: ContainerStatus =
        resp.status
            .parse()
            .map_err(|e: super::UnknownStatus| AgentClientError::BadResponse {
                rpc,
                message: e.to_string(),
            })?;
    Ok(ContainerState {
        status,
        pid: resp.pid,
        exit_status: (status == ContainerStatus::Stopped).then_some(resp.exit_status),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_limits_are_none() {
        let mut resp = pb::StatsContainerResponse::new();
        resp.memory_usage_bytes = 10;
        resp.pids_limit = 4;
        let stats = stats_from(&resp);
        assert_eq!(stats.memory_limit_bytes, None);
        assert_eq!(stats.pids_limit, Some(4));
        assert_eq!(stats.memory_usage_bytes, 10);
    }

    #[test]
    fn state_maps_status_and_exit() {
        let mut resp = pb::StateContainerResponse::new();
        resp.status = "running".into();
        resp.pid = 7;
        resp.exit_status = 3;
        let state = state_from("Agent.StateContainer", &resp).unwrap();
        assert_eq!(state.status, ContainerStatus::Running);
        assert_eq!(state.exit_status, None);
        resp.status = "stopped".into();
        assert_eq!(
            state_from("Agent.StateContainer", &resp)
                .unwrap()
                .exit_status,
            Some(3)
        );
        resp.status = "weird".into();
        assert!(matches!(
            state_from("Agent.StateContainer", &resp),
            Err(AgentClientError::BadResponse { .. })
        ));
    }
}
