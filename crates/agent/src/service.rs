//! The ttRPC services: `Health` and `Agent`.
//!
//! Errors of the agent's work are turned into ttRPC statuses in exactly one
//! place, [`ServiceError::into_rpc`].

use std::io;
use std::sync::mpsc::Sender;

use nacre_protocol::agent::{
    GetGuestDetailsRequest, GetGuestDetailsResponse, SetTimeRequest, SetTimeResponse,
    ShutdownRequest, ShutdownResponse,
};
use nacre_protocol::health::check_response::ServingStatus;
use nacre_protocol::health::{CheckRequest, CheckResponse};
use nacre_protocol::ttrpc::{self, get_status, Code, TtrpcContext};
use nacre_protocol::{agent_ttrpc, health_ttrpc};

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
}

impl AgentService {
    /// A service that reports events to the main loop through `events`.
    #[must_use]
    pub fn new(events: Sender<Event>) -> Self {
        AgentService { events }
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
    fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        _req: GetGuestDetailsRequest,
    ) -> ttrpc::Result<GetGuestDetailsResponse> {
        guest_info::guest_details().map_err(|e| ServiceError::from(e).into_rpc())
    }

    fn set_time(&self, _ctx: &TtrpcContext, req: SetTimeRequest) -> ttrpc::Result<SetTimeResponse> {
        Self::set_time(&req).map_err(ServiceError::into_rpc)?;
        tracing::info!(unix_seconds = req.unix_seconds, "clock set");
        Ok(SetTimeResponse::new())
    }

    fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: ShutdownRequest,
    ) -> ttrpc::Result<ShutdownResponse> {
        tracing::info!("shutdown requested");
        self.shutdown().map_err(ServiceError::into_rpc)?;
        Ok(ShutdownResponse::new())
    }
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
        let service = AgentService::new(tx);
        service.shutdown().unwrap();
        assert_eq!(rx.recv().unwrap(), Event::Shutdown);
        drop(rx);
        assert!(matches!(
            service.shutdown(),
            Err(ServiceError::ShuttingDown)
        ));
    }
}
