//! The ttRPC API between the host runtime and the guest agent.
//!
//! The messages and services are generated at build time from the `.proto`
//! files under `proto/nacre/agent/v1/` (package `nacre.agent.v1`) by
//! ttrpc-codegen, which parses them in pure Rust (no `protoc`).
//!
//! This crate only holds the wire contract: no transport, no policy. The
//! host side (`nacre-runtime`) and the guest side (`nacre-agent`) both
//! depend on it.

#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::unwrap_used,
    clippy::expect_used,
    unsafe_op_in_unsafe_fn,
    missing_docs,
    reason = "generated code"
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

/// Messages of `health.proto`.
pub use generated::health;
/// ttRPC client, server trait and registration of the `Health` service.
pub use generated::health_ttrpc;

/// Messages of `container.proto` (the container RPCs of `Agent`).
pub use generated::container;

/// Messages of `agent.proto`.
pub use generated::agent;
/// ttRPC client, server trait and registration of the `Agent` service.
pub use generated::agent_ttrpc;

/// Messages of `network.proto`.
pub use generated::network;
/// ttRPC client, server trait and registration of the `Network` service.
pub use generated::network_ttrpc;

/// The ttrpc and protobuf crates the generated code is built on, so that
/// users name exactly the versions this crate was generated for.
pub use {protobuf, ttrpc};

/// The vsock port the agent's ttRPC server listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The vsock port of the guest's debug console (a shell outside every
/// container), served only when the node's configuration enables it
/// (`nacre.debug_console=1` on the guest kernel command line).
pub const DEBUG_CONSOLE_VSOCK_PORT: u32 = 1025;

/// The guest's vsock context id (CID) given by the VMM's hybrid vsock device.
pub const GUEST_CID: u32 = 3;

/// Version of the API in `proto/`, reported by the agent in
/// `GetGuestDetailsResponse.protocol_version`. Bump when RPCs or fields are
/// added, so a host can tell what an agent supports.
/// 3: `Interface.current_mac` (a restored VM's NIC is given its MAC).
/// 4: `Agent.GetTrace`.
pub const PROTOCOL_VERSION: u32 = 4;

/// Fully qualified ttRPC service names (for logs and error messages).
pub mod service {
    /// The `Health` service.
    pub const HEALTH: &str = "nacre.agent.v1.Health";
    /// The `Agent` service.
    pub const AGENT: &str = "nacre.agent.v1.Agent";
    /// The `Network` service.
    pub const NETWORK: &str = "nacre.agent.v1.Network";
}

#[cfg(test)]
mod tests {
    use protobuf::Message;

    use super::*;

    #[test]
    fn guest_details_round_trip() {
        let mut details = agent::GetGuestDetailsResponse::new();
        details.agent_version = "0.1.0".into();
        details.protocol_version = PROTOCOL_VERSION;
        details.cpus = 2;
        details.memory_total_bytes = 128 << 20;
        let bytes = details.write_to_bytes().unwrap();
        let back = agent::GetGuestDetailsResponse::parse_from_bytes(&bytes).unwrap();
        assert_eq!(back, details);
    }

    #[test]
    fn serving_status_default_is_unknown() {
        let resp = health::CheckResponse::new();
        assert_eq!(
            resp.status.enum_value_or_default(),
            health::check_response::ServingStatus::UNKNOWN
        );
    }
}
