//! A scripted [`AgentClient`] for tests of code that talks to an agent.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::{AgentClient, AgentClientError, GuestDetails, HealthStatus};

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
    calls: Mutex<Vec<&'static str>>,
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
            calls: Mutex::new(Vec::new()),
        }
    }
}

impl FakeAgent {
    /// The RPCs called so far, in order (e.g. `"Agent.Shutdown"`).
    pub fn calls(&self) -> Vec<&'static str> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn call(&self, rpc: &'static str) -> Result<(), AgentClientError> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(rpc);
        match &self.fail_with {
            Some(message) => Err(AgentClientError::Unsupported {
                rpc,
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }
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

    fn shutdown(&self) -> Result<(), AgentClientError> {
        self.call("Agent.Shutdown")
    }
}
