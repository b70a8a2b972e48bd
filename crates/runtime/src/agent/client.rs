//! [`TtrpcAgentClient`]: the real [`AgentClient`] over ttRPC.

use std::os::fd::IntoRawFd;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nacre_protocol::agent::{GetGuestDetailsRequest, SetTimeRequest, ShutdownRequest};
use nacre_protocol::agent_ttrpc::AgentClient as AgentStub;
use nacre_protocol::health::check_response::ServingStatus;
use nacre_protocol::health::CheckRequest;
use nacre_protocol::health_ttrpc::HealthClient as HealthStub;
use nacre_protocol::ttrpc::{self, context};

use super::endpoint::Endpoint;
use super::error::AgentClientError;
use super::{AgentClient, GuestDetails, HealthStatus};

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
            agent: AgentStub::new(client),
        })
    }

    /// The endpoint this client is connected to.
    #[must_use]
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn ctx(&self) -> context::Context {
        context::with_duration(self.options.call_timeout)
    }

    fn map(&self, rpc: &'static str) -> impl FnOnce(ttrpc::Error) -> AgentClientError {
        let timeout = self.options.call_timeout;
        move |e| AgentClientError::from_rpc(rpc, timeout, e)
    }
}

impl AgentClient for TtrpcAgentClient {
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
}
