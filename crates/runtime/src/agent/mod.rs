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
mod endpoint;
mod error;
pub mod fake;

use std::time::{Duration, SystemTime};

pub use client::{ClientOptions, TtrpcAgentClient};
pub use endpoint::{hybrid_vsock_handshake, Endpoint, HandshakeError};
pub use error::AgentClientError;

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
/// Every call is bounded by the client's call timeout. Errors name the RPC
/// that failed.
pub trait AgentClient: Send + Sync {
    /// `Health.Check`.
    fn health(&self) -> Result<HealthStatus, AgentClientError>;

    /// `Agent.GetGuestDetails`.
    fn guest_details(&self) -> Result<GuestDetails, AgentClientError>;

    /// `Agent.SetTime`: sets the guest's wall clock to `time`.
    fn set_time(&self, time: SystemTime) -> Result<(), AgentClientError>;

    /// `Agent.Shutdown`: the agent syncs and resets the VM (the VMM then
    /// exits 0). Returns once the agent acknowledged, or once the connection
    /// closed after the request was sent (the guest went down first).
    fn shutdown(&self) -> Result<(), AgentClientError>;
}
