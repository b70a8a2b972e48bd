//! The ttRPC services: `Health` and `Agent`.
//!
//! Errors of the agent's work are turned into ttRPC statuses in exactly one
//! place, [`ServiceError::into_rpc`].

use std::io;
use std::sync::mpsc::Sender;

use nacre_protocol::agent::{
    GetGuestDetailsRequest, GetGuestDetailsResponse, GetTraceRequest, GetTraceResponse,
    RestoredRequest, RestoredResponse, SetTimeRequest, SetTimeResponse, ShutdownRequest,
    ShutdownResponse, TraceSpan,
};
use nacre_protocol::container as c;
use nacre_protocol::health::check_response::ServingStatus;
use nacre_protocol::health::{CheckRequest, CheckResponse};
use nacre_protocol::ttrpc::{self, get_status, Code, TtrpcContext};
use nacre_protocol::{agent_ttrpc, health_ttrpc};

use crate::container::{AgentEngine, ContainerError, ErrorKind};
use crate::guest_info::{self, GuestInfoError};
use crate::sys;

/// What the services ask the agent's main loop to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `Agent.Shutdown` was called: answer, then stop the VM (or, not as
    /// PID 1, the agent).
    Shutdown,
}

/// Why an RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A guest fact could not be read.
    #[error(transparent)]
    GuestInfo(#[from] GuestInfoError),
    /// The request is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Setting the clock failed.
    #[error("setting the clock: {0}")]
    SetTime(#[source] io::Error),
    /// The main loop is gone: the agent is stopping.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// A container operation failed.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// Taking a new identity after a restore failed.
    #[error(transparent)]
    Restored(#[from] crate::restored::RestoredError),
}

impl ServiceError {
    /// The ttRPC status code for this error.
    #[must_use]
    pub fn code(&self) -> Code {
        match self {
            ServiceError::GuestInfo(_) => Code::INTERNAL,
            ServiceError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            ServiceError::SetTime(e) if e.raw_os_error() == Some(libc::EPERM) => {
                Code::PERMISSION_DENIED
            }
            ServiceError::SetTime(_) => Code::INTERNAL,
            ServiceError::ShuttingDown => Code::UNAVAILABLE,
            ServiceError::Restored(
                crate::restored::RestoredError::Entropy(_)
                | crate::restored::RestoredError::Nanos(_),
            ) => Code::INVALID_ARGUMENT,
            ServiceError::Restored(_) => Code::INTERNAL,
            ServiceError::Container(e) => match e.kind {
                ErrorKind::NotFound => Code::NOT_FOUND,
                ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
                ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
                ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
                ErrorKind::Internal => Code::INTERNAL,
            },
        }
    }

    /// The error as a ttRPC status sent to the caller.
    #[must_use]
    pub fn into_rpc(self) -> ttrpc::Error {
        let code = self.code();
        tracing::warn!("rpc failed: {self}");
        ttrpc::Error::RpcStatus(get_status(code, self.to_string()))
    }
}

/// Serves `nacre.agent.v1.Health`.
#[derive(Debug, Default)]
pub struct HealthService;

impl health_ttrpc::Health for HealthService {
    fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<CheckResponse> {
        let mut resp = CheckResponse::new();
        resp.status = ServingStatus::SERVING.into();
        Ok(resp)
    }
}

/// Serves `nacre.agent.v1.Agent`.
#[derive(Debug)]
pub struct AgentService {
    events: Sender<Event>,
    engine: Option<AgentEngine>,
}

impl AgentService {
    /// A service that reports events to the main loop through `events`
    /// and runs containers with `engine`.
    #[must_use]
    pub fn new(events: Sender<Event>, engine: AgentEngine) -> Self {
        AgentService {
            events,
            engine: Some(engine),
        }
    }

    /// A service without containers (tests).
    #[must_use]
    pub fn without_containers(events: Sender<Event>) -> Self {
        AgentService {
            events,
            engine: None,
        }
    }

    fn engine(&self, id: &str) -> Result<&AgentEngine, ServiceError> {
        self.engine.as_ref().ok_or_else(|| {
            ServiceError::Container(ContainerError::new(
                ErrorKind::FailedPrecondition,
                id,
                "this agent runs no containers",
            ))
        })
    }

    /// Runs a container call and maps its error (the one place).
    fn run<T>(
        &self,
        id: &str,
        f: impl FnOnce(&AgentEngine) -> Result<T, ContainerError>,
    ) -> ttrpc::Result<T> {
        let engine = self.engine(id).map_err(ServiceError::into_rpc)?;
        f(engine).map_err(|e| ServiceError::from(e).into_rpc())
    }

    fn set_time(req: &SetTimeRequest) -> Result<(), ServiceError> {
        if req.nanos >= 1_000_000_000 {
            return Err(ServiceError::InvalidArgument(format!(
                "nanos {} is not below 10^9",
                req.nanos
            )));
        }
        sys::set_realtime(req.unix_seconds, req.nanos).map_err(ServiceError::SetTime)
    }

    fn shutdown(&self) -> Result<(), ServiceError> {
        self.events
            .send(Event::Shutdown)
            .map_err(|_| ServiceError::ShuttingDown)
    }
}

impl agent_ttrpc::Agent for AgentService {
    fn get_trace(
        &self,
        _ctx: &TtrpcContext,
        _req: GetTraceRequest,
    ) -> ttrpc::Result<GetTraceResponse> {
        let mut resp = GetTraceResponse::new();
        resp.spans = crate::trace::spans()
            .into_iter()
            .map(|s| {
                let mut t = TraceSpan::new();
                t.name = s.name.to_owned();
                t.start_us = s.start_us;
                t.duration_us = s.duration_us;
                t.thread = s.thread;
                t
            })
            .collect();
        Ok(resp)
    }

    fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        _req: GetGuestDetailsRequest,
    ) -> ttrpc::Result<GetGuestDetailsResponse> {
        guest_info::guest_details().map_err(|e| ServiceError::from(e).into_rpc())
    }

    fn set_time(&self, _ctx: &TtrpcContext, req: SetTimeRequest) -> ttrpc::Result<SetTimeResponse> {
        let _span = crate::trace::span("SetTime");
        Self::set_time(&req).map_err(ServiceError::into_rpc)?;
        tracing::info!(unix_seconds = req.unix_seconds, "clock set");
        Ok(SetTimeResponse::new())
    }

    fn restored(
        &self,
        _ctx: &TtrpcContext,
        req: RestoredRequest,
    ) -> ttrpc::Result<RestoredResponse> {
        // The spans kept so far are the template's (its boot, its
        // warm-up), not this VM's.
        crate::trace::clear();
        let _span = crate::trace::span("Restored");
        let identity = crate::restored::Identity {
            hostname: req.hostname,
            sandbox_id: req.sandbox_id,
            entropy: req.entropy,
            unix_seconds: req.unix_seconds,
            nanos: req.nanos,
            shared_tag: req.shared_tag,
        };
        identity
            .apply()
            .map_err(|e| ServiceError::from(e).into_rpc())?;
        Ok(RestoredResponse::new())
    }

    fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: ShutdownRequest,
    ) -> ttrpc::Result<ShutdownResponse> {
        let _span = crate::trace::span("Shutdown");
        tracing::info!("shutdown requested");
        self.shutdown().map_err(ServiceError::into_rpc)?;
        Ok(ShutdownResponse::new())
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: c::CreateContainerRequest,
    ) -> ttrpc::Result<c::CreateContainerResponse> {
        let _span = crate::trace::span("CreateContainer");
        let pid = self.run(&req.container_id, |e| {
            e.create(&req.container_id, &req.oci_spec_json)
        })?;
        let mut resp = c::CreateContainerResponse::new();
        resp.pid = pid_u32(pid);
        Ok(resp)
    }

    fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: c::StartContainerRequest,
    ) -> ttrpc::Result<c::StartContainerResponse> {
        let _span = crate::trace::span("StartContainer");
        self.run(&req.container_id, |e| e.start(&req.container_id))?;
        Ok(c::StartContainerResponse::new())
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: c::ExecProcessRequest,
    ) -> ttrpc::Result<c::ExecProcessResponse> {
        let _span = crate::trace::span("ExecProcess");
        let pid = self.run(&req.container_id, |e| {
            e.exec(&req.container_id, &req.exec_id, &req.process_json)
        })?;
        let mut resp = c::ExecProcessResponse::new();
        resp.pid = pid_u32(pid);
        Ok(resp)
    }

    fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: c::WaitProcessRequest,
    ) -> ttrpc::Result<c::WaitProcessResponse> {
        let _span = crate::trace::span("WaitProcess");
        let (status, at) = self.run(&req.container_id, |e| {
            e.wait(&req.container_id, &req.exec_id)
        })?;
        let mut resp = c::WaitProcessResponse::new();
        resp.exit_status = status;
        resp.exited_at_unix_ms = at;
        Ok(resp)
    }

    fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: c::SignalProcessRequest,
    ) -> ttrpc::Result<c::SignalProcessResponse> {
        let _span = crate::trace::span("SignalProcess");
        self.run(&req.container_id, |e| {
            e.signal(&req.container_id, &req.exec_id, req.signal, req.all)
        })?;
        Ok(c::SignalProcessResponse::new())
    }

    fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: c::WriteStdinRequest,
    ) -> ttrpc::Result<c::WriteStdinResponse> {
        let n = self.run(&req.container_id, |e| {
            e.write_stdin(&req.container_id, &req.exec_id, &req.data)
        })?;
        let mut resp = c::WriteStdinResponse::new();
        resp.written = u32::try_from(n).unwrap_or(u32::MAX);
        Ok(resp)
    }

    fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: c::CloseStdinRequest,
    ) -> ttrpc::Result<c::CloseStdinResponse> {
        self.run(&req.container_id, |e| {
            e.close_stdin(&req.container_id, &req.exec_id)
        })?;
        Ok(c::CloseStdinResponse::new())
    }

    fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: c::ReadStdoutRequest,
    ) -> ttrpc::Result<c::ReadStdoutResponse> {
        let data = self.run(&req.container_id, |e| {
            e.read(&req.container_id, &req.exec_id, false, req.max_len as usize)
        })?;
        let mut resp = c::ReadStdoutResponse::new();
        resp.data = data;
        Ok(resp)
    }

    fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: c::ReadStderrRequest,
    ) -> ttrpc::Result<c::ReadStderrResponse> {
        let data = self.run(&req.container_id, |e| {
            e.read(&req.container_id, &req.exec_id, true, req.max_len as usize)
        })?;
        let mut resp = c::ReadStderrResponse::new();
        resp.data = data;
        Ok(resp)
    }

    fn resize_tty(
        &self,
        _ctx: &TtrpcContext,
        req: c::ResizeTtyRequest,
    ) -> ttrpc::Result<c::ResizeTtyResponse> {
        self.run(&req.container_id, |e| {
            e.resize(&req.container_id, &req.exec_id, req.rows, req.cols)
        })?;
        Ok(c::ResizeTtyResponse::new())
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: c::ListProcessesRequest,
    ) -> ttrpc::Result<c::ListProcessesResponse> {
        let pids = self.run(&req.container_id, |e| e.list(&req.container_id))?;
        let mut resp = c::ListProcessesResponse::new();
        resp.processes = pids
            .iter()
            .filter_map(|&pid| crate::procinfo::read(pid))
            .map(|p| {
                let mut m = c::ProcessInfo::new();
                m.pid = p.pid;
                m.ppid = p.ppid;
                m.uid = p.uid;
                m.start_time_ms = p.start_time_ms;
                m.cpu_time_ms = p.cpu_time_ms;
                m.elapsed_ms = p.elapsed_ms;
                m.tty = p.tty;
                m.cmd = p.cmd;
                m
            })
            .collect();
        resp.pids = pids;
        Ok(resp)
    }

    fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: c::PauseContainerRequest,
    ) -> ttrpc::Result<c::PauseContainerResponse> {
        let _span = crate::trace::span("PauseContainer");
        self.run(&req.container_id, |e| e.set_paused(&req.container_id, true))?;
        Ok(c::PauseContainerResponse::new())
    }

    fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: c::ResumeContainerRequest,
    ) -> ttrpc::Result<c::ResumeContainerResponse> {
        let _span = crate::trace::span("ResumeContainer");
        self.run(&req.container_id, |e| {
            e.set_paused(&req.container_id, false)
        })?;
        Ok(c::ResumeContainerResponse::new())
    }

    fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: c::UpdateContainerRequest,
    ) -> ttrpc::Result<c::UpdateContainerResponse> {
        let _span = crate::trace::span("UpdateContainer");
        self.run(&req.container_id, |e| {
            e.update(&req.container_id, &req.resources_json)
        })?;
        Ok(c::UpdateContainerResponse::new())
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: c::StatsContainerRequest,
    ) -> ttrpc::Result<c::StatsContainerResponse> {
        let _span = crate::trace::span("StatsContainer");
        let s = self.run(&req.container_id, |e| e.stats(&req.container_id))?;
        let mut resp = c::StatsContainerResponse::new();
        resp.cpu_usage_usec = s.cpu_usage_usec;
        resp.cpu_user_usec = s.cpu_user_usec;
        resp.cpu_system_usec = s.cpu_system_usec;
        resp.memory_usage_bytes = s.memory_usage_bytes;
        resp.memory_limit_bytes = s.memory_limit_bytes;
        resp.pids_current = s.pids_current;
        resp.pids_limit = s.pids_limit;
        resp.io_read_bytes = s.io_read_bytes;
        resp.io_write_bytes = s.io_write_bytes;
        resp.memory_oom_kill = s.memory_oom_kill;
        Ok(resp)
    }

    fn state_container(
        &self,
        _ctx: &TtrpcContext,
        req: c::StateContainerRequest,
    ) -> ttrpc::Result<c::StateContainerResponse> {
        let state = self.run(&req.container_id, |e| e.state(&req.container_id))?;
        let mut resp = c::StateContainerResponse::new();
        resp.status = state.status.as_str().to_owned();
        resp.pid = pid_u32(state.pid);
        resp.exit_status = state.exit_status.unwrap_or(0);
        Ok(resp)
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: c::RemoveContainerRequest,
    ) -> ttrpc::Result<c::RemoveContainerResponse> {
        let _span = crate::trace::span("RemoveContainer");
        self.run(&req.container_id, |e| e.remove(&req.container_id))?;
        Ok(c::RemoveContainerResponse::new())
    }
}

fn pid_u32(pid: libc::pid_t) -> u32 {
    u32::try_from(pid).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errors_to_codes() {
        let eperm = ServiceError::SetTime(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(eperm.code(), Code::PERMISSION_DENIED);
        let einval = ServiceError::SetTime(io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(einval.code(), Code::INTERNAL);
        assert_eq!(ServiceError::ShuttingDown.code(), Code::UNAVAILABLE);
        let ttrpc::Error::RpcStatus(status) = ServiceError::InvalidArgument("x".into()).into_rpc()
        else {
            panic!("not a status");
        };
        assert_eq!(status.code(), Code::INVALID_ARGUMENT);
        assert_eq!(status.message(), "invalid argument: x");
        for (kind, code) in [
            (ErrorKind::NotFound, Code::NOT_FOUND),
            (ErrorKind::AlreadyExists, Code::ALREADY_EXISTS),
            (ErrorKind::InvalidArgument, Code::INVALID_ARGUMENT),
            (ErrorKind::FailedPrecondition, Code::FAILED_PRECONDITION),
            (ErrorKind::Internal, Code::INTERNAL),
        ] {
            let err = ServiceError::from(ContainerError::new(kind, "c1", "it broke"));
            assert_eq!(err.code(), code);
            let ttrpc::Error::RpcStatus(status) = err.into_rpc() else {
                panic!("not a status");
            };
            assert_eq!(status.message(), "container c1: it broke");
        }
    }

    #[test]
    fn rejects_bad_nanos() {
        let mut req = SetTimeRequest::new();
        req.nanos = 1_000_000_000;
        assert!(matches!(
            AgentService::set_time(&req),
            Err(ServiceError::InvalidArgument(_))
        ));
    }

    #[test]
    fn shutdown_reaches_main_loop() {
        let (tx, rx) = std::sync::mpsc::channel();
        let service = AgentService::without_containers(tx);
        service.shutdown().unwrap();
        assert_eq!(rx.recv().unwrap(), Event::Shutdown);
        drop(rx);
        assert!(matches!(
            service.shutdown(),
            Err(ServiceError::ShuttingDown)
        ));
    }
}
